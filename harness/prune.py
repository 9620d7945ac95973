"""What `harness cache prune` deletes: entries of the cache not used for some days, and kernels no
matrix or history given to keep names.

An entry is one top-level item of an area: an unpacked or built kernel (its folder), a guest image,
a leftover .deb, a suite's build. Its last use is its modification time, which the harness sets
each time a run takes a kernel, an image, a build or a saved guest from the cache. Kernels are the
bulk; the rest is made again in seconds when a run needs it (a .deb is fetched again, by its
digest; a guest is saved again by its next cold boot).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import history, matrix, sources
from harness.cache import blocks, disk_usage
from harness.errors import InfraError, UserError
from harness.sources.base import Context

KERNEL_AREAS = ("kernels", "builds")
# Areas pruned by age only. Not here: keys, indexes, apt, src, kbuild, ccache, bisect-test (small,
# or what makes the next build incremental: `rm -rf` them by hand if need be).
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


def select(found: Iterable[Entry], older_than_days: float | None, kept: Callable[[Entry], bool],
           now: float | None = None) -> list[Entry]:  # fmt: skip
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


def plan(cache: Path, older_than_days: float | None, keep_matrices: Sequence[Path], keep_history: Path | None,
         ctx: Context) -> list[Entry]:  # fmt: skip
    """What `harness cache prune` deletes, with its options; UserError for options that say nothing."""
    if older_than_days is None and not keep_matrices and keep_history is None:
        raise UserError("cache prune: give --older-than DAYS, --keep-matrix FILE or --keep-history DB")
    if older_than_days is not None and not 0 <= older_than_days < 1e6:
        raise UserError(f"--older-than {older_than_days}: give a number of days, 0 or more")
    folders: set[Path] = set()
    for path in keep_matrices:
        kernels = sources.Kernels(ctx)
        folders |= {f for spec in sources.expand(matrix.load(path).kernels, ctx) if (f := kernels.cached(spec))}
    digests: set[str] = set()
    if keep_history is not None:
        if not keep_history.is_file():
            raise UserError(f"--keep-history {keep_history}: no such file; give a history (results/history.sqlite)")
        with history.History(keep_history) as db:
            digests = db.kernel_digests()
    return select(entries(cache), older_than_days, keeper(folders, digests))


def keeper(folders: set[Path], digests: set[str]) -> Callable[[Entry], bool]:
    """A kernel is kept when a matrix names its folder, or the history holds its image's digest."""
    resolved = {f.resolve() for f in folders}
    return lambda e: e.path.resolve() in resolved or (bool(e.sha256) and e.sha256 in digests)


def remove(doomed: Iterable[Entry]) -> int:
    """Delete the entries; the bytes freed. A folder is renamed to a dot-name first, so a run never
    finds half of one (a dot-name is work in progress, which runs and `entries` pass by)."""
    freed = 0
    for e in doomed:
        try:
            if e.path.is_dir():
                trash = e.path.with_name(f".pruned-{e.path.name}")
                os.rename(e.path, trash)
                shutil.rmtree(trash)
            else:
                e.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise InfraError(f"{e.path}: cannot delete it: {err.strerror}") from err
        freed += e.bytes
    return freed
