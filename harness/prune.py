"""What `harness cache prune` deletes: entries of the cache not used for some days, and kernels no
matrix or history given to keep names.

An entry is one top-level item of an area: an unpacked or built kernel (its folder), a guest image,
a leftover .deb, a suite's build. Its last use is its modification time, which the harness sets
each time a run takes a kernel, an image, a build or a saved guest from the cache. Kernels are the
bulk; the rest is made again in seconds when a run needs it (a .deb is fetched again, by its
digest; a guest is saved again by its next cold boot).

Runs lease what they use (harness.cache.lease): an entry goes only while prune holds its lease alone,
and one a run holds is kept, and said to be.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness import history
from harness.cache import blocks, disk_size, disk_usage, lease
from harness.errors import InfraError, UserError
from harness.kernels import sources
from harness.kernels.sources.base import Context
from harness.plan import matrix

KERNEL_AREAS = ("kernels", "builds")
# Areas pruned by age only. Not here: keys, indexes, apt, src, kbuild, ccache, bisect-test (small,
# or what makes the next build incremental: `rm -rf` them by hand if need be), leases (harness.cache.lease).
AGED_AREAS = ("images", "debs", "suites", "userland", "vmlinux", "crashes", "guests")
DAY = 86400.0


@dataclass(frozen=True)
class Entry:
    area: str
    path: Path
    bytes: int
    last_used: float  # seconds since the epoch
    sha256: str  # a kernel's image digest ("" for other entries, or when unreadable)


def entries(cache: Path) -> list[Entry]:
    """Every prunable entry of the cache. Names starting with '.' are a run's work in progress."""
    found = []
    for area in (*KERNEL_AREAS, *AGED_AREAS):
        folder = cache / area
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.is_symlink():
                continue
            try:
                used = path.stat().st_mtime
            except OSError:
                continue  # gone meanwhile
            size = disk_usage(path) if path.is_dir() else blocks(path)
            found.append(Entry(area, path, size, used, _digest(area, path)))
    return found


def _digest(area: str, path: Path) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if area == "kernels":
            return str(json.loads((path / "kernel.json").read_text())["sha256"])
        if area == "builds" and (path / "bzImage").is_file():
            return hashlib.sha256((path / "bzImage").read_bytes()).hexdigest()
    return ""


def select(
    found: Iterable[Entry], older_than_days: float | None, kept: Callable[[Entry], bool], now: float | None = None
) -> list[Entry]:
    """The entries to delete: not used for `older_than_days` (when given), and, for kernels, not
    `kept`. Without an age, only kernels go (the keep lists say nothing about the rest)."""
    now = time.time() if now is None else now
    out = []
    for e in found:
        if older_than_days is not None and now - e.last_used < older_than_days * DAY:
            continue
        if e.area in KERNEL_AREAS:
            if kept(e):
                continue
        elif older_than_days is None:
            continue
        out.append(e)
    return out


def plan(
    cache: Path, older_than_days: float | None, keep_matrices: Sequence[Path], keep_history: Path | None, ctx: Context
) -> list[Entry]:
    """What `harness cache prune` deletes, with its options; UserError for options that say nothing."""
    if older_than_days is None and not keep_matrices and keep_history is None:
        raise UserError("cache prune: give --older-than DAYS, --keep-matrix FILE or --keep-history DB")
    if older_than_days is not None and not 0 <= older_than_days < 1e6:
        raise UserError(f"--older-than {older_than_days}: give a number of days, 0 or more")
    folders: set[Path] = set()
    with lease.Leases() as own:  # what resolving leases (a path: kernel's vmlinux) is prune's own to delete
        ctx = replace(ctx, leases=own)
        for path in keep_matrices:
            kernels = sources.Kernels(ctx)
            folders |= {f for spec in sources.expand(matrix.load(path).kernels, ctx) if (f := kernels.cached(spec))}
    digests: set[str] = set()
    if keep_history is not None:
        if not keep_history.is_file():
            raise UserError(f"--keep-history {keep_history}: no such file; give a history (results/history.sqlite)")
        with history.History(keep_history) as db:
            digests = db.kernel_digests()
    lease.sweep(cache)  # the leases of runs that have ended
    return select(entries(cache), older_than_days, keeper(folders, digests))


def keeper(folders: set[Path], digests: set[str]) -> Callable[[Entry], bool]:
    """A kernel is kept when a matrix names its folder, or the history holds its image's digest."""
    resolved = {f.resolve() for f in folders}
    return lambda e: e.path.resolve() in resolved or (bool(e.sha256) and e.sha256 in digests)


IN_USE = "in use by a run"
USED = "used since prune listed it"


def take(doomed: Iterable[Entry], dry_run: bool, say: Callable[..., None]) -> list[Entry]:
    """Delete the entries (not with `dry_run`) but those a run holds a lease on, each taken away
    while prune holds its lease alone, so no run finds half of one; `say` one line per entry,
    deleted or kept and why. Returns the entries deleted (or that would be)."""
    gone = []
    for e in doomed:
        trash = None
        with lease.exclusive(e.path) as free:
            try:
                why = "" if free else IN_USE
                if free and e.path.lstat().st_mtime > e.last_used:
                    why = USED  # by a run that has ended since: its last use is newer than the listing
                if not why and not dry_run:
                    trash = _take(e.path)
            except FileNotFoundError:
                continue  # gone meanwhile
        if trash is not None:  # under a name no run looks for: a run waiting for the lease goes on meanwhile
            _rmtree(trash)
        if why:
            say("would keep" if dry_run else "kept", e.area, e.path.name, why)
        else:
            say("would delete" if dry_run else "delete", e.area, e.path.name, disk_size(e.bytes))
            gone.append(e)
    return gone


def remove(doomed: Iterable[Entry]) -> int:
    """Delete the entries no run holds; the bytes freed."""
    return sum(e.bytes for e in take(doomed, False, lambda *fields: None))


def _take(path: Path) -> Path | None:
    """The entry away from its name: a file deleted, a folder renamed to a dot-name (work in
    progress, which runs and `entries` pass by) and returned, to be deleted next."""
    try:
        if path.is_dir() and not path.is_symlink():
            trash = path.with_name(f".pruned-{path.name}-{os.getpid()}")
            os.rename(path, trash)
            return trash
        path.unlink()
        return None
    except FileNotFoundError:
        raise
    except OSError as err:
        raise InfraError(f"{path}: cannot delete it: {err.strerror}") from err


def _rmtree(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except OSError as err:
        raise InfraError(f"{folder}: cannot delete it: {err.strerror}") from err
