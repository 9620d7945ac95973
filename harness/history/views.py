"""Rendering timelines for people: a letter grid across kernel versions, or one table per row.

Reads only Timeline and Point (timeline.py); nothing here touches the database.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness import versions
from harness.history.timeline import Point, Timeline
from harness.kit.known import Known, covering
from harness.report import terminal
from harness.report.candidates import SHOWN, Explain
from harness.results import CaseResult, KernelInfo

_NOT_SEEN = "·"
_FIRST = "*"
_VARIES = "~"
_FIRST_STYLE = "bold yellow"


def _letter(n: int) -> str:
    # A..Z, then AA, AB…: a row rarely has more than a handful of behaviours, but never run out.
    text = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        text = chr(ord("A") + rem) + text
    return text


def _letters(timeline: Timeline) -> list[str]:
    names: dict[str, str] = {}
    return [names.setdefault(p.fingerprint, _letter(len(names))) for p in timeline.points]


def _kernel_key(kernel: KernelInfo) -> str:
    return kernel.sha256 or f"{kernel.package}|{kernel.version}|{kernel.release}"


def _readable(value: Any) -> str:
    """A JSON value as text for people: strings unquoted, objects as {k=v,...}, lists as [a,b]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ",".join(_readable(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_readable(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def behaviour(fingerprint: str) -> str:
    """A fingerprint as `key=value` pairs, for reading rather than parsing."""
    try:
        doc = json.loads(fingerprint)
    except json.JSONDecodeError:
        return fingerprint
    if not isinstance(doc, dict):
        return fingerprint
    return " ".join(f"{k}={_readable(v)}" for k, v in doc.items())


def render(
    timelines: Sequence[Timeline],
    console: Console,
    detail: bool = False,
    only_changes: bool = False,
    known: Sequence[Known] = (),
    explain: Explain | None = None,
    candidates: int = SHOWN,
) -> None:
    """Print timelines for a kernel developer: a letter grid, or with `detail` one line per kernel,
    a finding a known-deviations entry expects marked as known. With `only_changes`, `explain`
    gives each change within a line its changelog candidates (at most `candidates` shown)."""
    if not timelines:
        console.print(Text("no observed behaviour in the history"))
        return
    shown = [t for t in timelines if not only_changes or t.first_change is not None or t.varies]
    if detail:
        for timeline in shown:
            console.print(_detail_table(timeline, known))
    elif only_changes:
        for title, rows in _changes(shown).items():
            if rows:
                console.print(_changes_table(title, rows, _rows_per_case(timelines)))
                if explain is not None:
                    _explained(rows, explain, candidates, console)
    elif shown:
        console.print(_grid(shown))
    changing = sum(1 for t in timelines if t.first_change is not None)
    line = f"{changing} of {len(timelines)} rows change between kernels"
    if len(shown) < len(timelines):
        line += f"; {len(timelines) - len(shown)} rows that never change are hidden"
    if only_changes and not detail:
        line += (
            ". Each change is named by the first kernel (in version order) that carries it; 'within "
            "a line': the kernel before it is of that upstream line too."
        )
    elif not detail:
        line += (
            f". Letters name the distinct behaviours within a row; {_FIRST} marks the first kernel whose "
            f"behaviour changed, {_VARIES} a kernel whose runs disagreed (latest shown), {_NOT_SEEN} not "
            "observed."
        )
    console.print(terminal.text(line))


@dataclass
class _Change:
    """One case's behaviour changing between two adjacent kernels, in every row where it does."""

    before: KernelInfo
    after: KernelInfo
    case: str
    where: list[str] = field(default_factory=list)  # "64K user 256M", one per row
    fields: dict[str, None] = field(default_factory=dict)  # ordered set
    varies: bool = False


WITHIN = "within a line"
BETWEEN = "between lines"


def _changes(timelines: Sequence[Timeline]) -> dict[str, list[_Change]]:
    """Every change, grouped by (kernel before, kernel after, case): where a stable update changed
    behaviour, and where a new line did."""
    found: dict[tuple[str, str, str], _Change] = {}
    for t in timelines:
        for before, after in zip(t.points, t.points[1:]):  # noqa: B905 (pairs)
            if not after.changed:
                continue
            key = (_kernel_key(before.kernel), _kernel_key(after.kernel), t.case)
            change = found.setdefault(key, _Change(before.kernel, after.kernel, t.case))
            change.where.append(_row(t))
            change.fields.update(dict.fromkeys(after.changed_fields or ("fingerprint",)))
            change.varies |= before.varies or after.varies
    grouped: dict[str, list[_Change]] = {WITHIN: [], BETWEEN: []}
    for change in found.values():
        same = versions.upstream(change.before)[:2] == versions.upstream(change.after)[:2]
        grouped[WITHIN if same else BETWEEN].append(change)
    for changes in grouped.values():
        changes.sort(
            key=functools.cmp_to_key(
                lambda a, b: versions.compare(a.after, b.after) or versions.compare(a.before, b.before)
            )
        )
    return grouped


def _explained(changes: Sequence[_Change], explain: Explain, shown: int, console: Console) -> None:
    """Under the table: each change's candidates; between lines, one line per pair of builds."""
    said: set[str] = set()
    for c in changes:
        found = explain(c.case, c.before, c.after)
        if found is None:
            continue
        if found.across:  # not the case's business: said once per pair of builds
            text = [f"{versions.name(found.before)} → {versions.name(found.after)}: {found.note}"]
            if text[0] in said:
                continue
            said.add(text[0])
        else:
            text = found.lines(shown)
        for line in text:
            console.print(terminal.text(line))


def _row(t: Timeline) -> str:
    return f"{t.memlock} {t.user} {t.ram_mb}M"


def _rows_per_case(timelines: Sequence[Timeline]) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for t in timelines:
        rows.setdefault(t.case, []).append(_row(t))
    return rows


def _rows(where: Sequence[str], every: Sequence[str]) -> str:
    """The rows a change is in, the shorter way round: "all", "all but 0 user 256M", or the list."""
    missing = [r for r in every if r not in where]
    if not missing:
        return f"all {len(where)}" if len(where) > 1 else where[0]
    return "all but " + "; ".join(missing) if len(missing) < len(where) else "; ".join(where)


def _build(kernel: KernelInfo) -> str:
    return f"{versions.name(kernel)} ({kernel.release})" if kernel.version else kernel.release


def _changes_table(title: str, changes: Sequence[_Change], rows_of: dict[str, list[str]]) -> Table:
    table = Table(
        title=f"Behaviour changes {title} ({len(changes)})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for header in (
        "line",
        "first build with the change",
        "build before it",
        "case",
        "rows (limit user RAM)",
        "what changed",
    ):
        table.add_column(header, overflow="fold")
    for c in changes:
        line = ".".join(map(str, versions.upstream(c.after)[:2]))
        what = ", ".join(c.fields) + (" (runs disagreed)" if c.varies else "")
        rows = _rows(c.where, rows_of.get(c.case, c.where))
        table.add_row(
            Text(line),
            terminal.text(_build(c.after)),
            terminal.text(_build(c.before)),
            terminal.text(c.case),
            terminal.text(rows),
            terminal.text(what),
        )
    return table


def _grid(timelines: Sequence[Timeline]) -> Table:
    kernels: dict[str, KernelInfo] = {}
    for t in timelines:
        for p in t.points:
            kernels.setdefault(_kernel_key(p.kernel), p.kernel)
    columns = versions.ordered(kernels.values())
    names = [versions.name(k) for k in columns]
    # Two builds of one version (a rebuilt path kernel) would get the same header otherwise.
    headers = [f"{n} {k.sha256[:8]}" if names.count(n) > 1 else n for n, k in zip(names, columns, strict=True)]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("case", "memlock", "user", "RAM"):
        table.add_column(header, overflow="fold")
    for header in headers:
        table.add_column(terminal.text(header), justify="center", overflow="fold")
    index = {_kernel_key(k): i for i, k in enumerate(columns)}
    for t in timelines:
        cells = [Text(_NOT_SEEN, style="dim") for _ in columns]
        for n, (p, letter) in enumerate(zip(t.points, _letters(t), strict=True)):
            first = n == t.first_change
            text = letter + (_FIRST if first else "") + (_VARIES if p.varies else "")
            cells[index[_kernel_key(p.kernel)]] = Text(
                text, style=_FIRST_STYLE if first else "bold" if p.changed else ""
            )
        row = (terminal.text(t.case), terminal.text(t.memlock), terminal.text(t.user))
        table.add_row(*row, Text(f"{t.ram_mb}M"), *cells)
    return table


def _outcome(timeline: Timeline, point: Point, known: Sequence[Known]) -> Text:
    result = CaseResult("", timeline.case, timeline.memlock, timeline.user, point.outcome, "", None)
    if covering(known, result, point.kernel) is not None:
        return Text(f"known {point.outcome.value}", "dim")
    return Text(point.outcome.value)


def _detail_table(timeline: Timeline, known: Sequence[Known] = ()) -> Table:
    # Text, not a str: rich would read "[memlock=…]" in the name as markup and drop it.
    table = Table(
        title=terminal.text(timeline.name, style="bold"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for header in ("kernel", "release", "outcome", "runs", "behaviour"):
        table.add_column(header, overflow="fold", no_wrap=header in ("kernel", "outcome"))
    for n, (p, letter) in enumerate(zip(timeline.points, _letters(timeline), strict=True)):
        shown = f"{letter}: {behaviour(p.fingerprint)}" if n == 0 or p.changed else f"{letter}: as above"
        runs = f"{p.runs}, varies" if p.varies else str(p.runs)
        text = terminal.text(shown)
        if p.changed:
            marker = "first change" if n == timeline.first_change else "changed"
            fields = ", ".join(p.changed_fields) or "fingerprint"
            text.append(f"  ← {marker}: {fields}", style=_FIRST_STYLE if n == timeline.first_change else "bold")
        table.add_row(
            terminal.text(versions.name(p.kernel)),
            terminal.text(p.kernel.release),
            _outcome(timeline, p, known),
            Text(runs),
            text,
        )
    return table
