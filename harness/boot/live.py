"""What the boots of one run share while it runs: the guests running (so an interrupt stops them all
at once), the host memory they may take between them (harness.boot.admission), the run's accelerator
(which KVM's failure in one boot changes for all), and the run's log."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from harness.boot import accel
from harness.boot.admission import Admission


class Closable(Protocol):
    def close(self) -> None: ...


class Cancelled(Exception):
    """The run was interrupted; finished results are kept."""


@dataclass
class Live:
    """The run's shared state (see the module's docstring)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    vms: set[Closable] = field(default_factory=set)
    cancelled: threading.Event = field(default_factory=threading.Event)
    memory: Admission = field(default_factory=Admission.for_host)
    accel: accel.Current | None = None  # the run's accelerator, when KVM may be given up; None: each boot's own
    log: Callable[[str], None] = lambda _: None  # what a boot has to tell the run's user, one line

    @contextlib.contextmanager
    def admitted(self, ram_mb: int, who: str = "") -> Iterator[None]:
        """Until the block ends, a guest of `ram_mb` (of boot `who`) holds its share of the host's
        memory; waits for it first. Raises Cancelled if the run is interrupted meanwhile."""
        taken = self.memory.acquire(ram_mb, self.cancelled, who)
        if taken is None:
            raise Cancelled()
        try:
            yield
        finally:
            self.memory.release(taken)

    @contextlib.contextmanager
    def track(self, v: Closable) -> Iterator[None]:
        with self.lock:
            self.vms.add(v)
        try:
            yield
        finally:
            with self.lock:
                self.vms.discard(v)

    def cancel(self) -> None:
        self.cancelled.set()
        with self.lock:
            for v in list(self.vms):
                v.close()
