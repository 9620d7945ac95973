"""The bad-input corpus: every input issue 11 found breaking the harness, and the ones a new user would try.

Each command runs through the real CLI in a scratch directory that already holds a results directory
with a run and a history. Each must give its documented exit code and one line on stderr naming
the file (with line and key where there are such), with no traceback; nothing may be written
outside the results directory, and nothing in the existing results or history may change.
The inputs are files in tests/bad-inputs/ (README.md there lists them); run directories are made
here, from a real RunWriter's output, because they must be whole runs but for the one bad value.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from rich.console import Console

from harness import cli, history
from harness.manifest import Manifest
from harness.report import rundir
from harness.results import BootResult, CaseResult, KernelInfo, Outcome

CORPUS = Path(__file__).resolve().parent / "bad-inputs"
KERNEL = KernelInfo(
    "bookworm", "6.1.0-50-amd64", "linux-image-6.1.0-50-amd64", "6.1.176-1", "ab" * 32, "debian:bookworm"
)


def write_run(run_dir: Path, message: str = "as expected", serial: str = "serial/bookworm-256M.log") -> None:
    case = CaseResult(
        "bookworm-256M",
        "mlock_over",
        "64K",
        "user",
        Outcome.PASS,
        message,
        {"case": "mlock_over"},
        fingerprint='{"result":"ENOMEM"}',
    )
    writer = rundir.RunWriter(run_dir, run_dir.name, "2026-11-26T00:00:00Z", ["bookworm-256M"])
    writer.add_boot(BootResult("bookworm-256M", KERNEL, 256, "tcg", serial_log=serial, cases=[case]))
    writer.write_manifest(
        Manifest.from_json(
            {
                "matrix_text": "kernels: [{debian: bookworm}]\n",
                "probe": {"sha256": "p" * 64},
                "expectations_sha256": "e" * 64,
            }
        )
    )
    writer.finish("2026-11-26T00:10:00Z")


def edit_results(run_dir: Path, edit: Callable[[str], str]) -> None:
    path = run_dir / "results.json.gz"
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()).decode()).encode()))


def deep(run_dir: Path) -> None:
    write_run(run_dir)
    nested = b"[" * 200_000 + b"]" * 200_000
    (run_dir / "results.json.gz").write_bytes(gzip.compress(b'{"schema": 1, "run_id": "x", "boots": ' + nested + b"}"))


def bignum(run_dir: Path) -> None:
    write_run(run_dir)
    edit_results(run_dir, lambda t: t.replace('"ram_mb":256', '"ram_mb":' + "9" * 5000))


def infinite(run_dir: Path) -> None:
    write_run(run_dir)
    edit_results(run_dir, lambda t: t.replace('"duration_s":0.0', '"duration_s":1e999'))


def bogus_debs(run_dir: Path) -> None:
    write_run(run_dir)
    doc = json.loads((run_dir / "manifest.json").read_text())
    doc["kernels"] = [{"spec": "bookworm", "sha256": "ab" * 32, "release": "6.1.0-50-amd64", "debs": [{"bogus": 1}]}]
    (run_dir / "manifest.json").write_text(json.dumps(doc))


def escaping_shard(run_dir: Path) -> None:
    write_run(run_dir, serial="../../victim.txt")
    doc = json.loads((run_dir / "manifest.json").read_text())
    doc["shard"] = {"index": 1, "count": 1}
    (run_dir / "manifest.json").write_text(json.dumps(doc))


def no_manifest(run_dir: Path) -> None:
    write_run(run_dir)
    (run_dir / "manifest.json").unlink()


RUNS: dict[str, Callable[[Path], None]] = {
    "deep": deep,
    "bignum": bignum,
    "infinite": infinite,
    "bogus-debs": bogus_debs,
    "escaping-shard": escaping_shard,
    "no-manifest": no_manifest,
}
M = "bad-inputs/"

# (argv, exit code, what the one stderr line says after "harness: error: ")
CASES: list[tuple[Sequence[str], int, str]] = [
    (["run", "--matrix", M + "not-utf8.yaml"], 2, M + "not-utf8.yaml:2: not UTF-8 text (byte 37)"),
    (["run", "--matrix", "/dev/zero"], 2, "/dev/zero: larger than 1 MiB, more than any matrix file holds"),
    (["run", "--matrix", M + "alias-bomb.yaml"], 2, M + "alias-bomb.yaml:1: anchors and aliases"),
    (["run", "--matrix", M + "alias-self.yaml"], 2, M + "alias-self.yaml:1: anchors and aliases"),
    (["run", "--matrix", M + "deep.yaml"], 2, M + "deep.yaml: nested too deeply"),
    (["run", "--matrix", M + "huge-number.yaml"], 2, M + "huge-number.yaml: invalid YAML: Exceeds the limit"),
    (["run", "--matrix", M + "suite-number.yaml"], 2, M + "suite-number.yaml:2: kernels.0.debian.suite: give a"),
    (["run", "--matrix", M + "package-null.yaml"], 2, M + "package-null.yaml:2: kernels.0.debian.package: None:"),
    (["run", "--matrix", M + "ram-huge.yaml"], 2, M + "ram-huge.yaml:3: ram.0: 99999999G is more than 1T"),
    (["run", "--matrix", M + "timeout-nan.yaml"], 2, M + "timeout-nan.yaml:3: timeouts.boot: give a positive"),
    (["run", "--matrix", M + "timeout-inf.yaml"], 2, M + "timeout-inf.yaml:3: timeouts.case: give a positive"),
    (["run", "--matrix", M + "limit-huge.yaml"], 2, M + "limit-huge.yaml:3: memlock.0: 99999999999T is more than"),
    (
        ["run", "--matrix", M + "duplicate-kernels.yaml"],
        2,
        M + "duplicate-kernels.yaml:3: kernels.1: the same kernel as kernels.0; remove one",
    ),
    (["run", "--matrix", M + "list.yaml"], 2, M + "list.yaml:1: (top level): a matrix file is a mapping"),
    (["run", "--matrix", M + "unknown-case.yaml"], 2, M + "unknown-case.yaml: cases: unknown case 'no_such_case'"),
    (
        ["run", "--matrix", M + "missing-path.yaml"],
        2,
        M + "missing-path.yaml:2: kernels.0.path: /nonexistent/bzImage is not a file",
    ),
    (["run", "--matrix", "bad-inputs"], 2, "bad-inputs: a directory, not a matrix file"),
    (["run", "--jobs", "0"], 2, "--jobs 0: give at least 1"),
    (["run", "--shard", "5/4"], 2, "harness run: argument --shard: '5/4': give I/N with 1 <= I <= N"),
    (["run", "--results", "results/night1/results.json.gz"], 2, "results/night1/results.json.gz: results cannot be"),
    (
        ["run", "--cache", "results/night1/results.json.gz/cache"],
        2,
        "--cache results/night1/results.json.gz/cache: cannot",
    ),
    (["kernels", "resolve", "--matrix", M + "missing-path.yaml"], 2, M + "missing-path.yaml:2: kernels.0.path"),
    (["compare", "night1", "deep"], 2, "results/deep/results.json.gz: cannot read it as JSON"),
    (["compare", "night1", "bignum"], 2, "results/bignum/results.json.gz: cannot read it as JSON (Exceeds the limit"),
    (
        ["compare", "night1", "infinite"],
        2,
        "results/infinite/results.json.gz: boots[0].cases[0].duration_s: not a finite number",
    ),
    (
        ["compare", "night1", "night1", "--known", M + "known-not-utf8.yaml"],
        2,
        M + "known-not-utf8.yaml:3: not UTF-8 text",
    ),
    (["compare", "night1", "nowhere"], 2, "results/history.sqlite: no kernel matches 'nowhere'; known: 6.1.176-1"),
    (["replay", "bogus-debs"], 2, "results/bogus-debs/manifest.json: kernels[0].debs[0].package: missing"),
    (["replay", "no-manifest"], 2, "results/no-manifest: no manifest.json"),
    (
        ["merge", "results/escaping-shard"],
        2,
        "results/escaping-shard/results.json.gz: boots[0].serial_log: '../../victim.txt' is not a path inside",
    ),
    (["history", "--history", "results"], 2, "results: a directory; give --history the history file"),
    (["history", "import", "results/nowhere"], 2, "results/nowhere: no such file; give a run directory"),
]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if "cache" not in p.relative_to(root).parts
    }


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/work: the corpus, and results/ with a real run (night1), the hostile runs and a history."""
    work = tmp_path / "work"
    shutil.copytree(CORPUS, work / "bad-inputs")
    write_run(work / "results" / "night1")
    for name, make in RUNS.items():
        make(work / "results" / name)
    with history.History(work / "results" / "history.sqlite") as db:
        db.import_run(work / "results" / "night1")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HARNESS_CACHE", str(work / "cache"))
    return work


