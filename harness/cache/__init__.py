"""Where downloads, extracted kernels, images and keys live: outside the repo, shared by runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.files import write_private


def cache_dir() -> Path:
    """HARNESS_CACHE, else $XDG_CACHE_HOME/harness, else ~/.cache/harness."""
    explicit = os.environ.get("HARNESS_CACHE")
    if explicit:
        base = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "harness"
    base.mkdir(parents=True, exist_ok=True)
    return base


def secret(cache: Path, name: str, size: int = 32) -> bytes:
    """A random per-cache secret, made once with mode 0600 (seeds for derived keys)."""
    path = cache / "keys" / name
    if not path.exists():
        write_private(path, os.urandom(size))
    return path.read_bytes()


# What each folder of the cache holds, for `harness cache`; a folder not listed is shown as it is.
AREAS = {
    "debs": ".debs as downloaded and verified (what a replay fetches again if they are gone)",
    "kernels": "kernels unpacked from those .debs",
    "builds": "kernels built from git trees",
    "kbuild": "out-of-tree build directories (what makes the next commit's build incremental)",
    "src": "shared clones of the git trees built from",
    "ccache": "the compiler cache of those builds",
    "images": "guest images and data disks",
    "guests": "guests saved at their ready marker, loaded by later boots (harness.boot.snapshot)",
    "userland": "the musl userland for kernels before 3.2",
    "suites": "guest suites' programs (kselftest) per tree",
    "indexes": "verified package indexes",
    "apt": "apt's own state for older compilers and Debian sources",
    "vmlinux": "PVH vmlinux files taken out of path: kernels",
    "keys": "the harness's SSH key and per-cache secrets",
    "crashes": "tracebacks of internal errors (exit 70)",
    "bisect-test": "the tree `make test-bisect` makes from Debian's linux-source",
    "leases": "locks runs hold on the entries they use (harness.cache.lease): `cache prune` leaves those",
}


@dataclass(frozen=True)
class Area:
    name: str
    entries: int  # what the folder holds at its top level
    bytes: int  # on disk (allocated blocks), links not followed
    what: str


def usage(cache: Path) -> list[Area]:
    """Each folder (and loose file) of the cache with its size on disk, largest first."""
    areas = []
    for entry in sorted(cache.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            size, count = disk_usage(entry), sum(1 for _ in entry.iterdir())
        else:
            size, count = blocks(entry), 1
        areas.append(Area(entry.name, count, size, AREAS.get(entry.name, "")))
    return sorted(areas, key=lambda a: (-a.bytes, a.name))


def blocks(path: Path) -> int:
    try:
        return path.lstat().st_blocks * 512
    except OSError:
        return 0  # gone meanwhile (a run cleaning up its stage)


def disk_usage(folder: Path) -> int:
    total = 0
    stack = [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        total += e.stat(follow_symlinks=False).st_blocks * 512
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def disk_size(n: int) -> str:
    """1536 -> '1.5 KiB': what `harness cache` prints."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
