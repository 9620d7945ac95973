"""junit.xml: one <testsuite> per boot, one <testcase> per case x limit x user. Pure: records in, text out.

What CI reads first, so it is checked against Jenkins' junit-10.xsd (the strictest common consumer)
and read back by junitparser in the tests. A deviation, an OOM kill or a panic is a <failure>, no
answer is an <error>, not applicable is <skipped>; a boot that failed gets an errored "boot" case.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from junit_xml import TestCase, TestSuite

from harness.kit.known import Known, settled
from harness.results import BootResult, CaseResult, Outcome

BOOT_CASE = "boot"  # the testcase that carries a boot's infrastructure error


# XML 1.0 `Char` production. junit_xml strips bad characters only after serialising, by which time
# a lone surrogate (from surrogateescape-decoded guest output) has become "&#55296;", a reference
# to a character XML forbids, so every string is cleaned before it reaches the library.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry (NUL, most C0 controls, surrogates, FFFE/FFFF)."""
    # \r\n would come back as \n from any parser anyway; normalising keeps round trips exact.
    return _XML_INVALID.sub("", text.replace("\r\n", "\n"))


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _properties(boot: BootResult, run_id: str) -> dict[str, str]:
    props: dict[str, str] = {"run_id": run_id}
    kernel = boot.kernel
    if kernel is not None:
        for key, value in (
            ("label", kernel.label),
            ("package", kernel.package),
            ("version", kernel.version),
            ("release", kernel.release),
            ("sha256", kernel.sha256),
            ("source", kernel.source),
        ):
            if value:
                props[f"kernel.{key}"] = value
    props["ram_mb"] = str(boot.ram_mb)
    if boot.memtotal_kb is not None:
        props["memtotal_kb"] = str(boot.memtotal_kb)
    for key, value in (
        ("accelerator", boot.accelerator),
        ("qemu_version", boot.qemu_version),
        ("uname", boot.uname),
        ("transport", boot.transport),
        ("restored", boot.restored),  # the saved guest it was loaded from (harness.boot.snapshot)
        ("reused_from", boot.reused_from),  # the run whose results it took, booting nothing (harness.reuse)
    ):
        if value:
            props[key] = value
    return {xml_safe(k): xml_safe(v) for k, v in props.items()}


def _detail(result: CaseResult) -> str:
    """The body of a <failure>/<error>: enough to judge the result without opening results.json.gz."""
    lines = [result.message] if result.message else []
    if result.expected:
        lines.append(f"expected: {_json(result.expected)}")
    observed = "(none)" if result.observation is None else _json(result.observation)
    lines.append(f"observed: {observed}")
    if result.citation:
        lines.append(f"citation: {result.citation}")
    return "\n".join(lines)


def classname(boot_id: str) -> str:
    """`harness.<boot id>`, the boot id's own dots made underscores: Jenkins and other consumers read
    the last dot of a classname as the end of a package (harness.bookworm-6.1.0-50-amd64-256M would be
    package harness.bookworm-6.1.0-50-amd64-256M's "0-50-amd64-256M"), and a boot is one class."""
    return xml_safe("harness." + boot_id.replace(".", "_"))


def _testcase(boot_id: str, result: CaseResult, fixed: str = "") -> TestCase:
    # The observation goes with the results a person opens: a new failure, an error, a known
    # deviation that no longer shows (`fixed`: its entry's reason). A pass, a case that does not
    # apply and a known deviation (the same every night) are a line each in a consumer's list: at
    # every Debian build their observations were 55 of junit.xml's 68 MB. results.json.gz keeps
    # every one, and the boot's page shows it.
    quiet = result.outcome in (Outcome.PASS, Outcome.NOT_APPLICABLE) or bool(result.known)
    stdout = None if result.observation is None or quiet else xml_safe(_json(result.observation))
    if fixed and result.observation is not None:
        said = f"fixed: no longer deviates as known-deviations.yaml expects ({fixed})"
        stdout = xml_safe(f"{said}\nobserved: {_json(result.observation)}")
    case = TestCase(
        xml_safe(result.name),
        classname=classname(boot_id),
        # Milliseconds are plenty, and a rounded value never prints in exponent notation.
        elapsed_sec=round(result.duration_s, 3),
        stdout=stdout,
    )
    # junit_xml silently drops a failure/error with an empty message and output; never let a
    # result with no message turn into a pass.
    message = xml_safe(result.message) or result.outcome.value
    outcome = result.outcome
    if result.known:  # an expected failure, written as pytest writes an xfail: skipped, with the reason
        case.add_skipped_info(message=xml_safe(f"known deviation: {result.known}"), output=xml_safe(message))
    elif outcome.is_failure:
        case.add_failure_info(message=message, output=xml_safe(_detail(result)), failure_type=outcome.value)
    elif outcome.is_error:
        case.add_error_info(message=message, output=xml_safe(_detail(result)), error_type=outcome.value)
    elif outcome is Outcome.NOT_APPLICABLE:
        case.add_skipped_info(message=message)
    return case


