"""Rendering timelines for people: a letter grid across kernel versions, or one table per row.

Reads only Timeline and Point (timeline.py); nothing here touches the database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness import terminal, versions
from harness.history.timeline import Timeline
from harness.results import KernelInfo

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


def render(timelines: Sequence[Timeline], console: Console, detail: bool = False, only_changes: bool = False) -> None:
    """Print timelines for a kernel developer: a letter grid, or with `detail` one line per kernel."""
    if not timelines:
        console.print(Text("no observed behaviour in the history"))
        return
    shown = [t for t in timelines if not only_changes or t.first_change is not None or t.varies]
    if detail:
        for timeline in shown:
            console.print(_detail_table(timeline))
    elif shown:
        console.print(_grid(shown))
    changing = sum(1 for t in timelines if t.first_change is not None)
    line = f"{changing} of {len(timelines)} rows change between kernels"
    if len(shown) < len(timelines):
        line += f"; {len(timelines) - len(shown)} rows that never change are hidden"
    if not detail:
        line += (f". Letters name the distinct behaviours within a row; {_FIRST} marks the first kernel whose "
                 f"behaviour changed, {_VARIES} a kernel whose runs disagreed (latest shown), {_NOT_SEEN} not "
                 "observed.")  # fmt: skip
    console.print(terminal.text(line))


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


def _detail_table(timeline: Timeline) -> Table:
    # Text, not a str: rich would read "[memlock=…]" in the name as markup and drop it.
    table = Table(title=terminal.text(timeline.name, style="bold"), title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)  # fmt: skip
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
        table.add_row(terminal.text(versions.name(p.kernel)), terminal.text(p.kernel.release), Text(p.outcome.value),
                      Text(runs), text)  # fmt: skip
    return table
