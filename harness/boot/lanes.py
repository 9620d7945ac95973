"""A boot's guests side by side: its (limit, user) runs spread over several guests when cores are free.

A kernel developer's loop is one kernel, and so is a run of one `--kernel`: its eight runs one
after another on one core leave the others idle. The runs of a boot are shared (`Share`): each
guest takes the next run no guest has taken when it is done with its own, the longest first by
what its cases cost the last time this saved guest ran them, so the guests finish together
whatever each run costs (the OOM cases are not spread evenly). Each guest is a lane: its
own QEMU, SSH session, serial log (appended to the boot's at the end) and reboot policy; the
results go into the one boot and are put back in plan order when every lane is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.boot import vm
from harness.boot.live import Cancelled
from harness.boot.policy import Attempts, Step
from harness.plan.matrix import RunPlan
from harness.results import BootResult


class Share:
    """The runs of one boot shared by its guests. A guest takes the next run no guest has taken when
    it is done with its own, so several guests finish together whatever each run costs; in `order`
    (indices of `runs`), plan order by default, as a boot with one guest always takes them."""

    def __init__(self, runs: Sequence[RunPlan], order: Sequence[int] | None = None) -> None:
        self.runs = tuple(runs)
        self.order = tuple(range(len(self.runs)) if order is None else order)
        self._owner: dict[int, int] = {}  # run index -> the guest (lane) that took it
        self._lock = threading.Lock()
        self.up = threading.Event()  # the first guest is ready (a saved state exists to load), or gave up
        self.failed = False  # the first guest gave up before any guest was ready

    def mine(self, lane: int) -> list[RunPlan]:
        with self._lock:
            return [r for i, r in enumerate(self.runs) if self._owner.get(i) == lane]

    def untaken(self) -> list[RunPlan]:
        with self._lock:
            return [r for i, r in enumerate(self.runs) if i not in self._owner]

    def take(self, lane: int) -> bool:
        with self._lock:
            free = next((i for i in self.order if i not in self._owner), None)
            if free is not None:
                self._owner[free] = lane
            return free is not None

    def next(self, lane: int, result: BootResult, done: set[int]) -> tuple[RunPlan, list[str]] | None:
        """The lane's next run with cases left (one this guest has not run yet), taking one if it
        has none; None when there is nothing left for it."""
        while True:
            for run_plan, cases in pending_runs(result, self.mine(lane)):
                if id(run_plan) not in done:
                    return run_plan, cases
            if not self.take(lane):
                return None

    def left(self, lane: int, result: BootResult) -> bool:
        """Whether the lane has cases left: its own, or a run no guest has taken."""
        return bool(pending_runs(result, self.mine(lane)) or self.untaken())


def cost_key(case: str, memlock: str, user: str) -> str:
    return f"{case} {memlock} {user}"


def spent(result: BootResult) -> dict[str, float]:
    """What each case of the boot took in its guest (the probe's own measure), by `cost_key`."""
    return {cost_key(c.case, c.memlock, c.user): c.duration_s for c in result.cases if c.duration_s > 0}


def longest_first(runs: Sequence[RunPlan], costs: Mapping[str, float]) -> list[int]:
    """The runs' indices, the longest first by what their cases cost the last time (`spent`), for
    guests side by side: taken in plan order, a long run taken last keeps one guest busy while the
    others idle (bullseye's eight runs take 0.3 to 2 s). A case not known costs what a known one
    does on average; with nothing known, plan order."""
    if not costs:
        return list(range(len(runs)))
    usual = sum(costs.values()) / len(costs)
    guess = [sum(costs.get(cost_key(c, r.memlock_label, r.user), usual) for c in r.cases) for r in runs]
    return sorted(range(len(runs)), key=lambda i: -guess[i])


def pending_runs(result: BootResult, runs: Sequence[RunPlan]) -> list[tuple[RunPlan, list[str]]]:
    """Each run with the cases that have no result yet, in plan order."""
    have = {(c.case, c.memlock, c.user) for c in result.cases}
    out = []
    for r in runs:
        cases = [c for c in r.cases if (c, r.memlock_label, r.user) not in have]
        if cases:
            out.append((r, cases))
    return out


@dataclass
class Lane:
    """One guest of a boot (lane 0 is the boot's own) and how it ended, when it gave up."""

    n: int
    serial: Path
    attempts: Attempts = field(default_factory=Attempts)
    ended: Step | None = None


def log_of(serial_log: Path, n: int) -> Path:
    return serial_log.with_name(f"{serial_log.stem}.guest{n}.log")


def side_by_side(
    guests: Sequence[Lane],
    share: Share,
    run_lane: Callable[[Lane], None],
    first_saves: bool,
    cancelled: threading.Event,
    name: str,
) -> None:
    """Each lane in a thread of its own; returns when all have ended, raising the first failure.

    When the first guest boots to save the others a state (`first_saves`), they wait for it: they
    load that state rather than boot cold beside it, and start nothing if it could not boot at
    all (the kernel has given its answer; its runs get that answer)."""
    failures: list[BaseException] = []

    def one(lane: Lane) -> None:
        try:
            if lane.n and first_saves:
                while not share.up.wait(0.2):
                    if cancelled.is_set():
                        raise Cancelled()
                if share.failed:
                    return
            run_lane(lane)
        except BaseException as e:  # noqa: BLE001 - raised again by the boot's thread
            failures.append(e)
        finally:
            if lane.n == 0 and not share.up.is_set():
                share.failed = True
                share.up.set()

    threads = [threading.Thread(target=one, args=(lane,), name=f"{name}-guest{lane.n}") for lane in guests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise next((e for e in failures if not isinstance(e, Cancelled)), failures[0])


def merged(result: BootResult, share: Share, guests: Sequence[Lane], serial_log: Path) -> None:
    """The boot as if one guest had run it: results in plan order, reboots and retries summed, every
    guest's serial log in the boot's."""
    order = {(c, r.memlock_label, r.user): n for n, (r, c) in enumerate((r, c) for r in share.runs for c in r.cases)}
    result.cases = sorted(result.cases, key=lambda c: order.get((c.case, c.memlock, c.user), len(order)))
    result.reboots = sum(lane.attempts.reboots for lane in guests)
    result.retries = sum(lane.attempts.retries for lane in guests)
    for lane in guests[1:]:
        try:
            data = lane.serial.read_bytes()[-vm.SERIAL_LOG_MAX :]
        except OSError:
            continue
        with serial_log.open("ab") as f:
            f.write(f"\n[harness: the serial log of guest {lane.n + 1} of this boot, which ran beside it]\n".encode())
            f.write(data)
        lane.serial.unlink()
