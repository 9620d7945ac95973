"""Guest suites: what runs in every guest under the run's limits and users, the probe first.

A matrix names them (`suites: [probe, kselftest-mm]`; the probe alone by default). A suite's
cases are named `SUITE:PROGRAM` (and `SUITE:PROGRAM/SUBTEST` for what a program reports inside),
the probe's by their own names, so JUnit, results.json.gz, the history, `compare` and `bisect --case`
take them all alike. Every suite says how its programs are built for a kernel (`build`), how a
boot runs its cases (`steps`: commands in the guest, read line by line into raw observations) and
what an observation is worth (`judge`). This registry is the only place that lists them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from harness.kit.suites import kselftest, probe
from harness.kit.suites.base import Answer, Built, Judged, Judging, Observed, Suite, Under, Where
from harness.kit.suites.programs import GUEST_DIR, TIMEOUT_CASES, Run

__all__ = [
    "GUEST_DIR",
    "NAMES",
    "PROBE",
    "SEP",
    "SUITES",
    "TIMEOUT_CASES",
    "Answer",
    "Built",
    "Judged",
    "Judging",
    "Observed",
    "Run",
    "Suite",
    "Under",
    "Where",
    "case_name",
    "get",
    "grouped",
    "of",
    "split",
]

PROBE = probe.NAME
SEP = ":"
SUITES: Mapping[str, Suite] = {s.name: s for s in (probe.PROBE, kselftest.MM)}
NAMES = tuple(SUITES)


def get(name: str) -> Suite:
    return SUITES[name]


def case_name(suite: str, program: str) -> str:
    return f"{suite}{SEP}{program}"


def split(case: str) -> tuple[str, str] | None:
    """(suite, program) of a built suite's case; None for one of the probe's."""
    suite, sep, program = case.partition(SEP)
    if not sep or suite not in SUITES or suite == PROBE:
        return None
    return suite, program.split("/", 1)[0]


def of(case: str) -> Suite:
    """The suite a case (or a subtest's result) belongs to."""
    named = split(case)
    return SUITES[named[0]] if named else probe.PROBE


def grouped(cases: Sequence[str]) -> list[tuple[Suite, list[str]]]:
    """A run's cases as a boot runs them: the probe's first, in one invocation, then the others in
    plan order, each stretch of one suite together."""
    out: list[tuple[Suite, list[str]]] = []
    mine = [c for c in cases if split(c) is None]
    if mine:
        out.append((probe.PROBE, mine))
    for case in cases:
        suite = of(case)
        if suite is probe.PROBE:
            continue
        if out and out[-1][0] is suite and out[-1][0] is not probe.PROBE:
            out[-1][1].append(case)
        else:
            out.append((suite, [case]))
    return out
