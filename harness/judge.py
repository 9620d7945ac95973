"""Judging: what the guests observed, made into results with the cited expectations.

A stage of its own. A boot hands it each raw observation as it arrives (harness.boot never sees an
expectation), and `harness judge` hands it a finished run's observations again, as its results.json.gz
stores them, so that an expectation that gained a citation or an era rule is applied without
booting anything. Each suite says what its observations are worth (harness.kit.suites).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from harness import versions
from harness.kit import known as known_mod
from harness.kit import suites, verdict
from harness.kit.suites import Judged, Judging, Observed, Where
from harness.results import BootResult, CaseResult, Outcome, RunRecord


@dataclass(frozen=True)
class Judge:
    expectations: verdict.Expectations
    known: Sequence[known_mod.Known] = ()  # findings expected to fail (guest-tests/known-deviations.yaml)

    def results(self, observed: Observed, where: Where) -> list[CaseResult]:
        """An observation's results: its case's, and its subtests' (a program's KTAP results)."""
        if observed.observation is None:
            return [_without(observed.case, where, observed.outcome, observed.message, None, observed.seconds)]
        judged = self._judged(observed, where)
        if not judged:  # an observation its suite does not read
            why = "an observation its suite cannot read"
            return [_without(observed.case, where, Outcome.INFRA_ERROR, why, observed.observation)]
        return [self._marked(_result(j, where), where) for j in judged]

    def _marked(self, result: CaseResult, where: Where) -> CaseResult:
        """A finding a known-deviations entry expects carries the entry's reason: it fails nothing."""
        entry = known_mod.covering(self.known, result, where.kernel)
        return dataclasses.replace(result, known=entry.says) if entry else result

    def _judged(self, observed: Observed, where: Where) -> list[Judged]:
        assert observed.observation is not None
        judging = Judging(versions.release_version(where.release), where.memlock_requested, self.expectations)
        return suites.of(observed.case).judge(observed.case, observed.observation, judging)

    def boot(self, boot: BootResult) -> tuple[BootResult, int]:
        """A finished boot judged again from the observations its results hold: the boot with its
        new results, and how many observations were kept as they were judged (a program's output
        that was cut for storing, an observation of an older format)."""
        release = (boot.kernel.release if boot.kernel else "") or boot.uname
        cases, kept = [], 0
        for result, subtests in _with_subtests(boot.cases):
            where = Where(boot.boot_id, release, result.memlock, result.user, boot.kernel)
            judged = self._judged(Observed(result.case, result.observation), where) if result.observation else []
            if not judged:  # no answer from the guest, or none its suite reads again: the verdict stands
                kept += result.observation is not None
                cases += [self._marked(dataclasses.replace(r, known=""), where) for r in (result, *subtests)]
                continue
            # What was measured stays as it was measured: the seconds of a program's run are stored rounded.
            own, *rest = [self._marked(_result(j, where), where) for j in judged]
            cases += [dataclasses.replace(own, duration_s=result.duration_s), *rest]
        return dataclasses.replace(boot, cases=cases), kept


def _without(
    case: str, where: Where, outcome: Outcome, message: str, observation: dict[str, Any] | None, seconds: float = 0.0
) -> CaseResult:
    """A case's result that no suite judged: the guest gave no observation, or none its suite reads."""
    return CaseResult(
        boot_id=where.boot_id,
        case=case,
        memlock=where.memlock,
        user=where.user,
        outcome=outcome,
        message=message,
        observation=observation,
        duration_s=seconds,
    )


def _result(j: Judged, where: Where) -> CaseResult:
    return CaseResult(
        boot_id=where.boot_id,
        case=j.case,
        memlock=where.memlock,
        user=where.user,
        outcome=j.outcome,
        message=j.message,
        observation=j.observation,
        expected=j.expected,
        citation=j.citation,
        duration_s=j.seconds,
        fingerprint=j.fingerprint,
    )


def _with_subtests(cases: Sequence[CaseResult]) -> Iterator[tuple[CaseResult, list[CaseResult]]]:
    """Each case's result with the subtest results that follow it (SUITE:PROGRAM/SUBTEST)."""
    i = 0
    while i < len(cases):
        own, i = cases[i], i + 1
        subtests = []
        while i < len(cases) and _subtest_of(cases[i], own):
            subtests.append(cases[i])
            i += 1
        yield own, subtests


def _subtest_of(result: CaseResult, own: CaseResult) -> bool:
    return (
        result.case.startswith(own.case + "/")
        and suites.split(own.case) is not None
        and (result.memlock, result.user) == (own.memlock, own.user)
    )


def run(record: RunRecord, judge: Judge) -> tuple[RunRecord, int]:
    """A finished run judged again; and the observations kept as they were judged."""
    boots, kept = [], 0
    for boot in record.boots:
        judged, n = judge.boot(boot)
        boots.append(judged)
        kept += n
    return dataclasses.replace(record, boots=boots), kept
