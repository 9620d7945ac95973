"""History store: migrations, append-only recording, concurrent writers, and the per-version views."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from harness import history
from harness.errors import InfraError, UserError
from harness.history import MIGRATIONS, SCHEMA_VERSION, History, render
from harness.manifest import Manifest
from harness.report.rundir import RunWriter
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord

MANIFEST = {"harness_version": "0.1.0", "probe": {"sha256": "probe-1"}, "qemu_version": "7.2.22"}
RECORD = Manifest.from_json(MANIFEST)  # as the runner records it; MANIFEST as older harnesses stored it


def kernel(version: str) -> KernelInfo:
    upstream = version.split("-")[0]
    release = f"{upstream}-amd64"
    sha = hashlib.sha256(version.encode()).hexdigest()
    return KernelInfo(f"k{upstream}", release, f"linux-image-{release}", version, sha, "debian:test")


def fp(**fields: object) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def result(case: str, fingerprint: str, memlock: str = "default", outcome: Outcome = Outcome.PASS) -> CaseResult:
    observation = {"case": case} if fingerprint else None
    return CaseResult("boot", case, memlock, "root", outcome, f"{case} message", observation, fingerprint=fingerprint)


def run(run_id: str, started: str, boots: dict[KernelInfo, list[CaseResult]], ram: int = 256) -> RunRecord:
    boot_results = [BootResult(f"{k.label}-{ram}M", k, ram, "tcg", "7.2.22", cases=cs) for k, cs in boots.items()]
    return RunRecord(run_id, started, started, False, boot_results)


A = fp(calls=["mmap:ok"], locked="all", result="ok")
B = fp(calls=["mmap:EAGAIN"], locked="none", result="ok")
C = fp(calls=["mmap:EAGAIN"], locked="none", result="EAGAIN")
K510, K61, K69, K612 = kernel("5.10.223-1"), kernel("6.1.176-1"), kernel("6.9.7-1"), kernel("6.12.117-1")


def script(version: int) -> str:
    """The SQL of a released migration (those up to 2 are SQL scripts)."""
    migration = MIGRATIONS[version - 1]
    assert isinstance(migration, str)
    return migration


def versions_of(db: History, **filters: str) -> list[str | None]:
    (timeline,) = db.timelines(**filters)
    return [p.kernel.version for p in timeline.points]


def test_v1_database_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    con = sqlite3.connect(path)
    con.executescript(script(1))
    con.executescript(f"""
        PRAGMA user_version = 1;
        INSERT INTO runs VALUES (1, 'old-run', '2026-01-01T00:00:00+00:00', NULL, 0, '0.0.1', 'p0', 'now');
        INSERT INTO kernels VALUES (1, '{K61.sha256}', '{K61.package}', '{K61.version}', '{K61.release}');
        INSERT INTO boots VALUES (1, 1, 'b', 1, 'bookworm', 'debian:bookworm', 256, 'kvm', '8.0', '', NULL, '');
        INSERT INTO observations VALUES (1, 1, 'mlock_at', '64K', 'user', 'pass', '{A}', 'm', NULL, '{{}}', '', 0.1);
    """)
    con.close()
    with History(path) as db:
        assert db.version == SCHEMA_VERSION > 1
        (timeline,) = db.timelines()
        assert (timeline.case, timeline.memlock, timeline.user, timeline.ram_mb) == ("mlock_at", "64K", "user", 256)
        assert [(p.kernel, p.fingerprint, p.run_id) for p in timeline.points] == [
            (KernelInfo("bookworm", K61.release, K61.package, K61.version, K61.sha256, "debian:bookworm"), A, "old-run")
        ]
        assert db.record(run("old-run", "2026-02-01T00:00:00Z", {K61: [result("mlock_at", B)]}), RECORD) == 0
        assert db.record(run("new-run", "2026-02-01T00:00:00Z", {K612: [result("x", B)]}), RECORD, "dir") == 1
    con = sqlite3.connect(path)
    runs = con.execute("SELECT run_id, source FROM runs ORDER BY id").fetchall()
    assert runs == [("old-run", ""), ("new-run", "dir")]
    indexes = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"observations_boot", "boots_kernel", "merged_from_shard"} <= indexes  # v3 dropped observations_case
    con.close()


def record_v2(con: sqlite3.Connection, run: RunRecord, manifest: dict[str, Any], source: str = "") -> None:
    """Append a run as the schema-2 harness did (its History.record, SQL for SQL)."""
    probe = manifest.get("probe") or {}
    run_pk = con.execute(
        "INSERT INTO runs (run_id, started, finished, interrupted, harness_version, probe_sha256, recorded, source)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.run_id,
            run.started,
            run.finished,
            int(run.interrupted),
            manifest.get("harness_version") or "",
            probe.get("sha256") or "",
            "2026-12-01T00:00:00+00:00",
            source,
        ),
    ).lastrowid
    for boot in run.boots:
        k = boot.kernel
        kernel_pk = None
        if k is not None:
            key = (k.sha256, k.package or "", k.version or "", k.release)
            con.execute("INSERT OR IGNORE INTO kernels (sha256, package, version, release) VALUES (?, ?, ?, ?)", key)
            sql = "SELECT id FROM kernels WHERE sha256 = ? AND package = ? AND version = ? AND release = ?"
            (kernel_pk,) = con.execute(sql, key).fetchone()
        boot_pk = con.execute(
            "INSERT INTO boots (run, boot_id, kernel, label, source, ram_mb, accelerator, qemu_version, uname,"
            " memtotal_kb, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_pk,
                boot.boot_id,
                kernel_pk,
                "" if k is None else k.label,
                "" if k is None else k.source,
                boot.ram_mb,
                boot.accelerator,
                boot.qemu_version or manifest.get("qemu_version") or "",
                boot.uname,
                boot.memtotal_kb,
                boot.error,
            ),
        ).lastrowid
        con.executemany(
            "INSERT INTO observations (boot, case_name, memlock, user, outcome, fingerprint, message, observation,"
            " expected, citation, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    boot_pk,
                    r.case,
                    r.memlock,
                    r.user,
                    r.outcome.value,
                    r.fingerprint,
                    r.message,
                    None if r.observation is None else json.dumps(r.observation, sort_keys=True, default=str),
                    json.dumps(r.expected, sort_keys=True, default=str),
                    r.citation,
                    r.duration_s,
                )
                for r in boot.cases
            ],
        )
    for entry in manifest.get("merged_from") or []:
        shard = f"{entry['shard']['index']}/{entry['shard']['count']}"
        con.execute("INSERT INTO merged_from VALUES (?, ?, ?)", (run_pk, entry["run_id"], shard))


def observed(case: str, fingerprint: str, n: int, memlock: str = "default") -> CaseResult:
    """A result whose observation, like a real one, differs from night to night in a few numbers."""
    observation = {"case": case, "child_pid": 100 + n, "duration_ms": 7 * n, "calls": [{"call": "mmap"}] * 5}
    return CaseResult(
        "boot",
        case,
        memlock,
        "root",
        Outcome.PASS,
        f"{case}: as expected",
        observation,
        {"result": "ok"},
        "mlock(2)",
        0.25 * n,
        fingerprint,
    )


CUSTOM = KernelInfo("custom", "6.13.0-rc1", None, None, "", "path:/srv/bzImage")  # a kernel without a sha256
MERGED = {**MANIFEST, "merged_from": [{"run_id": "shard1", "shard": {"index": 1, "count": 2}}]}
# Recorded in this order: an old run imported last, a start time in another zone, a merged run.
SCENARIO: list[tuple[RunRecord, dict[str, Any]]] = [
    (
        run(
            "r1",
            "2026-01-01T00:00:00Z",
            {
                K61: [
                    observed("a", A, 1),
                    observed("b", B, 1, memlock="64K"),
                    CaseResult("boot", "c", "default", "root", Outcome.INFRA_ERROR, "guest lost", None),
                ],
                K612: [observed("a", B, 2)],
                CUSTOM: [observed("a", C, 3)],
            },
        ),
        MANIFEST,
    ),
    (
        run("r2", "2026-02-01T09:00:00+05:00", {K61: [observed("a", C, 4), observed("b", B, 5, memlock="64K")]}, 512),
        MANIFEST,
    ),
    (run("r3", "2026-02-01T05:00:00Z", {K61: [observed("a", A, 6)]}, 512), MANIFEST),
    (run("shard1", "2026-03-01T00:00:00Z", {K612: [observed("a", C, 7)]}), MANIFEST),
    (run("merged", "2026-03-01T01:00:00Z", {K612: [observed("a", C, 7)]}), MERGED),
    (run("r0", "2025-12-01T00:00:00Z", {K510: [observed("a", A, 8)], K61: [observed("a", B, 9)]}), MANIFEST),
]


def every_view(db: History) -> dict[str, Any]:
    views: dict[str, Any] = {"kernels": db.kernels(), "grid": db.timelines()}
    for case in ("a", "b"):
        views[f"case {case}"] = db.timelines(case=case)
    for selector in ("6", "6.1", "5.10", "custom", K612.sha256[:8]):
        views[f"kernel {selector}"] = db.timelines(kernel=selector)
    for selector in ("6.1", "5.10", "6.12", "custom"):
        views[f"results {selector}"] = db.kernel_results(selector)
    return views


def test_v2_database_with_data_is_converted_to_v3_with_the_same_answers(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    con = sqlite3.connect(path)
    con.executescript(script(1))
    con.executescript(script(2))
    con.execute("PRAGMA user_version = 2")
    for record, manifest in SCENARIO:
        record_v2(con, record, manifest, source=f"results/{record.run_id}")
    con.commit()
    ids = con.execute("SELECT id, case_name, fingerprint FROM observations ORDER BY id").fetchall()
    con.close()
    with History(path) as migrated, History(tmp_path / "fresh.sqlite") as fresh:
        assert migrated.version == SCHEMA_VERSION == 4
        for record, manifest in SCENARIO:
            fresh.record(record, Manifest.from_json(manifest), source=f"results/{record.run_id}")
        views = every_view(migrated)
        assert views == every_view(fresh)
        (a256, b64k, a512, b64k512) = views["grid"]  # the infra error has no behaviour to show
        assert (
            a256.name,
            [(p.kernel.version or p.kernel.release, p.fingerprint, p.runs, p.varies, p.run_id) for p in a256.points],
        ) == (
            "a[memlock=default,user=root] 256M",
            [
                ("5.10.223-1", A, 1, False, "r0"),
                ("6.1.176-1", A, 2, True, "r1"),
                ("6.12.117-1", C, 2, True, "merged"),
                ("6.13.0-rc1", C, 1, False, "r1"),
            ],
        )
        # 09:00+05:00 is 04:00Z, before r3's 05:00Z: r3 is the latest run on 512M.
        assert [(p.fingerprint, p.run_id, p.runs) for p in a512.points] == [(A, "r3", 2)]
        assert [(p.run_id, p.runs) for p in b64k.points + b64k512.points] == [("r1", 1), ("r2", 1)]
        info, results = migrated.kernel_results("6.1")
        assert info == K61
        assert [(ram, r.case, r.memlock, r.fingerprint, r.observation, r.duration_s) for ram, r in results] == [
            (256, "a", "default", A, observed("a", A, 1).observation, 0.25),
            (256, "b", "64K", B, observed("b", B, 1).observation, 0.25),
            (512, "a", "default", A, observed("a", A, 6).observation, 1.5),
            (512, "b", "64K", B, observed("b", B, 5).observation, 1.25),
        ]
    con = sqlite3.connect(path)
    # Ids (catalogue order) are kept; strings and observations moved to their tables.
    assert con.execute("SELECT id, case_name, fingerprint FROM observations_text ORDER BY id").fetchall() == ids
    tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "observations_v2" not in tables and {"texts", "cases", "dictionaries", "tallies"} <= tables
    assert con.execute("SELECT source FROM runs WHERE run_id = 'r0'").fetchone() == ("results/r0",)
    con.close()


def test_converting_a_v2_history_gives_its_space_back(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    con = sqlite3.connect(path)
    con.executescript(script(1))
    con.executescript(script(2))
    con.execute("PRAGMA user_version = 2")
    for night in range(1, 31):
        cases = [observed(f"case{n}", fp(n=n), night) for n in range(50)]
        record_v2(con, run(f"n{night}", f"2026-01-{night:02}T02:00:00Z", {K61: cases, K612: cases}), MANIFEST)
    con.commit()
    con.close()
    before = path.stat().st_size
    with History(path) as db:
        assert db.version == SCHEMA_VERSION
    assert path.stat().st_size < before / 3


def test_a_python_migration_step_runs_in_the_migration_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "h.sqlite"
    with History(path) as db:
        db.record(run("r1", "2026-01-01T00:00:00Z", {K61: [result("a", A)]}), RECORD)

    def broken(con: sqlite3.Connection) -> None:
        con.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("step failed")

    monkeypatch.setattr(history.schema, "MIGRATIONS", (*MIGRATIONS, broken))
    monkeypatch.setattr(history.schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="step failed"):
        History(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone()
    con.close()

    def working(con: sqlite3.Connection) -> None:
        con.execute("CREATE TABLE done (x)")
        con.execute("INSERT INTO done SELECT count(*) FROM observations")

    monkeypatch.setattr(history.schema, "MIGRATIONS", (*MIGRATIONS, working))
    with History(path) as db:
        assert db.version == SCHEMA_VERSION + 1
        assert [p.fingerprint for p in db.timelines()[0].points] == [A]
    con = sqlite3.connect(path)
    assert con.execute("SELECT x FROM done").fetchall() == [(1,)]
    con.close()


def test_tallies_kept_on_append_equal_tallies_counted_from_the_rows(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        for record, manifest in SCENARIO:
            db.record(record, Manifest.from_json(manifest))
        # A merged run stored before its shard: the shard is never counted.
        merged = Manifest.from_json({**MANIFEST, "merged_from": [{"run_id": "s2", "shard": {"index": 1, "count": 2}}]})
        db.record(run("m2", "2026-04-01T01:00:00Z", {K510: [observed("a", B, 10)]}), merged)
        db.record(run("s2", "2026-04-01T00:00:00Z", {K510: [observed("a", C, 11)]}), RECORD)
        kept = db._db.execute("SELECT * FROM tallies ORDER BY 1, 2, 3").fetchall()
        history.store.tally(db._db)
        assert db._db.execute("SELECT * FROM tallies ORDER BY 1, 2, 3").fetchall() == kept
        assert [(p.fingerprint, p.runs, p.varies, p.run_id) for p in db.timelines(kernel="5.10")[0].points] == [
            (B, 2, True, "m2")
        ]


def test_nightly_repeats_store_strings_once_and_observations_as_small_deltas(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with History(path) as db:
        for night in range(1, 21):
            cases = [observed(f"case{n}", fp(n=n), night) for n in range(20)]
            db.record(run(f"n{night}", f"2026-01-{night:02}T02:00:00Z", {K61: cases, K612: cases}), RECORD)
        info, results = db.kernel_results("6.12")
        # Lossless: the latest night's own observation, not the first one stored.
        assert [r.observation for _, r in results] == [observed(f"case{n}", "", 20).observation for n in range(20)]
        assert [r.duration_s for _, r in results] == [5.0] * 20
    con = sqlite3.connect(path)
    # fingerprints and messages (one per case), expected and citation: stored once, not each night
    assert con.execute("SELECT count(*) FROM texts").fetchone() == (20 + 20 + 2,)
    assert con.execute("SELECT count(*) FROM dictionaries").fetchone() == (40,)  # per case, behaviour, kernel
    (text,) = con.execute("SELECT max(length(observation)) FROM dictionaries").fetchone()
    (delta,) = con.execute("SELECT max(length(observation)) FROM observations").fetchone()
    assert delta < 40 < text
    con.close()


def test_latest_is_by_start_instant_whatever_the_zone_or_text(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        # As text "10:00+05:00" sorts after "06:00Z", but it is 05:00Z: an hour earlier.
        db.record(run("utc", "2026-01-01T06:00:00Z", {K61: [result("a", A)]}), RECORD)
        db.record(run("zoned", "2026-01-01T10:00:00+05:00", {K61: [result("a", B)]}), RECORD)
        db.record(run("unknown", "not a time", {K61: [result("a", C)]}), RECORD)  # counts as the earliest
        (point,) = db.timelines()[0].points
        assert (point.fingerprint, point.run_id, point.runs, point.varies) == (A, "utc", 3, True)


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    before = path.read_bytes()
    message = (
        f"history schema {SCHEMA_VERSION + 1} is newer than this harness knows ({SCHEMA_VERSION}); "
        "use a newer harness or another --history file"
    )
    with pytest.raises(UserError, match=re.escape(message)):
        History(path)
    assert path.read_bytes() == before


def test_a_file_that_is_not_sqlite_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"schema": 1}\n' * 100)
    with pytest.raises(UserError, match=rf"{path}: not a history database .*--history"):
        History(path)
    assert path.read_text() == '{"schema": 1}\n' * 100


def test_another_programs_sqlite_database_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE runs (x)")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="an SQLite database, but not a history database"):
        History(path)
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM sqlite_master").fetchall() == [("runs",)]
    con.close()


def test_a_history_that_cannot_be_created_is_an_infra_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InfraError, match=str(tmp_path / "file" / "h.sqlite")):
        History(tmp_path / "file" / "h.sqlite")


def test_runs_never_overwrite_each_other(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        first = run("r1", "2026-01-01T00:00:00Z", {K61: [result("a", A), result("b", "", outcome=Outcome.TIMEOUT)]})
        assert db.record(first, RECORD) == 2
        again = run("r1", "2026-03-01T00:00:00Z", {K61: [result("a", B)]})
        assert db.record(again, RECORD) == 0
        (timeline,) = db.timelines()  # the timeout is stored but is no observed behaviour
        assert [(p.fingerprint, p.runs) for p in timeline.points] == [(A, 1)]


def _write_runs(path: str, prefix: str, barrier: Any) -> None:
    barrier.wait()
    with History(Path(path)) as db:  # the default busy timeout is what runs get
        for i in range(10):
            cases = [result(f"case{n}", A) for n in range(100)]
            assert db.record(run(f"{prefix}{i}", f"2026-01-01T00:00:{i:02}Z", {K61: cases}), RECORD) == 100


def test_concurrent_writers_both_land(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "h.sqlite"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    # Both start on a file that does not exist yet, so they also race to create and migrate it.
    writers = [ctx.Process(target=_write_runs, args=(str(path), p, barrier)) for p in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (20,)
    assert con.execute("SELECT count(*) FROM observations").fetchone() == (2000,)
    con.close()


def test_kernels_are_ordered_by_version_not_by_date_or_insertion(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        # The newest kernel was run first, and 6.12 sorts before 6.9 as text.
        db.record(run("r1", "2026-01-01T00:00:00Z", {K612: [result("a", A)]}), RECORD)
        db.record(run("r2", "2026-02-01T00:00:00Z", {K69: [result("a", A)], K510: [result("a", A)]}), RECORD)
        assert versions_of(db) == ["5.10.223-1", "6.9.7-1", "6.12.117-1"]


def test_first_change_and_changed_fields(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        boots = {K510: [result("a", A)], K61: [result("a", A)], K69: [result("a", B)], K612: [result("a", C)]}
        boots[kernel("7.0.1-1")] = [result("a", "", outcome=Outcome.INFRA_ERROR)]
        db.record(run("r1", "2026-01-01T00:00:00Z", boots), RECORD)
        (timeline,) = db.timelines()
        assert [p.kernel.version for p in timeline.points] == ["5.10.223-1", "6.1.176-1", "6.9.7-1", "6.12.117-1"]
        assert timeline.first_change == 2
        assert [p.changed for p in timeline.points] == [False, False, True, True]
        assert [p.changed_fields for p in timeline.points] == [(), (), ("calls", "locked"), ("result",)]


def test_latest_run_wins_and_disagreeing_runs_are_marked(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        # Recorded out of date order: "latest" means the run that started last.
        db.record(run("late", "2026-03-01T00:00:00Z", {K61: [result("a", B)], K510: [result("a", A)]}), RECORD)
        db.record(run("early", "2026-01-01T00:00:00Z", {K61: [result("a", A)], K510: [result("a", A)]}), RECORD)
        (timeline,) = db.timelines()
        (p510, p61) = timeline.points
        assert (p510.runs, p510.varies, p510.changed) == (2, False, False)
        assert (p61.runs, p61.varies, p61.fingerprint, p61.run_id, p61.changed) == (2, True, B, "late", True)


def test_kernel_filter_by_version_components_and_names(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        db.record(run("r1", "2026-01-01T00:00:00Z", {K61: [result("a", A)], K612: [result("a", B)]}), RECORD)
        db.record(run("r2", "2026-02-01T00:00:00Z", {K61: [result("a", C)]}), RECORD)
        assert versions_of(db, kernel="6.1") == ["6.1.176-1"]
        assert versions_of(db, kernel="6.12") == ["6.12.117-1"]
        assert versions_of(db, kernel="6.1.176") == ["6.1.176-1"]
        assert versions_of(db, kernel="6") == ["6.1.176-1", "6.12.117-1"]
        assert versions_of(db, kernel=K612.release) == ["6.12.117-1"]
        assert versions_of(db, kernel=K612.sha256[:8].upper()) == ["6.12.117-1"]
        assert versions_of(db, kernel="k6.1.176", case="a") == ["6.1.176-1"]
        with pytest.raises(UserError, match=r"no kernel matches '6\.2'; known: 6\.1\.176-1, 6\.12\.117-1"):
            db.timelines(kernel="6.2")
        with pytest.raises(UserError, match="no observed case 'b'; known: a"):
            db.timelines(case="b")
        with pytest.raises(UserError, match=r"'6' matches 2 kernels \(6\.1\.176-1 .*6\.12\.117-1"):
            db.kernel_results("6")
        info, results = db.kernel_results("6.1")
        assert info == K61
        assert [(ram, r.boot_id, r.case, r.fingerprint, r.observation) for ram, r in results] == [
            (256, "256M", "a", C, {"case": "a"})
        ]


def test_a_case_observed_only_on_a_boot_without_kernel_is_known_but_shows_nothing(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        unresolved = BootResult("lost-256M", None, 256, cases=[result("z", A)])
        db.record(RunRecord("r1", "2026-01-01T00:00:00Z", None, False, [unresolved]), RECORD)
        db.record(run("r2", "2026-01-02T00:00:00Z", {K61: [result("a", A)]}), RECORD)
        with pytest.raises(UserError, match=r"nothing observed for case z on kernel \(any\)"):
            db.timelines(case="z")
        with pytest.raises(UserError, match="no observed case 'y'; known: a, z"):
            db.timelines(case="y")


def test_import_run_directory_written_by_run_writer(tmp_path: Path) -> None:
    run_dir = tmp_path / "results" / "20261126T185300Z-ab12"
    writer = RunWriter(run_dir, run_dir.name, "2026-11-26T18:53:00Z")
    boot = BootResult("bookworm-512M", K61, 512, "kvm", "8.2.0", cases=[result("a", A), result("b", A, "64K")])
    writer.add_boot(boot)
    writer.add_boot(BootResult("broken-512M", None, 512, error="could not resolve the kernel"))
    writer.write_manifest(Manifest.from_json({**MANIFEST, "probe": {"sha256": "f4b4fe88"}}))
    writer.finish("2026-11-26T19:00:00Z")
    with History(tmp_path / "h.sqlite") as db:
        assert db.import_run(run_dir) == 2
        assert db.import_run(run_dir) == 0
        assert [(t.case, t.memlock, t.ram_mb, t.points[0].run_id) for t in db.timelines()] == [
            ("a", "default", 512, run_dir.name),
            ("b", "64K", 512, run_dir.name),
        ]
    con = sqlite3.connect(tmp_path / "h.sqlite")
    assert con.execute("SELECT probe_sha256, source, finished FROM runs").fetchall() == [
        ("f4b4fe88", str(run_dir), "2026-11-26T19:00:00Z")
    ]
    boots = con.execute("SELECT boot_id, kernel, accelerator, qemu_version, error FROM boots ORDER BY id").fetchall()
    assert boots == [
        ("bookworm-512M", 1, "kvm", "8.2.0", ""),
        ("broken-512M", None, "", "7.2.22", "could not resolve the kernel"),
    ]
    con.close()


def test_shard_runs_are_not_counted_again_once_merged(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        db.record(run("shard1", "2026-01-01T00:00:00Z", {K61: [result("a", A)]}), RECORD)
        merged = Manifest.from_json(
            {**MANIFEST, "merged_from": [{"run_id": "shard1", "shard": {"index": 1, "count": 2}}]}
        )
        db.record(run("merged", "2026-01-01T01:00:00Z", {K61: [result("a", A)]}), merged)
        (timeline,) = db.timelines()
        assert [(p.runs, p.run_id) for p in timeline.points] == [(1, "merged")]


def test_render_grid_and_detail(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        boots = {
            K510: [result("a", A), result("same", A)],
            K61: [result("a", A), result("same", A)],
            K69: [result("a", B)],
            K612: [result("a", A), result("same", A)],
        }
        db.record(run("r1", "2026-01-01T00:00:00Z", boots), RECORD)
        db.record(run("r2", "2026-02-01T00:00:00Z", {K612: [result("a", C)]}), RECORD)
        timelines = db.timelines()
        detail = db.timelines(case="a")
    console = Console(record=True, width=200)
    render(timelines, console)
    grid = [line.split() for line in console.export_text().splitlines()]
    assert ["case", "memlock", "user", "RAM", "5.10.223-1", "6.1.176-1", "6.9.7-1", "6.12.117-1"] in grid
    assert ["a", "default", "root", "256M", "A", "A", "B*", "C~"] in grid
    assert ["same", "default", "root", "256M", "A", "A", "·", "A"] in grid
    render(timelines, console, only_changes=True)
    text = console.export_text()
    assert "same" not in text and "1 rows that never change are hidden" in text
    render(detail, console, detail=True)
    text = console.export_text()
    assert "a[memlock=default,user=root] 256M" in text
    assert "B: calls=[mmap:EAGAIN] locked=none result=ok  ← first change: calls, locked" in text
    assert "C: calls=[mmap:EAGAIN] locked=none result=EAGAIN  ← changed: result" in text
    assert "A: as above" in text and "2, varies" in text


def test_changes_name_the_first_build_that_carries_each_within_a_line_and_between_lines(tmp_path: Path) -> None:
    """Every build of two stable lines: a change in a point release is told from a new line's."""
    builds = [kernel(v) for v in ("6.1.170-3", "6.1.172-1", "6.1.176-1", "6.12.90-1", "6.12.94-1")]
    a, b = kernel("6.1.170-3"), kernel("6.1.172-1")
    with History(tmp_path / "h.sqlite") as db:
        seen = {k: [result("x", A), result("x", A, memlock="64K"), result("steady", A)] for k in builds}
        seen[builds[1]] = [result("x", B), result("x", A, memlock="64K"), result("steady", A)]  # a stable update ...
        seen[builds[2]] = [result("x", B), result("x", A, memlock="64K"), result("steady", A)]
        seen[builds[3]] = [result("x", C), result("x", C, memlock="64K"), result("steady", A)]  # ... a new line
        seen[builds[4]] = [result("x", C), result("x", C, memlock="64K"), result("steady", A)]
        db.record(run("r1", "2026-01-01T00:00:00Z", seen), RECORD)
        timelines = db.timelines()
    console = Console(record=True, width=250)
    render(timelines, console, only_changes=True)
    text = console.export_text()
    rows = [line.split() for line in text.splitlines()]
    within, between = text.split("Behaviour changes within a line (1)")[1].split("Behaviour changes between lines")
    assert between.startswith(" (1)") and "steady" not in text
    assert [
        "6.1",
        "6.1.172-1",
        f"({b.release})",
        "6.1.170-3",
        f"({a.release})",
        "x",
        "default",
        "root",
        "256M",
        "calls,",
        "locked",
    ] in rows
    assert "6.12.90-1" not in within
    # one row per (build, case): the two limits that changed at 6.12 are one line, the whole case
    (line,) = [r for r in rows if r[:2] == ["6.12", "6.12.90-1"]]
    assert line[-6:] == ["x", "all", "2", "result,", "calls,", "locked"], line
    assert "2 of 3 rows change between kernels" in text
