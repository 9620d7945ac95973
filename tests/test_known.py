"""Known deviations at run time (harness/kit/known.py): a finding a known-deviations entry expects is
reported with the entry's reason and fails nothing (as pytest's xfail); a new one fails the run; an
entry that no longer deviates is a notice (`--strict` fails on it). The end-to-end test runs Debian
12's kernel in QEMU with the real probe; the unit tests use records made here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import junitparser
import pytest
from conftest import results_doc
from test_integration import REPO

from harness.errors import UserError
from harness.kit import known
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, exit_code


def kernel(version: str) -> KernelInfo:
    return KernelInfo("k", f"{version}-amd64", "linux-image", f"{version}-1", "ab" * 32, "debian:x")


def result(case: str, outcome: Outcome = Outcome.DEVIATION, memlock: str = "64K", user: str = "user") -> CaseResult:
    return CaseResult("b", case, memlock, user, outcome, "expected True, observed False", {"case": case})


def entries(tmp_path: Path, text: str) -> list[known.Known]:
    path = tmp_path / "known.yaml"
    path.write_text(text)
    return known.load_known(path)


def test_fix_points_leave_the_fixed_builds_of_each_line_uncovered(tmp_path: Path) -> None:
    """A stable fix lands in several lines at once: from 6.1.192, 6.12.115 and 7.2.11 on, those lines
    are fixed; earlier builds of them, and lines without a fix point, stay covered."""
    (entry,) = entries(tmp_path, "known:\n  - case: mremap_dontunmap_partial\n    reason: the half left behind\n"
                                 "    fixed_in: [6.1.192, 6.12.115, 7.2.11]\n")  # fmt: skip
    finding = result("mremap_dontunmap_partial")
    covered = {v: entry.covers(finding, kernel(v)) for v in ("6.1.176", "6.1.192", "6.12.113", "6.12.117",
                                                              "6.19.3", "7.2.9", "7.2.11", "7.3.4")}  # fmt: skip
    assert covered == {"6.1.176": True, "6.1.192": False, "6.12.113": True, "6.12.117": False, "6.19.3": True,
                       "7.2.9": True, "7.2.11": False, "7.3.4": True}  # fmt: skip
    assert not entry.covers(result("mremap_dontunmap_partial", Outcome.PASS), kernel("6.1.176"))  # not a finding


def test_a_bad_fix_point_is_one_line_naming_the_entry(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"known.yaml:2: known\[0\].fixed_in: 6.1 is not a version such as 6.1.192"):
        entries(tmp_path, "known:\n  - case: x\n    reason: y\n    fixed_in: [6.1]\n")


def test_known_findings_fail_nothing_and_a_new_one_fails_the_run(tmp_path: Path) -> None:
    listed = entries(tmp_path, "known:\n  - case: protnone_mlock\n    reason: locked after ENOMEM\n    link: L\n")
    boot = BootResult("b", kernel("6.1.176"), 256, cases=[result("protnone_mlock"), result("limits", Outcome.PASS)])
    (marked,) = known.marked(listed, [boot])
    assert marked.cases[0].known == "locked after ENOMEM (L)" and not marked.cases[0].fails
    assert marked.cases[1].known == "" and exit_code([marked]) == 0
    assert exit_code(known.marked([], [boot])) == 1  # without the entry it is news


def test_an_entry_whose_cases_no_longer_deviate_is_fixed(tmp_path: Path) -> None:
    listed = entries(tmp_path, "known:\n  - case: mlock_*\n    reason: once\n  - case: protnone_mlock\n    reason: r\n")
    boot = BootResult("b", kernel("6.1.176"), 256, cases=[result("mlock_over", Outcome.PASS), result("protnone_mlock")])
    assert [(k.case, where) for k, where in known.fixed(listed, [boot])] == [("mlock_*", ["b"])]


def harness(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)  # fmt: skip


@pytest.mark.integration
def test_a_real_run_is_green_on_known_deviations_red_on_news_and_notices_fixes(tmp_path: Path) -> None:
    """Debian 12's kernel, cases that deviate on every kernel and one that passes: with the shipped
    file the run exits 0 and JUnit (read back by junitparser) has each known deviation skipped with
    its entry's reason; the same run judged without one entry exits 1 on that entry's cases; an
    entry for the passing case is reported fixed, and fails the run only with --strict."""
    matrix = tmp_path / "m.yaml"
    matrix.write_text("kernels: [{debian: bookworm}]\nmemlock: [64K]\nusers: [root, user]\n"
                      "cases: [protnone_mlock, file_mlock_past_eof, mlock_over]\n")  # fmt: skip
    results = tmp_path / "results"
    ran = harness("run", "--matrix", str(matrix), "--results", str(results))
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    assert "0 new findings, 4 known" in ran.stdout
    run_dir = (results / "latest").resolve()
    xml = junitparser.JUnitXml.fromfile(str(run_dir / "junit.xml"))
    skipped = {case.name: case.result[0].message for suite in xml for case in suite
               if case.result and isinstance(case.result[0], junitparser.Skipped)}  # fmt: skip
    reason = next(k for k in known.load_known(known.KNOWN_FILE) if k.case == "protnone_mlock").says
    assert skipped["protnone_mlock[memlock=64K,user=user]"] == f"known deviation: {reason}"
    data = results_doc(run_dir)
    assert {c["case"]: c.get("known", "") for c in data["boots"][0]["cases"]}["protnone_mlock"] == reason

    fewer = tmp_path / "fewer.yaml"
    text = known.KNOWN_FILE.read_text()
    start = text.index("  - case: protnone_mlock")
    fewer.write_text(text[:start] + text[text.index("  - case:", start + 1) :])
    judged = harness("judge", str(run_dir), "--known", str(fewer))
    assert judged.returncode == 1, judged.stdout[-3000:] + judged.stderr
    assert "2 new findings, 2 known" in judged.stdout

    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(text + "  - case: mlock_over\n    reason: it once deviated\n")
    notice = harness("judge", str(run_dir), "--known", str(fixed))
    assert notice.returncode == 0 and "fixed: mlock_over" in notice.stdout and "no longer deviates" in notice.stdout
    assert harness("judge", str(run_dir), "--known", str(fixed), "--strict").returncode == 1
    shutil.rmtree(results)
