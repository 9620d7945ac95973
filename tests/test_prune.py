"""`harness cache prune` (harness/prune.py): what goes by age, what a matrix or a history keeps, and
that nothing half-deleted is left for a run to find."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from rich.console import Console

from harness import cli, history, prune
from harness.manifest import Manifest
from harness.results import BootResult, KernelInfo, RunRecord

DAY = 86400
NOW = time.time()


def make(path: Path, days_ago: float, size: int = 4096, kernel_sha: str = "") -> Path:
    """An entry last used `days_ago`; a kernel folder when kernel_sha is given."""
    if kernel_sha or path.parent.name in ("kernels", "builds"):
        path.mkdir(parents=True)
        (path / "vmlinuz").write_bytes(os.urandom(size))
        if path.parent.name == "kernels":
            (path / "kernel.json").write_text(json.dumps({"sha256": kernel_sha}))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    os.utime(path, (NOW - days_ago * DAY, NOW - days_ago * DAY))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    c = tmp_path / "cache"
    make(c / "kernels" / "old", 40, kernel_sha="a" * 64)
    make(c / "kernels" / "recent", 2, kernel_sha="b" * 64)
    make(c / "kernels" / "old-in-history", 40, kernel_sha="c" * 64)
    make(c / "kernels" / ".unpacking", 40)  # a run's work in progress
    make(c / "builds" / "oldbuild", 40)
    make(c / "images" / "old.cpio", 40)
    make(c / "images" / "new.cpio", 1)
    make(c / "debs" / "old.deb", 40)
    make(c / "guests" / "0ld5eed", 40)  # a saved guest (harness.boot.snapshot)
    make(c / "guests" / ".saving-x", 40)  # one being saved
    make(c / "keys" / "id_ed25519", 400)  # never pruned
    return c


def names(entries: list[prune.Entry]) -> list[str]:
    return sorted(f"{e.area}/{e.path.name}" for e in entries)


def nothing_kept(e: prune.Entry) -> bool:
    return False


def test_entries_are_the_prunable_areas_with_last_use_and_kernel_digests(cache: Path) -> None:
    found = {f"{e.area}/{e.path.name}": e for e in prune.entries(cache)}
    assert sorted(found) == [
        "builds/oldbuild",
        "debs/old.deb",
        "guests/0ld5eed",
        "images/new.cpio",
        "images/old.cpio",
        "kernels/old",
        "kernels/old-in-history",
        "kernels/recent",
    ]
    assert found["kernels/old"].sha256 == "a" * 64 and found["images/old.cpio"].sha256 == ""
    assert abs(found["kernels/old"].last_used - (NOW - 40 * DAY)) < 2
    assert found["images/old.cpio"].bytes >= 4096


def test_by_age_every_area_goes_and_the_recent_stays(cache: Path) -> None:
    doomed = prune.select(prune.entries(cache), 30, nothing_kept, NOW)
    assert names(doomed) == [
        "builds/oldbuild",
        "debs/old.deb",
        "guests/0ld5eed",
        "images/old.cpio",
        "kernels/old",
        "kernels/old-in-history",
    ]
    assert names(prune.select(prune.entries(cache), 0, nothing_kept, NOW)) == names(prune.entries(cache))


def test_keep_lists_keep_kernels_and_say_nothing_about_the_rest(cache: Path) -> None:
    keep = prune.keeper({cache / "kernels" / "recent"}, {"c" * 64})
    # Without an age, only kernels go, and not the kept ones.
    assert names(prune.select(prune.entries(cache), None, keep, NOW)) == ["builds/oldbuild", "kernels/old"]
    # With one, both must hold.
    assert names(prune.select(prune.entries(cache), 30, keep, NOW)) == [
        "builds/oldbuild",
        "debs/old.deb",
        "guests/0ld5eed",
        "images/old.cpio",
        "kernels/old",
    ]


def test_remove_frees_and_leaves_nothing_half_deleted(cache: Path) -> None:
    doomed = prune.select(prune.entries(cache), 30, nothing_kept, NOW)
    freed = prune.remove(doomed)
    assert freed == sum(e.bytes for e in doomed) > 5 * 4096
    assert sorted(p.name for p in (cache / "kernels").iterdir()) == [".unpacking", "recent"]
    assert sorted(p.name for p in (cache / "images").iterdir()) == ["new.cpio"]
    assert sorted(p.name for p in (cache / "guests").iterdir()) == [".saving-x"]
    assert (cache / "keys" / "id_ed25519").is_file()
    assert prune.remove(doomed) == 0  # already gone: nothing to do, no error


def run(argv: list[str]) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=200)
    code = cli.main(argv, console=console)
    return code, console.file.getvalue()  # type: ignore[attr-defined]


def test_cli_dry_run_lists_and_keeps_then_prune_deletes(cache: Path) -> None:
    code, out = run(["cache", "prune", "--cache", str(cache), "--older-than", "30", "--dry-run"])
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[:3] for r in rows[:-1]] == [
        ["would delete", "kernels", "old"],
        ["would delete", "kernels", "old-in-history"],
        ["would delete", "builds", "oldbuild"],
        ["would delete", "images", "old.cpio"],
        ["would delete", "debs", "old.deb"],
        ["would delete", "guests", "0ld5eed"],
    ]
    assert rows[-1][0] == "would free" and rows[-1][2] == "6 entries"
    assert (cache / "kernels" / "old").is_dir()

    code, out = run(["cache", "prune", "--cache", str(cache), "--older-than", "30"])
    assert code == 0 and out.splitlines()[-1].startswith("freed\t")
    assert not (cache / "kernels" / "old").exists() and (cache / "kernels" / "recent").is_dir()


def test_cli_keep_history_keeps_the_kernels_it_has_results_of(cache: Path, tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    info = KernelInfo("k", "6.1.0-9-amd64", "linux-image-6.1.0-9-amd64", "6.1.27-1", "c" * 64, "debian:bookworm")
    run_record = RunRecord(
        "20261127T000000Z-0001",
        "2026-11-27T00:00:00Z",
        "2026-11-27T00:10:00Z",
        False,
        [BootResult("k-256M", info, 256)],
    )
    with history.History(db) as h:
        h.record(run_record, Manifest())
        assert h.kernel_digests() == {"c" * 64}
    code, out = run(["cache", "prune", "--cache", str(cache), "--keep-history", str(db)])
    assert code == 0, out
    assert sorted(p.name for p in (cache / "kernels").iterdir()) == [".unpacking", "old-in-history"]
    assert (cache / "images" / "old.cpio").is_file()  # no age given: only kernels went


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "cache prune: give --older-than DAYS, --keep-matrix FILE or --keep-history DB"),
        (["--older-than", "-1"], "--older-than -1.0: give a number of days, 0 or more"),
        (["--keep-history", "nope.sqlite"], "--keep-history nope.sqlite: no such file"),
        (["--keep-matrix", "nope.yaml"], "nope.yaml"),
    ],
)
def test_cli_bad_options_are_one_line_and_exit_2(
    cache: Path, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(["cache", "prune", "--cache", str(cache), *argv])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert len(prune.entries(cache)) == 8  # nothing deleted
