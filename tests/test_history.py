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

from harness.errors import InfraError, UserError
from harness.history import MIGRATIONS, SCHEMA_VERSION, History, render
from harness.report import RunWriter
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord

MANIFEST = {"harness_version": "0.1.0", "probe": {"sha256": "probe-1"}, "qemu_version": "7.2.22"}


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


def versions_of(db: History, **filters: str) -> list[str | None]:
    (timeline,) = db.timelines(**filters)
    return [p.kernel.version for p in timeline.points]


def test_v1_database_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[0])
    con.executescript(f"""
        PRAGMA user_version = 1;
        INSERT INTO runs VALUES (1, 'old-run', '2026-01-01T00:00:00+00:00', NULL, 0, '0.0.1', 'p0', 'now');
        INSERT INTO kernels VALUES (1, '{K61.sha256}', '{K61.package}', '{K61.version}', '{K61.release}');
        INSERT INTO boots VALUES (1, 1, 'b', 1, 'bookworm', 'debian:bookworm', 256, 'kvm', '8.0', '', NULL, '');
        INSERT INTO observations VALUES (1, 1, 'mlock_at', '64K', 'user', 'pass', '{A}', 'm', NULL, '{{}}', '', 0.1);
    """)  # fmt: skip
    con.close()
    with History(path) as db:
        assert db.version == SCHEMA_VERSION > 1
        (timeline,) = db.timelines()
        assert (timeline.case, timeline.memlock, timeline.user, timeline.ram_mb) == ("mlock_at", "64K", "user", 256)
        assert [(p.kernel, p.fingerprint, p.run_id) for p in timeline.points] == [
            (KernelInfo("bookworm", K61.release, K61.package, K61.version, K61.sha256, "debian:bookworm"), A, "old-run")
        ]
        assert db.record(run("old-run", "2026-02-01T00:00:00Z", {K61: [result("mlock_at", B)]}), MANIFEST) == 0
        assert db.record(run("new-run", "2026-02-01T00:00:00Z", {K612: [result("x", B)]}), MANIFEST, "dir") == 1
    con = sqlite3.connect(path)
    runs = con.execute("SELECT run_id, source FROM runs ORDER BY id").fetchall()
    assert runs == [("old-run", ""), ("new-run", "dir")]
    indexes = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"observations_case", "observations_boot", "boots_kernel"} <= indexes
    con.close()


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    before = path.read_bytes()
    message = (f"history schema {SCHEMA_VERSION + 1} is newer than this harness knows ({SCHEMA_VERSION}); "
               "use a newer harness or another --history file")  # fmt: skip
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
        assert db.record(first, MANIFEST) == 2
        again = run("r1", "2026-03-01T00:00:00Z", {K61: [result("a", B)]})
        assert db.record(again, MANIFEST) == 0
        (timeline,) = db.timelines()  # the timeout is stored but is no observed behaviour
        assert [(p.fingerprint, p.runs) for p in timeline.points] == [(A, 1)]


def _write_runs(path: str, prefix: str, barrier: Any) -> None:
    barrier.wait()
    with History(Path(path)) as db:  # the default busy timeout is what runs get
        for i in range(10):
            cases = [result(f"case{n}", A) for n in range(100)]
            assert db.record(run(f"{prefix}{i}", f"2026-01-01T00:00:{i:02}Z", {K61: cases}), MANIFEST) == 100


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
        db.record(run("r1", "2026-01-01T00:00:00Z", {K612: [result("a", A)]}), MANIFEST)
        db.record(run("r2", "2026-02-01T00:00:00Z", {K69: [result("a", A)], K510: [result("a", A)]}), MANIFEST)
        assert versions_of(db) == ["5.10.223-1", "6.9.7-1", "6.12.117-1"]


