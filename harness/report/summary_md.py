"""summary.md: the run in brief for CI job summaries (counts, boots, deviations by case, behaviour
changes), every list capped and every guest string made inert Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from harness.jsondoc import encodable
from harness.report import overview
from harness.results import BootResult, CaseResult, Outcome, RunRecord, outcome_counts

# summary.md goes into $GITHUB_STEP_SUMMARY, which GitHub refuses above 1 MiB; lists are cut well below.
SUMMARY_MAX_ITEMS = 50
SUMMARY_MAX_BOOTS = 200
SUMMARY_MAX_NAMED = 10  # boots named on the line of boots that did not start
_MD_TEXT_MAX = 300

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


def markdown(run: RunRecord) -> str:
    """summary.md: status, counts, a row per boot, deviations by case and behaviour changes, all capped."""
    m = overview.matrix(run)
    counts = outcome_counts(run.boots)
    boot_errors = sum(1 for b in run.boots if b.error)
    out = [f"## Run {md_escape(run.run_id)}", ""]
    status = f"**{md_escape(overview.status(run))}**; {md_escape(overview.verdict(run.boots))}"
    finished = md_escape(run.finished) if run.finished else "not finished"
    out += [f"{status}. Started {md_escape(run.started)}, finished {finished}.", ""]

    out += _md_table(
        [o.header for o in Outcome] + ["boot errors"],
        [[str(counts[o.value]) for o in Outcome] + [str(boot_errors)]],
    )
    out.append("")

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

    # Boots that did not start are a line per reason, not their failure copied into every case.
    unstarted = overview.unstarted(run.boots)
    # In matrix order (catalogue order, then kernel version), so the list reads like the page.
    problems: dict[str, list[tuple[overview.Column, CaseResult]]] = {}
    for row in m.rows:
        for column, cell in zip(m.columns, row.cells, strict=True):
            if overview.did_not_start(column.boot):
                continue
            if cell.result is not None and cell.result.outcome not in overview.QUIET:
                problems.setdefault(row.case, []).append((column, cell.result))
    total = sum(len(v) for v in problems.values())
    not_started = sum(1 for _, group in unstarted for b in group for r in b.cases if r.outcome not in overview.QUIET)
    header = f"{total + not_started}" + (f"; {not_started} of them on boots that did not start" if not_started else "")
    out += [f"### Deviations and other problems ({header})", ""]
    if not total and not unstarted:
        out += ["None.", ""]
    out += _unstarted(unstarted)
    shown = 0
    for case, items in problems.items():
        if shown >= SUMMARY_MAX_ITEMS:
            break
        out.append(f"**{md_escape(case)}** ({len(items)})")
        out.append("")
        for c, r in items[: SUMMARY_MAX_ITEMS - shown]:
            message = f": {md_escape(overview.full_error(r.message))}" if r.message.strip() else ""
            out.append(
                f"- memlock={md_escape(r.memlock)}, user={md_escape(r.user)} on {md_escape(c.boot.boot_id)} "
                f"({md_escape(c.name)}): **{r.outcome.value}**{message}"
            )
            shown += 1
        out.append("")
    if total > shown:
        out += [_more(total - shown), ""]

    several_rams = len(m.ram_sizes) > 1
    out += [f"### Behaviour changes between adjacent kernel versions ({len(m.changes)})", ""]
    if not m.changes:
        out += ["None.", ""]
    for change in m.changes[:SUMMARY_MAX_ITEMS]:
        ram = f" ({change.after.boot.ram_mb} MiB)" if several_rams else ""
        out.append(
            f"- {md_escape(change.row.name)}: {md_escape(change.before.name)} → {md_escape(change.after.name)}{ram}"
        )
    if len(m.changes) > SUMMARY_MAX_ITEMS:
        out += ["", _more(len(m.changes) - SUMMARY_MAX_ITEMS)]
    out += ["", f"Every result: {overview.HTML_FILE} in the run directory (a click on a cell opens its evidence)."]
    return encodable("\n".join(out) + "\n")
