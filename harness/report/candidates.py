"""What may explain a change between two builds of one Debian line: the changelog entries between
them that touch what the case exercises.

A change within a line (a bisect over builds, `history --changes`, `compare` of two builds, a
changed cell of a run) is between two Debian uploads; the newer build's changelog lists every
upstream stable patch and Debian change since the older one, and a handful of the thousands touch
the code the case exercises (guest-tests/exercises.yaml). Between two lines there is no changelog
path: the upstream tree is the way, and the text says how.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness import kernels, versions
from harness.debian import changelog
from harness.kit import exercises
from harness.report import overview
from harness.results import KernelInfo

SHOWN = 5  # candidates shown per change unless --candidates says otherwise


@dataclass(frozen=True)
class Candidates:
    case: str
    before: KernelInfo
    after: KernelInfo
    ranked: tuple[exercises.Candidate, ...] = ()
    entries: int = 0  # changelog entries between the two builds
    note: str = ""  # why none are listed, and what to do instead
    across: bool = False  # the builds are of two upstream lines: no changelog connects them

    def lines(self, shown: int = SHOWN) -> list[str]:
        """The block a terminal, summary or history prints under the change."""
        head = f"candidates for {self.case}, {_name(self.before)} → {_name(self.after)}"
        if self.note:
            return [f"{head}: {self.note}"]
        if not self.ranked:
            return [
                f"{head}: none of the {self.entries} changelog entries between them touches what the case exercises"
            ]
        out = [f"{head}: {len(self.ranked)} of {self.entries} changelog entries touch what the case exercises"]
        for c in self.ranked[:shown]:
            out.append("  " + describe(c))
        if len(self.ranked) > shown:
            out.append(f"  ... and {len(self.ranked) - shown} more (--candidates N shows more)")
        return out


def describe(c: exercises.Candidate) -> str:
    """One candidate: the title, where it came from, what it matched."""
    came = f"upstream {c.entry.upstream}" if c.entry.upstream else "Debian's own change"
    unnamed = [cve for cve in c.entry.cves if cve not in c.entry.title]
    cves = f", {', '.join(unnamed)}" if unnamed else ""
    return f"{c.entry.title} ({came} in {c.entry.version}{cves}; matches {', '.join(c.matched)})"


def _name(kernel: KernelInfo) -> str:
    return versions.name(kernel)


def find(
    case: str,
    before: KernelInfo,
    after: KernelInfo,
    entries_of: Callable[[KernelInfo], list[changelog.Entry] | None],
    table: Mapping[str, exercises.Exercises],
) -> Candidates | None:
    """The candidates for a change of `case` from `before` to `after`; None when neither is a
    Debian build (a path or git kernel has no changelog to read)."""
    if not (before.version and after.version and before.package and after.package):
        return None
    if versions.compare(before, after) > 0:
        before, after = after, before  # compare may go from newer to older; the range is the same
    old, new = versions.upstream(before), versions.upstream(after)
    if old[:2] != new[:2]:
        return Candidates(case, before, after, note=_between_lines(old, new), across=True)
    entries = entries_of(after)
    if entries is None:
        why = "its changelog is not in the cache; `harness kernels fetch` with a matrix naming it keeps it"
        return Candidates(case, before, after, note=f"{_name(after)}: {why}")
    # A backport or security rebuild (6.12.95-1~bpo12+1, 6.12.117-1~deb12u1) is its base upload's
    # source: compared by that, its own block and the base upload's count once, on the right side.
    based = [dataclasses.replace(e, version=_base(e.version)) for e in entries]
    try:
        between = changelog.between(based, _base(before.version or ""), _base(after.version or ""))
    except ValueError:
        return Candidates(case, before, after, note="the two versions do not compare as Debian versions")
    ranked = exercises.rank(between, exercises.of(case, table))
    return Candidates(case, before, after, tuple(ranked), len(between))


def _base(version: str) -> str:
    return version.split("~", 1)[0]


def _between_lines(old: tuple[int, ...], new: tuple[int, ...]) -> str:
    a, b = (".".join(map(str, v[:3])) for v in (old, new))
    return (
        "two upstream lines, which no changelog connects: bisect the upstream tree with "
        f"harness bisect --repo LINUX --good v{a} --bad v{b}"
    )


Explain = Callable[[str, KernelInfo, KernelInfo], "Candidates | None"]
Key = tuple[str, int, int]  # (case, the column before, the column after) of a run's matrix


def of_changes(m: overview.Matrix, explain: Explain | None) -> dict[Key, Candidates]:
    """The candidates of each change of a run's matrix, once per case and pair of kernels (the
    rows of a case under several limits share them)."""
    out: dict[Key, Candidates] = {}
    for change in m.changes if explain is not None else ():
        assert explain is not None
        key = (change.row.case, change.before.index, change.after.index)
        before, after = change.before.boot.kernel, change.after.boot.kernel
        if key in out or before is None or after is None:
            continue
        found = explain(change.row.case, before, after)
        if found is not None:
            out[key] = found
    return out


def within(explained: Mapping[Key, Candidates]) -> list[Candidates]:
    """The changes between two builds of a line, which have candidates to show."""
    return [c for c in explained.values() if not c.across]


class Finder:
    """Candidates for the changes of one command: each build's changelog read once from the cache,
    the exercises table loaded once."""

    def __init__(self, cache: Path, table: Mapping[str, exercises.Exercises] | None = None) -> None:
        self.cache = cache
        self._table = table

    @functools.cached_property
    def table(self) -> Mapping[str, exercises.Exercises]:
        return self._table if self._table is not None else exercises.load()

    @functools.cached_property
    def _cached(self) -> dict[str, kernels.Kernel]:
        return {k.sha256: k for k in kernels.list_cached(self.cache)}

    @functools.cache  # noqa: B019 - one Finder per command; the cache dies with it
    def entries(self, kernel: KernelInfo) -> list[changelog.Entry] | None:
        found = self._cached.get(kernel.sha256)
        if found is None:  # a build known by its package and version, not by the image's digest
            found = next(
                (k for k in self._cached.values() if (k.package, k.version) == (kernel.package, kernel.version)), None
            )
        return kernels.changelog_of(found) if found is not None else None

    def __call__(self, case: str, before: KernelInfo, after: KernelInfo) -> Candidates | None:
        return find(case, before, after, self.entries, self.table)