@pytest.mark.parametrize(("argv", "code", "says"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(
    scratch: Path, capsys: pytest.CaptureFixture[str], argv: Sequence[str], code: int, says: str
) -> None:
    before = snapshot(scratch)
    console = Console(file=io.StringIO())
    got = cli.main(list(argv), console=console)
    err = capsys.readouterr().err
    assert got == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"harness: error: {says}"), err
    assert snapshot(scratch) == before  # nothing written anywhere, results and history untouched
    assert not (scratch.parent / "victim.txt").exists()


def test_hostile_strings_in_a_run_reach_reports_history_and_terminal_safely(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose messages hold a lone surrogate and terminal escapes (as \\u escapes in the JSON): compare,
    history import, history and merge all work, and print no raw escape."""
    hostile = scratch / "results" / "hostile"
    write_run(hostile, message="weird\ud800 \x1b]0;owned\x07\x1b[2J [bold]x[/]")
    for argv in (
        ["compare", "night1", "hostile"],
        ["history", "import", "results/hostile"],
        ["history"],
        ["merge", "results/hostile", "--results", "r[/]x"],
    ):
        out = io.StringIO()
        code = cli.main(argv, console=Console(file=out, width=200))
        err = capsys.readouterr().err
        assert code in (0, 1), (argv, err)
        text = out.getvalue() + err
        assert "\x1b" not in text and "\x07" not in text and "Traceback" not in text, argv
    assert "results: r[/]x/" in out.getvalue()  # a path with markup in it is printed as it is


def test_an_internal_error_has_its_own_exit_code_and_its_traceback_in_a_file(
    scratch: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug is simulated (a handler raising ValueError): there is no other way to have one on purpose."""

    def broken(args: object, console: object) -> int:
        raise ValueError("a bug \x1b[31m")

    monkeypatch.setitem(cli.HANDLERS, "cases", broken)
    assert cli.main(["cases"], console=Console(file=io.StringIO())) == 70
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("harness: internal error (a bug in the harness, please report it): ValueError: a bug \\x1b")
    report = Path(line.rsplit("traceback in ", 1)[1])
    assert report.parent == scratch / "cache" / "crashes" and "ValueError: a bug" in report.read_text()


def test_bisect_options_are_values_not_text(
    scratch: Path, capsys: pytest.CaptureFixture[str], make_repo: Callable[[Sequence[tuple[str, dict[str, str]]]], Path]
) -> None:
    """`--case 'a, b'` was read as two cases once the options became YAML text; now it is one unknown case."""
    repo = make_repo([("one", {"Makefile": "1\n"}), ("two", {"Makefile": "2\n"})])
    argv = ["bisect", "--repo", str(repo), "--good", "HEAD~1", "--bad", "HEAD", "--case", "mlock_over, mlock_under"]
    assert cli.main(argv, console=Console(file=io.StringIO())) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("harness: error: --case: unknown case 'mlock_over, mlock_under'")
