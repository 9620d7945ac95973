"""JUnit that real consumers accept: validated against a published JUnit XSD (xmlschema), read back by
junitparser with the same counts, rendered by junit2html without error.

tests/data/README.md says where the schemas come from.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from junitparser import Error, Failure, JUnitXml, Skipped
from markupsafe import escape

from harness.report.junit import junit_xml, xml_safe
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, outcome_counts

DATA = Path(__file__).resolve().parent / "data"
# Jenkins xunit plugin's JUnit schema: what its strict validation (xunit >= 2.0) checks.
JENKINS_XSD = DATA / "junit-10.xsd"
# Apache Ant's JUnit report format as windyroad wrote it down. Our junit.xml is not meant to satisfy
# it: Ant writes one <testsuite> document per test class, with a required timestamp, <properties>
# and suite-level <system-out>/<system-err>, and no output per testcase. We put the observation of
# each failure, error and known deviation in the testcase's <system-out> (the Surefire/Jenkins
# layout, where it is shown next to the case) and aggregate boots under <testsuites>; bending that
# to Ant's layout would lose per-case evidence in every consumer.
# test_ant_schema_differences_are_only_the_known_ones pins exactly which differences there are, so
# a new one does not creep in unnoticed.
ANT_XSD = DATA / "JUnit.xsd"
RUN_ID = "20261126T185300Z-ab12"

KERNEL = KernelInfo(
    "bookworm", "6.1.0-28-amd64", "linux-image-6.1.0-28-amd64", "6.1.119-1", "ab" * 32, "debian:bookworm"
)
# Newlines, tabs, CR, C0 controls, a lone surrogate (surrogateescape-decoded guest output), a
# non-character, XML and CDATA syntax, and non-ASCII text: what a serial console can hand us.
NASTY = (
    "line one\nline two\r\n\ttabbed \x00nul \x07bell \x1b[31mred\x1b[0m \ud800lone \ufffe "
    "<tag attr=\"v\" other='w'> & ]]> ünïcödé 日本語 😀 \u202eevil"
)


def result(boot_id: str, case: str, outcome: Outcome, message: str = "", **kw: Any) -> CaseResult:
    kw.setdefault("observation", {"errno": 0, "locked_kb": 64, "raw": NASTY})
    kw.setdefault("user", "user")
    return CaseResult(boot_id, case, kw.pop("memlock", "64K"), outcome=outcome, message=message, **kw)


def every_outcome(boot_id: str) -> list[CaseResult]:
    return [
        result(boot_id, "lock_basic", Outcome.PASS, duration_s=0.8123),
        result(boot_id, "lock_basic", Outcome.PASS, memlock="64K:1M", user="root", duration_s=1e-5),
        result(boot_id, "lock_over_limit", Outcome.DEVIATION, NASTY, expected={"errno": "EAGAIN"}, citation=NASTY),
        result(boot_id, "lock_quiet", Outcome.DEVIATION, "", observation=None),  # no message: still a failure
        result(boot_id, "lock_as_root", Outcome.NOT_APPLICABLE, "needs root; ran as user", observation=None),
        result(boot_id, "lock_all_ram", Outcome.OOM_KILLED, "probe child killed by the OOM killer"),
        result(boot_id, "lock_fault", Outcome.PANIC, "Kernel panic - not syncing: Fatal exception\nCall Trace:"),
        result(boot_id, "lock_huge", Outcome.TIMEOUT, "no answer after 60s", observation=None, duration_s=60),
        result(boot_id, "lock_ssh", Outcome.INFRA_ERROR, "SSH connection reset", observation=None, duration_s=0.1),
        result(boot_id, "wëird_<&>\"'_nämé", Outcome.DEVIATION, "odd name", duration_s=12.300000000000001),
    ]


def sample_boots() -> list[BootResult]:
    return [
        BootResult(
            "bookworm-256M",
            KERNEL,
            256,
            "tcg",
            "7.2.15",
            249_344,
            "6.1.0-28-amd64",
            ["qemu-system-x86_64", "-m", "256"],
            "serial/bookworm-256M.log",
            {"marker": 9.25, "ssh": 14.5, "probe": 31.0},
            cases=every_outcome("bookworm-256M"),
        ),
        # Died half-way: its error is a testcase of its own, the finished cases stay.
        BootResult(
            "ünïcode-96M",
            None,
            96,
            uname=NASTY,
            serial_log="serial/x.log",
            error=f"lost the guest: {NASTY}",
            cases=every_outcome("ünïcode-96M")[:3],
        ),
        BootResult("trixie-96M", None, 96, error="no login marker on the serial console after 180s"),
    ]


def expected_counts(boot: BootResult) -> dict[str, int]:
    """What every JUnit consumer should count for a boot, from the harness's own outcome counts."""
    c = outcome_counts([boot])
    booterr = 1 if boot.error else 0
    known = sum(1 for r in boot.cases if r.known)  # an expected failure: skipped with its reason
    return {
        "tests": sum(c.values()) + booterr,
        "failures": c["deviation"] + c["oom_killed"] + c["panic"] - known,
        "errors": c["timeout"] + c["infra_error"] + booterr,
        "skipped": c["not_applicable"] + known,
    }


def junitparser_counts(xml: JUnitXml) -> dict[str, dict[str, int]]:
    """Per suite: the counts junitparser reads from the attributes, checked against its own count of the cases."""
    out = {}
    for suite in xml:
        cases = list(suite)
        kinds = [type(r) for case in cases for r in case.result]
        recount = {
            "tests": len(cases),
            "failures": kinds.count(Failure),
            "errors": kinds.count(Error),
            "skipped": kinds.count(Skipped),
        }
        read = {"tests": suite.tests, "failures": suite.failures, "errors": suite.errors, "skipped": suite.skipped}
        assert read == recount, f"{suite.name}: attributes {read} but cases {recount}"
        out[suite.name] = read
    return out


