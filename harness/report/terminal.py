"""The terminal: the one place that makes text safe to print, and what a finished run prints.

Everything printed may hold what a guest or a file said: kernel messages, serial excerpts, paths,
commit titles. Two rules keep it inert. `safe` shows control characters (ESC starts ANSI and OSC
sequences: colours, cursor moves, window titles, hyperlinks), bidi overrides and lone surrogates as
visible escapes, whether or not stdout is a terminal. And no such text is ever read as rich
markup: it goes into `Text` (`text`) or is printed with markup off (`printer`), so a "[/]" in a
path or a commit title is printed as it is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.report import candidates, overview
from harness.report.junit import BOOT_CASE
from harness.results import BootResult, Outcome, RunRecord, outcome_counts

# C0 controls but tab and newline, DEL, C1 controls, bidi embeddings/overrides/isolates, surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    if 0xD800 <= code <= 0xDFFF:
        return "\ufffd"  # a lone surrogate cannot be written as UTF-8 at all
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object) -> str:
    """`value` as text that cannot change what a terminal shows beyond itself."""
    return _UNSAFE.sub(_escape, str(value))


def text(value: object, style: str = "") -> Text:
    """A table cell or line of untrusted text: made safe, never read as markup."""
    return Text(safe(value), style=style)


def printer(console: Console) -> Callable[[str], None]:
    """A log function for `console`: every line made safe, no markup, no highlighting, no emoji
    (rich would print `64K:x:` with an emoji in place of `:x:`)."""

    def say(line: str) -> None:
        console.print(safe(line), markup=False, highlight=False, emoji=False, soft_wrap=True)

    return say


_OUTCOME_STYLE = {
    Outcome.PASS: "green",
    Outcome.DEVIATION: "bold red",
    Outcome.NOT_APPLICABLE: "cyan",
    Outcome.OOM_KILLED: "bold red",
    Outcome.PANIC: "bold red",
    Outcome.TIMEOUT: "yellow",
    Outcome.INFRA_ERROR: "yellow",
}


def _boot_counts(boot: BootResult) -> Counter[Outcome]:
    counts = Counter(r.outcome for r in boot.cases)
    if boot.error:
        # Counted as junit.xml counts it: one errored "boot" testcase.
        counts[Outcome.INFRA_ERROR] += 1
    return counts


def _seconds(boot: BootResult, key: str) -> str:
    value = boot.timings.get(key)
    return "-" if value is None else f"{value:.1f}"


def summary_table(boots: Sequence[BootResult]) -> Table:
    """One row per boot: what ran, how long it took to boot/SSH/probe, and results per outcome."""
    table = Table(title="Boots (seconds from QEMU start)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("boot", no_wrap=True)
    table.add_column("release", no_wrap=True)
    for header in ("ready", "ssh", "done"):
        table.add_column(header, justify="right")
    for outcome in Outcome:
        table.add_column(outcome.header, justify="right")
    for boot in boots:
        release = (boot.kernel.release if boot.kernel is not None else "") or boot.uname or "-"
        counts = _boot_counts(boot)
        cells: list[Text] = [text(boot.boot_id), text(release)]
        cells += [Text(_seconds(boot, key)) for key in ("marker", "ssh", "probe")]
        for outcome in Outcome:
            n = counts[outcome]
            cells.append(Text(str(n), style=_OUTCOME_STYLE[outcome] if n else "dim"))
        table.add_row(*cells)
    return table


def problems_table(boots: Sequence[BootResult]) -> Table:
    """Every result that is neither pass nor n/a, and every boot error (in full, once per boot);
    empty when the run is clean."""
    table = Table(title="Deviations and errors", title_justify="left")
    table.add_column("boot")
    table.add_column("case")
    table.add_column("outcome")
    table.add_column("message", overflow="fold")
    for boot in boots:
        if boot.error:
            style = _OUTCOME_STYLE[Outcome.INFRA_ERROR]
            table.add_row(
                text(boot.boot_id),
                Text(BOOT_CASE),
                Text(Outcome.INFRA_ERROR.value, style),
                text(overview.full_error(boot.error)),
            )
        for r in boot.cases:
            if r.outcome in (Outcome.PASS, Outcome.NOT_APPLICABLE):
                continue
            style = _OUTCOME_STYLE[r.outcome]
            message = overview.full_error(r.message)
            table.add_row(text(boot.boot_id), text(r.name), Text(r.outcome.value, style), text(message))
    return table


def grouped_problems_table(boots: Sequence[BootResult]) -> Table:
    """The same results as problems_table, one row per (case, outcome, what was observed), with the
    boots and the (limit, user) runs it covers: a finding seen on every kernel under every limit is
    one line, not one per result. Boots that did not start are left out: `unstarted_lines` has them."""
    started = [boot for boot in boots if not overview.did_not_start(boot)]
    groups: dict[tuple[bool, str, Outcome, str], tuple[list[str], list[str]]] = {}
    for boot in started:
        for r in boot.cases:
            if r.outcome in (Outcome.PASS, Outcome.NOT_APPLICABLE):
                continue
            # A known finding reads as its entry says, after every new one: the news comes first.
            key = (bool(r.known), r.case, r.outcome, r.known or overview.full_error(r.message))
            where, runs = groups.setdefault(key, ([], []))
            if boot.boot_id not in where:
                where.append(boot.boot_id)
            if (run := f"{r.memlock}/{r.user}") not in runs:
                runs.append(run)
    table = Table(title="Deviations and errors, grouped (--verbose: every result)", title_justify="left")
    for column in ("case", "outcome", "message", "boots", "limit/user"):
        table.add_column(column, overflow="fold")
    for boot in started:
        if boot.error:  # its first line: the serial lines are in its log, and in --verbose
            style = _OUTCOME_STYLE[Outcome.INFRA_ERROR]
            error = text(overview.first_line(boot.error))
            table.add_row(Text(BOOT_CASE), Text(Outcome.INFRA_ERROR.value, style), error, text(boot.boot_id), Text(""))
    for (known, case, outcome, message), (where, runs) in sorted(groups.items(), key=lambda g: g[0][0]):
        shown = overview.capped(where)
        table.add_row(
            text(case),
            Text(f"known {outcome.value}", "dim") if known else Text(outcome.value, _OUTCOME_STYLE[outcome]),
            text(message, "dim" if known else ""),
            text(f"{len(where)}: {shown}"),
            text(", ".join(runs)),
        )
    return table


def unstarted_lines(boots: Sequence[BootResult]) -> list[Text]:
    """One line per reason boots did not start (overview.unstarted), with the boots and the results
    it stands for: "4 boots did not start: REASON (boots: a, b, c +1; 244 results: timeout)"."""
    lines = []
    for reason, group in overview.unstarted(boots):
        line = f"{overview.boots_did_not_start(len(group))}: {reason} ({overview.unstarted_covers(group)})"
        lines.append(text(line, _OUTCOME_STYLE[overview.unstarted_outcome(group)]))
    return lines


def news(boots: Sequence[BootResult], fixed: Sequence[tuple[str, Sequence[str]]] = ()) -> list[str]:
    """What a nightly reader needs first: the new findings, how many are known, and known entries
    that no longer deviate (each `fixed` as (the entry's case and reason, the boots))."""
    results = [r for boot in boots for r in boot.cases]
    new = sum(1 for r in results if r.fails)
    known = sum(1 for r in results if r.known)
    lines = [f"{new} new finding{'s' if new != 1 else ''}" + (f", {known} known" if known else "")]
    lines += [f"fixed: {what} no longer deviates ({overview.capped(list(where))})" for what, where in fixed]
    return lines


# Changes within a line printed with their candidates; the rest are in summary.md and report.html.
CHANGES_SHOWN = 10


def changes_lines(boots: Sequence[BootResult], explain: candidates.Explain | None, shown: int) -> list[str]:
    """A block per behaviour change between two builds of one line: the changelog entries that may
    explain it. Changes between lines have no such block (summary.md says how to bisect them)."""
    m = overview.matrix(RunRecord("", "", None, False, list(boots)))
    found = candidates.within(candidates.of_changes(m, explain))
    if not found:
        return []
    lines = [f"behaviour changes within a line: {len(found)}"]
    for c in found[:CHANGES_SHOWN]:
        lines += c.lines(shown)
    if len(found) > CHANGES_SHOWN:
        lines.append(f"... and {len(found) - CHANGES_SHOWN} more changes: summary.md, or harness history --changes")
    return lines


def print_summary(
    boots: Sequence[BootResult],
    console: Console,
    verbose: bool = False,
    fixed: Sequence[tuple[str, Sequence[str]]] = (),
    explain: candidates.Explain | None = None,
    shown: int = candidates.SHOWN,
) -> None:
    console.print(summary_table(boots))
    problems = problems_table(boots) if verbose else grouped_problems_table(boots)
    if problems.row_count:
        console.print(problems)
    for line in changes_lines(boots, explain, shown):
        console.print(text(line), soft_wrap=True)
    if not verbose:  # --verbose lists these boots' errors and results in its table
        for said in unstarted_lines(boots):
            console.print(said, soft_wrap=True)
    totals = outcome_counts(boots)
    line = ", ".join(f"{totals[outcome.value]} {outcome.header}" for outcome in Outcome)
    boot_errors = sum(1 for boot in boots if boot.error)
    if boot_errors:
        line += f"; {boot_errors} boot error{'s' if boot_errors != 1 else ''}"
    console.print(Text(f"{len(boots)} boots: {line}"))
    reused = overview.reused(boots)
    if reused:
        console.print(text(reused), soft_wrap=True)
    for told in news(boots, fixed):
        alarm = not told.startswith(("0 new", "fixed"))
        console.print(text(told, "bold red" if alarm else ""), soft_wrap=True)
