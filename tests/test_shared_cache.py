"""Runs that share one cache, and `harness cache prune` beside them (issue 22, item 6).

Two `harness kernels fetch` of one kernel at once, against a local mirror: downloaded and unpacked
once, both succeed. Then the issue's case, real: two `harness run` on one cache at the same time
(one cold, one loading the guest a lone run saved) and `harness cache prune --older-than 0` while
they run: both give the lone run's verdicts, prune keeps what they use and says so, and deletes it
once they are done. The cache is a private copy of what the real one holds of Debian 12's kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import http_root
from test_kernels import Mirror, Signer, debs, publish, signer  # noqa: F401

from harness import prune
from harness.cache import cache_dir, lease
from harness.kernels.sources import Context, Kernels
from harness.kernels.sources.debian import DebianKernel
from harness.kit import probe
from harness.report import resultsfile

HARNESS = [sys.executable, "-m", "harness"]


@pytest.fixture
def slow_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Mirror, list[tuple[float, str]]]]:
    """A local HTTP mirror whose .debs take a second each to come: long enough for a second
    process to ask for the kernel while the first is still making it. Records (time, path)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "mirror"
    root.mkdir()
    seen: list[tuple[float, str]] = []

    def slowly(path: str) -> None:
        seen.append((time.monotonic(), path))
        if "/pool/" in path:
            time.sleep(1.0)

    with http_root(root, slowly) as url:
        yield Mirror(root, f"{url}/debian"), seen