def render_junit2html(source: Path, out: Path) -> str:
    """Run the junit2html console script as CI would, and return the page."""
    script = Path(sys.executable).with_name("junit2html")
    assert script.is_file(), f"{script} missing: pip install -e '.[test]'"
    proc = subprocess.run([str(script), str(source), str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def jenkins() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(JENKINS_XSD)


# --- the published Jenkins schema --------------------------------------------------------------


def test_junit_validates_against_published_jenkins_schema(jenkins: xmlschema.XMLSchema) -> None:
    jenkins.validate(junit_xml(sample_boots(), RUN_ID))
    jenkins.validate(junit_xml([], RUN_ID))


def test_schema_catches_what_jenkins_rejects(jenkins: xmlschema.XMLSchema) -> None:
    """The vendored schema is the strict one: what xunit >= 2.0 refuses, it refuses too."""
    good = junit_xml(sample_boots(), RUN_ID)
    for bad in (
        good.replace('hostname="qemu"', 'hostname="qemu" disabled="0"', 1),  # junit_xml's default output
        re.sub(r'(<testsuite [^>]*time=")[^"]*', r"\g<1>1e-05", good, count=1),  # str(float) of a tiny sum
        good.replace("<testcase ", '<testcase timestamp="2026-11-26T18:53:00" ', 1),
    ):
        assert bad != good
        assert not jenkins.is_valid(bad)


# --- junitparser -------------------------------------------------------------------------------


def test_junitparser_reads_the_same_counts() -> None:
    boots = sample_boots()
    xml = JUnitXml.fromstring(junit_xml(boots, RUN_ID).encode("utf-8"))
    per_suite = junitparser_counts(xml)
    assert per_suite == {xml_safe(b.boot_id): expected_counts(b) for b in boots}
    totals = {k: sum(c[k] for c in per_suite.values()) for k in ("tests", "failures", "errors", "skipped")}
    assert {"tests": xml.tests, "failures": xml.failures, "errors": xml.errors, "skipped": xml.skipped} == totals
    assert totals == {"tests": 15, "failures": 6, "errors": 4, "skipped": 1}


def test_junitparser_reads_back_names_messages_and_output() -> None:
    xml = JUnitXml.fromstring(junit_xml(sample_boots(), RUN_ID).encode("utf-8"))
    suite = next(s for s in xml if s.name == "bookworm-256M")
    cases = {c.name: c for c in suite}
    over = cases["lock_over_limit[memlock=64K,user=user]"]
    (failure,) = over.result
    assert isinstance(failure, Failure) and failure.type == "deviation"
    # Exactly what the harness said, minus what XML cannot carry, newlines and all.
    assert failure.message == xml_safe(NASTY)
    assert "\n" in failure.message and "日本語 😀" in failure.message
    assert f"citation: {xml_safe(NASTY)}" in (failure.text or "")
    assert json.loads(over.system_out or "") == {"errno": 0, "locked_kb": 64, "raw": NASTY}
    assert cases["lock_quiet[memlock=64K,user=user]"].result[0].message == "deviation"
    assert "wëird_<&>\"'_nämé[memlock=64K,user=user]" in cases
    # 1e-5 s rounds to 0 ms, and junit_xml then leaves `time` out; consumers read that as 0.
    assert not cases["lock_basic[memlock=64K:1M,user=root]"].time
    assert {p.name: p.value for p in suite.properties()}["kernel.version"] == "6.1.119-1"

    died = next(s for s in xml if s.name == "ünïcode-96M")
    first = next(iter(died))
    assert first.name == "boot" and isinstance(first.result[0], Error)
    assert first.result[0].message == xml_safe(f"lost the guest: {NASTY}")


# --- junit2html --------------------------------------------------------------------------------


def test_junit2html_renders_it(tmp_path: Path) -> None:
    boots = sample_boots()
    source = tmp_path / "junit.xml"
    source.write_text(junit_xml(boots, RUN_ID), encoding="utf-8")
    page = render_junit2html(source, tmp_path / "junit.html")
    for boot in boots:
        assert escape(boot.boot_id) in page
        for r in boot.cases:
            if r.outcome.is_failure or r.outcome.is_error:
                assert escape(r.name) in page, r.name
    assert "no login marker on the serial console after 180s" in page
    assert "<tag attr" not in page  # guest text stays text in the consumer's page too


# --- Apache Ant's schema (windyroad) -----------------------------------------------------------


def test_ant_schema_differences_are_only_the_known_ones() -> None:
    """See ANT_XSD above: why our junit.xml differs from Ant's format, and exactly where."""
    schema = xmlschema.XMLSchema(ANT_XSD)
    text = junit_xml(sample_boots(), RUN_ID)
    known = {
        ("testsuites", "attribute"),  # Ant's aggregate root has no attributes at all
        ("testsuite", "timestamp"),  # required by Ant; the run's start is in results.json
        ("testsuite", "package"),  # Ant's aggregated suites carry package and id
        ("testsuite", "id"),
        ("testsuite", "system-out"),  # Ant requires suite-level output ...
        ("testcase", "system-out"),  # ... and allows none per case, where we put the observation
        ("testcase", "time"),  # junit_xml leaves out a zero time (boot errors, cases under 0.5 ms)
    }
    seen = set()
    for error in schema.iter_errors(text):
        tag = getattr(error.elem, "tag", "")
        reason = str(error.reason)
        what = next((w for t, w in known if t == tag and w in reason), None)
        assert what is not None, f"new difference from Ant's schema at <{tag}>: {reason}"
        seen.add((tag, what))
    assert seen, "our junit.xml now satisfies Ant's schema: validate against it instead"
