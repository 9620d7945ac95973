"""Leases on cache entries (harness/lease.py): runs share a cache, and `harness cache prune` takes only
what no run holds. Real flock(2) throughout: threads, child processes, a process killed outright."""

from __future__ import annotations

import fcntl
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from harness import cli, prune
from harness.cache import lease
from harness.cache.lease import Leases
from harness.kit import image


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    c = tmp_path / "cache"
    (c / "images").mkdir(parents=True)
    (c / "kernels" / "k1").mkdir(parents=True)
    (c / "kernels" / "k1" / "vmlinuz").write_bytes(b"kernel")
    (c / "images" / "a.cpio").write_bytes(b"image a")
    (c / "images" / "b.cpio").write_bytes(b"image b")
    return c


def free(entry: Path) -> bool:
    """Would prune get the entry now?"""
    with lease.exclusive(entry) as got:
        return got


def test_shared_leases_share_and_keep_prune_out(cache: Path) -> None:
    entry = cache / "images" / "a.cpio"
    one, two = Leases(), Leases()
    one.use(entry)
    two.use(entry)  # a second run: shared, so it does not wait
    assert one.held() == [entry] and lease.lock_file(entry) == cache / "leases" / "images" / "a.cpio"
    assert not free(entry)
    one.close()
    assert not free(entry)  # the other run still holds it
    two.close()
    assert free(entry)
    assert not lease.lock_file(entry).exists()  # prune deleted the lease file while it held it