def test_two_fetches_of_one_kernel_at_once_download_and_unpack_it_once(
    slow_mirror: tuple[Mirror, list[tuple[float, str]]],
    signer: Signer,  # noqa: F811
    debs: dict[str, tuple[str, bytes]],  # noqa: F811
    tmp_path: Path,  # noqa: F811
) -> None:
    mirror, seen = slow_mirror
    publish(mirror, debs, signer)
    cache = tmp_path / "cache"
    m = tmp_path / "m.yaml"
    m.write_text("kernels:\n  - debian: bookworm\n")
    argv = [
        *HARNESS,
        "kernels",
        "fetch",
        "--matrix",
        str(m),
        "--cache",
        str(cache),
        "--mirror",
        mirror.url,
        "--insecure",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_DEBIAN")}
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = [[line for line in out.splitlines() if line.startswith("bookworm\t")] for out, _ in outs]
    assert lines[0] == lines[1] and len(lines[0]) == 1  # the same kernel for both
    pool = [t for t, path in seen if "/pool/" in path]
    releases = [t for t, path in seen if path.endswith("/InRelease")]
    assert len(pool) == 3  # three .debs, each downloaded once
    assert len(releases) == 2 and max(releases) < max(pool)  # the second asked while the first was downloading
    assert len(list((cache / "kernels").iterdir())) == 1  # one folder, nothing half-made beside it
    assert list((cache / "debs").iterdir()) == []  # deleted once unpacked, by whichever process could


# --- the case: two runs and a prune on one cache ------------------------------------------

# The whole catalogue as root and as the user: about 20 s of cases after the guest is up, loaded or
# booted, so that prune comes while both runs hold what they use.
MATRIX = """kernels:
  - debian: bookworm
ram: [256M]
memlock: [default]
users: [root, user]
cases: all
"""


def private_cache(tmp_path: Path) -> Path:
    """A cache of its own holding a copy of Debian 12's kernel and its suite's indexes from the real
    one, so that prune deletes nothing of the real cache."""
    real = cache_dir()
    kernel = Kernels(Context(real, log=lambda _: None)).cached(DebianKernel(("bookworm",)))
    if kernel is None or not (kernel / "kernel.json").is_file():
        pytest.skip("Debian 12's kernel is not in the cache: `harness kernels fetch` it first")
    cache = tmp_path / "cache"
    shutil.copytree(kernel, cache / "kernels" / kernel.name)
    shutil.copytree(real / "indexes" / "bookworm", cache / "indexes" / "bookworm")
    return cache


def verdicts(results: Path) -> dict[tuple[str, str, str, str], tuple[str, str]]:
    (run_dir,) = [d for d in results.iterdir() if d.is_dir() and d.name != "latest" and not d.is_symlink()]
    return {
        (b.boot_id, c.case, c.memlock, c.user): (c.outcome.value, c.fingerprint)
        for b in resultsfile.read_results(run_dir).boots
        for c in b.cases
    }


def run(cache: Path, m: Path, results: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [
        *HARNESS,
        "run",
        "--matrix",
        str(m),
        "--cache",
        str(cache),
        "--results",
        str(results),
        "--jobs",
        "1",
        *extra,
    ]
    env = {**os.environ, "HARNESS_ACCEL": "tcg"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def prune_cache(cache: Path) -> list[list[str]]:
    out = subprocess.run(
        [*HARNESS, "cache", "prune", "--cache", str(cache), "--older-than", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines()]


def booting(results: Path) -> bool:
    """Has the run's guest started (so every entry it uses is leased: the saved guest it loads too)?"""
    return any(p.stat().st_size for p in results.glob("*/serial/*.log*"))


@pytest.mark.integration
def test_two_runs_and_a_prune_share_one_cache(tmp_path: Path) -> None:
    cache = private_cache(tmp_path)
    m = tmp_path / "m.yaml"
    m.write_text(MATRIX)
    lone = run(cache, m, tmp_path / "lone")  # boots cold and saves its guest for the run below
    out, _ = lone.communicate(timeout=600)
    assert lone.returncode in (0, 1), out
    expected = verdicts(tmp_path / "lone")
    assert len(expected) == 2 * len(probe.build().names)
    (guest,) = (cache / "guests").iterdir()
    (kernel,) = (cache / "kernels").iterdir()
    (img,) = (cache / "images").glob("*.cpio")
    in_use = [kernel, img, cache / "images" / "disk-ext4-v2.img", guest]
    inodes = [p.stat().st_ino for p in in_use]  # the same files after: never deleted and made again
    decoy = cache / "images" / "unused.cpio"  # what no run uses: prune takes it
    decoy.write_bytes(b"no run uses this")

    started = time.monotonic()
    runs = {"cold": run(cache, m, tmp_path / "cold", "--cold"), "saved": run(cache, m, tmp_path / "saved")}
    while not all(booting(tmp_path / name) for name in runs):
        assert all(p.poll() is None for p in runs.values()), "a run ended before its guest started"
        assert time.monotonic() - started < 300
        time.sleep(0.2)
    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))  # as a nightly prune would: a few seconds in
    pruned_at = time.monotonic() - started
    rows = prune_cache(cache)
    assert all(p.poll() is None for p in runs.values()), "prune came after a run had ended"
    logs = {name: p.communicate(timeout=600)[0] for name, p in runs.items()}
    wall = time.monotonic() - started
    print(f"two runs: {wall:.1f} s wall, prune {pruned_at:.1f} s after they started")
    print("\n".join("\t".join(r) for r in rows))

    assert all(p.returncode in (0, 1) for p in runs.values()), logs
    for name in runs:
        assert verdicts(tmp_path / name) == expected, name
    (saved_dir,) = [d for d in (tmp_path / "saved").iterdir() if d.is_dir() and not d.is_symlink()]
    assert resultsfile.read_results(saved_dir).boots[0].restored == guest.name  # it loaded the lone run's guest

    entries = {(p.parent.name, p.name) for p in in_use}
    assert entries <= {(r[1], r[2]) for r in rows if r[0] == "kept" and r[3] == prune.IN_USE}, rows
    assert [r[:3] for r in rows if r[0] == "delete"] == [["delete", "images", "unused.cpio"]]
    assert not decoy.exists() and [p.stat().st_ino for p in in_use] == inodes

    again = prune_cache(cache)  # no run now: what they used goes
    assert entries <= {(r[1], r[2]) for r in again if r[0] == "delete"}, again
    assert not any(r[0] == "kept" for r in again) and not any(p.exists() for p in in_use)
    assert [p for p in (cache / lease.FOLDER).rglob("*") if p.is_file()] == []
