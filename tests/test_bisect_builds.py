"""harness/bisect/builds.py: the search over built kernels. The search rule is tested with canned
observations (booting is replaced, and says so); one test bisects real Debian bookworm builds."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from harness import bisect, cli
from harness.bisect import Observation, builds
from harness.bisect.builds import Build, Settings
from harness.errors import InfraError, UserError


def line(n: int, first: int = 47) -> list[Build]:
    """n bookworm builds as the index lists them: 6.1.0-47 ... (versions made up but ordered)."""
    return [
        Build(f"6.1.0-{k}-amd64", f"6.1.{150 + k}-1", f"linux-image-6.1.0-{k}-amd64", {"debian": {"abi": k}})
        for k in range(first, first + n)
    ]


class Canned:
    """bisect.observe replaced: the behaviour of each build by its index, boots counted per call."""

    def __init__(self, listed: list[Build], first_bad: int, silent: set[int] = frozenset(), tries: int = 2) -> None:  # type: ignore[assignment]
        self.index = {b.name: i for i, b in enumerate(listed)}
        self.first_bad, self.silent, self.tries = first_bad, silent, tries
        self.observed: list[str] = []

    def __call__(self, target: object, point: str, options: object, log: object) -> Observation:
        self.observed.append(point)
        i = self.index[point]
        boots = tuple(f"run-{point}-{n}" for n in range(min(2, self.tries)))
        if i in self.silent:
            return Observation(point, "", "infra_error", "no answer over SSH", boots)
        behaviour = json.dumps({"accounting_restored": i >= self.first_bad})
        return Observation(point, behaviour, "pass", "", boots, behaviour)


def run_search(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, listed: list[Build], canned: Canned, resume: Path | None = None
) -> builds.Found:
    monkeypatch.setattr(bisect, "observe", canned)
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    settings = Settings("mremap_dontunmap_partial", tuple(listed), memlock="64K", user="user", tries=canned.tries)
    return builds.bisect_builds(settings, tmp_path / "results", tmp_path / "cache", lambda m: None, resume=resume)


@pytest.mark.parametrize("n", [2, 3, 8, 11, 33])
def test_the_first_bad_build_is_found_in_log2_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, n: int) -> None:
    for first_bad in range(1, n):
        canned = Canned(line(n), first_bad)
        found = run_search(monkeypatch, tmp_path / str(first_bad), line(n), canned)
        assert found.first.name == line(n)[first_bad].name and found.last_good.name == line(n)[first_bad - 1].name
        assert found.fields == ("accounting_restored",)
        steps = len(canned.observed) - 2
        assert found.steps == steps <= math.ceil(math.log2(n - 1)) if n > 2 else steps == 0
        assert found.boots == 2 * len(canned.observed)  # two guests agree at each build
        record = json.loads((found.directory / bisect.RESULT_FILE).read_text())
        assert record["first_build"]["name"] == found.first.name and record["kind"] == "builds"


def test_a_build_that_gives_no_answer_is_skipped_for_its_neighbour(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    listed = line(9)
    canned = Canned(listed, first_bad=6, silent=(4,))
    found = run_search(monkeypatch, tmp_path, listed, canned)
    assert found.first.name == listed[6].name
    assert listed[4].name in canned.observed  # tried, skipped: its neighbours decided
    steps = [json.loads(x) for x in (found.directory / bisect.STEPS_FILE).read_text().splitlines()]
    assert {s["point"]: s["verdict"] for s in steps}[listed[4].name] == "skip"


def test_skipped_builds_next_to_the_change_leave_a_range(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    listed = line(6)
    with pytest.raises(
        InfraError, match=r"one of 6\.1\.0-49-amd64, 6\.1\.0-50-amd64, 6\.1\.0-51-amd64.*could not all be booted"
    ):
        run_search(monkeypatch, tmp_path, listed, Canned(listed, first_bad=4, silent=(2, 3)))


def test_an_end_without_an_answer_or_ends_alike_stop_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    listed = line(5)
    with pytest.raises(InfraError, match="the bad end 6.1.0-51-amd64 gave no answer"):
        run_search(monkeypatch, tmp_path / "a", listed, Canned(listed, first_bad=2, silent=(4,)))
    with pytest.raises(UserError, match="behave alike"):
        run_search(monkeypatch, tmp_path / "b", listed, Canned(listed, first_bad=9))


def test_a_resumed_bisect_boots_only_what_it_had_not_seen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bisect stopped after some steps (Ctrl-C) is given its directory again: the builds in its
    steps.jsonl are not booted again, and the answer is the same."""
    listed = line(17)
    whole = Canned(listed, first_bad=11)
    first = run_search(monkeypatch, tmp_path / "whole", listed, whole)
    directory = first.directory
    recorded = (directory / bisect.STEPS_FILE).read_text().splitlines()
    (directory / bisect.STEPS_FILE).write_text("\n".join(recorded[:4]) + "\n")  # the ends and two steps
    again = Canned(listed, first_bad=11)
    found = run_search(monkeypatch, tmp_path, listed, again, resume=directory)
    assert found.first.name == first.first.name
    assert again.observed == whole.observed[4:]
    assert builds.read_state(directory).builds == tuple(listed)
    assert builds.kind(directory) == "builds"


