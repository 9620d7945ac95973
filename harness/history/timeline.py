"""Timelines: what each kernel did for one (case, memlock, user, RAM), kernels in version order.

The records History's views return (Timeline, Point), the tallies rows and observation rows they
are built from (Group, Shown), and how one timeline is built from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harness import versions
from harness.kit.verdict import changed_fields
from harness.results import KernelInfo, Outcome


@dataclass(frozen=True)
class Point:
    """What one kernel did in one timeline: the latest run's result, and whether it moved."""

    kernel: KernelInfo  # as the latest run named it
    outcome: Outcome
    fingerprint: str
    runs: int  # distinct runs that observed this kernel here
    varies: bool  # those runs did not all see the same behaviour (the latest is shown)
    changed: bool  # behaviour differs from the previous kernel in version order
    changed_fields: tuple[str, ...]  # top-level fingerprint keys that differ from that kernel
    run_id: str  # the latest run


@dataclass(frozen=True)
class Timeline:
    """One (case, memlock, user, RAM) across kernels, oldest kernel first."""

    case: str
    memlock: str
    user: str
    ram_mb: int
    points: tuple[Point, ...]
    first_change: int | None  # index into points of the first changed one

    @property
    def name(self) -> str:
        return f"{self.case}[memlock={self.memlock},user={self.user}] {self.ram_mb}M"

    @property
    def varies(self) -> bool:
        return any(p.varies for p in self.points)


@dataclass(frozen=True)
class Group:
    """A tallies row: one (case, memlock, user, RAM) on one kernel identity."""

    case: int  # cases.id
    ram_mb: int
    runs: int
    varies: bool
    first: int  # observations.id of the first stored row: catalogue order, and the kernel to sort by
    earliest: int  # observations.id of the row of the run that started first
    latest: int  # likewise, last


@dataclass(frozen=True)
class Shown:
    """One observation row a view shows, with its kernel as that row's boot named it."""

    outcome: str
    fingerprint: str
    kernel: KernelInfo
    run_id: str
    when: tuple[str, int, int]  # (runs.started_utc, runs.id, observations.id): "latest" means largest


def build(key: tuple[str, str, str, int], groups: list[Group], shown: Mapping[int, Shown]) -> Timeline:
    """The timeline of one (case, memlock, user, RAM) from its tallies rows and the rows they name."""
    # Builds of one version (compare() == 0) stay in the order they were first run.
    ordered = sorted(groups, key=lambda g: shown[g.earliest].when)
    ordered = versions.ordered_by(ordered, lambda g: shown[g.first].kernel)
    points: list[Point] = []
    first_change: int | None = None
    for group in ordered:
        latest = shown[group.latest]
        previous = points[-1].fingerprint if points else None
        changed = previous is not None and previous != latest.fingerprint
        if changed and first_change is None:
            first_change = len(points)
        points.append(
            Point(
                latest.kernel,
                Outcome(latest.outcome),
                latest.fingerprint,
                group.runs,
                group.varies,
                changed,
                changed_fields(previous, latest.fingerprint) if changed and previous is not None else (),
                latest.run_id,
            )
        )
    return Timeline(*key, tuple(points), first_change)
