"""Compare two sets of results: what changed between them, and which deviations are new.

A side is a run (its results.json.gz) or one kernel's latest observations from the history. Results
are paired by where they ran (the boot id for runs, the guest RAM for kernels), case, limit and
user, and compared by behaviour fingerprint and outcome. Only a deviation the baseline did not
already have, and that no known-deviations entry covers, makes `harness compare` exit 1: nightly
jobs want new regressions, not the same findings every night.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from harness import versions
from harness.errors import EXIT_FINDINGS, EXIT_INFRA, EXIT_OK, UserError
from harness.kit.known import KNOWN_FILE as KNOWN_FILE
from harness.kit.known import Known as Known
from harness.kit.known import load_known as load_known
from harness.kit.verdict import changed_fields
from harness.report import terminal
from harness.report.candidates import SHOWN, Explain
from harness.results import CaseResult, KernelInfo, RunRecord

Key = tuple[str, str, str, str]  # (boot id or RAM, case, memlock, user)


# --- sides -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a comparison: results by key, with the kernel each ran on."""

    name: str
    results: Mapping[Key, tuple[CaseResult, KernelInfo | None]]
    kind: str = "run"  # "run": keyed by boot id; "kernel": keyed by guest RAM


def run_side(run: RunRecord, name: str = "") -> Side:
    results = {(boot.boot_id, r.case, r.memlock, r.user): (r, boot.kernel) for boot in run.boots for r in boot.cases}
    return Side(name or f"run {run.run_id}", results)


def kernel_side(kernel: KernelInfo, results: Sequence[tuple[int, CaseResult]]) -> Side:
    """`results` are (guest RAM in MiB, result) pairs: one kernel's latest observations."""
    by_key = {(f"{ram}M", r.case, r.memlock, r.user): (r, kernel) for ram, r in results}
    return Side(f"kernel {versions.name(kernel)} ({kernel.release})", by_key, "kernel")


# --- comparison (pure) -------------------------------------------------------------------------


class Change(enum.Enum):
    NEW_DEVIATION = "new deviation"  # fails now, and did not fail this way in the baseline: exit 1
    KNOWN = "known deviation"  # would be new, but a known-deviations entry expects it
    FIXED = "fixed"  # failed in the baseline, passes (or is n/a) now
    CHANGED = "behaviour changed"  # behaves differently, and neither side is a finding
    NO_ANSWER = "no answer"  # the baseline had an answer; now a timeout or infrastructure error
    ONLY_BASELINE = "only in baseline"
    ONLY_NEW = "only in new"


@dataclass(frozen=True)
class Difference:
    key: Key
    change: Change
    base: CaseResult | None
    new: CaseResult | None
    kernel: KernelInfo | None  # the new side's kernel (the baseline's if only it has the result)
    fields: tuple[str, ...] = ()  # fingerprint fields that differ
    known: Known | None = None

    @property
    def case(self) -> str:
        return self.key[1]


def compare(base: Side, new: Side, known: Sequence[Known] = ()) -> list[Difference]:
    """Every result whose behaviour or outcome differs, in the new side's order (then baseline-only ones)."""
    if base.kind != new.kind:
        raise UserError(f"compare: {base.name} against {new.name}: give two runs or two kernels, not one of each")
    out: list[Difference] = []
    for key, (now, kernel) in new.results.items():
        paired = base.results.get(key)
        diff = _classify(key, paired[0] if paired else None, now, kernel, known)
        if diff is not None:
            out.append(diff)
    for key, (old, kernel) in base.results.items():
        if key not in new.results:
            out.append(Difference(key, Change.ONLY_BASELINE, old, None, kernel))
    return out


def _classify(
    key: Key, before: CaseResult | None, now: CaseResult, kernel: KernelInfo | None, known: Sequence[Known]
) -> Difference | None:
    # Behaviour is compared only where both sides have a fingerprint: a case with no record (an
    # error) or a run from before fingerprints existed can only be compared by outcome.
    both = before is not None and bool(before.fingerprint) and bool(now.fingerprint)
    fields = changed_fields(before.fingerprint, now.fingerprint) if before is not None and both else ()
    alike = not fields
    if now.outcome.is_failure:
        if before is not None and before.outcome.is_failure and alike:
            return None  # the same finding as in the baseline: not new
        entry = next((k for k in known if k.covers(now, kernel)), None)
        change = Change.KNOWN if entry else Change.NEW_DEVIATION
        return Difference(key, change, before, now, kernel, fields, entry)
    if before is None:
        return Difference(key, Change.ONLY_NEW, None, now, kernel)
    if before.outcome == now.outcome and alike:
        return None
    if now.outcome.is_error and not before.outcome.is_error:
        return Difference(key, Change.NO_ANSWER, before, now, kernel, fields)
    if before.outcome.is_failure:
        return Difference(key, Change.FIXED, before, now, kernel, fields)
    return Difference(key, Change.CHANGED, before, now, kernel, fields)


