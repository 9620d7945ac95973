"""A run's findings, as report.html, its boot pages and summary.md lead with them: the results that
are neither pass nor n/a, grouped as the terminal groups them (new or known, case, outcome, what was
observed), new ones first; and what changed in a cell that behaves otherwise than the kernel before.

A known finding is grouped by its entry's reason, not its message: one entry expects the same
deviation whatever numbers each limit printed. Boots that did not start are left out: every view
gives them one line per reason (overview.unstarted). Pure: a Matrix in, records out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from harness import versions
from harness.kit import verdict
from harness.report import overview
from harness.results import CaseResult, Outcome


@dataclass(frozen=True)
class Seen:
    """One result of a finding: where it is in the matrix."""

    row: overview.Row
    column: overview.Column
    result: CaseResult

    @property
    def run(self) -> str:
        return f"{self.row.memlock}/{self.row.user}"


@dataclass(frozen=True)
class Finding:
    index: int
    case: str
    outcome: Outcome
    known: str  # the known-deviations entry's reason and link; "" when nobody expected it
    observed: tuple[str, ...]  # the distinct messages (in full), first seen first
    seen: tuple[Seen, ...]  # in matrix order: row, then column
    boots: tuple[overview.Column, ...]  # in column order
    runs: tuple[str, ...]  # the (limit, user) runs, "64K/user", in row order
    first: overview.Column  # the oldest kernel that shows it
    last: overview.Column  # the newest

    @property
    def anchor(self) -> str:
        return f"f{self.index}"

    @property
    def label(self) -> str:
        """ "NEW deviation", "known deviation", "NEW timeout"."""
        return f"{'known' if self.known else 'NEW'} {self.outcome.value}"

    def on(self, column: overview.Column) -> list[Seen]:
        return [s for s in self.seen if s.column is column]


def findings(m: overview.Matrix) -> list[Finding]:
    """Every finding of the run: the new ones first, then the known ones, each in matrix order."""
    groups: dict[tuple[bool, str, Outcome, str], list[Seen]] = {}
    for row in m.rows:
        for column, cell in zip(m.columns, row.cells, strict=True):
            r = cell.result
            if r is None or r.outcome in overview.QUIET or overview.did_not_start(column.boot):
                continue
            key = (bool(r.known), r.case, r.outcome, r.known or overview.full_error(r.message))
            groups.setdefault(key, []).append(Seen(row, column, r))
    out = []
    # sorted() is stable: within new and within known, matrix order stays.
    for index, ((_, case, outcome, _), seen) in enumerate(sorted(groups.items(), key=lambda g: g[0][0])):
        boots = tuple(sorted({s.column.index: s.column for s in seen}.values(), key=lambda c: c.index))
        by_version = versions.ordered_by(boots, lambda c: c.boot.kernel)
        out.append(
            Finding(
                index=index,
                case=case,
                outcome=outcome,
                known=seen[0].result.known,
                observed=tuple(dict.fromkeys(overview.full_error(s.result.message) for s in seen)),
                seen=tuple(seen),
                boots=boots,
                runs=tuple(dict.fromkeys(s.run for s in seen)),
                first=by_version[0],
                last=by_version[-1],
            )
        )
    return out


def tally(found: list[Finding], column: overview.Column | None = None) -> str:
    """ "2 new, 5 known (130 results)", of the run or of one boot's column; "none" when there is nothing."""
    found = [f for f in found if column is None or f.on(column)]
    if not found:
        return "none"
    new = sum(1 for f in found if not f.known)
    results = sum(len(f.seen if column is None else f.on(column)) for f in found)
    return f"{new} new, {len(found) - new} known ({results} result{'s' if results != 1 else ''})"


def runs_of(m: overview.Matrix, case: str) -> int:
    """How many (limit, user) runs the case has: "3 of 7" needs the 7."""
    return sum(1 for row in m.rows if row.case == case)


# --- what changed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: str  # the value as compact JSON, or "absent"
    after: str


_VALUE_MAX = 80


def what_changed(before: str, after: str) -> tuple[FieldChange, ...]:
    """The fields two fingerprints differ in (verdict.changed_fields), each with both values."""
    fields = verdict.changed_fields(before, after)
    a, b = _document(before), _document(after)
    if a is None or b is None:  # not fingerprint documents: the whole of each is the value
        return tuple(FieldChange(f, _cut(before), _cut(after)) for f in fields)
    return tuple(FieldChange(f, _value(a, f), _value(b, f)) for f in fields)


def cell_change(row: overview.Row, cell: overview.Cell) -> tuple[FieldChange, ...]:
    """What a changed cell changed, against the kernel it changed from; () for a cell that did not."""
    if cell.changed_from is None or cell.result is None:
        return ()
    before = row.cells[cell.changed_from.index].result
    return what_changed(before.fingerprint if before is not None else "", cell.result.fingerprint)


def describe(changes: tuple[FieldChange, ...], limit: int = 300) -> str:
    """ "rlimit_hard: 65536 → 8388608; rlimit_soft: 65536 → 8388608", cut at `limit` characters."""
    text = "; ".join(f"{c.field}: {c.before} → {c.after}" for c in changes)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _document(fingerprint: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(fingerprint)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _value(doc: dict[str, Any], field: str) -> str:
    if field not in doc:
        return "absent"
    return _cut(json.dumps(doc[field], ensure_ascii=False, separators=(",", ":")))


def _cut(text: str) -> str:
    return text if len(text) <= _VALUE_MAX else text[: _VALUE_MAX - 1] + "…"
