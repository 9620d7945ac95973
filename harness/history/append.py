"""Appending to the history: a run's rows, and taking them out again (a run judged anew replaces its
own). Each function runs inside the caller's write transaction (History._write)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from harness.history import store
from harness.manifest import Manifest
from harness.results import KernelInfo, RunRecord


def insert(db: sqlite3.Connection, run: RunRecord, manifest: Manifest, source: str) -> int:
    """Store a run and every case result of it, in the caller's transaction; the results stored."""
    probe_sha, default_accel, default_qemu = manifest.probe.sha256, manifest.accelerator.name, manifest.qemu_version
    recorded = datetime.now(UTC).isoformat(timespec="seconds")
    started = store.utc_key(run.started)
    run_pk = store.lastrowid(
        db.execute(
            "INSERT INTO runs (run_id, started, finished, interrupted, harness_version, probe_sha256, recorded,"
            " source, started_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.run_id,
                run.started,
                run.finished,
                int(run.interrupted),
                manifest.harness_version,
                probe_sha,
                recorded,
                source,
                started,
            ),
        )
    )
    (first,) = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM observations").fetchone()
    writer = store.Store(db)
    added = 0
    for boot in run.boots:
        if boot.reused_from:  # its results are the stored run's, rows the history has already
            continue
        k = boot.kernel
        kernel_pk = None if k is None else _kernel_pk(db, k)
        boot_pk = store.lastrowid(
            db.execute(
                "INSERT INTO boots (run, boot_id, kernel, label, source, ram_mb, accelerator, qemu_version, uname,"
                " memtotal_kb, error, inputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_pk,
                    boot.boot_id,
                    kernel_pk,
                    "" if k is None else k.label,
                    "" if k is None else k.source,
                    boot.ram_mb,
                    boot.accelerator or default_accel,
                    boot.qemu_version or default_qemu,
                    boot.uname,
                    boot.memtotal_kb,
                    boot.error,
                    boot.inputs,
                ),
            )
        )
        rows = [
            writer.observation(
                None,
                boot_pk,
                kernel_pk,
                r.case,
                r.memlock,
                r.user,
                r.outcome.value,
                r.fingerprint,
                r.message,
                json.dumps(r.expected, sort_keys=True, default=str),
                r.citation,
                r.duration_s,
                None if r.observation is None else json.dumps(r.observation, sort_keys=True, default=str),
            )
            for r in boot.cases
        ]
        db.executemany(store.INSERT_OBSERVATION, rows)
        added += len(rows)
    db.executemany(
        "INSERT OR IGNORE INTO merged_from (run, shard_run_id, shard) VALUES (?, ?, ?)",
        [(run_pk, shard_id, shard) for shard_id, shard in _shards(manifest)],
    )
    store.count_run(db, run_pk, run.run_id, started, first)
    return added


def forget(db: sqlite3.Connection, run_pk: int) -> list[int]:
    """Take a stored run's rows out; the kernel identities whose tallies must be counted again
    (their tallies go too, to be counted after the run's new rows are in: store.tally)."""
    kernels = [
        pk
        for (pk,) in db.execute(
            f"SELECT DISTINCT {store.IDENTITY} FROM boots b JOIN kernels k ON k.id = b.kernel WHERE b.run = ?",
            (run_pk,),
        )
    ]
    if kernels:
        db.execute(f"DELETE FROM tallies WHERE kernel IN ({', '.join('?' * len(kernels))})", kernels)
    db.execute("DELETE FROM observations WHERE boot IN (SELECT id FROM boots WHERE run = ?)", (run_pk,))
    for table in ("boots", "merged_from"):
        db.execute(f"DELETE FROM {table} WHERE run = ?", (run_pk,))
    db.execute("DELETE FROM runs WHERE id = ?", (run_pk,))
    return kernels


def _kernel_pk(db: sqlite3.Connection, k: KernelInfo) -> int:
    key = (k.sha256, k.package or "", k.version or "", k.release)
    db.execute("INSERT OR IGNORE INTO kernels (sha256, package, version, release) VALUES (?, ?, ?, ?)", key)
    (pk,) = db.execute(
        "SELECT id FROM kernels WHERE sha256 = ? AND package = ? AND version = ? AND release = ?", key
    ).fetchone()
    return int(pk)


def _shards(manifest: Manifest) -> list[tuple[str, str]]:
    """(run_id, "I/N") of each shard a merged run's manifest names; [] for an ordinary run."""
    return [(m.run_id, f"{m.shard.index}/{m.shard.count}" if m.shard else "") for m in manifest.merged_from if m.run_id]
