"""What a guest suite provides, and the records that flow between it and the boot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.kernels import Kernel
from harness.results import Outcome
from harness.sources.base import Context


@dataclass(frozen=True)
class Built:
    """A suite's programs for one kernel: files on the host, and where they came from."""

    programs: dict[str, Path]  # program name -> static binary
    missing: dict[str, str]  # program name -> why there is none for this kernel (not in its tree...)
    provenance: dict[str, Any]  # for the manifest: the source package or tree, exact or nearest


@dataclass(frozen=True)
class Run:
    """One program's run in a guest, as the boot saw it."""

    output: str  # stdout, the marker line removed
    exit_status: int | None  # the shell's $?: 128+N for a signal; None when the marker never came
    oom_kills: int  # "Killed process" lines the kernel logged during the run
    seconds: float
    timed_out: bool  # killed by the timeout (SIGKILL with no OOM kill logged)
    errors: str = ""  # its stderr (the last of it)


@dataclass(frozen=True)
class Judged:
    """One result of a program: the program itself, or one of the subtests it reported."""

    case: str
    outcome: Outcome
    message: str
    fingerprint: str
    observation: dict[str, Any] = field(default_factory=dict)


class Suite(Protocol):
    name: str
    programs: tuple[str, ...]  # what the suite runs, in order, where a kernel's tree has it

    def build(self, kernel: Kernel, ctx: Context, log: Callable[[str], None]) -> Built:
        """The suite's programs for `kernel`, built (or taken from the cache)."""
        ...

    def judge(self, program: str, run: Run) -> list[Judged]:
        """The program's result and its subtests' from what it printed and how it ended."""
        ...

    def applies(self, program: str, user: str, memlock: str) -> str:
        """"" when the program means something run as `user` under the limit labelled `memlock`
        (default, 64K, 0, unlimited...); else why it is not applicable."""
        ...
