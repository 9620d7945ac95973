"""The probe as a suite: every case of a run in one invocation of /harness/probe, which prints one
JSON record per case as it finishes; judged against the cited expectations (harness.kit.verdict).

The probe itself (built once, in every image) is harness.kit.probe's; here is how a boot runs it and
reads it. A line that is not a record this run asked for (malformed, or for a case not asked for)
is the error of the case it names, or else of the case the probe was running (the next unanswered
one); a second answer for a case changes nothing. Once the probe exits, every case without a
record is an error saying how it exited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from harness.kernels import Kernel
from harness.kernels.sources.base import Context
from harness.kit import probe, verdict
from harness.kit.suites.base import Answer, Built, Judged, Judging, Observed, Step, Under
from harness.results import Outcome
from harness.streams import Line

NAME = "probe"


class ProbeRun:
    """The probe over the cases of one run: a record per case, streamed."""

    def __init__(self, cases: Sequence[str], under: Under) -> None:
        self.argv = probe.argv(under.memlock, under.user, under.case_timeout, cases)
        # The probe enforces each case's deadline itself; this one only catches a guest that hangs.
        self.timeout = under.case_timeout * len(cases) + 30
        self.cases = tuple(cases)
        self.pending = list(cases)

    def line(self, line: Line) -> list[Observed]:
        parsed = probe.parse(line)
        if parsed is None:
            return []
        if isinstance(parsed, dict):
            name = parsed["case"]
            if name in self.pending:
                self.pending.remove(name)
                return [Observed(name, parsed)]
            if name in self.cases:
                return []  # answered already (by an error in its place, say): the first answer stands
            parsed = probe.Malformed(f"a record for case {name!r}, which was not asked for")
        if not self.pending:
            return []
        culprit = parsed.case if parsed.case in self.pending else self.pending[0]
        self.pending.remove(culprit)
        return [Observed(culprit, None, Outcome.INFRA_ERROR, f"malformed probe output: {parsed.reason}")]

    def end(self, answer: Answer) -> list[Observed]:
        detail = answer.stderr.strip().splitlines()
        why = f": {detail[-1][:300]}" if detail else " without a record for this case"
        left, self.pending = self.pending, []
        return [Observed(case, None, Outcome.INFRA_ERROR, f"probe exited {answer.exit_code}{why}") for case in left]

    def unanswered(self) -> list[str]:
        return list(self.pending)


class ProbeSuite:
    name = NAME
    programs: tuple[str, ...] = ()  # its cases are the probe's catalogue (`harness cases`)

    def build(self, kernel: Kernel, ctx: Context, log: Callable[[str], None]) -> Built:
        return Built({}, {}, {})  # built once for every kernel, and in every image's base (harness.kit)

    def steps(self, cases: Sequence[str], under: Under, built: Built | str) -> Iterator[Step]:
        yield ProbeRun(cases, under)

    def judge(self, case: str, observation: Mapping[str, Any], judging: Judging) -> list[Judged]:
        context = verdict.RunContext(judging.kernel_version, judging.memlock_requested)
        v = verdict.judge(observation, context, judging.expectations)
        return [
            Judged(
                case,
                v.outcome,
                v.message,
                verdict.fingerprint(observation, judging.expectations),
                dict(observation),
                v.expected,
                v.citation,
                observation.get("duration_ms", 0) / 1000,
            )
        ]


PROBE = ProbeSuite()
