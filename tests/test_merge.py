"""Sharding (run.select) and harness/merge.py: shards of one job become one run, missing shards stay visible."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import merge
from harness.errors import EXIT_INFRA, UserError
from harness.manifest import Manifest
from harness.plan import matrix
from harness.report import resultsfile, rundir
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, exit_code
from harness.run import Options, select

MATRIX = """kernels:
  - debian: bullseye
  - debian: bookworm
  - debian: trixie
ram: [128M, 256M]
memlock: [64K]
users: [user]
"""


def plans() -> list[matrix.BootPlan]:
    return matrix.expand(matrix.parse(MATRIX, "m.yaml"), ["a", "b"])


def options(**kw: Any) -> Options:
    return Options(jobs=1, results=Path("results"), cache=Path("cache"), **kw)


def test_shards_are_deterministic_disjoint_and_cover_every_boot() -> None:
    every = [p.id for p in plans()]
    slices = [[p.id for p in select(plans(), options(shard=(i, 4)))] for i in (1, 2, 3, 4)]
    assert slices == [[p.id for p in select(plans(), options(shard=(i, 4)))] for i in (1, 2, 3, 4)]
    assert sorted(sum(slices, [])) == sorted(every) and len(sum(slices, [])) == len(every)
    assert slices[0] == ["bullseye-128M", "trixie-128M"]  # every 4th boot from the first
    assert select(plans(), options(shard=(1, 1))) == plans()
    assert select(plans(), options(shard=(7, 7))) == []  # more shards than boots: an empty shard


def test_select_named_boots_and_unknown_boot() -> None:
    assert [p.id for p in select(plans(), options(boots=("trixie-256M",)))] == ["trixie-256M"]
    with pytest.raises(UserError, match="--boot nope: the run has no such boot; it has bullseye-128M, "):
        select(plans(), options(boots=("nope",)))


def kernel(label: str) -> KernelInfo:
    return KernelInfo(label, f"{label}-rel", f"linux-image-{label}", "6.1.1-1", label[:2].encode().hex() * 16, label)


def write_shard(root: Path, index: int, count: int, matrix_text: str = MATRIX) -> Path:
    """A shard's run directory as `harness run --shard` leaves it (reports, manifest, serial logs)."""
    every = plans()
    mine = select(every, options(shard=(index, count)))
    run_dir = root / f"shard{index}"
    writer = rundir.RunWriter(run_dir, f"run-{index}", f"2026-11-26T0{index}:00:00Z", [p.id for p in mine])
    for p in mine:
        (run_dir / "serial").mkdir(parents=True, exist_ok=True)
        (run_dir / "serial" / f"{p.id}.log").write_text(f"log of {p.id}\n")
        cases = [CaseResult(p.id, c, "64K", "user", Outcome.PASS, "", {"case": c}, fingerprint="{}") for c in "ab"]
        writer.add_boot(
            BootResult(p.id, kernel(p.kernel.label), p.ram_mb, "tcg", serial_log=f"serial/{p.id}.log", cases=cases)
        )
    writer.write_manifest(
        Manifest.from_json(
            {
                "matrix_text": matrix_text,
                "probe": {"sha256": "p" * 64},
                "expectations_sha256": "e" * 64,
                "shard": {"index": index, "count": count},
                "plan": [{"id": p.id, "kernel": p.kernel.label, "ram_mb": p.ram_mb} for p in every],
                "kernels": [{"spec": p.kernel.label} for p in mine],
                "boots": [{"id": p.id} for p in mine],
            }
        )
    )
    writer.finish(f"2026-11-26T0{index}:30:00Z")
    return run_dir


def test_merge_puts_boots_in_matrix_order_with_logs_and_fresh_reports(tmp_path: Path) -> None:
    shards = [write_shard(tmp_path, i, 3) for i in (3, 1, 2)]
    out = tmp_path / "merged"
    run = merge.merge(merge.load_all(shards), "merged-run", out, "2026-11-26T09:00:00Z")
    assert [b.boot_id for b in run.boots] == [p.id for p in plans()]
    assert run.complete and run.started == "2026-11-26T01:00:00Z" and run.finished == "2026-11-26T03:30:00Z"
    assert resultsfile.read_results(out) == run
    assert (out / "serial" / "trixie-256M.log").read_text() == "log of trixie-256M\n"
    junit = (out / "junit.xml").read_text()
    assert junit.count("<testsuite ") == 6 and 'tests="12"' in junit
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shard"] is None and [m["run_id"] for m in manifest["merged_from"]] == ["run-3", "run-1", "run-2"]
    assert [b["id"] for b in manifest["boots"]] == [p.id for p in plans()]
    assert exit_code(run.boots) == 0


def test_a_missing_shard_leaves_its_boots_as_errors_and_the_run_incomplete(tmp_path: Path) -> None:
    shards = [write_shard(tmp_path, i, 3) for i in (1, 3)]
    run = merge.merge(merge.load_all(shards), "merged-run", tmp_path / "merged", "2026-11-26T09:00:00Z")
    missing = [b for b in run.boots if b.error]
    assert [b.boot_id for b in missing] == ["bullseye-256M", "trixie-128M"]
    assert {b.error for b in missing} == {"shard 2/3 was not merged"}
    assert not run.complete and exit_code(run.boots) == EXIT_INFRA


def test_merge_refuses_shards_of_different_jobs_and_repeats(tmp_path: Path) -> None:
    one = write_shard(tmp_path / "a", 1, 2)
    other = write_shard(tmp_path / "b", 2, 2, MATRIX.replace("256M", "512M"))
    with pytest.raises(UserError, match=r"shard2: ran another matrix than .*shard1; merge shards of one job"):
        merge.merge(merge.load_all([one, other]), "m", tmp_path / "m", "")
    with pytest.raises(UserError, match=r"shard 1/2 again"):
        merge.merge(merge.load_all([one, one]), "m", tmp_path / "m", "")
    cut_otherwise = write_shard(tmp_path / "c", 2, 3)
    with pytest.raises(UserError, match="cut 2 ways"):
        merge.merge(merge.load_all([one, cut_otherwise]), "m", tmp_path / "m", "")
    with pytest.raises(UserError, match="not a directory"):
        merge.merge(merge.load_all([tmp_path / "nowhere"]), "m", tmp_path / "m", "")
