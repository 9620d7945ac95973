"""What a run is doing now: kernels ready, boots running with their phase, results so far.

On a terminal `harness run` shows it live (rich redraws it a few times a second, under the log
lines); in CI, where stdout is a file, each finished boot prints one line with its counts and how
many boots are done. The board is fed from the run's threads and read from the display's, so
every change and every read takes its lock; it keeps copies, never the boot threads' records.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harness.report import terminal
from harness.results import BootResult, Outcome

# Counts are shown in this order, zeros left out; the words are the summary table's.
SHOWN = (
    (Outcome.PASS, "pass"),
    (Outcome.DEVIATION, "deviation"),
    (Outcome.NOT_APPLICABLE, "n/a"),
    (Outcome.OOM_KILLED, "oom"),
    (Outcome.PANIC, "panic"),
    (Outcome.TIMEOUT, "timeout"),
    (Outcome.INFRA_ERROR, "error"),
)


def counts_text(counts: Counter[Outcome]) -> str:
    return ", ".join(f"{counts[o]} {word}" for o, word in SHOWN if counts[o]) or "no results"


@dataclass
class _Boot:
    planned: int  # results the plan asks for
    started: float | None = None
    done: bool = False
    results: int = 0
    counts: Counter[Outcome] = field(default_factory=Counter)
    up: bool = False  # the guest said it is ready
    where: str = ""  # limit/user of the last result
    restarts: int = 0
    error: str = ""

    def phase(self, now: float, waiting: bool) -> str:
        if self.done:
            return "done" + (f": {self.error}" if self.error else "")
        if self.started is None:
            return "waiting"
        if waiting:
            return "waiting for memory (admission)"
        if not self.up:
            return f"booting {now - self.started:.0f}s"
        if not self.results:
            return "guest up, first case"
        return f"{self.results}/{self.planned} results, at {self.where}"


class Board:
    """The run's progress, for the live display and the plain "boot done" lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kernels = 0
        self._kernels_ready = 0
        self._boots: dict[str, _Boot] = {}
        self._waiting: Callable[[], set[str]] = set

    def plan(self, kernels: int, boots: dict[str, int], waiting: Callable[[], set[str]] = set) -> None:
        """The run's kernels, its boots with the results each plans, and who waits for memory now."""
        with self._lock:
            self._kernels = kernels
            self._boots = {boot_id: _Boot(planned) for boot_id, planned in boots.items()}
            self._waiting = waiting

    def kernel_ready(self) -> None:
        """One kernel fetched and its image built (or given up on: its boots will say)."""
        with self._lock:
            self._kernels_ready += 1

    def boot_started(self, boot_id: str) -> None:
        with self._lock:
            self._boots[boot_id].started = time.monotonic()

    def boot_update(self, result: BootResult) -> None:
        """What the boot's record says now; called from its thread each time it is published."""
        with self._lock:
            b = self._boots.get(result.boot_id)
            if b is None:
                return
            cases = list(result.cases)  # the boot thread appends; a copy is read once
            b.results = len(cases)
            b.counts = Counter(c.outcome for c in cases)
            b.up = b.up or "marker" in dict(result.timings)
            b.where = f"{cases[-1].memlock}/{cases[-1].user}" if cases else ""
            b.restarts = result.reboots + result.retries
            b.error = result.error

    def boot_done(self, boot_id: str) -> str:
        """Marks it done; the line CI prints for it."""
        with self._lock:
            b = self._boots[boot_id]
            b.done = True
            finished = sum(x.done for x in self._boots.values())
            tail = f"; {b.error}" if b.error else ""
            return f"boot {boot_id} done ({finished}/{len(self._boots)}): {counts_text(b.counts)}{tail}"

    def __rich__(self) -> RenderableType:
        now = time.monotonic()
        with self._lock:
            boots = dict(self._boots)
            kernels, ready = self._kernels, self._kernels_ready
            total: Counter[Outcome] = Counter()
            for b in boots.values():
                total += b.counts
            running = [(i, b) for i, b in boots.items() if b.started is not None and not b.done]
            finished = sum(b.done for b in boots.values())
            results = sum(b.results for b in boots.values())
            planned = sum(b.planned for b in boots.values())
            held = self._waiting()
            phases = [(i, b.phase(now, i in held), b.restarts) for i, b in running]
        if not boots:
            return Text("preparing the run: the probe, the kernels' indexes", style="bold")
        head = Text(
            f"kernels {ready}/{kernels} ready · boots {finished}/{len(boots)} done, {len(running)} running · "
            f"results {results}/{planned}: {counts_text(total)}",
            style="bold",
        )
        table = Table.grid(padding=(0, 2))
        for boot_id, phase, restarts in phases:
            table.add_row(terminal.text(boot_id), terminal.text(phase), f"{restarts} restarts" if restarts else "")
        return Group(head, table)


@contextlib.contextmanager
def shown(board: Board, console: Console) -> Iterator[None]:
    """The board redrawn under the log lines while the block runs, on a terminal; nothing elsewhere
    (CI reads the log lines and each boot's "done" line)."""
    if not console.is_terminal:
        yield
        return
    with Live(
        board, console=console, refresh_per_second=4, transient=True, redirect_stdout=False, redirect_stderr=False
    ):
        yield
