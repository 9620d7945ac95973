"""Typed records of what a run found: one CaseResult per case x limit x user, one BootResult per boot.

These flow from the boots to the writers (rundir, junit, overview, terminal) and are what
results.json.gz serialises; the counts and the exit code of a run are functions of them.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import EXIT_FINDINGS, EXIT_INFRA, EXIT_OK


class Outcome(enum.Enum):
    """One status per distinct outcome; JUnit and exit codes are derived from it, never from strings."""

    PASS = "pass"  # observed what the expectations say
    DEVIATION = "deviation"  # observed something else: a finding about the kernel (exit 1)
    NOT_APPLICABLE = "not_applicable"  # the case cannot say anything here (JUnit skipped)
    OOM_KILLED = "oom_killed"  # the probe child was killed by the OOM killer: a finding
    PANIC = "panic"  # the guest kernel panicked during the case
    TIMEOUT = "timeout"  # the case did not finish in time
    INFRA_ERROR = "infra_error"  # the harness could not get an answer (boot, SSH, QEMU)

    @property
    def is_failure(self) -> bool:
        """A finding about the kernel (JUnit <failure>)."""
        return self in (Outcome.DEVIATION, Outcome.OOM_KILLED, Outcome.PANIC)

    @property
    def is_error(self) -> bool:
        """No answer from the kernel (JUnit <error>)."""
        return self in (Outcome.TIMEOUT, Outcome.INFRA_ERROR)

    @property
    def header(self) -> str:
        """Its column in count tables (the terminal summary, summary.md), in the enum's order."""
        return _HEADERS[self]


_HEADERS = {
    Outcome.PASS: "pass",
    Outcome.DEVIATION: "deviation",
    Outcome.NOT_APPLICABLE: "n/a",
    Outcome.OOM_KILLED: "oom",
    Outcome.PANIC: "panic",
    Outcome.TIMEOUT: "timeout",
    Outcome.INFRA_ERROR: "error",
}


@dataclass(frozen=True)
class CaseResult:
    boot_id: str
    case: str
    memlock: str  # label: default, 64K, 0, unlimited, 64K:1M
    user: str
    outcome: Outcome
    message: str  # expected vs observed, or the reason for skip/error
    observation: dict[str, Any] | None  # the probe's JSON object for the case, as received
    expected: dict[str, Any] = field(default_factory=dict)
    citation: str = ""
    duration_s: float = 0.0
    fingerprint: str = ""  # verdict.fingerprint(): equal exactly when two kernels behaved alike
    known: str = ""  # a known-deviations entry expects this finding: its reason and link (kit.known)

    @property
    def fails(self) -> bool:
        """A finding that fails the run: a deviation, OOM kill or panic nobody expected."""
        return self.outcome.is_failure and not self.known

    @property
    def name(self) -> str:
        return f"{self.case}[memlock={self.memlock},user={self.user}]"


@dataclass(frozen=True)
class KernelInfo:
    """What identifies the kernel a boot ran, for reports and reproduction."""

    label: str
    release: str  # uname -r
    package: str | None  # concrete Debian package, None for a path kernel
    version: str | None  # Debian package version
    sha256: str  # of the kernel image file booted
    source: str  # the spec as given: debian suite(s) or path


@dataclass
class BootResult:
    boot_id: str
    kernel: KernelInfo | None  # None when the kernel could not even be resolved
    ram_mb: int
    accelerator: str = ""  # kvm or tcg
    qemu_version: str = ""
    memtotal_kb: int | None = None  # MemTotal seen in the guest
    uname: str = ""  # uname -r seen in the guest
    qemu_argv: list[str] = field(default_factory=list)
    serial_log: str = ""  # path relative to the run directory
    timings: dict[str, float] = field(default_factory=dict)  # marker, ssh, probe (seconds from start)
    error: str = ""  # infrastructure error that stopped the boot, if any
    reboots: int = 0  # guests lost to a case (panic, hang, QEMU or SSH gone) and booted again
    retries: int = 0  # boots tried again after an infrastructure failure (not a kernel panic)
    cases: list[CaseResult] = field(default_factory=list)
    transport: str = ""  # how the harness reached the guest: net or serial ("" in runs before there was a choice)
    restored: str = ""  # the saved guest (harness.boot.snapshot key) its guests were loaded from; "": booted cold
    inputs: str = ""  # digest of everything its results depend on (harness.reuse): equal inputs, equal results
    reused_from: str = ""  # the run whose results of the same inputs this boot took instead of booting


@dataclass
class RunRecord:
    """A whole run as results.json.gz holds it: what report writers, history, compare and merge share."""

    run_id: str
    started: str
    finished: str | None  # None while running or when the run was killed
    interrupted: bool
    boots: list[BootResult]

    @property
    def complete(self) -> bool:
        return self.finished is not None and not self.interrupted


def outcome_counts(boots: Iterable[BootResult]) -> dict[str, int]:
    """Cases per outcome value, every outcome present (zeros included) so consumers need no defaults."""
    seen = Counter(r.outcome for boot in boots for r in boot.cases)
    return {o.value: seen[o] for o in Outcome}


def exit_code(boots: Sequence[BootResult]) -> int:
    """0 all pass or n/a; 1 findings (deviation, OOM kill, panic); 3 infrastructure problems."""
    results = [r for boot in boots for r in boot.cases]
    # Infrastructure beats findings: with a boot or case unanswered the results are incomplete, and
    # exit 1 would claim the rest of the matrix was checked and only the findings stood out.
    if any(boot.error for boot in boots) or any(r.outcome.is_error for r in results):
        return EXIT_INFRA
    if any(r.fails for r in results):  # a known deviation is expected: it does not fail the run
        return EXIT_FINDINGS
    return EXIT_OK