def test_builds_are_named_by_abi_version_or_package_and_kept_within_a_line() -> None:
    listed = line(4) + [Build("6.12.100+deb12-amd64", "6.12.100-1~deb12u1", "linux-image-6.12.100+deb12-amd64")]
    assert builds.pick(listed, "6.1.0-48-amd64", "--good") == 1
    assert builds.pick(listed, "6.1.0-48", "--good") == 1
    assert builds.pick(listed, "6.1.199-1", "--good") == 2
    assert builds.pick(listed, "linux-image-6.1.0-50-amd64", "--bad") == 3
    with pytest.raises(UserError, match=r"--bad 6\.1\.0-99: no such build.*the newest: .*6\.12\.100\+deb12-amd64"):
        builds.pick(listed, "6.1.0-99", "--bad")
    assert [b.name for b in builds.within_line(listed, 0, 2)] == [b.name for b in listed[:3]]
    with pytest.raises(UserError, match="not older than"):
        builds.within_line(listed, 2, 0)
    with pytest.raises(
        UserError,
        match=r"two upstream lines.*harness bisect --repo LINUX --good v6\.1\.197 --bad v6\.12\.100",
    ):
        builds.within_line(listed, 0, 4)


def harness(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(args, Console(file=out, width=300))
    return code, out.getvalue()


def test_bad_bisect_options_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"x")
    for args, message in (
        (["--kernels", str(kernel)], "--case: missing"),
        (["--kernels", str(kernel), "--case", "mlock_over"], "--kernels: give at least two"),
        (["--kernels", str(kernel), str(tmp_path / "nope"), "--case", "mlock_over"], "no such file"),
        (["--kernels", str(kernel), str(kernel), "--case", "mlock_over"], "named twice"),
        (["--resume", str(tmp_path)], "no state.json"),
        (["--debian", "bookworm", "--case", "mlock_over", "--good", "6.1.0-50"], "--bad: missing"),
    ):
        code, _ = harness(["bisect", *args, "--results", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


@pytest.mark.integration
def test_a_bisect_over_real_bookworm_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's bookworm builds 6.1.0-50 ... 6.1.0-57 (the main archive and the security archive), on
    both sides of a known change: mremap_dontunmap_partial stops leaking VmLck in 6.1.0-55 (6.1.192,
    known-deviations.yaml). The search boots the two ends and at most ceil(log2(7)) builds between."""
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    args = ["--debian", "bookworm,bookworm-security", "--good", "6.1.0-50-amd64", "--bad", "6.1.0-57-amd64"]
    args += ["--case", "mremap_dontunmap_partial", "--memlock", "64K", "--user", "user", "--tries", "1"]
    code, out = harness(["bisect", *args, "--results", str(tmp_path)])
    assert code == 0, out
    assert "first build that changed mremap_dontunmap_partial: 6.1.0-55-amd64 (6.1.192-1)" in out
    (record,) = tmp_path.glob("bisect-*/bisect.json")
    found = json.loads(record.read_text())
    assert found["last_good_build"]["name"] == "6.1.0-54-amd64"
    assert "accounting_restored" in found["changed_fields"]
    assert found["steps"] <= math.ceil(math.log2(8 - 1)) and found["boots"] == found["steps"] + 2
    # The changelog of 6.1.0-55 (kept in the kernel cache when it was unpacked) names the fix first.
    fix = "mm/mremap: fix locked_vm leak by splitting VMA for MREMAP_DONTUNMAP"
    assert found["candidates"]["ranked"][0]["title"] == fix and found["candidates"]["entries"] > 1000
    assert "candidates for mremap_dontunmap_partial, 6.1.190-1 → 6.1.192-1: " in out and f"  {fix} (upstream" in out


OLD_KERNELS = Path(__file__).resolve().parent.parent.parent / "shared" / "kernels"


@pytest.mark.integration
def test_a_bisect_over_path_kernels_in_the_order_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three real kernels built here (../shared/kernels: 2.6.32, 3.16, 4.4), oldest first: mlock2()
    arrived in 4.4, so mlock2_under answers ENOSYS on the first two and is refused or ok on the
    third. No version is read from a path kernel: the order is the user's."""
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    paths = [OLD_KERNELS / name / "bzImage" for name in ("linux-2.6.32", "linux-3.16.0", "linux-4.4.178")]
    args = ["--kernels", *map(str, paths), "--case", "mlock2_under", "--tries", "1"]
    code, out = harness(["bisect", *args, "--results", str(tmp_path)])
    assert code == 0, out
    assert f"first build that changed mlock2_under: {paths[2]}" in out
    (record,) = tmp_path.glob("bisect-*/bisect.json")
    found = json.loads(record.read_text())
    assert found["last_good_build"]["name"] == str(paths[1]) and found["boots"] == 3
    assert found["candidates"] is None  # a path kernel has no changelog
