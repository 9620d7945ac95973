"""What a guest suite provides, and the records that flow between it, the boot and the judging stage.

A boot runs every suite's cases the same way: the suite says what to run (`steps`: commands in the
guest, or answers known without one), the boot runs each command over SSH and hands its output
back line by line, and the suite turns it into raw observations (`Observed`), streamed as they
come. The boot knows nothing of what an observation means; the judging stage (harness.judge) asks
the suite (`judge`) what each one is worth, with the expectations, during the run or long after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.kernels import Kernel
from harness.kernels.sources.base import Context
from harness.kit.verdict import Expectations
from harness.results import KernelInfo, Outcome
from harness.sizes import Memlock
from harness.streams import Line


@dataclass(frozen=True)
class Built:
    """A suite's programs for one kernel: files on the host, and where they came from."""

    programs: dict[str, Path]  # program name -> static binary
    missing: dict[str, str]  # program name -> why there is none for this kernel (not in its tree...)
    provenance: dict[str, Any]  # for the manifest: the source package or tree, exact or nearest


@dataclass(frozen=True)
class Under:
    """What a run of a boot's plan sets before its cases: the limit and the user, and each case's
    deadline."""

    memlock: Memlock | None  # None: the limit the guest's login gets
    memlock_label: str
    user: str
    case_timeout: float


@dataclass(frozen=True)
class Observed:
    """What the guest gave for one case: its raw observation (the probe's record, a program's run),
    or, where there is none, the outcome that stands for it and why (a malformed line, a lost guest)."""

    case: str
    observation: dict[str, Any] | None
    outcome: Outcome = Outcome.INFRA_ERROR  # only without an observation
    message: str = ""
    seconds: float = 0.0  # without an observation: what the attempt took


@dataclass(frozen=True)
class Where:
    """Which boot and which run of its plan an observation comes from."""

    boot_id: str
    release: str  # the kernel's, as its boot recorded it
    memlock: str  # the run's limit as results name it: default, 64K, 0, unlimited, 64K:1M
    user: str
    kernel: KernelInfo | None = None  # what known deviations are matched against (kit.known)

    @property
    def memlock_requested(self) -> bool:
        return self.memlock != "default"  # `default`: the limit the guest's login gets


@dataclass(frozen=True)
class Judging:
    """What a suite's judge reads besides an observation: the kernel and how the run was set up, and
    the probe's cited expectations."""

    kernel_version: tuple[int, ...]
    memlock_requested: bool  # False: the limit the guest gave the login (`default`)
    expectations: Expectations


@dataclass(frozen=True)
class Judged:
    """One result of an observation: the case itself, or one of the subtests it reported."""

    case: str
    outcome: Outcome
    message: str
    fingerprint: str
    observation: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    citation: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Answer:
    """How a command in the guest ended."""

    exit_code: int
    stdout: str  # the last of it (guest.KEEP)
    stderr: str
    seconds: float


class Invocation(Protocol):
    """One command a suite runs in the guest, and the reading of what it prints."""

    @property
    def argv(self) -> Sequence[str]: ...

    @property
    def timeout(self) -> float:
        """Seconds the boot waits for it before it counts the guest as hung."""
        ...

    def line(self, line: Line) -> list[Observed]:
        """What one line of its stdout observed (often nothing yet)."""
        ...

    def end(self, answer: Answer) -> list[Observed]:
        """What the rest of its cases observed, once it has exited."""
        ...

    def unanswered(self) -> list[str]:
        """Its cases that have no observation yet, in order: a lost guest is the first one's."""
        ...


Step = Invocation | Observed  # a command to run, or an answer known without one (not applicable...)


class Suite(Protocol):
    name: str
    programs: tuple[str, ...]  # what the suite runs, in order, where a kernel's tree has it

    def build(self, kernel: Kernel, ctx: Context, log: Callable[[str], None]) -> Built:
        """The suite's programs for `kernel`, built (or taken from the cache)."""
        ...

    def steps(self, cases: Sequence[str], under: Under, built: Built | str) -> Iterator[Step]:
        """How a boot gets an observation of each of `cases` (its own, in plan order) under one run;
        `built` is `build`'s answer for the boot's kernel, or why there is none."""
        ...

    def judge(self, case: str, observation: Mapping[str, Any], judging: Judging) -> list[Judged]:
        """What an observation of `case` is worth: its result, and its subtests' if it has any."""
        ...
