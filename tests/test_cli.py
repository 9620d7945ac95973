"""harness/cli.py: exit codes and one-line error messages, in process and as `python -m harness`."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from harness import __version__, cli
from harness.manifest import Manifest
from harness.plan import matrix
from harness.report import rundir
from harness.results import BootResult, CaseResult, KernelInfo, Outcome

BAD_MATRIX = "kernels:\n  - debian: bookworm\nram: [256M]\nmemlock:\n  - {soft: 1M, hard: 64K}\n"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path with a private cache, as if on a narrow (80-column) terminal."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "80")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    console = Console(file=io.StringIO())
    code = cli.main(argv, console=console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return code, out, capsys.readouterr().err


def test_print_default_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["run", "--print-default-matrix"], capsys)
    assert code == 0 and err == ""
    assert out == matrix.default_text()
    parsed = matrix.parse(out, "printed.yaml")
    assert parsed.kernels == matrix.load_default().kernels
    assert parsed.memlocks == matrix.load_default().memlocks


def test_missing_matrix_exits_2_naming_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["run", "--matrix", "missing.yaml"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: missing.yaml: cannot read matrix file")
    assert "Traceback" not in err and out == ""


def test_malformed_matrix_exits_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_MATRIX)
    code, out, err = run(["run", "--matrix", "bad.yaml"], capsys)
    assert code == 2
    assert err.splitlines() == [
        "harness: error: bad.yaml:5: memlock.0: soft limit is above the hard limit; make soft <= hard"
    ]
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "results").exists()  # nothing started


def test_jobs_zero_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["run", "--jobs", "0"], capsys)
    assert code == 2
    assert err.splitlines() == ["harness: error: --jobs 0: give at least 1"]


def test_unknown_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: unknown command 'frobnicate'; the commands are run, merge, ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["rnu"], "harness: error: unknown command 'rnu'; did you mean 'run'?"),
        (["kernels", "resovle"], "harness: error: unknown command 'kernels resovle'; did you mean 'kernels resolve'?"),
        (
            ["run", "--cases", "mlock_over"],
            "harness: error: harness: unrecognized arguments: --cases mlock_over; did you mean --case? (see --help)",
        ),
    ],
)
def test_a_mistyped_command_or_option_gets_the_nearest(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert (code, out, err.splitlines()) == (2, "", [line])


def test_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"harness {__version__}\n"
    proc = module_run(tmp_path, "--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"harness {__version__}\n", "")


def test_no_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2 and err.startswith("harness: error: ")


def test_error_with_a_long_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path.joinpath(*["d" * 200] * 6, "m.yaml")  # about 1.2 kB, well under PATH_MAX
    code, _, err = run(["run", "--matrix", str(deep)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err


def test_cases_lists_the_probe_catalogue(catalogue: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["cases"], capsys)
    assert code == 0
    assert len(catalogue) > 50  # every scenario area of MAP_LOCKED.md, root and unprivileged
    assert [line.split("\t")[0] for line in out.splitlines()] == catalogue
    assert not [name for name in catalogue if name.startswith("_")]  # self-tests stay hidden


# --- the real entry point ---------------------------------------------------------------------


def module_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "HARNESS_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def test_python_m_harness_bad_matrix_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_MATRIX)
    proc = module_run(tmp_path, "run", "--matrix", "bad.yaml")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "harness: error: bad.yaml:5: memlock.0: soft limit is above the hard limit; make soft <= hard"
    ]
    assert proc.stdout == ""


def test_python_m_harness_cases_matches_probe_list(tmp_path: Path, probe: Path) -> None:
    listing = subprocess.run([str(probe), "--list"], capture_output=True, text=True, check=True).stdout
    proc = module_run(tmp_path, "cases")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == listing.splitlines()


def test_non_kernel_file_is_bad_input_before_any_boot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk").write_bytes(os.urandom(4096))
    (tmp_path / "m.yaml").write_text("kernels:\n  - debian: bookworm\n  - path: junk\n")
    code, out, err = run(["run", "--matrix", "m.yaml", "--mirror", "http://127.0.0.1:9/debian"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: m.yaml:3: kernels.1: ")
    assert "not a Linux kernel image" in line
    assert not (tmp_path / "results").exists()  # nothing started: path kernels are checked first


def test_truncated_kernel_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first 4 KiB of a real bzImage header layout is not a kernel QEMU can boot."""
    kernel = tmp_path / "vmlinuz"
    header = bytearray(8192)
    header[0x1F1] = 4  # setup_sects
    header[0x202:0x206] = b"HdrS"
    kernel.write_bytes(bytes(header[:600]))
    (tmp_path / "m.yaml").write_text("kernels:\n  - path: vmlinuz\n")
    code, _, err = run(["run", "--matrix", "m.yaml"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: m.yaml:2: kernels.0: ")


def test_unwritable_results_directory_fails_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.yaml").write_text("kernels:\n  - debian: bookworm\n")
    (tmp_path / "taken").write_text("a file where the results directory should be")
    code, _, err = run(["run", "--matrix", "m.yaml", "--results", "taken/results"], capsys)
    assert code == 2  # the user's path: bad input (issue 11), not the machinery
    (line,) = err.splitlines()
    assert line.startswith("harness: error: taken/results: results cannot be written there")


# --- shards, compare, replay, history, merge: bad input -----------------------------------------


@pytest.mark.parametrize("shard", ["3/2", "0/2", "1", "a/b", "1/0"])
def test_bad_shard_is_one_line(shard: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["run", "--shard", shard], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert f"argument --shard: {shard!r}: give I/N with 1 <= I <= N" in line


@pytest.mark.parametrize(
    "args",
    [
        ["cases"],
        ["run", "--help"],
        ["--help"],
        ["run", "--print-default-matrix"],
        ["history"],
        ["history", "--case", "protnone_mlock"],
    ],
)
def test_a_reader_that_leaves_early_ends_the_harness_quietly(tmp_path: Path, args: list[str]) -> None:
    """`harness cases | head -1`, `harness history | less` quit early: as git, the harness ends
    without a word (SIGPIPE's exit status, or 0 where argparse printed help), no traceback, no crash file."""
    write_run(tmp_path / "results" / "night1", Outcome.PASS, '{"locked":"none"}')
    assert module_run(tmp_path, "history", "import", "results/night1").returncode == 0
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the harness writes a byte
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=tmp_path,
        env=env,
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write)
    assert proc.stderr == ""
    assert proc.returncode in (0, 128 + 13)
    assert not (tmp_path / "cache" / "crashes").exists()


def write_run(run_dir: Path, outcome: Outcome, fingerprint: str) -> Path:
    """A run directory as `harness run` leaves it, with one boot and one case."""
    kernel = KernelInfo("bookworm", "6.1.0-50-amd64", "linux-image-6.1.0-50-amd64", "6.1.176-1", "ab" * 32, "bookworm")
    case = CaseResult(
        "bookworm-256M", "protnone_mlock", "64K", "user", outcome, "locked after ENOMEM", {}, fingerprint=fingerprint
    )
    writer = rundir.RunWriter(run_dir, run_dir.name, "2026-11-26T00:00:00Z", ["bookworm-256M"])
    writer.add_boot(BootResult("bookworm-256M", kernel, 256, "tcg", cases=[case]))
    writer.write_manifest(Manifest(matrix_text="kernels: [{debian: bookworm}]\n"))
    writer.finish("2026-11-26T00:10:00Z")
    return run_dir


def test_compare_exit_codes_and_known_deviations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "results" / "night1", Outcome.PASS, '{"locked":"none"}')
    new = write_run(tmp_path / "results" / "night2", Outcome.DEVIATION, '{"locked":"all"}')
    code, out, _ = run(["compare", "night1", "night2", "--known", str(tmp_path / "none.yaml")], capsys)
    assert code == 2  # the known-deviations file must exist
    (tmp_path / "none.yaml").write_text("known: []\n")
    code, out, _ = run(["compare", "night1", "night2", "--known", "none.yaml"], capsys)
    assert code == 1 and "new deviation" in out and "locked after ENOMEM" in out
    code, out, _ = run(["compare", str(base), str(new)], capsys)  # the shipped file knows protnone_mlock
    assert code == 0 and "known deviation" in out
    code, out, _ = run(["compare", "night2", "night1"], capsys)
    assert code == 0 and "fixed" in out


def test_compare_unknown_side_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "results" / "night1", Outcome.PASS, "{}")
    code, _, err = run(["compare", "night1", "nightX"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: nightX: not a run directory or run id in results")


def test_history_import_and_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["history"], capsys)
    assert code == 2 and "no history yet" in err
    night = write_run(tmp_path / "results" / "night1", Outcome.PASS, '{"locked":"none"}')
    code, out, _ = run(["history", "import", str(night), str(night)], capsys)
    assert code == 0 and out.splitlines() == [f"{night}\t1 results added", f"{night}\talready in the history"]
    code, out, _ = run(["history", "--case", "protnone_mlock"], capsys)
    assert code == 0 and "6.1.176-1" in out and "locked=none" in out
    code, _, err = run(["history", "--kernel", "9.9"], capsys)
    assert code == 2 and "9.9" in err


def test_replay_of_unknown_run_or_boot_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["replay", "nope"], capsys)
    assert code == 2 and "nope: no such run" in err
    write_run(tmp_path / "results" / "night1", Outcome.PASS, "{}")
    code, _, err = run(["replay", "night1", "--boot", "trixie-256M"], capsys)
    assert code == 2
    assert err.splitlines() == ["harness: error: --boot trixie-256M: run night1 has no such boot; it has bookworm-256M"]


