"""Candidates for a change within a line (harness/report/candidates.py) and everywhere a change is
shown: the terminal, summary.md, report.html, `history --changes` and `compare`. The changelog is
the real bookworm excerpt in tests/data/changelog; the change is planted in made-up results."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from test_overview import HOSTILE, kernel, parse

from harness.debian import changelog
from harness.history import compare, views
from harness.history.timeline import Point, Timeline
from harness.kit import exercises
from harness.report import candidates, report_html, summary_md, terminal
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord

EXCERPT = Path(__file__).parent / "data" / "changelog" / "bookworm-6.1.192-excerpt.txt"
CASE = "mremap_dontunmap_partial"
BEFORE = replace(kernel("bookworm+bookworm-security", "6.1.190-1", "6.1.0-54-amd64"), sha256="54" * 32)
AFTER = replace(kernel("bookworm+bookworm-security", "6.1.192-1", "6.1.0-55-amd64"), sha256="55" * 32)
TRIXIE = replace(kernel("trixie", "6.12.95-1", "6.12.95+deb13-amd64"), sha256="12" * 32)
FIX = "mm/mremap: fix locked_vm leak by splitting VMA for MREMAP_DONTUNMAP"


@pytest.fixture(scope="module")
def entries() -> list[changelog.Entry]:
    return changelog.entries(EXCERPT.read_text(encoding="utf-8"), "6.1")


@pytest.fixture(scope="module")
def table() -> dict[str, exercises.Exercises]:
    return exercises.load()


def explain_with(entries: list[changelog.Entry], table: dict[str, exercises.Exercises]) -> candidates.Explain:
    """The cache stood in for by the excerpt: AFTER's changelog is the excerpt, no other is kept."""
    return lambda case, before, after: candidates.find(
        case, before, after, lambda k: entries if k == AFTER else None, table
    )


def test_the_fix_is_the_first_candidate_of_the_build_that_has_it(
    entries: list[changelog.Entry], table: dict[str, exercises.Exercises]
) -> None:
    found = explain_with(entries, table)(CASE, BEFORE, AFTER)
    assert found is not None and not found.note and not found.across
    between = changelog.between(entries, "6.1.190-1", "6.1.192-1")
    assert found.entries == len(between) and 0 < len(found.ranked) < len(between)
    assert found.ranked[0].entry.title.startswith("mm/mremap: fix locked_vm leak")
    assert {"mm/mremap", "MREMAP_DONTUNMAP"} <= set(found.ranked[0].matched)
    assert all(c.entry.version in ("6.1.192-1", "6.1.192-2") for c in found.ranked)
    lines = found.lines(1)
    assert lines[0].startswith(f"candidates for {CASE}, 6.1.190-1 → 6.1.192-1: {len(found.ranked)} of ")
    assert FIX in lines[1] and "upstream 6.1.191 in 6.1.192-1" in lines[1]
    if len(found.ranked) > 1:
        assert lines[2] == f"  ... and {len(found.ranked) - 1} more (--candidates N shows more)"
    # the order of the two builds does not matter (compare may go from newer to older)
    again = explain_with(entries, table)(CASE, AFTER, BEFORE)
    assert again is not None and again.ranked == found.ranked


def test_what_cannot_be_explained_says_why(
    entries: list[changelog.Entry], table: dict[str, exercises.Exercises]
) -> None:
    explain = explain_with(entries, table)
    across = explain(CASE, BEFORE, TRIXIE)
    assert across is not None and across.across and not across.ranked
    assert "harness bisect --repo LINUX --good v6.1.190 --bad v6.12.95" in across.note
    missing = explain(CASE, kernel("bookworm", "6.1.176-1", "6.1.0-50-amd64"), BEFORE)
    assert missing is not None and "6.1.190-1: its changelog is not in the cache" in missing.lines()[0]
    path = KernelInfo("bzImage", "4.4.178", None, None, "cd" * 32, "path:/k/bzImage")
    assert explain(CASE, path, AFTER) is None
    unrelated = explain("limits", BEFORE, AFTER)
    assert unrelated is not None and "touches what the case exercises" in unrelated.lines()[0]


def result(boot_id: str, case: str, outcome: Outcome, fingerprint: dict[str, Any]) -> CaseResult:
    return CaseResult(boot_id, case, "64K", "user", outcome, "", {}, fingerprint=json.dumps(fingerprint))


def run_across_the_fix() -> RunRecord:
    """Two builds of bookworm's line on both sides of the fix, and trixie after them."""
    boots = []
    for boot_id, info, restored in (("b54", BEFORE, False), ("b55", AFTER, True), ("t", TRIXIE, True)):
        outcome = Outcome.PASS if restored else Outcome.DEVIATION
        cases = [result(boot_id, CASE, outcome, {"accounting_restored": restored})]
        cases.append(result(boot_id, "limits", Outcome.PASS, {"rlimit_soft": 65536 if boot_id != "t" else 1}))
        boots.append(BootResult(boot_id, info, 256, cases=cases))
    return RunRecord("r1", "2026-12-06T00:00:00Z", "2026-12-06T00:01:00Z", False, boots)


