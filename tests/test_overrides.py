"""harness/plan/overrides.py: `harness run --kernel/--case/--memlock/--user/--ram` as the matrix fields
they replace, checked by the matrix's own parsing; and a real run selecting what its --dry-run printed."""

from __future__ import annotations

import io
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from rich.console import Console

from harness import cli
from harness.errors import UserError
from harness.plan import matrix, overrides
from harness.plan.overrides import Flags
from harness.report import resultsfile, rundir

BZIMAGE = Path(__file__).resolve().parent.parent.parent / "shared" / "kernels" / "linux-4.4.178" / "bzImage"
FILE_MATRIX = """kernels:
  - debian: trixie
ram: [512M]
memlock: [default, 0]
users: [root]
timeouts: {boot: 90, case: 30}
transport: [net, serial]
"""


def apply(flags: Flags, catalogue: Sequence[str], cwd: Path, text: str | None = None) -> overrides.Planned:
    source = matrix.DEFAULT_SOURCE if text is None else "my.yaml"
    return overrides.apply(matrix.default_text() if text is None else text, source, flags, catalogue, cwd)


def same_matrix(a: matrix.Matrix, b: matrix.Matrix) -> None:
    """Equal in everything a run uses (the source names where each came from)."""
    assert (a.kernels, a.ram_mb, a.memlocks, a.users, a.cases) == (b.kernels, b.ram_mb, b.memlocks, b.users, b.cases)
    assert (a.timeouts, a.transports, a.userland, a.suites) == (b.timeouts, b.transports, b.userland, b.suites)


def test_without_flags_the_matrix_and_its_text_are_as_given(tmp_path: Path) -> None:
    planned = apply(Flags(), [], tmp_path)
    assert planned.matrix == matrix.load_default()
    assert planned.text == matrix.default_text()
    assert planned.kernels == (
        "{debian: bullseye}",
        "{debian: bookworm}",
        "{debian: trixie}",
        "{debian: {suite: [sid, trixie-backports]}}",
    )


def test_each_flag_is_the_matrix_entry_the_yaml_form_gives(tmp_path: Path, catalogue: list[str]) -> None:
    flags = Flags(
        kernels=(
            "debian:bookworm",
            "debian:trixie-backports@6.19",
            "debian:bookworm@6.1.0-50-amd64",
            "debian:sid,trixie",
        ),
        cases=("mlock_over",),
        memlock=("64K", "0", "unlimited", "default", "64K:1M"),
        users=("user",),
        ram=("256M", "1G"),
    )
    planned = apply(flags, catalogue, tmp_path)
    yaml_form = matrix.parse(
        """kernels:
  - debian: bookworm
  - debian: {suite: trixie-backports, version: "6.19"}
  - debian: {suite: bookworm, abi: 6.1.0-50-amd64}
  - debian: {suite: [sid, trixie]}
cases: [mlock_over]
memlock: [64K, 0, unlimited, default, {soft: 64K, hard: 1M}]
users: [user]
ram: [256M, 1G]
timeouts: {boot: 180, case: 60}
""",
        "yaml-form.yaml",
    )
    same_matrix(planned.matrix, yaml_form)
    assert planned.kernels == flags.kernels
    assert planned.matrix.source == (
        f"{matrix.DEFAULT_SOURCE} with --kernel debian:bookworm --kernel debian:trixie-backports@6.19 "
        "--kernel debian:bookworm@6.1.0-50-amd64 --kernel debian:sid,trixie --case mlock_over --memlock 64K "
        "--memlock 0 --memlock unlimited --memlock default --memlock 64K:1M --user user --ram 256M --ram 1G"
    )