def test_first_change_and_changed_fields(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        boots = {K510: [result("a", A)], K61: [result("a", A)], K69: [result("a", B)], K612: [result("a", C)]}
        boots[kernel("7.0.1-1")] = [result("a", "", outcome=Outcome.INFRA_ERROR)]
        db.record(run("r1", "2026-01-01T00:00:00Z", boots), MANIFEST)
        (timeline,) = db.timelines()
        assert [p.kernel.version for p in timeline.points] == ["5.10.223-1", "6.1.176-1", "6.9.7-1", "6.12.117-1"]
        assert timeline.first_change == 2
        assert [p.changed for p in timeline.points] == [False, False, True, True]
        assert [p.changed_fields for p in timeline.points] == [(), (), ("calls", "locked"), ("result",)]


def test_latest_run_wins_and_disagreeing_runs_are_marked(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        # Recorded out of date order: "latest" means the run that started last.
        db.record(run("late", "2026-03-01T00:00:00Z", {K61: [result("a", B)], K510: [result("a", A)]}), MANIFEST)
        db.record(run("early", "2026-01-01T00:00:00Z", {K61: [result("a", A)], K510: [result("a", A)]}), MANIFEST)
        (timeline,) = db.timelines()
        (p510, p61) = timeline.points
        assert (p510.runs, p510.varies, p510.changed) == (2, False, False)
        assert (p61.runs, p61.varies, p61.fingerprint, p61.run_id, p61.changed) == (2, True, B, "late", True)


def test_kernel_filter_by_version_components_and_names(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        db.record(run("r1", "2026-01-01T00:00:00Z", {K61: [result("a", A)], K612: [result("a", B)]}), MANIFEST)
        db.record(run("r2", "2026-02-01T00:00:00Z", {K61: [result("a", C)]}), MANIFEST)
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


def test_import_run_directory_written_by_run_writer(tmp_path: Path) -> None:
    run_dir = tmp_path / "results" / "20261126T185300Z-ab12"
    writer = RunWriter(run_dir, run_dir.name, "2026-11-26T18:53:00Z")
    boot = BootResult("bookworm-512M", K61, 512, "kvm", "8.2.0", cases=[result("a", A), result("b", A, "64K")])
    writer.add_boot(boot)
    writer.add_boot(BootResult("broken-512M", None, 512, error="could not resolve the kernel"))
    writer.write_manifest({**MANIFEST, "probe": {"sha256": "f4b4fe88"}})
    writer.finish("2026-11-26T19:00:00Z")
    with History(tmp_path / "h.sqlite") as db:
        assert db.import_run(run_dir) == 2
        assert db.import_run(run_dir) == 0
        assert [(t.case, t.memlock, t.ram_mb, t.points[0].run_id) for t in db.timelines()] == [
            ("a", "default", 512, run_dir.name), ("b", "64K", 512, run_dir.name)
        ]  # fmt: skip
    con = sqlite3.connect(tmp_path / "h.sqlite")
    assert con.execute("SELECT probe_sha256, source, finished FROM runs").fetchall() == [
        ("f4b4fe88", str(run_dir), "2026-11-26T19:00:00Z")
    ]
    boots = con.execute("SELECT boot_id, kernel, accelerator, qemu_version, error FROM boots ORDER BY id").fetchall()
    assert boots == [
        ("bookworm-512M", 1, "kvm", "8.2.0", ""), ("broken-512M", None, "", "7.2.22", "could not resolve the kernel")
    ]  # fmt: skip
    con.close()


def test_shard_runs_are_not_counted_again_once_merged(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        db.record(run("shard1", "2026-01-01T00:00:00Z", {K61: [result("a", A)]}), MANIFEST)
        merged = {**MANIFEST, "merged_from": [{"run_id": "shard1", "shard": {"index": 1, "count": 2}}]}
        db.record(run("merged", "2026-01-01T01:00:00Z", {K61: [result("a", A)]}), merged)
        (timeline,) = db.timelines()
        assert [(p.runs, p.run_id) for p in timeline.points] == [(1, "merged")]


def test_render_grid_and_detail(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as db:
        boots = {K510: [result("a", A), result("same", A)], K61: [result("a", A), result("same", A)],
                 K69: [result("a", B)], K612: [result("a", A), result("same", A)]}  # fmt: skip
        db.record(run("r1", "2026-01-01T00:00:00Z", boots), MANIFEST)
        db.record(run("r2", "2026-02-01T00:00:00Z", {K612: [result("a", C)]}), MANIFEST)
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
