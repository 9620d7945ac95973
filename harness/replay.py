"""Re-run boots of an earlier run from its manifest, with the same inputs, and say what differs.

The same inputs: the matrix text the run recorded, the kernels it booted (each found again by its
SHA-256 through its own source: the cache, the exact .debs, the recorded commit, the same file),
the same boots with their limits and users. What cannot be the same (a probe or expectations
edited since, another QEMU) is named before the replay starts and recorded in the new run's
manifest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from harness import manifest, run
from harness.boot import accel, vm
from harness.boot.live import Live
from harness.cache import lease
from harness.errors import UserError
from harness.history import compare
from harness.kernels import sources
from harness.kit import probe, verdict
from harness.plan import matrix
from harness.report import progress, resultsfile, rundir
from harness.results import BootResult, RunRecord


def _matrix(run_dir: Path, recorded: manifest.Manifest) -> matrix.Matrix:
    where = f"{run_dir / rundir.MANIFEST_FILE}: matrix_text"
    if not recorded.matrix_text:
        raise UserError(f"{where}: missing; this run cannot be replayed")
    return matrix.parse(recorded.matrix_text, where)


def differences(recorded: manifest.Manifest, probe_sha: str, accel_name: str) -> list[str]:
    """Inputs that cannot be the same as the run's, one line each (what the run did not record is
    not counted as different)."""
    out = []
    then = recorded.probe.sha256
    if then and then != probe_sha:
        out.append(f"probe: the run used {then[:12]}, guest-tests/probe is now {probe_sha[:12]}")
    if recorded.expectations_sha256 not in ("", verdict.expectations_sha256()):
        out.append("expectations: guest-tests/expectations.yaml changed since the run (verdicts may differ)")
    qemu = vm.qemu_version()
    if recorded.qemu_version not in ("", qemu):
        out.append(f"qemu: the run used {recorded.qemu_version}, this host has {qemu}")
    # What the boots really ran under: a run that fell back to TCG used it for its later boots.
    used = sorted({b.accelerator for b in recorded.boots if b.accelerator} or {recorded.accelerator.name} - {""})
    if used and used != [accel_name]:
        out.append(f"accelerator: the run used {', '.join(used)}, this host uses {accel_name}")
    return out


def boots_of(run: RunRecord, boot: str | None) -> tuple[str, ...]:
    ids = [b.boot_id for b in run.boots]
    if boot is None:
        return tuple(ids)
    if boot not in ids:
        raise UserError(f"--boot {boot}: run {run.run_id} has no such boot; it has {', '.join(ids)}")
    return (boot,)


@dataclasses.dataclass(frozen=True)
class Replay:
    original: RunRecord
    run_dir: Path
    boots: list[BootResult]
    differences: list[str]  # inputs that could not be the same
    changes: list[compare.Difference]  # results that came out differently


def replay(
    run_dir: Path,
    boot: str | None,
    options: run.Options,
    log: Callable[[str], None],
    live: Live | None = None,
    board: progress.Board | None = None,
) -> Replay:
    recorded = rundir.read_manifest(run_dir)
    if recorded is None:
        raise UserError(f"{run_dir}: no manifest.json; only runs written by `harness run` can be replayed")
    original = resultsfile.read_results(run_dir)
    mx = _matrix(run_dir, recorded)
    chosen = boots_of(original, boot)
    with lease.Leases() as pinning:  # the kernels found again stay leased until the run is done with them
        pinned = sources.pin(mx.kernels, recorded.kernels, options.sources(log, pinning))
        diffs = differences(recorded, probe.build().sha256, accel.choose(options.accel).name)
        for line in diffs:
            log(f"replay: not the same input: {line}")
        # A replay observes again: it never takes stored results (harness.reuse).
        options = dataclasses.replace(options, boots=chosen, shard=None, fresh=True)
        replay_of = manifest.ReplayOf(original.run_id, str(run_dir), chosen, tuple(diffs))
        new_dir, boots = run.execute(mx, options, log, live, recorded.matrix_text, pinned, replay_of, board)
    before = RunRecord(
        original.run_id,
        original.started,
        original.finished,
        original.interrupted,
        [b for b in original.boots if b.boot_id in chosen],
    )
    after = RunRecord(new_dir.name, "", None, False, boots)
    changes = compare.compare(compare.run_side(before), compare.run_side(after))
    return Replay(original, new_dir, boots, diffs, changes)