@pytest.mark.skipif(not BZIMAGE.is_file(), reason=f"{BZIMAGE} is not here")
def test_the_recorded_text_is_the_matrix_a_replay_parses(
    tmp_path: Path,
    catalogue: list[str],
    make_repo: Callable[[Sequence[tuple[str, dict[str, str]]]], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo([("first", {"Makefile": "all:\n"})])
    (tmp_path / "arch").mkdir()
    shutil.copy(BZIMAGE, tmp_path / "arch" / "bzImage")
    flags = Flags(kernels=("./arch/bzImage", "git:linux@main", "debian:bookworm@6.1"), cases=("mremap_*",))
    planned = apply(flags, catalogue, tmp_path, FILE_MATRIX)
    elsewhere = tmp_path / "elsewhere"  # a replay runs from anywhere: paths are absolute in the text
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = matrix.parse(planned.text, "manifest.json: matrix_text")
    same_matrix(again, planned.matrix)
    assert [p.id for p in matrix.expand(again, catalogue)] == [p.id for p in matrix.expand(planned.matrix, catalogue)]
    path_kernel, git_kernel, _ = planned.matrix.kernels
    assert path_kernel.label == "4.4.178+" and path_kernel.origin == "--kernel ./arch/bzImage"
    assert git_kernel.origin == "--kernel git:linux@main" and str(repo) in planned.text
    # what the flags did not give stays the file's
    assert planned.matrix.timeouts == matrix.Timeouts(90, 30) and planned.matrix.transports == ("net", "serial")
    assert planned.matrix.ram_mb == (512,) and planned.matrix.users == ("root",)


def test_case_globs_select_in_catalogue_order_each_once(catalogue: list[str]) -> None:
    mremap = [c for c in catalogue if c.startswith("mremap_")]
    assert overrides.select_cases(["mremap_*"], catalogue) == mremap
    assert overrides.select_cases(["mremap_move", "mremap_*", "mlock_over"], catalogue) == [
        "mremap_move",
        *(c for c in mremap if c != "mremap_move"),
        "mlock_over",
    ]
    suite = overrides.select_cases(["kselftest-mm:*"], catalogue)
    assert suite and all(c.startswith("kselftest-mm:") for c in suite)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (Flags(cases=("mlockk_over",)), "--case mlockk_over: matches no case; did you mean 'mlock_over'"),
        (Flags(cases=("zzz*",)), "--case zzz*: matches no case; `harness cases` lists the probe's"),
        (Flags(memlock=("64Q",)), "--memlock 64Q: '64Q' is not a size"),
        (Flags(memlock=("1M:64K",)), "--memlock 1M:64K: soft limit is above the hard limit; make soft <= hard"),
        (Flags(users=("admin",)), "--user admin: 'admin' is not a guest user; the image has: root, user"),
        (Flags(ram=("256",)), "--ram 256: give guest RAM in whole megabytes with a unit, such as 256M"),
        (Flags(ram=("256M", "256M")), "--ram: lists the same value twice; remove the duplicate"),
        (Flags(kernels=("./nope/bzImage",)), "--kernel ./nope/bzImage: {cwd}/nope/bzImage is not a file"),
        (Flags(kernels=("debian:Bookworm",)), "--kernel debian:Bookworm: give a Debian suite name such as bookworm"),
        (Flags(kernels=("debian:bookworm@x",)), "--kernel debian:bookworm@x: 'x': give an upstream line such as"),
        (Flags(kernels=("debain:bookworm",)), "--kernel debain:bookworm: no such file, and debain: is no kind"),
        (Flags(kernels=("git:linux",)), "--kernel git:linux: give git:REPO@REV, such as git:~/src/linux@v6.12"),
        (Flags(kernels=("git:nowhere@v6.1",)), "--kernel git:nowhere@v6.1: {cwd}/nowhere is not a git work tree"),
    ],
)
def test_bad_flags_name_the_flag_and_value(tmp_path: Path, catalogue: list[str], flags: Flags, message: str) -> None:
    with pytest.raises(UserError) as e:
        apply(flags, catalogue, tmp_path)
    assert str(e.value).startswith(message.format(cwd=tmp_path))
    assert "\n" not in str(e.value)


def test_a_bad_field_the_flags_do_not_replace_still_names_the_file_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^my\.yaml:3: users\.0: 'admin' is not a guest user"):
        apply(Flags(kernels=("debian:bookworm",)), [], tmp_path, "kernels: [{debian: trixie}]\n\nusers: [admin]\n")
    # and a field the flags replace is not read at all
    planned = apply(Flags(users=("user",)), [], tmp_path, "kernels: [{debian: trixie}]\nusers: [admin]\n")
    assert planned.matrix.users == ("user",)


# --- a real run selects what its dry run printed -------------------------------------------------------------


def harness(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    console = Console(file=io.StringIO(), width=160)
    code = cli.main(argv, console=console)
    return code, console.file.getvalue(), capsys.readouterr().err  # type: ignore[attr-defined]


def dry_plan(out: str) -> list[tuple[str, int, list[str], int]]:
    """(boot id, RAM, runs as limit/user, cases per run) of each boot a dry run printed."""
    boots = []
    for m in re.finditer(
        r"^boot (\S+): kernel .*, RAM (\d+)M, .*\n  \d+ runs? \(limit/user\), (\d+) cases? each: (.*)$", out, re.M
    ):
        boots.append((m.group(1), int(m.group(2)), m.group(4).split(", "), int(m.group(3))))
    return boots


@pytest.mark.integration
def test_a_real_run_runs_what_its_dry_run_printed(
    tmp_path: Path, catalogue: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    monkeypatch.chdir(tmp_path)
    flags = ["--kernel", "debian:bookworm", "--case", "mremap_*", "--memlock", "64K", "--user", "user"]
    code, out, err = harness(["run", *flags, "--dry-run"], capsys)
    assert code == 0 and err == ""
    mremap = [c for c in catalogue if c.startswith("mremap_")]
    assert dry_plan(out) == [("bookworm-256M", 256, ["64K/user"], len(mremap))]
    assert f"cases: {', '.join(mremap)}\n" in out
    assert out.endswith(
        f"1 boot, 1 run, {len(mremap)} results (dry run: no kernel was resolved, downloaded, built or booted)\n"
    )
    assert not (tmp_path / "results").exists()

    started = time.monotonic()
    code, out, err = harness(["run", *flags, "--results", str(tmp_path / "results"), "--jobs", "1"], capsys)
    assert code in (0, 1), err
    assert time.monotonic() - started < 300
    run_dir = rundir.locate("latest", tmp_path / "results")
    recorded = rundir.read_manifest(run_dir)
    assert recorded is not None
    assert [(p.id, p.kernel, p.ram_mb) for p in recorded.plan] == [("bookworm-256M", "bookworm", 256)]
    assert [(b.id, b.ram_mb, [f"{m}/{u}" for m, u in b.runs]) for b in recorded.boots] == [
        ("bookworm-256M", 256, ["64K/user"])
    ]
    (boot,) = resultsfile.read_results(run_dir).boots
    assert [(c.case, c.memlock, c.user) for c in boot.cases] == [(c, "64K", "user") for c in mremap]
    # the recorded matrix is the one the flags made: a replay runs it again
    assert matrix.parse(recorded.matrix_text, "matrix_text").cases == tuple(mremap)