def answers(side: Side) -> int:
    """Results the guests answered (not a timeout, not an infrastructure error)."""
    return sum(1 for r, _ in side.results.values() if not r.outcome.is_error)


def missing(base: Side, new: Side) -> int:
    """How many fewer answers the new side has than the baseline (0 when it has as many or more)."""
    return max(answers(base) - answers(new), 0)


def exit_code(diffs: Sequence[Difference], lost: int = 0) -> int:
    """1 when some deviation is new (not in the baseline, not known); else 3 when `lost` answers
    are missing (a run that lost its guests answered nothing new, but checked nothing either); else 0."""
    if any(d.change is Change.NEW_DEVIATION for d in diffs):
        return EXIT_FINDINGS
    return EXIT_INFRA if lost else EXIT_OK


def lost_boots(new: Side) -> dict[str, list[CaseResult]]:
    """The new side's boots (of a run) with no answer at all, each with its results: one line each."""
    by_boot: dict[str, list[CaseResult]] = {}
    for (where, *_), (r, _) in new.results.items():
        by_boot.setdefault(where, []).append(r)
    if new.kind != "run":
        return {}
    return {b: rs for b, rs in by_boot.items() if rs and all(r.outcome.is_error for r in rs)}


# --- terminal ----------------------------------------------------------------------------------

_STYLE = {
    Change.NEW_DEVIATION: "bold red",
    Change.KNOWN: "magenta",
    Change.FIXED: "green",
    Change.CHANGED: "yellow",
    Change.NO_ANSWER: "yellow",
    Change.ONLY_BASELINE: "dim",
    Change.ONLY_NEW: "dim",
}


def _outcome(r: CaseResult | None) -> str:
    return "-" if r is None else r.outcome.value


_EXPLAINED = (Change.NEW_DEVIATION, Change.KNOWN, Change.FIXED, Change.CHANGED)


def explained(diffs: Sequence[Difference], base: Side, explain: Explain, shown: int) -> list[str]:
    """What may explain each case's change from the baseline's kernel to the new one's: within a
    line the changelog candidates, once per case and pair of builds; between lines, once per pair,
    how to bisect instead."""
    out: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for d in diffs:
        before = base.results.get(d.key, (None, None))[1]
        if d.change not in _EXPLAINED or before is None or d.kernel is None or before == d.kernel:
            continue
        pair = (versions.name(before), versions.name(d.kernel))
        found = explain(d.case, before, d.kernel)
        if found is None or (d.case, *pair) in seen or (found.across and ("", *pair) in seen):
            continue
        seen.add(("" if found.across else d.case, *pair))
        out += [f"{pair[0]} → {pair[1]}: {found.note}"] if found.across else found.lines(shown)
    return out


def render(
    diffs: Sequence[Difference],
    base: Side,
    new: Side,
    console: Console,
    explain: Explain | None = None,
    shown: int = SHOWN,
) -> None:
    """The differences grouped by case, then one line of totals; with `explain`, what may explain
    the changes between two builds."""
    console.print(terminal.text(f"baseline: {base.name}\nnew:      {new.name}"))
    lost = lost_boots(new)
    for boot, results in lost.items():
        why = results[0].message.splitlines()[0] if results[0].message else results[0].outcome.value
        console.print(terminal.text(f"  {boot}: no answer to any of its {len(results)} results: {why}", "yellow"))
    by_case: dict[str, list[Difference]] = {}
    for d in diffs:
        if d.key[0] not in lost:
            by_case.setdefault(d.case, []).append(d)
    for case, group in by_case.items():
        console.print(terminal.text(case, style="bold"))
        for d in group:
            where, _, memlock, user = d.key
            line = Text("  ")
            line.append(f"{d.change.value:<17}", style=_STYLE[d.change])
            outcomes = f"{_outcome(d.base)} -> {_outcome(d.new)}"
            line.append(terminal.text(f" {where} memlock={memlock} user={user}  {outcomes}"))
            if d.fields:
                line.append(terminal.text(f"  changed: {', '.join(d.fields)}"))
            console.print(line)
            detail = d.new or d.base
            if d.known is not None:
                link = f" ({d.known.link})" if d.known.link else ""
                console.print(terminal.text(f"      known: {d.known.reason}{link}"))
            elif detail is not None and detail.message and d.change is not Change.ONLY_BASELINE:
                console.print(terminal.text(f"      {detail.message.splitlines()[0]}"))
    counts = {c: sum(1 for d in diffs if d.change is c) for c in Change}
    total = ", ".join(f"{n} {c.value}" for c, n in counts.items() if n) or "no differences"
    console.print(terminal.text(f"{len(new.results)} results compared with {len(base.results)}: {total}"))
    for said in explained(diffs, base, explain, shown) if explain is not None else ():
        console.print(terminal.text(said))
