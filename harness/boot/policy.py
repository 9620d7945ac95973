"""What a boot does when a guest is lost or fails to start: a pure function of what happened so far."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from harness.boot import vm
from harness.errors import InfraError
from harness.kit import guest
from harness.results import Outcome

MAX_REBOOTS = 3  # guests lost in one boot plan before its remaining cases are given up
INFRA_RETRIES = 2  # boots that fail for the machinery's sake (not a kernel panic) are tried again


class GuestLost(Exception):
    """The guest stopped answering during a case: it panicked, QEMU went away, SSH dropped or hung."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


class Phase(enum.Enum):
    BOOT = "boot"  # start a guest (again) for the cases that have no result yet
    GIVEN_UP = "given up"  # too many guests lost: the rest is recorded as not run
    FAILED = "failed"  # the boot itself failed for good: the rest gets the failure's outcome


@dataclass(frozen=True)
class Attempts:
    reboots: int = 0  # guests lost to a case
    retries: int = 0  # boots failed on the machinery


@dataclass(frozen=True)
class Step:
    phase: Phase
    attempts: Attempts
    outcome: Outcome = Outcome.INFRA_ERROR  # what each unanswered case gets when the boot ends
    error: str = ""  # the boot's error
    message: str = ""  # each unanswered case's message


def next_step(attempts: Attempts, event: GuestLost | InfraError) -> Step:
    """What a boot does after losing a guest or failing to start one.

    A lost guest is booted again, up to MAX_REBOOTS times. A boot that failed on the machinery
    (QEMU, SSH) is tried again, up to INFRA_RETRIES times; a kernel that panics while booting has
    given its answer, and so has one silent for ten times what a boot needs. Verdicts are never
    retried, nor a guest that is not the one the harness built (a wrong host key, its key
    refused): that is a security event.
    """
    if isinstance(event, GuestLost):
        lost = Attempts(attempts.reboots + 1, attempts.retries)
        if lost.reboots <= MAX_REBOOTS:
            return Step(Phase.BOOT, lost)
        error = f"gave up after losing the guest {lost.reboots} times; last: {event.message}"
        return Step(Phase.GIVEN_UP, lost, Outcome.INFRA_ERROR, error, "not run: " + error)
    if isinstance(event, guest.TrustFailure):  # not a flaky machine: someone else's guest, or not ours
        error = f"security: {event}; not retried"
        return Step(Phase.FAILED, attempts, Outcome.INFRA_ERROR, error, error)
    final = isinstance(event, vm.BootFailure) and (event.panicked or event.silent)
    if not final and attempts.retries < INFRA_RETRIES:
        return Step(Phase.BOOT, Attempts(attempts.reboots, attempts.retries + 1))
    if isinstance(event, vm.BootFailure):
        outcome = Outcome.PANIC if event.panicked else Outcome.TIMEOUT if event.timed_out else Outcome.INFRA_ERROR
        error = f"{event}\n{event.excerpt}" if event.excerpt else str(event)
        return Step(Phase.FAILED, attempts, outcome, error, str(event))
    return Step(Phase.FAILED, attempts, Outcome.INFRA_ERROR, str(event), str(event))