def test_one_lease_per_entry_however_often_and_from_however_many_threads(cache: Path) -> None:
    entry = cache / "kernels" / "k1"
    leases = Leases()
    threads = [threading.Thread(target=leases.use, args=(entry,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    leases.use(entry)
    assert leases.held() == [entry]
    leases.release(entry)
    assert leases.held() == [] and free(entry)


def run_prune(cache: Path, *argv: str) -> list[list[str]]:
    console = Console(file=io.StringIO(), width=200)
    assert cli.main(["cache", "prune", "--cache", str(cache), "--older-than", "0", *argv], console=console) == 0
    return [line.split("\t") for line in console.file.getvalue().splitlines()]  # type: ignore[attr-defined]


def test_prune_leaves_what_a_run_holds_and_says_so(cache: Path) -> None:
    with Leases() as run:
        run.use(cache / "images" / "a.cpio")
        run.use(cache / "kernels" / "k1")
        rows = run_prune(cache, "--dry-run")
        assert sorted(rows[:-1]) == [
            ["would delete", "images", "b.cpio", "4.0 KiB"],
            ["would keep", "images", "a.cpio", "in use by a run"],
            ["would keep", "kernels", "k1", "in use by a run"],
        ]
        assert rows[-1][:1] == ["would free"] and rows[-1][2] == "1 entries"
        assert (cache / "images" / "b.cpio").exists()
        rows = run_prune(cache)
        assert sorted(rows[:-1]) == [
            ["delete", "images", "b.cpio", "4.0 KiB"],
            ["kept", "images", "a.cpio", "in use by a run"],
            ["kept", "kernels", "k1", "in use by a run"],
        ]
        assert rows[-1] == ["freed", "4.0 KiB", "1 entries"]
        assert (cache / "images" / "a.cpio").is_file() and (cache / "kernels" / "k1" / "vmlinuz").is_file()
        assert not (cache / "images" / "b.cpio").exists()
    rows = run_prune(cache)  # the run has ended
    assert sorted(r[:3] for r in rows[:-1]) == [["delete", "images", "a.cpio"], ["delete", "kernels", "k1"]]
    assert not (cache / "kernels" / "k1").exists() and (cache / "leases").is_dir()
    assert [p for p in (cache / "leases").rglob("*") if p.is_file()] == []  # no lock file left behind


def test_an_entry_used_after_prune_listed_it_is_kept(cache: Path) -> None:
    (found,) = [e for e in prune.entries(cache) if e.path.name == "a.cpio"]
    os.utime(found.path, (found.last_used + 5, found.last_used + 5))  # a run used it, and ended
    said: list[tuple[str, ...]] = []
    assert prune.take([found], False, lambda *f: said.append(f)) == []
    assert said == [("kept", "images", "a.cpio", prune.USED)] and found.path.is_file()


def test_a_run_waiting_while_prune_deletes_finds_the_entry_gone_and_makes_it_again(cache: Path) -> None:
    """Prune holds the lease alone and deletes; a run asks for the entry meanwhile and waits. Once
    it has its lease it must see the entry is gone, make it again, and hold the lease on the lock
    file now at the path, not on the one prune deleted with the entry."""
    entry = cache / "images" / "a.cpio"
    made: list[str] = []
    run = Leases()

    def make() -> None:
        made.append("made")
        entry.write_bytes(b"image a again")

    with lease.exclusive(entry) as got:
        assert got
        waiting = threading.Thread(target=run.ensure, args=(entry, entry.exists, make))
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive() and made == []  # waits for prune
        entry.unlink()
    waiting.join(10)
    assert made == ["made"] and entry.read_bytes() == b"image a again"
    # The lease is on the file at the path: prune cannot take the entry now.
    assert not free(entry)
    run.close()
    assert free(entry)


def test_a_lock_taken_on_a_deleted_lock_file_is_taken_again_on_the_new_one(cache: Path) -> None:
    """The open/flock/fstat-vs-stat loop: a run that opened the lock file, waited, and got its lock
    on a file that was deleted meanwhile (and made again by another run) locks the one now at the
    path; a lock on the deleted one would keep nobody out."""
    entry = cache / "images" / "a.cpio"
    path = lease.lock_file(entry)
    path.parent.mkdir(parents=True)
    pruning = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(pruning, fcntl.LOCK_EX)
    late = Leases()
    waiting = threading.Thread(target=late.use, args=(entry,))
    waiting.start()
    time.sleep(0.3)
    assert waiting.is_alive()  # it has the old file open and waits on it
    os.unlink(path)
    other = Leases()
    other.use(entry)  # a new lock file at the path, held shared by another run
    os.close(pruning)
    waiting.join(10)
    assert not waiting.is_alive() and late.held() == [entry]
    other.close()
    assert not free(entry)  # the late run holds the file at the path
    late.close()
    assert free(entry)


HOLD = """
import sys, time
from pathlib import Path
from harness.cache.lease import Leases
leases = Leases()
for entry in sys.argv[1:]:
    leases.use(Path(entry))
print("held", flush=True)
time.sleep(600)
"""


def test_a_process_that_dies_lets_go_of_its_leases(cache: Path) -> None:
    entries = [cache / "images" / "a.cpio", cache / "kernels" / "k1"]
    child = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, entries)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert not any(free(e) for e in entries)
        assert len(prune.take(prune.entries(cache), False, lambda *f: None)) == 1  # b.cpio only
    finally:
        child.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel lets go
        child.wait()
    assert all(free(e) for e in entries)


def test_discard_deletes_only_what_no_other_run_holds(cache: Path) -> None:
    entry = cache / "kernels" / "k1"
    mine, theirs = Leases(), Leases()
    mine.use(entry)
    theirs.use(entry)
    assert not mine.discard(entry) and entry.is_dir()  # the other run is using it
    assert theirs.discard(entry) and not entry.exists()  # the last to let go deletes it
    assert [p.name for p in (cache / "kernels").iterdir()] == []  # nothing renamed away is left


def test_sweep_deletes_the_lock_files_no_run_holds(cache: Path) -> None:
    with Leases() as ended:
        ended.use(cache / "images" / "a.cpio")
        with ended.making(cache / "images" / "b.cpio"):
            pass
    holding = Leases()
    holding.use(cache / "kernels" / "k1")
    assert sorted(p.name for p in (cache / "leases").rglob("*") if p.is_file()) == ["a.cpio", "b.cpio", "k1"]
    assert lease.sweep(cache) == 2
    assert [p.name for p in (cache / "leases").rglob("*") if p.is_file()] == ["k1"]
    holding.close()


def test_unleased_locks_nothing_and_writes_no_lock_file(tmp_path: Path) -> None:
    entry = tmp_path / "images" / "x.cpio"

    def make() -> None:
        entry.parent.mkdir()
        entry.write_bytes(b"x")

    lease.UNLEASED.ensure(entry, entry.exists, make)
    assert entry.is_file() and not (tmp_path / "leases").exists()
    assert lease.UNLEASED.discard(entry) and not entry.exists()


# --- two processes making one entry ----------------------------------------------------------------


def _make_disk(images: str, log: str, go: float) -> None:
    """In a child process: the real data disk, its making slowed down and recorded."""
    real = image._make_disk

    def slow(path: Path, fs: str) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # both processes are asking by then
        real(path, fs)

    image._make_disk = slow  # type: ignore[assignment]
    time.sleep(max(0.0, go - time.time()))
    with Leases() as leases:
        disk = image.disk_image(Path(images), "ext4", leases)
        assert disk.stat().st_size > 0


def test_two_processes_make_the_data_disk_once_and_both_have_it(tmp_path: Path) -> None:
    images, log = tmp_path / "cache" / "images", tmp_path / "made.log"
    spawn = multiprocessing.get_context("spawn")
    go = time.time() + 3.0  # spawning imports the harness: both start asking at the same moment
    children = [spawn.Process(target=_make_disk, args=(str(images), str(log), go)) for _ in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(120)
    assert [c.exitcode for c in children] == [0, 0]
    assert len(log.read_text().split()) == 1  # made once
    assert [p.name for p in images.iterdir()] == ["disk-ext4-v2.img"]  # no half-made disk left
    assert (images / "disk-ext4-v2.img").read_bytes() == image.disk_image(tmp_path / "again").read_bytes()
