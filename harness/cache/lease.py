"""Leases on cache entries: runs that share one cache, and `harness cache prune` beside them.

An entry is one top-level item of a cache area (`<cache>/<area>/<name>`: an unpacked kernel, an
image, a .deb, a saved guest...). A run takes a *shared* lease on each entry it uses before it
looks at it, and holds it until it ends; prune deletes an entry only while it holds the entry's
lease *exclusively*, which it asks for without waiting, so it never deletes what a run is using
and never waits for a run. A lease is flock(2) on `<cache>/leases/<area>/<name>`: the kernel drops
it when the process dies, however it dies.

Making an entry (unpacking a kernel, downloading a .deb, building an image) takes a second,
exclusive lock, `.making-<name>` beside the lease: the first run makes it, the others wait and
then find it made. The lease comes first, so prune cannot delete an entry between its making and
its use; and a run that waited for its lease while prune deleted the entry finds it gone and makes
it again.

Whoever holds a lock file exclusively may delete it, so lock files do not pile up: prune deletes
the lease of each entry it got (nobody holds it then), `sweep` the leases of runs that have ended,
a maker its making lock. Every locker therefore checks, once it holds the lock, that the path still
names the file it locked (`_acquire`), and locks the new one if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

FOLDER = "leases"  # <cache>/leases/<area>/<name>
MAKING = ".making-"  # <cache>/leases/<area>/.making-<name>[.<part>]


def lock_file(entry: Path) -> Path:
    """The lease file of `entry` (`<cache>/<area>/<name>`): `<cache>/leases/<area>/<name>`."""
    entry = Path(os.path.abspath(entry))
    return entry.parent.parent / FOLDER / entry.parent.name / entry.name


def making_file(entry: Path, part: str = "") -> Path:
    """The making lock of `entry`, or of one `part` of it made on its own (a suite's build for one
    tree: builds of other trees go on meanwhile)."""
    return lock_file(entry).with_name(f"{MAKING}{Path(entry).name}{'.' + part if part else ''}")


class Leases:
    """The cache entries one run (or command) uses, each under a shared lease until `close`.

    Thread-safe: the boots of a run share one. A Leases nobody closes holds its leases until it is
    garbage-collected or its process ends.
    """

    def __init__(self) -> None:
        self._held: dict[Path, int] = {}  # entry -> the open lease file, locked shared
        self._mutex = threading.Lock()

    def use(self, entry: Path) -> Path:
        """Take a shared lease on `entry` (there or not yet), waiting while prune deletes it; then
        look at it. Returns `entry`. Taken once per entry, however often it is asked for."""
        key = Path(os.path.abspath(entry))
        with self._mutex:
            if key in self._held:
                return entry
        fd = _acquire(lock_file(key), fcntl.LOCK_SH)  # not under the mutex: this may wait for prune
        assert fd is not None
        with self._mutex:
            if key in self._held:  # another thread of this run took it meanwhile
                os.close(fd)
            else:
                self._held[key] = fd
        return entry

    @contextlib.contextmanager
    def making(self, entry: Path, part: str = "") -> Iterator[None]:
        """Exclusive while this process makes `entry` (or its `part`); leases the entry first. Look
        again once inside: another run may have made it while this one waited."""
        self.use(entry)
        with _held(making_file(entry, part), unlink=True):
            yield

    def ensure(self, entry: Path, ready: Callable[[], bool], make: Callable[[], None], part: str = "") -> Path:
        """`entry` leased and ready: made by `make` unless `ready()`, once however many runs ask at
        the same time. Returns `entry`."""
        self.use(entry)
        if not ready():
            with self.making(entry, part):
                if not ready():
                    make()
        return entry

    def release(self, entry: Path) -> None:
        """Give up the lease on `entry` before the run ends (nothing when none is held)."""
        with self._mutex:
            fd = self._held.pop(Path(os.path.abspath(entry)), None)
        if fd is not None:
            os.close(fd)

    def discard(self, entry: Path) -> bool:
        """Give up the lease and delete `entry` unless another run holds one (that run is using it,
        and deletes it itself if it must): True when deleted."""
        self.release(entry)
        with exclusive(entry) as free:
            if free:
                delete(entry)
        return free

    def held(self) -> list[Path]:
        with self._mutex:
            return sorted(self._held)

    def close(self) -> None:
        """Release every lease (a Leases may be used again afterwards)."""
        with self._mutex:
            fds, self._held = list(self._held.values()), {}
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class Unleased(Leases):
    """For files outside any cache (a test's folder, a benchmark's): nothing to share them with, so
    nothing is locked and `discard` just deletes."""

    def use(self, entry: Path) -> Path:
        return entry

    @contextlib.contextmanager
    def making(self, entry: Path, part: str = "") -> Iterator[None]:
        yield

    def discard(self, entry: Path) -> bool:
        delete(entry)
        return True


UNLEASED = Unleased()  # holds nothing: the default of functions that may write outside a cache


@contextlib.contextmanager
def exclusive(entry: Path) -> Iterator[bool]:
    """The lease of `entry` held exclusively, if no run holds it now (True; hold it while deleting
    the entry), else False at once. The lease file goes on the way out: nobody holds it then."""
    path = lock_file(entry)
    fd = _acquire(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        _unlink_and_close(path, fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path`, kept (a lock that serialises work on something that is
    not one entry: one git clone's builds, the musl userland's shared sources)."""
    with _held(path, unlink=False):
        yield


def sweep(cache: Path) -> int:
    """Delete the lease and making files no run holds (left by runs that ended); their number."""
    swept = 0
    root = cache / FOLDER
    for path in sorted(root.glob("*/*")) if root.is_dir() else []:
        fd = _acquire(path, fcntl.LOCK_EX | fcntl.LOCK_NB, create=False)
        if fd is not None:
            _unlink_and_close(path, fd)
            swept += 1
    return swept


def delete(path: Path) -> None:
    """Delete a file or folder; a folder is renamed to a dot-name first, so that nobody finds half of
    it (dot-names are work in progress, which runs and prune pass by)."""
    if path.is_dir() and not path.is_symlink():
        trash = path.with_name(f".gone-{path.name}-{os.getpid()}-{threading.get_ident()}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _held(path: Path, unlink: bool) -> Iterator[None]:
    fd = _acquire(path, fcntl.LOCK_EX)
    assert fd is not None
    try:
        yield
    finally:
        if unlink:
            _unlink_and_close(path, fd)
        else:
            os.close(fd)


def _acquire(path: Path, how: int, create: bool = True) -> int | None:
    """`path` opened and flock()ed `how`: its descriptor, or None when LOCK_NB finds it held (or,
    without `create`, when it is gone). Whoever held the file exclusively may have deleted it while
    this waited: a lock on a file no longer at `path` protects nothing, so then try again."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if not create:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)  # deleted by hand meanwhile
            continue
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        mine = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)
        if now is None and not create:
            return None


def _unlink_and_close(path: Path, fd: int) -> None:
    # Unlinked while still locked: a process waiting on this file finds a new one at the path.
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)
