"""Merge the run directories of `harness run --shard I/N` into one run, as if one machine had run it all.

Shards are checked to come from one nightly job (same matrix, probe and expectations); boots come
out in the matrix's order, serial logs are copied, and every report (junit.xml, results.json.gz,
report.html, summary.md, manifest.json) is written anew. A shard that is missing does not make
the merged run look clean: each of its boots is an infrastructure error naming the shard.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import manifest
from harness.errors import InfraError, UserError
from harness.kit import known
from harness.manifest import Manifest
from harness.report import resultsfile, rundir
from harness.results import BootResult, RunRecord

# What must be equal for shards to belong together; the rest (host, timing) may differ per machine.
_SAME = (("matrix_text", "matrix"), ("probe", "probe"), ("expectations_sha256", "expectations"))


@dataclass(frozen=True)
class Shard:
    run_dir: Path
    run: RunRecord
    manifest: Manifest

    @property
    def index(self) -> tuple[int, int] | None:
        shard = self.manifest.shard
        return None if shard is None else (shard.index, shard.count)


def load(run_dir: Path) -> Shard:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory; give the run directories of the shards")
    recorded = rundir.read_manifest(run_dir)
    if recorded is None:
        raise UserError(f"{run_dir}: no manifest.json; merge needs the run directories `harness run` wrote")
    return Shard(run_dir, resultsfile.read_results(run_dir), recorded)


def check(shards: Sequence[Shard]) -> int:
    """Raise UserError unless the shards can be merged; returns the shard count N."""
    if not shards:
        raise UserError("merge: give at least one run directory")
    first = shards[0]
    counts = {s.index[1] if s.index else None for s in shards}
    for shard in shards[1:]:
        for key, what in _SAME:
            if getattr(shard.manifest, key) != getattr(first.manifest, key):
                raise UserError(f"{shard.run_dir}: ran another {what} than {first.run_dir}; merge shards of one job")
    if len(counts) != 1:
        raise UserError(f"merge: the shards were cut {len(counts)} ways ({counts}); merge shards of one job")
    count = counts.pop() or 1
    seen: dict[int, Path] = {}
    for shard in shards:
        index = shard.index[0] if shard.index else 1
        if index in seen:
            raise UserError(f"{shard.run_dir}: shard {index}/{count} again (also {seen[index]}); give each shard once")
        seen[index] = shard.run_dir
    boot_ids: dict[str, Path] = {}
    for shard in shards:
        for boot in shard.run.boots:
            if boot.boot_id in boot_ids:
                raise UserError(f"{shard.run_dir}: boot {boot.boot_id} is also in {boot_ids[boot.boot_id]}")
            boot_ids[boot.boot_id] = shard.run_dir
    return count


def merged_boots(shards: Sequence[Shard], count: int) -> list[BootResult]:
    """Every boot of the matrix's plan in plan order; boots of missing shards become errors."""
    have = {b.boot_id: b for s in shards for b in s.run.boots}
    present = {s.index[0] if s.index else 1 for s in shards}
    out: list[BootResult] = []
    for position, entry in enumerate(shards[0].manifest.plan):
        boot_id = entry.id
        if boot_id in have:
            out.append(have.pop(boot_id))
            continue
        index = position % count + 1
        why = f"shard {index}/{count} was not merged" if index not in present else "the shard did not run this boot"
        out.append(BootResult(boot_id, kernel=None, ram_mb=entry.ram_mb, error=why))
    out.extend(have.values())  # a plan-less manifest (older runs): keep the shards' own order
    return out


def _manifest(shards: Sequence[Shard], run: RunRecord) -> Manifest:
    order = {b.boot_id: i for i, b in enumerate(run.boots)}
    boots = sorted((b for s in shards for b in s.manifest.boots), key=lambda b: order.get(b.id, len(order)))
    return dataclasses.replace(
        shards[0].manifest,
        kernels=tuple(manifest.kernels_by_spec([k for s in shards for k in s.manifest.kernels]).values()),
        boots=tuple(boots),
        shard=None,
        merged_from=tuple(manifest.MergedShard(s.run.run_id, s.manifest.shard, s.manifest.host) for s in shards),
    )


def load_all(run_dirs: Sequence[Path]) -> list[Shard]:
    """Read and check every shard before anything is written (bad input leaves no half-made run)."""
    shards = [load(d) for d in run_dirs]
    check(shards)
    return shards


def merge(
    shards: Sequence[Shard], run_id: str, out_dir: Path, started: str, expected: Sequence[known.Known] = ()
) -> RunRecord:
    """Write the merged run into `out_dir` and return it, its findings marked known as `expected`
    says (the shards may have been judged with another file)."""
    count = check(shards)
    boots = known.marked(expected, merged_boots(shards, count))
    finished = [s.run.finished for s in shards]
    run = RunRecord(
        run_id,
        min((s.run.started for s in shards), default=started),
        None if None in finished or len(shards) < count else max(f for f in finished if f is not None),
        any(s.run.interrupted for s in shards),
        boots,
    )
    for shard in shards:
        for boot in shard.run.boots:
            if boot.serial_log:
                _copy(shard.run_dir, out_dir, boot.serial_log)
    writer = rundir.RunWriter(out_dir, run_id, run.started, [b.boot_id for b in boots], known=expected)
    for boot in boots:
        writer.add_boot(boot)
    writer.write_manifest(_manifest(shards, run))
    writer.finish(run.finished, interrupted=run.interrupted)
    return run


def _copy(shard_dir: Path, out_dir: Path, name: str) -> None:
    """A shard's serial log into the merged run, only ever from inside the one to inside the other
    (read_results refuses other names already; a link in the shard must not lead out either)."""
    src, dest = (shard_dir / name).resolve(), (out_dir / name).resolve()
    if not (src.is_relative_to(shard_dir.resolve()) and dest.is_relative_to(out_dir.resolve())):
        raise UserError(f"{shard_dir}: serial log {name!r} is outside the run directory; merge runs the harness wrote")
    if not src.is_file():
        return  # a boot that never started QEMU names a log that was never written
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    except OSError as e:
        raise InfraError(f"{dest}: cannot copy the serial log from {src}: {e.strerror}") from e
