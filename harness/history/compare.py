"""Compare two sets of results: what changed between them, and which deviations are new.

A side is a run (its results.json) or one kernel's latest observations from the history. Results
are paired by where they ran (the boot id for runs, the guest RAM for kernels), case, limit and
user, and compared by behaviour fingerprint and outcome. Only a deviation the baseline did not
already have, and that no known-deviations entry covers, makes `harness compare` exit 1: nightly
jobs want new regressions, not the same findings every night.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.text import Text

from harness import REPO, versions, yamlfile
from harness.errors import UserError
from harness.files import read_text
from harness.kit.verdict import changed_fields
from harness.report import terminal
from harness.results import CaseResult, KernelInfo, RunRecord

KNOWN_FILE = REPO / "guest-tests" / "known-deviations.yaml"

Key = tuple[str, str, str, str]  # (boot id or RAM, case, memlock, user)


# --- known deviations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A deviation someone has looked at: expected to fail, with the reason and where it is discussed."""

    case: str  # a case name or a glob (mremap_dontunmap_*)
    reason: str
    link: str = ""
    kernel: str = ""  # a range as in expectations.yaml ('>=6.16,<6.19'); "" for every kernel
    memlock: str = ""  # "" for every limit
    user: str = ""  # "" for every user
    origin: str = ""  # file:line, for messages

    def covers(self, result: CaseResult, kernel: KernelInfo | None) -> bool:
        if not fnmatch.fnmatchcase(result.case, self.case):
            return False
        if (self.memlock and self.memlock != result.memlock) or (self.user and self.user != result.user):
            return False
        if not self.kernel:
            return True
        return kernel is not None and versions.in_range(self.kernel, versions.upstream(kernel))


_KNOWN_KEYS = {"case", "reason", "link", "kernel", "memlock", "user"}


def load_known(path: Path) -> list[Known]:
    """Read a known-deviations file; every mistake is one line naming the file, line and field."""
    root, doc = yamlfile.read(read_text(path, 1 << 20, "known-deviations file"), str(path))
    lines = _entry_lines(root)
    if doc is None:
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("known"), list):
        raise UserError(f"{path}:1: known: missing; the file holds `known:` followed by a list of entries")
    out = []
    for i, entry in enumerate(doc["known"]):
        where = f"{path}:{lines.get(i, 1)}: known[{i}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: an entry is a mapping: case, reason, and optionally kernel, memlock, user, link")
        extra = sorted(set(map(str, entry)) - _KNOWN_KEYS)
        if extra:
            raise UserError(f"{where}.{extra[0]}: unknown key; use {', '.join(sorted(_KNOWN_KEYS))}")
        for key in ("case", "reason"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise UserError(f"{where}.{key}: missing; every entry names the case and why it is known")
        known = Known(
            entry["case"],
            entry["reason"],
            str(entry.get("link") or ""),
            str(entry.get("kernel") or ""),
            str(entry.get("memlock") or ""),
            str(entry.get("user") or ""),
            where,
        )
        if known.kernel:
            try:
                versions.in_range(known.kernel, (0,))
            except ValueError as e:
                raise UserError(f"{where}.kernel: {e}") from None
        out.append(known)
    return out


def _entry_lines(root: yaml.Node | None) -> dict[int, int]:
    if not isinstance(root, yaml.MappingNode):
        return {}
    for k, v in root.value:
        if getattr(k, "value", None) == "known" and isinstance(v, yaml.SequenceNode):
            return {i: item.start_mark.line + 1 for i, item in enumerate(v.value)}
    return {}


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


def exit_code(diffs: Sequence[Difference]) -> int:
    """1 when some deviation is new (not in the baseline, not known); otherwise 0."""
    return 1 if any(d.change is Change.NEW_DEVIATION for d in diffs) else 0


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


def render(diffs: Sequence[Difference], base: Side, new: Side, console: Console) -> None:
    """The differences grouped by case, then one line of totals."""
    console.print(terminal.text(f"baseline: {base.name}\nnew:      {new.name}"))
    by_case: dict[str, list[Difference]] = {}
    for d in diffs:
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
