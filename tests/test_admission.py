"""Admission control (harness/admission.py, Live.admitted): at any --jobs, the guests running
at once fit in the host's free memory. Threads stand in for boots, except in the last test, which boots
real kernels."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness import run
from harness.boot import admission
from harness.boot.admission import Admission, need_mb
from harness.boot.live import Cancelled, Live
from harness.cache import cache_dir
from harness.plan import matrix


def test_the_budget_is_what_the_host_has_free_less_a_reserve(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20480000 kB\n")
    assert Admission.for_host(meminfo).budget_mb == 20000 - 2000  # 10% kept
    meminfo.write_text("MemTotal: 4096000 kB\nMemAvailable: 4096000 kB\n")
    assert Admission.for_host(meminfo).budget_mb == 4000 - admission.RESERVE_MB  # at least 1 GiB kept
    meminfo.write_text("nonsense\n")
    assert Admission.for_host(meminfo).budget_mb >= 1 << 40  # unknown: no limit
    assert Admission.for_host(tmp_path / "missing").budget_mb >= 1 << 40


def test_guests_beyond_the_budget_wait_their_turn_and_all_run() -> None:
    gate = Admission(2 * need_mb(256) + 10)  # room for two 256M guests
    cancelled = threading.Event()
    running, peak, done = 0, 0, []
    lock = threading.Lock()

    def guest(i: int) -> None:
        nonlocal running, peak
        taken = gate.acquire(256, cancelled)
        assert taken == need_mb(256)
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
            done.append(i)
        gate.release(taken)

    threads = [threading.Thread(target=guest, args=(i,)) for i in range(8)]  # --jobs 8
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(done) == list(range(8)) and peak == 2
    assert gate.free_mb == gate.budget_mb


def test_a_guest_bigger_than_the_budget_runs_alone() -> None:
    gate = Admission(1000)
    cancelled = threading.Event()
    small = gate.acquire(256, cancelled)
    assert small is not None
    got: list[int | None] = []
    big = threading.Thread(target=lambda: got.append(gate.acquire(4096, cancelled, "big-4096M")))
    big.start()
    time.sleep(0.3)
    assert not got and gate.waiting() == {"big-4096M"}  # waits while the small one runs, and says so
    gate.release(small)
    big.join(5)
    assert got == [1000] and gate.free_mb == 0 and gate.waiting() == set()
    gate.release(1000)


def test_an_interrupt_ends_the_wait() -> None:
    live = Live(memory=Admission(need_mb(256)))
    taken = live.memory.acquire(256, live.cancelled)
    assert taken is not None
    raised: list[BaseException] = []

    def second() -> None:
        try:
            with live.admitted(256):
                pass
        except Cancelled as e:
            raised.append(e)

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.3)
    live.cancel()
    t.join(5)
    assert not t.is_alive() and len(raised) == 1
    live.memory.release(taken)
    assert live.memory.free_mb == need_mb(256)


def test_admitted_gives_the_memory_back_whatever_happens_inside() -> None:
    live = Live(memory=Admission(need_mb(256)))
    with pytest.raises(RuntimeError), live.admitted(256):
        assert live.memory.free_mb == 0
        raise RuntimeError("the guest failed")
    assert live.memory.free_mb == need_mb(256)


def qemu_count() -> int:
    n = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            n += Path(cmdline.read_bytes().split(b"\0")[0].decode(errors="replace")).name == "qemu-system-x86_64"
        except OSError:
            continue
    return n


@pytest.mark.integration
@pytest.mark.parametrize(("budget", "peak"), [(need_mb(256) + 100, 1), (3 * need_mb(256), 2)])
def test_a_real_run_never_has_more_guests_than_the_memory_admits(tmp_path: Path, budget: int, peak: int) -> None:
    """Two Debian kernels with --jobs 2: with room for one guest they boot one after the other, with
    room for three they overlap (so the count below can see both)."""
    m = tmp_path / "m.yaml"
    m.write_text(
        "kernels:\n  - debian: bullseye\n  - debian: bookworm\nmemlock: [64K]\nusers: [root]\n"
        "cases: [limits, map_locked_under, mlock_over, oom_mmap_mlock_between]\n"
    )
    options = run.Options(jobs=2, results=tmp_path / "results", cache=cache_dir())
    live = Live(memory=Admission(budget))
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(qemu_count())
            stop.wait(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        _, boots = run.execute(matrix.load(m), options, lambda line: None, live)
    finally:
        stop.set()
        sampler.join()
    assert [b.error for b in boots] == ["", ""] and all(len(b.cases) == 4 for b in boots)
    assert max(seen) == peak, seen
    assert live.memory.free_mb == budget
