"""Suites of programs (the kernel's own selftests, a user's KTAP programs): each program is one
command in the guest, run with the probe's `exec` (the run's limit, then its user) in a process of
its own, killed at the suite's timeout, so one program's crash, hang or OOM kill is its own result.

Its observation is how it ended and what it printed; the suite reads that (`read`) into the
program's result and its subtests'. A stored observation holds the same fields, so a finished run
is judged again from its results.json.gz (`observation_run`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from harness.kit import probe
from harness.kit.suites.base import Answer, Built, Judged, Observed, Step, Under
from harness.results import Outcome
from harness.streams import Line

GUEST_DIR = "opt/suites"  # a suite's programs in the image: /opt/suites/SUITE/PROGRAM
TIMEOUT_CASES = 4  # a program may take as long as this many probe cases (timeouts.case each)
STDERR_KEPT = 4000  # of a program's stderr, the last this many characters are observed
KEPT = 16 << 10  # of its stdout and stderr, the last this many characters go in its stored result

# Around the program: OOM kills the kernel logs during it, and how it ended ($?, 128+N for a
# signal), on the last line; `cd /tmp`: a program that writes files writes them on tmpfs.
_SHELL = (
    'b=$(dmesg | grep -c "Killed process"); cd /tmp && "$@"; s=$?; '
    'a=$(dmesg | grep -c "Killed process"); echo; echo "harness-exit $s $((a - b))"'
)
_MARKER = re.compile(r"harness-exit (\d+) (-?\d+)")


@dataclass(frozen=True)
class Run:
    """One program's run in a guest, as the boot saw it."""

    output: str  # stdout, the marker line removed
    exit_status: int | None  # the shell's $?: 128+N for a signal; None when the marker never came
    oom_kills: int  # "Killed process" lines the kernel logged during the run
    seconds: float
    timed_out: bool  # killed by the timeout (SIGKILL with no OOM kill logged)
    errors: str = ""  # its stderr (the last of it)


class Programs(Protocol):
    """What a suite of programs says of itself, beyond what every suite does."""

    name: str

    def applies(self, program: str, user: str, memlock: str) -> str:
        """ "" when the program means something run as `user` under the limit labelled `memlock`
        (default, 64K, 0, unlimited...); else why it is not applicable."""
        ...

    def read(self, program: str, run: Run) -> list[Judged]:
        """The program's result and its subtests' from what it printed and how it ended."""
        ...


def program_of(case: str) -> str:
    """SUITE:PROGRAM[/SUBTEST] -> PROGRAM."""
    return case.partition(":")[2].split("/", 1)[0]


def steps(suite: Programs, cases: Sequence[str], under: Under, built: Built | str) -> Iterator[Step]:
    """A command per program that can run here; an answer for each that cannot, and why."""
    for case in cases:
        program = program_of(case)
        if isinstance(built, str):
            yield Observed(case, None, Outcome.INFRA_ERROR, built)
        elif program not in built.programs:
            yield Observed(case, None, Outcome.NOT_APPLICABLE, built.missing.get(program, "not built"))
        elif why := suite.applies(program, under.user, under.memlock_label):
            yield Observed(case, None, Outcome.NOT_APPLICABLE, why)
        else:
            yield ProgramRun(case, f"/{GUEST_DIR}/{suite.name}/{program}", under, built.provenance)


class ProgramRun:
    """One program under the run's limit and user, killed at the suite's timeout."""

    def __init__(self, case: str, path: str, under: Under, source: Mapping[str, Any]) -> None:
        self.limit = under.case_timeout * TIMEOUT_CASES
        self.argv = [
            "sh",
            "-c",
            _SHELL,
            "sh",
            "timeout",
            "-s",
            "KILL",
            f"{self.limit:g}",
            probe.IN_GUEST,
            "exec",
            "--memlock",
            probe.memlock_arg(under.memlock),
            "--user",
            under.user,
            "--",
            path,
        ]
        self.timeout = self.limit + 30
        self.case = case
        self.source = dict(source)
        self.done = False

    def line(self, line: Line) -> list[Observed]:
        return []  # it is read whole, once it has ended

    def end(self, answer: Answer) -> list[Observed]:
        self.done = True
        lines = answer.stdout.rstrip("\n").split("\n")
        marker = _MARKER.fullmatch(lines[-1].strip()) if lines else None
        status, kills = (int(marker.group(1)), int(marker.group(2))) if marker else (None, 0)
        timed_out = status == 128 + 9 and kills <= 0 and answer.seconds >= self.limit - 1
        observation = {
            "exit_status": status,
            "oom_kills": max(kills, 0),
            "seconds": answer.seconds,
            "timed_out": timed_out,
            "output": "\n".join(lines[:-1] if marker else lines),
            "stderr": answer.stderr[-STDERR_KEPT:],
            "source": self.source,
        }
        return [Observed(self.case, observation)]

    def unanswered(self) -> list[str]:
        return [] if self.done else [self.case]


def judge(suite: Programs, case: str, observation: Mapping[str, Any]) -> list[Judged]:
    """The program's result and its subtests', read by the suite; [] when the observation is not a
    program's run. The result's observation is what the suite read, the run's fields (its output
    and stderr cut to their last KEPT characters, `cut` saying so) and where it came from."""
    run = observation_run(observation)
    if run is None:
        return []
    own, *subtests = suite.read(program_of(case), run)
    cut = len(run.output) > KEPT or len(run.errors) > KEPT
    mine = {
        **own.observation,
        "exit_status": run.exit_status,
        "oom_kills": run.oom_kills,
        "seconds": round(run.seconds, 3),
        "timed_out": run.timed_out,
        "output": run.output[-KEPT:],
        "stderr": run.errors[-KEPT:],
        **({"cut": True} if cut else {}),
        "source": observation.get("source"),
    }
    return [dataclasses.replace(own, observation=mine, seconds=run.seconds), *subtests]


def observation_run(observation: Mapping[str, Any]) -> Run | None:
    """The run an observation (as observed, or as a results.json.gz stores it) records; None when a
    field is missing or of another type (an older run's, a file edited by hand), or when its output
    was cut for storing (judged again, it might read otherwise)."""
    o = observation
    if o.get("cut"):
        return None
    status, kills, seconds = o.get("exit_status"), o.get("oom_kills"), o.get("seconds")
    output, errors, timed_out = o.get("output"), o.get("stderr"), o.get("timed_out")
    if not (
        isinstance(output, str)
        and isinstance(errors, str)
        and isinstance(timed_out, bool)
        and isinstance(kills, int)
        and isinstance(seconds, int | float)
        and (status is None or isinstance(status, int))
    ):
        return None
    return Run(output, status, kills, float(seconds), timed_out, errors)
