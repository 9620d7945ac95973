"""A run seen as a kernel x case matrix: what both views for people show (report.html in `page`,
summary.md in `summary`).

Columns are boots in kernel version order (grouped by RAM), rows are case x limit x user with a
case's rows together, cases in the probe's catalogue order, and a cell whose behaviour differs
from the previous kernel that answered is a change. Pure: a RunRecord in, records out; the run
directory's owner (rundir) writes the views.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness import versions
from harness.errors import EXIT_FINDINGS, EXIT_OK
from harness.results import BootResult, CaseResult, Outcome, RunRecord, exit_code

HTML_FILE = "report.html"
SUMMARY_FILE = "summary.md"


# Short enough to fit a narrow matrix cell; the colour carries the rest.
LABEL = {
    Outcome.PASS: "ok",
    Outcome.DEVIATION: "dev",
    Outcome.NOT_APPLICABLE: "n/a",
    Outcome.OOM_KILLED: "oom",
    Outcome.PANIC: "panic",
    Outcome.TIMEOUT: "t/o",
    Outcome.INFRA_ERROR: "err",
}
MEANING = {
    Outcome.PASS: "observed what the expectations say",
    Outcome.DEVIATION: "observed something else: a finding about the kernel",
    Outcome.NOT_APPLICABLE: "the case says nothing on this kernel, limit and user",
    Outcome.OOM_KILLED: "the probe child was killed by the OOM killer: a finding",
    Outcome.PANIC: "the guest kernel panicked during the case: a finding",
    Outcome.TIMEOUT: "the case did not finish in time: no answer",
    Outcome.INFRA_ERROR: "the harness could not get an answer (boot, SSH, QEMU)",
}
QUIET = (Outcome.PASS, Outcome.NOT_APPLICABLE)


# --- the matrix, shared by both views ----------------------------------------------------------


@dataclass(frozen=True)
class Column:
    index: int
    boot: BootResult
    name: str  # the kernel's version as tables name it
    release: str
    group_start: bool  # first column of its RAM size

    @property
    def anchor(self) -> str:
        return f"b{self.index}"


@dataclass(frozen=True)
class Cell:
    result: CaseResult | None
    changed_from: Column | None  # the earlier kernel (same RAM) that behaved otherwise


@dataclass(frozen=True)
class Row:
    index: int
    case: str
    memlock: str
    user: str
    cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        return f"{self.case}[memlock={self.memlock},user={self.user}]"

    @property
    def interesting(self) -> bool:
        return any(
            c.changed_from is not None or (c.result is not None and c.result.outcome not in QUIET) for c in self.cells
        )


@dataclass(frozen=True)
class Change:
    row: Row
    before: Column
    after: Column


@dataclass(frozen=True)
class Matrix:
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    changes: tuple[Change, ...]
    ram_sizes: tuple[int, ...]


def matrix(run: RunRecord) -> Matrix:
    ram_sizes = tuple(sorted({b.ram_mb for b in run.boots}))
    boots: list[BootResult] = []
    for ram in ram_sizes:
        # Unresolved kernels have no place in the order: last.
        boots += versions.ordered_by((b for b in run.boots if b.ram_mb == ram), lambda b: b.kernel)
    columns = tuple(
        Column(
            i,
            boot,
            versions.name(boot.kernel) if boot.kernel is not None else "unresolved kernel",
            (boot.kernel.release if boot.kernel is not None else "") or boot.uname,
            i == 0 or boots[i - 1].ram_mb != boot.ram_mb,
        )
        for i, boot in enumerate(boots)
    )
    # Cases in the order the plan ran them (the probe's catalogue order), not alphabetical; a case's
    # rows together, though the plan runs every case under one limit before the next limit: a finding
    # under every limit is then a block of rows, not rows scattered down the page.
    by_boot: list[dict[tuple[str, str, str], CaseResult]] = []
    by_case: dict[str, dict[tuple[str, str, str], None]] = {}
    for boot in run.boots:
        for r in boot.cases:
            by_case.setdefault(r.case, {}).setdefault((r.case, r.memlock, r.user))
    keys = [key for rows_of_case in by_case.values() for key in rows_of_case]
    for column in columns:
        by_boot.append({(r.case, r.memlock, r.user): r for r in column.boot.cases})

    rows: list[Row] = []
    changes: list[Change] = []
    for index, key in enumerate(keys):
        cells: list[Cell] = []
        found: list[tuple[Column, Column]] = []
        last: tuple[str, Column] | None = None  # (fingerprint, column) of the last kernel that answered
        for column in columns:
            if column.group_start:
                last = None
            result = by_boot[column.index].get(key)
            changed_from = None
            if result is not None and result.fingerprint:
                # Compared with the last kernel that answered, so a boot that failed in between
                # does not hide a change across it.
                if last is not None and last[0] != result.fingerprint:
                    changed_from = last[1]
                    found.append((last[1], column))
                last = (result.fingerprint, column)
            cells.append(Cell(result, changed_from))
        row = Row(index, *key, cells=tuple(cells))
        rows.append(row)
        changes += [Change(row, before, after) for before, after in found]
    return Matrix(columns, tuple(rows), tuple(changes), ram_sizes)


# --- boots that did not start, shared by every view (the terminal's too) ------------------------


def did_not_start(boot: BootResult) -> bool:
    """The boot failed as a whole: it has an error and no guest of it ever became ready.

    Its cases' results are then the boot's failure copied into each (boot.fill, run.py), so the
    views show such boots as one line per reason (`unstarted`), not a row per case. A boot that
    started and then lost its guest is not one of them: its cases say how far it got.
    """
    return bool(boot.error) and "marker" not in boot.timings


def unstarted(boots: Iterable[BootResult]) -> list[tuple[str, list[BootResult]]]:
    """The boots that did not start, grouped by the first line of their error (`first_line`), in
    boot order: one (reason, boots) per distinct reason, in the order each reason first appears."""
    groups: dict[str, list[BootResult]] = {}
    for boot in boots:
        if did_not_start(boot):
            groups.setdefault(first_line(boot.error), []).append(boot)
    return list(groups.items())


# A first line may point at what follows it: "no ready marker within 20s (last serial lines below)".
_POINTER = re.compile(r"\s*\([^()]*\blines below\)\s*$")


def first_line(error: str) -> str:
    """An error (or message) as one line: its first non-blank line, without a pointer to lines
    below it, since a one-line view shows none of them."""
    line = next((line for line in error.split("\n") if line.strip()), "")
    return _POINTER.sub("", line.rstrip())


def full_error(error: str) -> str:
    """An error (or message) with all its lines; when nothing follows its first line, that line as
    `first_line` gives it, so no view promises lines below that are not there."""
    rest = error.strip().partition("\n")[2]
    return error.strip() if rest.strip() else first_line(error)


def capped(names: Sequence[str], limit: int = 3) -> str:
    """The first `limit` names, then how many more: "a, b, c +2"."""
    more = f" +{len(names) - limit}" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def reused(boots: Sequence[BootResult]) -> str:
    """How many boots took an earlier run's results instead of booting (harness.reuse), and whose."""
    runs = sorted({b.reused_from for b in boots if b.reused_from})
    if not runs:
        return ""
    n = sum(1 for b in boots if b.reused_from)
    return (
        f"{n} of {len(boots)} boots took the results of an earlier boot of the same kernel, image, QEMU and "
        f"probe (run {capped(runs)}), judged afresh; --fresh boots them"
    )


