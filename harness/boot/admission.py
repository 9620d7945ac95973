"""How many guests may run at once: their RAM and QEMU's own must fit in the host's free memory.

`--jobs` says how many boots run in parallel; this says how many of them may have a QEMU at a
time. A guest waits (before QEMU starts, so its boot timeout does not run) until the memory it
needs is free: at any --jobs the host keeps a reserve and never swaps or meets its own OOM killer.
Ports need no such care: each guest's forwarded port is found free and, if another process takes
it first, the guest is started again with another (transports.net).
"""

from __future__ import annotations

import threading
from pathlib import Path

# What a QEMU takes beyond its guest's RAM. Measured here: a 256M TCG guest's QEMU peaks at 290 MB
# (VmHWM) running cases, before an OOM case has touched all its RAM; TCG's code cache and QEMU's own
# heap grow with the guest's work, so the margin is generous.
QEMU_OVERHEAD_MB = 192
# Kept free for the host (the harness, its threads, the page cache), of MemAvailable at the start.
RESERVE_MB, RESERVE_SHARE = 1024, 0.10


def need_mb(ram_mb: int) -> int:
    return ram_mb + QEMU_OVERHEAD_MB


class Admission:
    """A budget of MiB shared by the run's guests."""

    def __init__(self, budget_mb: int) -> None:
        self.budget_mb = max(budget_mb, 0)
        self._free = self.budget_mb
        self._cond = threading.Condition()
        self._waiting: set[str] = set()

    @classmethod
    def for_host(cls, meminfo: Path = Path("/proc/meminfo")) -> Admission:
        """MemAvailable now, less the host's reserve; no limit where /proc/meminfo cannot be read."""
        try:
            fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
            available = int(fields["MemAvailable"].split()[0]) >> 10
        except (OSError, KeyError, ValueError, IndexError):
            return cls(1 << 40)
        return cls(available - max(RESERVE_MB, int(available * RESERVE_SHARE)))

    @property
    def free_mb(self) -> int:
        with self._cond:
            return self._free

    def waiting(self) -> set[str]:
        """Who waits for memory now (the names given to `acquire`), for the progress board."""
        with self._cond:
            return set(self._waiting)

    def acquire(self, ram_mb: int, cancelled: threading.Event, who: str = "") -> int | None:
        """Wait until a guest of `ram_mb` fits; the MiB taken, or None once `cancelled` is set.

        A guest bigger than the whole budget waits until no other guest runs, then runs alone:
        the run goes on, as slowly as the host allows (run.check_memory has already refused a
        guest bigger than the host).
        """
        need = min(need_mb(ram_mb), self.budget_mb)
        with self._cond:
            try:
                while self._free < need:
                    if cancelled.is_set():
                        return None
                    self._waiting.add(who)
                    self._cond.wait(0.25)
            finally:
                self._waiting.discard(who)
            if cancelled.is_set():
                return None
            self._free -= need
        return need

    def release(self, taken: int) -> None:
        with self._cond:
            self._free += taken
            self._cond.notify_all()
