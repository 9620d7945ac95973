"""Guest suites: programs that run in every guest beside the probe, under the same limits and users.

A matrix names them (`suites: [probe, kselftest-mm]`; the probe alone by default). Their tests
are cases like the probe's, named `SUITE:PROGRAM` (and `SUITE:PROGRAM/SUBTEST` for what a program
reports inside), so JUnit, results.json, the history, `compare` and `bisect --case` take them as
they take the probe's. A suite says where its programs come from and how they are built (per
kernel: `build`), and how a program's output is read (`judge`); the boot runs each program with
the probe's `exec` (the limit, the user) under a timeout, in its own process, so one program's
crash, hang or OOM kill is its own result. This registry is the only place that lists them.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.suites import kselftest
from harness.suites.base import Built, Judged, Run, Suite

__all__ = ["GUEST_DIR", "NAMES", "PROBE", "SEP", "SUITES", "TIMEOUT_CASES", "Built", "Judged", "Run", "Suite",
           "case_name", "get", "split"]

PROBE = "probe"
SEP = ":"
GUEST_DIR = "opt/suites"  # a suite's programs in the image: /opt/suites/SUITE/PROGRAM
TIMEOUT_CASES = 4  # a program may take as long as this many probe cases (timeouts.case each)
SUITES: Mapping[str, Suite] = {s.name: s for s in (kselftest.MM,)}
NAMES = (PROBE, *SUITES)


def get(name: str) -> Suite:
    return SUITES[name]


def case_name(suite: str, program: str) -> str:
    return f"{suite}{SEP}{program}"


def split(case: str) -> tuple[str, str] | None:
    """(suite, program) of a suite's case; None for one of the probe's."""
    suite, sep, program = case.partition(SEP)
    if not sep or suite not in SUITES:
        return None
    return suite, program.split("/", 1)[0]