def boots_did_not_start(n: int) -> str:
    return f"{n} boot{'s' if n != 1 else ''} did not start"


def unstarted_covers(boots: Sequence[BootResult], limit: int = 3) -> str:
    """What a line of boots that did not start stands for: "boots: a, b, c +1; 244 results: timeout"."""
    names = f"boot{'s' if len(boots) != 1 else ''}: {capped([b.boot_id for b in boots], limit)}"
    results = result_outcomes(boots)
    return f"{names}; {results}" if results else names


def result_outcomes(boots: Iterable[BootResult]) -> str:
    """What the results of `boots` were, briefly: "244 results: timeout", "3 results: 2 panic,
    1 timeout"; "" when they have none (a boot of a missing shard)."""
    seen = Counter(r.outcome for boot in boots for r in boot.cases)
    total = sum(seen.values())
    if not total:
        return ""
    kinds = [o.value if len(seen) == 1 else f"{seen[o]} {o.value}" for o in Outcome if seen[o]]
    return f"{total} result{'s' if total != 1 else ''}: {', '.join(kinds)}"


def unstarted_outcome(boots: Iterable[BootResult]) -> Outcome:
    """The outcome a line of boots that did not start is shown as: a finding (a panic) first."""
    seen = {r.outcome for boot in boots for r in boot.cases}
    for outcome in (Outcome.PANIC, Outcome.OOM_KILLED, Outcome.DEVIATION, Outcome.TIMEOUT):
        if outcome in seen:
            return outcome
    return Outcome.INFRA_ERROR


def status(run: RunRecord) -> str:
    if run.complete:
        return "complete"
    if run.interrupted:
        return "interrupted: results are partial"
    return "incomplete: still running, or the run was killed"


def verdict(boots: Sequence[BootResult]) -> str:
    code = exit_code(boots)
    known = sum(1 for b in boots for r in b.cases if r.known)
    if code == EXIT_OK and known:
        return f"no new findings; {known} known deviation{'s' if known != 1 else ''}, as expected"
    if code == EXIT_OK:
        return "every case as documented"
    if code == EXIT_FINDINGS:
        return "findings: some kernels deviate from the documentation"
    return "infrastructure problems: some cases have no answer"
