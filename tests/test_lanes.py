"""A boot's runs spread over several guests (harness/boot/lanes.py) against one guest, on a real
kernel: the same results in the same order. Raw observations carry what varies between any two
runs, one guest or two (pids, MemAvailable, durations); the verdict and the behaviour fingerprint
of every result are what must not move. The order guests take runs in, and the costs it comes
from (kept beside a saved guest), are pure and tested on their own."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import log_text
from rich.console import Console

from harness import cli
from harness.boot import lanes, snapshot
from harness.cache import cache_dir
from harness.plan.matrix import RunPlan
from harness.report import resultsfile, rundir
from harness.results import BootResult, CaseResult, Outcome
from harness.sizes import Memlock

RUNS = (
    RunPlan(None, "root", ("oom_a", "map_b")),
    RunPlan(None, "user", ("oom_a", "map_b")),
    RunPlan(Memlock(0, 0), "root", ("oom_a", "map_b")),
)


def test_guests_side_by_side_take_the_longest_runs_first() -> None:
    costs = {"oom_a default root": 2.0, "map_b default root": 0.1, "oom_a default user": 0.1}
    costs |= {"map_b default user": 0.1, "oom_a 0 root": 1.0, "map_b 0 root": 0.1}
    order = lanes.longest_first(RUNS, costs)
    assert order == [0, 2, 1]
    share = lanes.Share(RUNS, order)
    assert share.take(0) and share.take(1)
    assert share.mine(0) == [RUNS[0]] and share.mine(1) == [RUNS[2]] and share.untaken() == [RUNS[1]]


def test_with_nothing_known_runs_are_taken_in_plan_order_and_an_unknown_case_costs_the_usual() -> None:
    assert lanes.longest_first(RUNS, {}) == [0, 1, 2]
    share = lanes.Share(RUNS)
    assert share.take(0) and share.mine(0) == [RUNS[0]]
    # The second run's cases are not known: each is priced at the mean of the known ones (0.4 s).
    known = {"oom_a default root": 0.1, "map_b default root": 0.1, "oom_a 0 root": 1.0}
    assert lanes.longest_first(RUNS, known) == [2, 1, 0]


def test_what_cases_cost_is_kept_beside_the_saved_guest_and_read_back_bounded(tmp_path: Path) -> None:
    store = snapshot.Store(tmp_path)
    folder = tmp_path / "k"
    boot = BootResult("b", None, 256)
    boot.cases = [
        CaseResult("b", "oom_a", "default", "root", Outcome.PASS, "", None, duration_s=1.5),
        CaseResult("b", "map_b", "default", "root", Outcome.NOT_APPLICABLE, "", None),  # not measured
    ]
    store.remember("k", lanes.spent(boot))
    assert not folder.exists()  # no saved guest, nothing to keep it beside
    folder.mkdir()
    (folder / snapshot.STATE).write_bytes(b"state")
    store.remember("k", lanes.spent(boot))
    assert store.costs("k") == {"oom_a default root": 1.5}
    store.remember("k", {"map_b 0 user": 0.25})  # a later boot adds to what is known
    assert store.costs("k") == {"oom_a default root": 1.5, "map_b 0 user": 0.25}
    assert store.costs("other") == {}
    costs = folder / snapshot.COSTS
    for junk in (b"[1, 2]", b"{not json", b"[" * 100_000, b'{"a": "1", "b": true, "c": -1, "d": 2}'):
        costs.write_bytes(junk)
        assert store.costs("k") == ({"d": 2.0} if junk.startswith(b'{"a"') else {})
    costs.write_bytes(b'{"a": 1, "pad": "' + b"x" * snapshot.COSTS_MAX + b'"}')
    assert store.costs("k") == {}


def run_one_kernel(results: Path, jobs: int) -> list[tuple[str, ...]]:
    args = ["run", "--kernel", "debian:bookworm", "--jobs", str(jobs), "--results", str(results)]
    code = cli.main(args, Console(file=io.StringIO(), width=200))
    assert code in (0, 1)
    (boot,) = resultsfile.read_results(rundir.locate("latest", results)).boots
    assert boot.error == "" and boot.reboots == 0
    return [(c.case, c.memlock, c.user, c.outcome.value, c.fingerprint, c.known or "") for c in boot.cases]


@pytest.mark.integration
def test_one_kernel_in_two_guests_answers_as_in_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    one = run_one_kernel(tmp_path / "one", 1)
    two = run_one_kernel(tmp_path / "two", 2)
    assert len(one) == 488 and two == one
    # Both guests were loaded from one saved guest, and what each case cost is kept beside it, so
    # that guests side by side take the longest runs first.
    (boot,) = resultsfile.read_results(rundir.locate("latest", tmp_path / "two")).boots
    assert boot.restored
    assert len(snapshot.Store(cache_dir() / "guests").costs(boot.restored)) > 400
    serial = log_text(next((tmp_path / "two").glob("*/serial/*.log.gz")))
    assert "[harness: the serial log of guest 2 of this boot, which ran beside it]" in serial
