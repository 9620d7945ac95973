"""Re-run boots of an earlier run from its manifest, with the same inputs, and say what differs.

The same inputs: the matrix text the run recorded, the kernels it booted (by SHA-256, from the
cache or fetched again by the exact .debs its manifest lists), the same boots with their limits
and users. What cannot be the same (a probe or expectations edited since, another QEMU) is named
before the replay starts and recorded in the new run's manifest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness import compare, kernels, matrix, report, run, verdict, vm
from harness.archive import Deb
from harness.errors import UserError
from harness.results import BootResult, RunRecord


def find_run(ref: str, results: Path) -> Path:
    """A run given as a directory, or as a run id (or "latest") under the results directory."""
    found = report.find_run(ref, results)
    if found is not None:
        return found
    raise UserError(f"{ref}: no such run (neither a run directory nor a run id in {results}); "
                    "give results/<run-id>")  # fmt: skip


def _matrix(run_dir: Path, manifest: Mapping[str, Any]) -> matrix.Matrix:
    text = manifest.get("matrix_text")
    if not isinstance(text, str) or not text:
        raise UserError(f"{run_dir / report.MANIFEST_FILE}: matrix_text: missing; this run cannot be replayed")
    return matrix.parse(text, f"{run_dir / report.MANIFEST_FILE}: matrix_text")


def pin_kernels(
    mx: matrix.Matrix,
    manifest: Mapping[str, Any],
    cache: Path,
    fetch: Callable[[kernels.Resolved], kernels.Kernel],
    build: Callable[[matrix.GitKernel], kernels.Kernel] | None = None,
) -> dict[matrix.KernelSpec, kernels.Kernel]:
    """Each kernel the run booted, found again by its SHA-256: in the cache, else from its exact .debs."""
    by_label = {spec.label: spec for spec in mx.kernels}
    cached = {k.sha256: k for k in kernels.list_cached(cache)}
    pinned: dict[matrix.KernelSpec, kernels.Kernel] = {}
    for entry in manifest.get("kernels") or []:
        spec = by_label.get(str(entry.get("spec")))
        sha = entry.get("sha256")
        if spec is None or not sha:
            continue  # a kernel that never resolved: the replay resolves it the way the run did
        if isinstance(spec, matrix.PathKernel):
            kernel = kernels.from_path(spec, cache)
            if kernel.sha256 != sha:
                raise UserError(f"{spec.path}: changed since the run (sha256 {kernel.sha256[:12]}, the run booted "
                                f"{sha[:12]}); put the original file back to replay it")  # fmt: skip
        elif sha in cached:
            kernel = cached[sha]
        elif isinstance(spec, matrix.GitKernel):
            # Built from the commit the run built (a branch may have moved since), then checked by hash.
            commit = str(entry.get("source") or "").rpartition("@")[2] or spec.rev
            if build is None:
                raise UserError(f"kernel {spec.label}: built from git, and this replay cannot build")
            kernel = build(dataclasses.replace(spec, rev=commit))
            if kernel.sha256 != sha:
                raise UserError(f"kernel {spec.label}: commit {commit} now builds sha256 {kernel.sha256[:12]}, the "
                                f"run booted {sha[:12]} (another compiler or config fragment?)")  # fmt: skip
        else:
            assert isinstance(spec, matrix.DebianKernel)
            debs = tuple(Deb(**d) for d in entry.get("debs") or [])
            if not debs:
                raise UserError(f"kernel {spec.label}: the manifest lists no .debs and it is not in the cache")
            kernel = fetch(kernels.Resolved(spec, debs[0].suite, str(entry.get("release")), str(entry.get("version")),
                                            debs, str(entry.get("package") or "")))  # fmt: skip
            if kernel.sha256 != sha:
                raise UserError(f"kernel {spec.label}: the .debs now give sha256 {kernel.sha256[:12]}, the run "
                                f"booted {sha[:12]}")  # fmt: skip
        pinned[spec] = dataclasses.replace(kernel, label=spec.label)
    return pinned


def differences(manifest: Mapping[str, Any], probe_sha: str, accel: str) -> list[str]:
    """Inputs that cannot be the same as the run's, one line each."""
    out = []
    then = (manifest.get("probe") or {}).get("sha256")
    if then and then != probe_sha:
        out.append(f"probe: the run used {then[:12]}, guest-tests/probe is now {probe_sha[:12]}")
    if manifest.get("expectations_sha256") not in (None, verdict.expectations_sha256()):
        out.append("expectations: guest-tests/expectations.yaml changed since the run (verdicts may differ)")
    qemu = vm.qemu_version()
    if manifest.get("qemu_version") not in (None, qemu):
        out.append(f"qemu: the run used {manifest.get('qemu_version')}, this host has {qemu}")
    then_accel = (manifest.get("accelerator") or {}).get("name")
    if then_accel not in (None, accel):
        out.append(f"accelerator: the run used {then_accel}, this host uses {accel}")
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
    run_dir: Path, boot: str | None, options: run.Options, log: Callable[[str], None], live: run.Live | None = None
) -> Replay:
    manifest = report.read_manifest(run_dir)
    if not manifest:
        raise UserError(f"{run_dir}: no manifest.json; only runs written by `harness run` can be replayed")
    original = report.read_results(run_dir)
    mx = _matrix(run_dir, manifest)
    chosen = boots_of(original, boot)
    source = run.Kernels(options, log)
    pinned = pin_kernels(mx, manifest, options.cache, lambda r: source.fetch(r.spec, r),
                         lambda spec: source.fetch(spec, None))  # fmt: skip
    accel = options.accel or vm.accelerator()
    probe = run.build_probe()
    diffs = differences(manifest, probe.sha256, accel.name)
    for line in diffs:
        log(f"replay: not the same input: {line}")
    options = dataclasses.replace(options, boots=chosen, shard=None, accel=accel)
    provenance = {"replay_of": {"run_id": original.run_id, "run_dir": str(run_dir), "boots": list(chosen),
                                "differences": diffs}}  # fmt: skip
    new_dir, boots = run.execute(mx, options, log, live, str(manifest["matrix_text"]), pinned, provenance)
    before = RunRecord(original.run_id, original.started, original.finished, original.interrupted,
                       [b for b in original.boots if b.boot_id in chosen])  # fmt: skip
    after = RunRecord(new_dir.name, "", None, False, boots)
    changes = compare.compare(compare.run_side(before), compare.run_side(after))
    return Replay(original, new_dir, boots, diffs, changes)