def _boot_testcase(boot: BootResult) -> TestCase:
    case = TestCase(BOOT_CASE, classname=classname(boot.boot_id))
    output = f"serial log: {boot.serial_log}" if boot.serial_log else None
    case.add_error_info(
        message=xml_safe(boot.error),
        output=None if output is None else xml_safe(output),
        error_type=Outcome.INFRA_ERROR.value,
    )
    return case


def _suite(boot: BootResult, run_id: str, fixed: Mapping[tuple[str, str, str], str]) -> TestSuite:
    cases = [_testcase(boot.boot_id, r, fixed.get((r.case, r.memlock, r.user), "")) for r in boot.cases]
    if boot.error:
        # Also when some cases did finish: a boot that died half-way must still be red in CI.
        cases.insert(0, _boot_testcase(boot))
    return TestSuite(
        xml_safe(boot.boot_id),
        cases,
        hostname="qemu",
        properties=_properties(boot, run_id),
    )


def _conform(suite: ET.Element) -> None:
    """Make junit_xml's <testsuite> valid against Jenkins' junit-10.xsd, the strictest common consumer."""
    # junit_xml always writes disabled="0", an attribute the schema does not declare.
    suite.attrib.pop("disabled", None)
    for key in ("tests", "failures", "errors"):
        suite.set(key, suite.get(key, "0"))
    # str(float) sums such as 12.300000000000001 or 1e-05 break the schema's time pattern.
    suite.set("time", f"{float(suite.get('time', '0')):.3f}")
    for case in suite.iter("testcase"):
        # junit_xml writes "%f", and nothing at all for a zero duration, which Ant's schema requires.
        case.set("time", f"{float(case.get('time', '0')):.3f}")


@dataclass(frozen=True)
class SuiteXml:
    """One boot's <testsuite> as text, indented for its place in junit.xml, with the totals that
    <testsuites> adds up. Rendered once per change of the boot, so a run rewriting junit.xml after
    every case renders the boot that changed, not all of them."""

    text: str
    tests: int
    failures: int
    errors: int
    time: float  # junit_xml's unrounded sum, so the document's total rounds as one sum would


def suite_xml(boot: BootResult, run_id: str, known: Sequence[Known] = ()) -> SuiteXml:
    """The boot's suite; `known` (known-deviations.yaml's entries) says which passes are news: an
    entry's results that all pass in this boot carry their observation (known.settled)."""
    built = _suite(boot, run_id, settled(known, boot)).build_xml_doc(encoding="utf-8")
    # Through text and back, as a whole document would go: the parser normalises (a lone \r in
    # guest output reads back as \n), and the file must say what a reader of it will see.
    suite = ET.fromstring(ET.tostring(built, encoding="utf-8"))
    total = float(suite.get("time", 0))
    _conform(suite)
    # Indent with ElementTree, not junit_xml's minidom pretty-printer: on Python 3.11 minidom
    # writes newlines inside attributes raw, so multi-line messages would read back as spaces.
    ET.indent(suite, space="  ", level=1)
    suite.tail = None
    return SuiteXml(
        ET.tostring(suite, encoding="unicode"),
        int(suite.get("tests", 0)),
        int(suite.get("failures", 0)),
        int(suite.get("errors", 0)),
        total,
    )


def document(suites: Sequence[SuiteXml], run_id: str) -> str:
    """junit.xml: the <testsuites> element around rendered suites, attributes in junit_xml's order."""
    root = ET.Element("testsuites")
    name = xml_safe(run_id)
    if not suites:
        for key, value in (("name", name), ("tests", "0"), ("failures", "0"), ("errors", "0"), ("time", "0.000")):
            root.set(key, value)
        body = ET.tostring(root, encoding="unicode")
    else:
        root.set("errors", str(sum(s.errors for s in suites)))
        root.set("failures", str(sum(s.failures for s in suites)))
        root.set("tests", str(sum(s.tests for s in suites)))
        root.set("time", f"{sum(s.time for s in suites):.3f}")
        root.set("name", name)
        root.text = _MARK  # cannot occur in an attribute: xml_safe removed every control character
        start, end = ET.tostring(root, encoding="unicode").split(_MARK)
        body = start + "\n  " + "\n  ".join(s.text for s in suites) + "\n" + end
    return '<?xml version="1.0" encoding="utf-8"?>\n' + body + "\n"


_MARK = "\x01"


def junit_xml(boots: Sequence[BootResult], run_id: str, known: Sequence[Known] = ()) -> str:
    """One <testsuite> per boot, one <testcase> per CaseResult, plus a "boot" testcase for a boot error."""
    return document([suite_xml(boot, run_id, known) for boot in boots], run_id)