def test_a_run_shows_the_candidates_of_its_changes_within_a_line(
    entries: list[changelog.Entry], table: dict[str, exercises.Exercises]
) -> None:
    run, explain = run_across_the_fix(), explain_with(entries, table)
    said = terminal.changes_lines(run.boots, explain, 2)
    assert said[0] == "behaviour changes within a line: 1" and FIX in said[2]
    assert terminal.changes_lines(run.boots, None, 2) == []

    md = summary_md.markdown(run, explain)
    assert f"  - candidates for {summary_md.md_escape(CASE)}" in md and summary_md.md_escape(FIX) in md
    assert "Between two upstream lines no changelog says what changed:" in md
    assert "harness bisect --repo LINUX --good v6.1.192 --bad v6.12.95" in md

    page = report_html.pages(run, explain)["report.html"]
    tree = parse(page)
    block = next(d for d in tree.iter("div") if "fd" in d.classes)
    assert FIX in block.text and "changelog" in block.text
    changed = [a for a in tree.iter("a") if a.text.startswith("Δ")]
    assert any(FIX in (a.attrs.get("title") or "") for a in changed)
    assert "changelog" not in report_html.pages(run)["report.html"].split('id="findings"')[1].split("<h2>")[0]


def test_a_hostile_changelog_title_is_text_everywhere(table: dict[str, exercises.Exercises]) -> None:
    """A changelog is untrusted: markup in a title stays text in HTML and Markdown, escapes never
    reach the terminal (the parser drops control characters; terminal.text escapes the rest)."""
    hostile = [changelog.Entry("6.1.192-1", "6.1.191", f"mm/mremap: MREMAP_DONTUNMAP {HOSTILE} [x](http://e)", ())]
    run = run_across_the_fix()
    explain = explain_with(hostile, table)
    page = report_html.pages(run, explain)["report.html"]
    assert HOSTILE not in page and "&lt;script&gt;" in page
    md = summary_md.markdown(run, explain)
    assert HOSTILE not in md and "[x](http://e)" not in md
    out = io.StringIO()
    terminal.print_summary(run.boots, Console(file=out, width=300, force_terminal=True), explain=explain)
    assert "MREMAP_DONTUNMAP" in out.getvalue()


def point(info: KernelInfo, restored: bool, changed: bool) -> Point:
    fingerprint = json.dumps({"accounting_restored": restored})
    outcome = Outcome.PASS if restored else Outcome.DEVIATION
    return Point(info, outcome, fingerprint, 1, False, changed, ("accounting_restored",) if changed else (), "r1")


def test_history_changes_and_compare_show_them_too(
    entries: list[changelog.Entry], table: dict[str, exercises.Exercises]
) -> None:
    explain = explain_with(entries, table)
    points = (point(BEFORE, False, False), point(AFTER, True, True), point(TRIXIE, False, True))
    timelines = [Timeline(CASE, memlock, "user", 256, points, 1) for memlock in ("64K", "default")]
    out = io.StringIO()
    views.render(timelines, Console(file=out, width=300), only_changes=True, explain=explain, candidates=1)
    text = out.getvalue()
    assert text.count(f"candidates for {CASE}, 6.1.190-1 → 6.1.192-1") == 1 and FIX in text
    assert text.count("6.1.192-1 → 6.12.95-1: two upstream lines, which no changelog connects") == 1

    run = run_across_the_fix()
    base = compare.kernel_side(BEFORE, [(256, r) for r in run.boots[0].cases])
    new = compare.kernel_side(AFTER, [(256, r) for r in run.boots[1].cases])
    diffs = compare.compare(base, new)
    lines = compare.explained(diffs, base, explain, 5)
    assert lines[0].startswith(f"candidates for {CASE}, 6.1.190-1 → 6.1.192-1") and FIX in lines[1]


def test_a_backport_counts_as_its_base_upload(table: dict[str, exercises.Exercises]) -> None:
    """6.12.95-1~bpo12+1 is 6.12.95-1's source rebuilt: the entries between it and 6.12.117-1 are
    those of the uploads after 6.12.95-1, not 6.12.95-1's own (which sort above its backport)."""
    planted = [
        changelog.Entry(version, "", f"mm/mremap: MREMAP_DONTUNMAP change of {version}", ())
        for version in ("6.12.117-1~deb12u1", "6.12.117-1", "6.12.100-1", "6.12.95-1", "6.12.95-1~bpo12+1")
    ]
    backport = kernel("bookworm-backports", "6.12.95-1~bpo12+1", "6.12.95+bpo-amd64")
    trixie = kernel("trixie", "6.12.117-1~deb12u1", "6.12.117+deb12-amd64")
    found = candidates.find(CASE, backport, trixie, lambda k: planted, table)
    assert found is not None and found.entries == 3
    assert [c.entry.title.rsplit(" ", 1)[1] for c in found.ranked] == ["6.12.117-1~deb12u1", "6.12.117-1", "6.12.100-1"]
