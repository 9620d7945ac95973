"""summary.md: the run in brief for CI job summaries (counts, its findings grouped as the terminal
groups them, new ones first, behaviour changes with what changed, boots), every list capped and
every guest string made inert Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from harness.jsondoc import encodable
from harness.report import candidates, findings, overview
from harness.results import BootResult, Outcome, RunRecord, outcome_counts

# summary.md goes into $GITHUB_STEP_SUMMARY, which GitHub refuses above 1 MiB; lists are cut well below.
SUMMARY_MAX_ITEMS = 50
SUMMARY_MAX_BOOTS = 200
SUMMARY_MAX_NAMED = 10  # boots named on the line of boots that did not start
_MD_TEXT_MAX = 300
_CHANGE_MAX = 600  # what changed: a few fields, each value cut at 80 characters (findings.what_changed)

# Every ASCII punctuation character may be backslash-escaped in CommonMark. Inside a line these
# are the ones that start emphasis, code, links, HTML, entities, table cells, strikethrough,
# emoji (:x:), mentions or math ($) on GitHub; `!` and `(` are inert once `[` is escaped.
_MD_INLINE = re.compile(r"([\\`*_\[\]|<>~&:@$])")
# At the start of a list item these would open a block: a nested list or a heading.
_MD_BLOCK_START = re.compile(r"^([-+#=]|\d{1,9}(?=[.)](?:\s|$)))")
# C0/C1 controls (newlines included: one message is one table cell) and bidi overrides.
_MD_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


def md_escape(text: str, limit: int = _MD_TEXT_MAX) -> str:
    """Guest-provided text as inert Markdown on one line: no markup, links, HTML or table breaks."""
    text = " ".join(_MD_CONTROL.sub(" ", text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"  # cut before escaping, never in the middle of an escape
    text = _MD_INLINE.sub(r"\\\1", text)
    m = _MD_BLOCK_START.match(text)
    if m:  # escape the marker itself: "\-", "\#", or the "." of "1."
        at = m.end() if m.group(1)[0].isdigit() else 0
        text = text[:at] + "\\" + text[at:]
    return text


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return lines


def _more(n: int) -> str:
    return f"… {n} more, see {overview.HTML_FILE}"


def _unstarted(groups: Sequence[tuple[str, Sequence[BootResult]]]) -> list[str]:
    """A bullet per reason boots did not start: how many, the reason, the boots and their results."""
    lines = []
    for reason, boots in groups[:SUMMARY_MAX_ITEMS]:
        covers = md_escape(overview.unstarted_covers(boots, SUMMARY_MAX_NAMED))
        lines.append(f"- **{overview.boots_did_not_start(len(boots))}**: {md_escape(reason)} ({covers})")
    if len(groups) > SUMMARY_MAX_ITEMS:
        more = sum(len(boots) for _, boots in groups[SUMMARY_MAX_ITEMS:])
        lines.append(f"… {more} more boots that did not start, see {overview.HTML_FILE}")
    return lines + [""] if lines else []


def _finding(f: findings.Finding, m: overview.Matrix) -> str:
    """A finding in one bullet: case, outcome, what was observed (or the known entry's reason), the
    boots and the (limit, user) runs it covers, and its first and last kernel."""
    said = f.known or f.observed[0]
    boots = overview.capped([c.boot.boot_id for c in f.boots], SUMMARY_MAX_NAMED)
    span = f"only {f.first.name}" if f.first is f.last else f"first {f.first.name}, last {f.last.name}"
    runs = f"{', '.join(f.runs)} ({len(f.runs)} of {findings.runs_of(m, f.case)})"
    results = f"{len(f.seen)} result{'s' if len(f.seen) != 1 else ''}"
    where = f"{results} on {len(f.boots)} of {len(m.columns)} boots: {boots}; {span}; limit/user: {runs}"
    label = md_escape(f.label) if f.known else f"**{md_escape(f.label)}**"
    return f"- **{md_escape(f.case)}**: {label}: {md_escape(said)} ({md_escape(where, 600)})"


def _changes(m: overview.Matrix, explained: Mapping[candidates.Key, candidates.Candidates]) -> list[str]:
    """A bullet per behaviour change and what changed, the (limit, user) runs that changed alike as
    one; under a change within a line, the changelog entries that may explain it; between lines, a
    line per pair of kernels saying how to find the commit instead."""
    groups: dict[tuple[str, str, str, int, str], list[str]] = {}
    keys: dict[tuple[str, str, str, int, str], candidates.Key] = {}
    for change in m.changes:
        what = findings.describe(findings.cell_change(change.row, change.row.cells[change.after.index]), _CHANGE_MAX)
        key = (change.row.case, change.before.name, change.after.name, change.after.boot.ram_mb, what)
        groups.setdefault(key, []).append(f"{change.row.memlock}/{change.row.user}")
        keys[key] = (change.row.case, change.before.index, change.after.index)
    several_rams = len(m.ram_sizes) > 1
    lines, across = [], {}
    for key, runs in list(groups.items())[:SUMMARY_MAX_ITEMS]:
        case, before, after, ram_mb, what = key
        ram = f" ({ram_mb} MiB)" if several_rams else ""
        lines.append(
            f"- **{md_escape(case)}** ({md_escape(', '.join(runs))}): {md_escape(before)} → {md_escape(after)}{ram}: "
            + md_escape(what, _CHANGE_MAX)
        )
        found = explained.get(keys[key])
        if found is not None and found.across:
            across[f"{before} → {after}"] = found.note
        elif found is not None:
            head, *rest = found.lines()
            lines += [f"  - {md_escape(head, _CHANGE_MAX)}"] + [
                f"    - {md_escape(x.strip(), _CHANGE_MAX)}" for x in rest
            ]
    if len(groups) > SUMMARY_MAX_ITEMS:
        lines += ["", _more(len(groups) - SUMMARY_MAX_ITEMS)]
    if across:
        lines += ["", "Between two upstream lines no changelog says what changed:", ""]
        lines += [f"- {md_escape(pair)}: {md_escape(note, _CHANGE_MAX)}" for pair, note in across.items()]
    return lines or ["None."]


def markdown(run: RunRecord, explain: candidates.Explain | None = None) -> str:
    """summary.md: status, counts, findings (new first), behaviour changes (with their changelog
    candidates: `candidates.of_changes`) and a row per boot, all capped."""
    m = overview.matrix(run)
    counts = outcome_counts(run.boots)
    boot_errors = sum(1 for b in run.boots if b.error)
    out = [f"## Run {md_escape(run.run_id)}", ""]
    status = f"**{md_escape(overview.status(run))}**; {md_escape(overview.verdict(run.boots))}"
    finished = md_escape(run.finished) if run.finished else "not finished"
    out += [f"{status}. Started {md_escape(run.started)}, finished {finished}.", ""]
    if overview.reused(run.boots):
        out += [md_escape(overview.reused(run.boots)) + ".", ""]

    out += _md_table(
        [o.header for o in Outcome] + ["boot errors"],
        [[str(counts[o.value]) for o in Outcome] + [str(boot_errors)]],
    )
    out.append("")

    # Boots that did not start are a line per reason, not their failure copied into every case.
    unstarted = overview.unstarted(run.boots)
    found = findings.findings(m)
    not_started = sum(1 for _, group in unstarted for b in group for r in b.cases if r.outcome not in overview.QUIET)
    more = f"; {not_started} more results on boots that did not start" if not_started else ""
    out += [f"### Findings: {findings.tally(found)}{more}", ""]
    if not found and not unstarted:
        out += ["None: every case that answered passed, or does not apply.", ""]
    out += _unstarted(unstarted)
    new = [f for f in found if not f.known]
    for title, group in (("New", new), ("Known", found[len(new) :])):
        if group:
            out += [f"**{title}** ({len(group)})", ""]
            out += [_finding(f, m) for f in group[:SUMMARY_MAX_ITEMS]]
            out += [_more(len(group) - SUMMARY_MAX_ITEMS)] if len(group) > SUMMARY_MAX_ITEMS else []
            out.append("")

    out += [f"### Behaviour changes between adjacent kernel versions ({len(m.changes)})", ""]
    out += _changes(m, candidates.of_changes(m, explain)) + [""]

    out += ["### Boots", ""]
    boot_rows = []
    for c in m.columns[:SUMMARY_MAX_BOOTS]:
        bc = outcome_counts([c.boot])
        boot_rows.append(
            [md_escape(c.boot.boot_id), md_escape(c.name), md_escape(c.release), f"{c.boot.ram_mb} MiB"]
            + [str(bc[o.value]) for o in Outcome]
            + [md_escape(overview.first_line(c.boot.error), 150)]
        )
    out += _md_table(["boot", "kernel", "release", "RAM"] + [o.header for o in Outcome] + ["boot error"], boot_rows)
    if len(m.columns) > SUMMARY_MAX_BOOTS:
        out += ["", _more(len(m.columns) - SUMMARY_MAX_BOOTS)]
    out.append("")

    out += ["", f"Every result: {overview.HTML_FILE} in the run directory (a click on a cell opens its evidence)."]
    return encodable("\n".join(out) + "\n")
