"""KTAP parsing (harness.kit.ktap) and how a suite's program is judged from its output and end
(harness.kit.suites.kselftest.judge). Golden files in tests/data/ktap/ are outputs captured from
guests here; the edge cases are written out below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.kit import ktap
from harness.kit.suites import Run
from harness.kit.suites.kselftest import MM, judge
from harness.results import Outcome

GOLDEN = Path(__file__).resolve().parent / "data" / "ktap"

NESTED = """KTAP version 1
1..2
    KTAP version 1
    # Subtest: locking
    1..3
    ok 1 mlock of a page
    not ok 2 mlock2 onfault
    # the range was not locked
    ok 3 munlock # SKIP no mlock2 here
ok 1 locking
ok 2 populate # XFAIL known to fail
"""


def test_nested_subtests_sit_under_the_line_that_ends_them() -> None:
    doc = ktap.parse(NESTED)
    assert doc.version == "KTAP version 1" and doc.plan == 2 and doc.missing == 0
    first, second = doc.results
    assert (first.name, first.outcome, second.outcome) == ("locking", "pass", "pass")
    assert [(s.number, s.name, s.outcome) for s in first.subtests] == [
        (1, "mlock of a page", "pass"),
        (2, "mlock2 onfault", "fail"),
        (3, "munlock", "skip"),
    ]
    assert first.subtests[2].reason == "no mlock2 here"
    assert "the range was not locked" in first.diagnostics
    assert ktap.parse("TAP version 13\n1..1\nnot ok 1 x # XFAIL known\n").results[0].outcome == "xfail"
    assert ktap.parse("not ok 1 x # TODO later\n").results[0].outcome == "xfail"


def test_a_program_that_dies_mid_output_keeps_what_it_printed_and_says_what_is_missing() -> None:
    doc = ktap.parse("TAP version 13\n1..5\nok 1 a\nok 2 b\n    ok 1 half of c\n")
    assert [r.name for r in doc.results] == ["a", "b", "half of c"]  # no parent line closed the subtest
    assert doc.plan == 5 and doc.missing == 2


def test_bail_out_stops_the_reading() -> None:
    doc = ktap.parse("TAP version 13\n1..3\nok 1 a\nBail out! no huge pages\nok 2 b\n")
    assert doc.bailed_out == "no huge pages" and [r.name for r in doc.results] == ["a"] and doc.missing == 2


def test_output_that_is_not_ktap_is_kept_as_diagnostics() -> None:
    doc = ktap.parse("mlock2 failed: Cannot allocate memory\n\x1b[31mred\x07\n")
    assert doc.version == "" and doc.results == [] and doc.plan is None
    assert doc.diagnostics == ["mlock2 failed: Cannot allocate memory", "?[31mred?"]


def test_hostile_output_is_bounded() -> None:
    doc = ktap.parse("ok 1 " + "n" * 10_000 + "\n" + "# x\n" * (ktap.MAX_LINES + 10))
    assert len(doc.results[0].name) == ktap.MAX_NAME and doc.truncated
    assert len(doc.diagnostics) == ktap.MAX_DIAGNOSTICS


def run(
    output: str = "",
    status: int | None = 0,
    oom: int = 0,
    seconds: float = 1.0,
    timed_out: bool = False,
    errors: str = "",
) -> Run:
    return Run(output, status, oom, seconds, timed_out, errors)


def test_a_program_s_end_is_its_outcome_as_the_kselftest_runner_reads_it() -> None:
    def outcome(r: Run) -> tuple[Outcome, str]:
        top = judge("kselftest-mm", "mlock2-tests", r)[0]
        assert top.case == "kselftest-mm:mlock2-tests"
        return top.outcome, top.message

    assert outcome(run())[0] is Outcome.PASS
    assert outcome(run(status=4, output="# no mlock2\n")) == (
        Outcome.NOT_APPLICABLE,
        "skipped (exit 4, KSFT_SKIP): no mlock2",
    )
    crashed = outcome(run("TAP version 13\n1..4\nok 1 a\n", status=128 + 11))
    assert crashed[0] is Outcome.DEVIATION and "died by signal 11" in crashed[1]
    assert "3 planned results missing" in crashed[1]
    assert outcome(run(status=255, errors="mlock: Cannot allocate memory\n"))[1].endswith(
        "exit 255; mlock: Cannot allocate memory"
    )
    assert outcome(run(status=137, seconds=240, timed_out=True))[0] is Outcome.TIMEOUT
    assert outcome(run(status=137, oom=1))[0] is Outcome.OOM_KILLED
    assert outcome(run(status=None))[0] is Outcome.INFRA_ERROR


def test_subtests_are_cases_of_their_own_and_a_failing_one_fails_its_program() -> None:
    judged = judge(
        "kselftest-mm",
        "mlock2-tests",
        run(NESTED.replace("ok 2 populate", "not ok 2 populate").replace(" # XFAIL known to fail", "")),
    )
    top, *subs = judged
    assert [s.case for s in subs] == ["kselftest-mm:mlock2-tests/locking", "kselftest-mm:mlock2-tests/populate"]
    assert top.outcome is Outcome.DEVIATION and "failed: populate" in top.message
    assert json.loads(top.fingerprint) == {"outcome": "deviation", "failed": ["populate"]}
    same = judge("kselftest-mm", "mlock2-tests", run(NESTED))[0]
    assert same.outcome is Outcome.PASS and json.loads(same.fingerprint) == {"outcome": "pass", "failed": []}
    # Another tree that renames a passing subtest: the same behaviour.
    renamed = judge("kselftest-mm", "mlock2-tests", run(NESTED.replace("ok 1 locking", "ok 1 locking (v2)")))[0]
    assert renamed.fingerprint == same.fingerprint


def test_each_program_runs_where_run_vmtests_runs_it() -> None:
    assert MM.applies("on-fault-limit", "user", "64K") == "" and "nobody" in MM.applies("on-fault-limit", "root", "64K")
    assert "refused (EPERM)" in MM.applies("on-fault-limit", "user", "0")
    assert MM.applies("mlock2-tests", "root", "0") == "" and "as root" in MM.applies("mlock2-tests", "user", "64K")
    assert MM.applies("map_populate", "user", "0") == MM.applies("map_populate", "root", "default") == ""


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_golden_outputs_from_guests_parse_as_they_were_judged(golden: Path) -> None:
    """Each file: a program's output and exit status captured from a guest, and the results it gave."""
    doc = json.loads(golden.read_text())
    judged = judge("kselftest-mm", doc["program"], run(doc["output"], doc["exit_status"], errors=doc["stderr"]))
    assert {j.case: j.outcome.value for j in judged} == doc["results"]


def test_a_golden_ktap_output_has_its_plan_and_every_result() -> None:
    """7.3's mlock2-tests: 15 planned, 15 `ok`; 6.1's prints no KTAP and is read by its exit status."""
    new = json.loads((GOLDEN / "7.3.4-mlock2-tests-root.json").read_text())
    doc = ktap.parse(new["output"])
    assert doc.version == "TAP version 13" and doc.plan == 15 and len(doc.results) == 15 and doc.missing == 0
    assert {r.outcome for r in doc.results} == {"pass"} and doc.results[0].name == "test_mlock_lock: Locked"
    old = json.loads((GOLDEN / "6.1.0-mlock2-tests-root.json").read_text())
    assert ktap.parse(old["output"]).results == [] and old["results"] == {"kselftest-mm:mlock2-tests": "pass"}