def test_merge_of_a_non_run_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run(["merge", "empty"], capsys)
    assert code == 2 and err.splitlines() == [
        "harness: error: empty: no manifest.json; merge needs the run directories `harness run` wrote"
    ]
    assert not (tmp_path / "results").exists()


def test_ci_examples_use_only_commands_and_options_the_cli_has() -> None:
    """docs/ci is copied into real pipelines: every `harness ...` line in it must parse."""
    parser = cli.args.parser()
    docs = Path(__file__).resolve().parent.parent / "docs" / "ci"
    seen = 0
    for path in sorted(docs.glob("*.yml")):
        yaml.safe_load(path.read_text())
        text = path.read_text().replace("\\\n", " ").replace("\n        --", " --")  # continued lines
        text = re.sub(r"\$\(([^)]*)\)", "dir", text)  # command substitution: some directories
        text = re.sub(r"\$\{\{[^}]*\}\}|\$[A-Z_]+", "1", text)  # CI variables
        for m in re.finditer(r"\.venv/bin/harness ([^|;>\n]*)", text):
            parser.parse_args(shlex.split(m.group(1)))
            seen += 1
    assert seen >= 7


def test_ci_examples_run_where_a_debian_mirror_is_known() -> None:
    """Every job that runs the harness must find Debian kernels: a debian:* image (its apt sources
    name a Debian mirror) or HARNESS_DEBIAN_MIRROR. A bare Ubuntu runner has neither."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "ci"
    jobs = 0
    for path in sorted(docs.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        # GitHub keeps jobs under `jobs:`; GitLab at the top level, with `default:` for shared keys
        default = doc.get("default", {}) if "jobs" not in doc else {}
        for name, job in (doc.get("jobs") or {k: v for k, v in doc.items() if isinstance(v, dict)}).items():
            text = yaml.safe_dump(job)
            if "harness" not in text or name == "default":
                continue
            image = job.get("container") or job.get("image") or default.get("image") or ""
            image = image.get("image", "") if isinstance(image, dict) else image
            env = {**(default.get("variables") or {}), **(job.get("variables") or {}), **(job.get("env") or {})}
            assert str(image).startswith("debian:") or "HARNESS_DEBIAN_MIRROR" in env, f"{path.name}: job {name}"
            debian = str(image).startswith("debian:")
            assert not (debian and "sudo" in text), f"{path.name}: {name} (a debian:* image has no sudo)"
            jobs += 1
    assert jobs >= 4


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--case", "nope"], "--case: unknown case 'nope'; `harness cases` lists the"),
        (["--case", "mlock_over", "--memlock", "lots"], "--memlock: 'lots' is not a size"),
        (["--case", "mlock_over", "--ram", "1K"], "--ram: give guest RAM in whole megabytes"),
        (["--case", "mlock_over", "--config", "/nope"], "--config: /nope is not a file"),
        (["--case", "mlock_over", "--tries", "0"], "--tries 0: give at least 1"),
        (["--case", "mlock_over", "--good", "HEAD", "--bad", "HEAD~1"], "--good HEAD is not an ancestor of --bad"),
    ],
)
def test_bisect_bad_input_names_the_option(
    args: list[str], line: str, make_repo: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo([("one", {"Makefile": "1\n"}), ("two", {"Makefile": "2\n"})])
    ends = [] if "--good" in args else ["--good", "HEAD~1", "--bad", "HEAD"]
    code, _, err = run(["bisect", "--repo", str(repo), *ends, *args], capsys)
    assert code == 2
    (got,) = err.splitlines()
    assert got.startswith(f"harness: error: {line}"), got
    assert not (tmp_path / "results").exists()  # nothing built, booted or written
    code, _, err = run(
        ["bisect", "--repo", str(tmp_path / "nowhere"), "--good", "a", "--bad", "b", "--case", "x"], capsys
    )
    assert code == 2 and err.splitlines() == [
        f"harness: error: --repo {tmp_path / 'nowhere'}: not a git work tree; give a kernel git checkout"
    ]


def test_cache_lists_each_folder_with_its_size_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    (cache / "debs" / "a.deb").write_bytes(os.urandom(3 << 20))
    (cache / "kernels" / "k" / "modules").mkdir(parents=True)
    (cache / "kernels" / "k" / "modules" / "x.ko").write_bytes(os.urandom(64 << 10))
    (cache / "kernels" / "k" / "loop").symlink_to(cache)  # links are not followed
    (cache / "mine").mkdir()
    code, out, err = run(["cache"], capsys)
    assert code == 0 and err == ""
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows] == ["debs", "kernels", "mine", "total"]  # largest first
    assert rows[0][1] == "3.0 MiB" and rows[0][2] == "1 entries" and rows[0][3].startswith(".debs as downloaded")
    # 64 KiB of module and the folders' (and a long link's) own blocks, however this filesystem counts them;
    # never what the link points to.
    assert rows[1][1].endswith(" KiB") and 64 <= float(rows[1][1].split()[0]) <= 96
    assert rows[2][3] == ""  # a folder the harness does not know: shown as it is
    assert rows[-1][1] == "3.1 MiB" and rows[-1][2] == str(cache)


# --- the matrix as flags, and --dry-run -------------------------------------------------------


def test_dry_run_prints_the_plan_the_flags_select(catalogue: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--kernel", "debian:bookworm", "--case", "mremap_*", "--memlock", "64K", "--user", "user"]
    code, out, err = run(["run", *flags, "--dry-run"], capsys)
    mremap = [c for c in catalogue if c.startswith("mremap_")]
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"matrix: {matrix.DEFAULT_SOURCE} with --kernel debian:bookworm --case 'mremap_*' --memlock 64K --user user",
        "boot bookworm-256M: kernel debian:bookworm, RAM 256M, transport auto",
        f"  1 run (limit/user), {len(mremap)} cases each: 64K/user",
        f"cases: {', '.join(mremap)}",
        f"1 boot, 1 run, {len(mremap)} results (dry run: no kernel was resolved, downloaded, built or booted)",
    ]


def test_dry_run_of_the_default_matrix_is_its_expansion(
    tmp_path: Path, catalogue: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["run", "--dry-run"], capsys)
    plans = matrix.expand(matrix.load_default(), catalogue)
    assert code == 0
    assert re.findall(r"^boot (\S+):", out, re.M) == [p.id for p in plans]
    runs = sum(len(p.runs) for p in plans)
    assert out.splitlines()[-1].startswith(f"{len(plans)} boots, {runs} runs, {runs * len(catalogue)} results")
    # nothing was fetched, built into the cache or written
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()
    # a shard is the slice the run would take
    code, out, _ = run(["run", "--dry-run", "--shard", "2/3"], capsys)
    assert re.findall(r"^boot (\S+):", out, re.M) == [p.id for p in plans[1::3]]


def test_dry_run_with_a_kernel_image_and_a_spec_of_many_builds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bzimage = Path(__file__).resolve().parent.parent.parent / "shared" / "kernels" / "linux-4.4.178" / "bzImage"
    if not bzimage.is_file():
        pytest.skip(f"{bzimage} is not here")
    (tmp_path / "m.yaml").write_text("kernels:\n  - debian: {suite: bookworm, builds: all}\nram: [256M, 512M]\n")
    # the mirror is unreachable: a dry run does not ask it (builds: all is expanded by the run)
    argv = ["run", "--matrix", "m.yaml", "--mirror", "http://127.0.0.1:9/debian", "--dry-run", "--case", "mlock_over"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert "boot bookworm-all-256M: kernel {debian: {suite: bookworm, builds: all}}, RAM 256M" in out
    assert "  builds: all is expanded when the run resolves it: one boot per build, not this one" in out
    code, out, err = run([*argv, "--kernel", str(bzimage), "--ram", "128M"], capsys)
    assert (code, err) == (0, "")
    assert f"boot 4.4.178+-128M: kernel {bzimage}, RAM 128M, transport auto" in out
    assert out.splitlines()[-1].startswith("1 boot, 1 run, 1 result (dry run")


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--case", "mremap_x*"], "--case mremap_x*: matches no case; did you mean 'mremap_"),
        (["--memlock", "64K:lots"], "--memlock 64K:lots: 'lots' is not a size"),
        (["--kernel", "missing/bzImage"], "--kernel missing/bzImage: {tmp}/missing/bzImage is not a file"),
        (["--kernel", "debian:bookworm@six"], "--kernel debian:bookworm@six: 'six': give an upstream line"),
        (["--kernel", "debian:"], "--kernel debian:: give a Debian suite name such as bookworm, or a list"),
        (["--user", "nobody"], "--user nobody: 'nobody' is not a guest user"),
        (["--ram", "1T", "--kernel", "debian:bookworm"], "<default matrix"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(
    tmp_path: Path, flags: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for dry in (["--dry-run"], []):  # the same check either way, before anything starts
        code, out, err = run(["run", *flags, *dry], capsys)
        assert (code, out) == (2, "")
        (said,) = err.splitlines()
        assert said.startswith("harness: error: " + line.format(tmp=tmp_path)), said
        assert not (tmp_path / "results").exists()
