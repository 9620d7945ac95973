"""History store: every run's results in one SQLite file, and views of behaviour across kernel versions.

Runs are appended, never updated: a run_id already stored is skipped, so recording a run and later
importing its directory (or importing twice) is harmless. Every append also updates `tallies`, one
row per (case, RAM, kernel), which is what the views read: they take as long after years of nightly
runs as after one. The schema is versioned with `PRAGMA user_version` and upgraded by MIGRATIONS;
docs/history.md describes tables, views and figures.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness import report, versions
from harness.errors import InfraError, UserError
from harness.results import CaseResult, KernelInfo, Outcome, RunRecord
from harness.verdict import changed_fields

DEFAULT_PATH = Path("results") / "history.sqlite"
# Two runs on one machine may append at the same moment; each append is one short transaction,
# so waiting for the other writer is always better than failing a run that has finished.
BUSY_TIMEOUT_S = 60.0

_V1 = """
-- One row per run; run_id is the run directory's name and never repeats.
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    started TEXT NOT NULL,
    finished TEXT,
    interrupted INTEGER NOT NULL,
    harness_version TEXT NOT NULL,
    probe_sha256 TEXT NOT NULL,
    recorded TEXT NOT NULL
);
-- One row per kernel build. package and version are '' (not NULL) for a path kernel, because
-- UNIQUE treats NULLs as distinct and would store the same kernel once per run.
CREATE TABLE kernels (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    release TEXT NOT NULL,
    UNIQUE (sha256, package, version, release)
);
-- label and source are the matrix's names for the kernel, which differ between runs.
CREATE TABLE boots (
    id INTEGER PRIMARY KEY,
    run INTEGER NOT NULL REFERENCES runs (id),
    boot_id TEXT NOT NULL,
    kernel INTEGER REFERENCES kernels (id),
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    ram_mb INTEGER NOT NULL,
    accelerator TEXT NOT NULL,
    qemu_version TEXT NOT NULL,
    uname TEXT NOT NULL,
    memtotal_kb INTEGER,
    error TEXT NOT NULL,
    UNIQUE (run, boot_id)
);
CREATE TABLE observations (
    id INTEGER PRIMARY KEY,
    boot INTEGER NOT NULL REFERENCES boots (id),
    case_name TEXT NOT NULL,
    memlock TEXT NOT NULL,
    user TEXT NOT NULL,
    outcome TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    message TEXT NOT NULL,
    observation TEXT,
    expected TEXT NOT NULL,
    citation TEXT NOT NULL,
    duration_s REAL NOT NULL
);
"""

_V2 = """
-- Where the run's results came from: '' when the runner recorded its own run, else the run
-- directory `history import` read, so a surprising row can be traced back to its files.
ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT '';
-- The shard runs a merged run (`harness merge`) was made of. Their results are the merged run's
-- results again: views skip a shard run once its merged run is stored, so nothing counts twice.
CREATE TABLE merged_from (
    run INTEGER NOT NULL REFERENCES runs (id),
    shard_run_id TEXT NOT NULL,
    shard TEXT NOT NULL,
    PRIMARY KEY (run, shard_run_id)
);
CREATE INDEX merged_from_shard ON merged_from (shard_run_id);
-- `history --case` and `compare KERNEL` read one case's or one kernel's rows out of hundreds of
-- thousands; without these every query scans the whole observations table.
CREATE INDEX observations_case ON observations (case_name, memlock, user);
CREATE INDEX observations_boot ON observations (boot);
CREATE INDEX boots_kernel ON boots (kernel);
"""

_V3 = """
-- Years of nightly runs repeat the same strings and nearly the same observations every night:
-- schema 3 stores each repeated string once and each observation as a small zlib delta, and keeps
-- what the views show per (case, RAM, kernel) up to date on every append, so that reading does not
-- slow down night after night. _v3() runs this script, converts the rows in Python, then runs
-- _V3_FINISH, all in the migration's transaction.

-- started as a sortable UTC text (fixed width, '0001-01-01T00:00:00.000000+00:00' when
-- unparseable), so that SQL can order runs by start as datetime comparison would.
ALTER TABLE runs ADD COLUMN started_utc TEXT NOT NULL DEFAULT '';
-- Fingerprints, messages, expectations and citations: few distinct values, repeated every night.
CREATE TABLE texts (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE
);
-- What a result is a result of: the case and the memlock and user it ran under.
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    case_name TEXT NOT NULL,
    memlock TEXT NOT NULL,
    user TEXT NOT NULL,
    UNIQUE (case_name, memlock, user)
);
-- The first observation JSON stored for a (case, fingerprint, kernel), zlib-compressed. Later
-- observations of that case, behaviour and kernel differ from it in a few numbers (timings, pids,
-- free memory): each is stored as a raw deflate stream with this JSON as preset dictionary, which
-- is little more than those numbers. kernel is null for a boot without one.
CREATE TABLE dictionaries (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases (id),
    fingerprint INTEGER NOT NULL REFERENCES texts (id),
    kernel INTEGER REFERENCES kernels (id),
    observation BLOB NOT NULL,
    UNIQUE (case_id, fingerprint, kernel)
);
ALTER TABLE observations RENAME TO observations_v2;
CREATE TABLE observations (
    id INTEGER PRIMARY KEY,
    boot INTEGER NOT NULL REFERENCES boots (id),
    case_id INTEGER NOT NULL REFERENCES cases (id),
    outcome TEXT NOT NULL,
    fingerprint INTEGER NOT NULL REFERENCES texts (id),
    message INTEGER NOT NULL REFERENCES texts (id),
    expected INTEGER NOT NULL REFERENCES texts (id),
    citation INTEGER NOT NULL REFERENCES texts (id),
    duration_s REAL NOT NULL,
    observation BLOB,
    dictionary INTEGER REFERENCES dictionaries (id)
);
-- One row per (case, RAM, kernel identity) with observed behaviour, over the runs the views read
-- (not a shard run whose merged run is stored): a timeline point, or a kernel_results result.
-- Each append updates it; storing a merged run recomputes the rows of its shards' kernels.
CREATE TABLE tallies (
    case_id INTEGER NOT NULL REFERENCES cases (id),
    ram_mb INTEGER NOT NULL,
    -- the lowest kernels.id with the kernel's sha256 (the kernel's own id when it has none)
    kernel INTEGER NOT NULL REFERENCES kernels (id),
    runs INTEGER NOT NULL,
    fingerprint INTEGER NOT NULL REFERENCES texts (id),
    varies INTEGER NOT NULL,
    first INTEGER NOT NULL REFERENCES observations (id),
    earliest INTEGER NOT NULL REFERENCES observations (id),
    latest INTEGER NOT NULL REFERENCES observations (id),
    PRIMARY KEY (case_id, ram_mb, kernel)
) WITHOUT ROWID;
"""

_V3_FINISH = """
DROP TABLE observations_v2;
-- Views read tallies, not these rows; recounting a kernel's tallies reads its boots' rows. No index
-- by case any more: appending to one cost more than the rare question it answered (_check_case).
CREATE INDEX observations_boot ON observations (boot);
-- observations with its strings, for reading the history with the sqlite3 shell. A later migration
-- that rebuilds a table this view reads drops the view first and creates it again.
CREATE VIEW observations_text AS
SELECT o.id, o.boot, c.case_name, c.memlock, c.user, o.outcome, f.text AS fingerprint, m.text AS message,
       e.text AS expected, ci.text AS citation, o.duration_s
FROM observations o JOIN cases c ON c.id = o.case_id JOIN texts f ON f.id = o.fingerprint
JOIN texts m ON m.id = o.message JOIN texts e ON e.id = o.expected JOIN texts ci ON ci.id = o.citation;
"""


def _v3_convert(db: sqlite3.Connection) -> None:
    """Schema 3's data step: sortable start times, interned strings, observations as zlib deltas.

    Reads observations_v2 in id order and keeps every id, so catalogue order and "latest" are
    unchanged; every observation JSON is kept, byte for byte.
    """
    starts = db.execute("SELECT id, started FROM runs").fetchall()
    db.executemany("UPDATE runs SET started_utc = ? WHERE id = ?", [(_utc_key(s), pk) for pk, s in starts])
    store = _Store(db)
    rows = db.execute(
        "SELECT o.id, o.boot, b.kernel, o.case_name, o.memlock, o.user, o.outcome, o.fingerprint, o.message,"
        " o.expected, o.citation, o.duration_s, o.observation"
        " FROM observations_v2 o LEFT JOIN boots b ON b.id = o.boot ORDER BY o.id"
    )
    while chunk := rows.fetchmany(10_000):
        db.executemany(_INSERT_OBSERVATION, [store.observation(*row) for row in chunk])


# Append only: a released migration never changes, because databases out there already ran it. A
# migration is an SQL script, or a Python function for what SQL cannot do (v3 compresses); each
# runs inside the migration's transaction and must not commit (see docs/history.md).
Migration = str | Callable[[sqlite3.Connection], None]


def _v3(db: sqlite3.Connection) -> None:
    # _Store and _tally write schema 3; a later schema that changes them gives this a copy of them.
    _script(db, _V3)
    _v3_convert(db)
    _script(db, _V3_FINISH)
    _tally(db)


MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _v3)
SCHEMA_VERSION = len(MIGRATIONS)

# SQLite primary result codes that mean "this file is not a usable database" (the user's to fix).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_NUMERIC = re.compile(r"\d{1,3}(?:\.\d+){0,3}")  # a version, never an all-digit sha256 prefix
_SHA_PREFIX = re.compile(r"[0-9a-fA-F]{8,64}")
_KNOWN_SHOWN = 8
_CHUNK = 500  # ids per IN (...): far below SQLite's limit on parameters


@dataclass(frozen=True)
class Point:
    """What one kernel did in one timeline: the latest run's result, and whether it moved."""

    kernel: KernelInfo  # as the latest run named it
    outcome: Outcome
    fingerprint: str
    runs: int  # distinct runs that observed this kernel here
    varies: bool  # those runs did not all see the same behaviour (the latest is shown)
    changed: bool  # behaviour differs from the previous kernel in version order
    changed_fields: tuple[str, ...]  # top-level fingerprint keys that differ from that kernel
    run_id: str  # the latest run


@dataclass(frozen=True)
class Timeline:
    """One (case, memlock, user, RAM) across kernels, oldest kernel first."""

    case: str
    memlock: str
    user: str
    ram_mb: int
    points: tuple[Point, ...]
    first_change: int | None  # index into points of the first changed one

    @property
    def name(self) -> str:
        return f"{self.case}[memlock={self.memlock},user={self.user}] {self.ram_mb}M"

    @property
    def varies(self) -> bool:
        return any(p.varies for p in self.points)


@dataclass
class _Kernel:
    """One kernel identity (its image's sha256) and every row and label it was stored under."""

    ids: set[int]
    info: KernelInfo  # from the latest boot
    labels: set[str]
    latest: tuple[datetime, int]


@dataclass(frozen=True)
class _Group:
    """A tallies row: one (case, memlock, user, RAM) on one kernel identity."""

    case: int  # cases.id
    ram_mb: int
    runs: int
    varies: bool
    first: int  # observations.id of the first stored row: catalogue order, and the kernel to sort by
    earliest: int  # observations.id of the row of the run that started first
    latest: int  # likewise, last


@dataclass(frozen=True)
class _Shown:
    """One observation row a view shows, with its kernel as that row's boot named it."""

    outcome: str
    fingerprint: str
    kernel: KernelInfo
    run_id: str
    when: tuple[str, int, int]  # (runs.started_utc, runs.id, observations.id): "latest" means largest


# A kernel's identity in SQL (see _identity): the lowest kernels.id with its sha256, else its own id.
_IDENTITY = "CASE k.sha256 WHEN '' THEN k.id ELSE (SELECT MIN(id) FROM kernels WHERE sha256 = k.sha256) END"

# tallies computed from the observation rows. `live` is the boots the views read: those of runs no
# merged run replaced, with a kernel. `rank` orders runs by start, then id, so `rank * :span + o.id`
# (:span above every observation id; far from 2**63 with 10**5 runs of 10**9 rows) orders rows as
# (started_utc, run, id): its MIN and MAX name the earliest and latest row. A window function keeps
# SQLite from flattening `live`: it is computed once, a few rows a run.
_TALLY = f"""
WITH live AS (
    SELECT b.id AS boot, b.run AS run, b.ram_mb AS ram_mb, {_IDENTITY} AS kernel,
           DENSE_RANK() OVER (ORDER BY r.started_utc, r.id) AS rank
    FROM boots b JOIN kernels k ON k.id = b.kernel JOIN runs r ON r.id = b.run
    WHERE r.run_id NOT IN (SELECT shard_run_id FROM merged_from)
)
INSERT INTO tallies (case_id, ram_mb, kernel, runs, fingerprint, varies, first, earliest, latest)
SELECT o.case_id, l.ram_mb, l.kernel, COUNT(DISTINCT l.run), MIN(o.fingerprint),
       MIN(o.fingerprint) != MAX(o.fingerprint), MIN(o.id),
       MIN(l.rank * :span + o.id) % :span, MAX(l.rank * :span + o.id) % :span
FROM live l JOIN observations o ON o.boot = l.boot
WHERE o.fingerprint != :empty{{kernels}}
GROUP BY o.case_id, l.ram_mb, l.kernel
"""

# One run's rows (ids from :first) counted into tallies. Its rows share a start and a run, so its
# earliest and latest are its lowest and highest id; each is compared, as (started_utc, run, id),
# with the row the tally names.
_WHEN = "(SELECT r.started_utc, r.id, x.id FROM observations x JOIN boots y ON y.id = x.boot" \
        " JOIN runs r ON r.id = y.run WHERE x.id = tallies.{column})"  # fmt: skip
_COUNT_RUN = f"""
INSERT INTO tallies (case_id, ram_mb, kernel, runs, fingerprint, varies, first, earliest, latest)
SELECT o.case_id, b.ram_mb, {_IDENTITY}, 1, MIN(o.fingerprint), MIN(o.fingerprint) != MAX(o.fingerprint),
       MIN(o.id), MIN(o.id), MAX(o.id)
FROM observations o JOIN boots b ON b.id = o.boot JOIN kernels k ON k.id = b.kernel
WHERE o.id >= :first AND o.fingerprint != :empty
GROUP BY 1, 2, 3
ON CONFLICT (case_id, ram_mb, kernel) DO UPDATE SET
    runs = runs + 1,
    fingerprint = MIN(fingerprint, excluded.fingerprint),
    varies = varies OR excluded.varies OR fingerprint != excluded.fingerprint,
    first = MIN(first, excluded.first),
    earliest = CASE WHEN (:started, :run, excluded.earliest) < {_WHEN.format(column="earliest")}
               THEN excluded.earliest ELSE earliest END,
    latest = CASE WHEN (:started, :run, excluded.latest) > {_WHEN.format(column="latest")}
             THEN excluded.latest ELSE latest END
"""

_INSERT_OBSERVATION = (
    "INSERT INTO observations (id, boot, case_id, outcome, fingerprint, message, expected, citation, duration_s,"
    " observation, dictionary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class _Store:
    """Writes schema-3 observation rows: strings and cases stored once, observations as zlib deltas.

    One per transaction, because its caches hold row ids a rollback would take back. The v3
    migration uses it too: a later schema change to what it writes must give _v3_convert a copy of
    this version.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._texts: dict[str, int] = {}
        self._cases: dict[tuple[str, str, str], int] = {}
        self._dictionaries: dict[tuple[int, int, int | None], tuple[int, bytes]] = {}

    def text(self, value: str) -> int:
        pk = self._texts.get(value)
        if pk is None:
            row = self._db.execute("SELECT id FROM texts WHERE text = ?", (value,)).fetchone()
            pk = int(row[0]) if row else _lastrowid(self._db.execute("INSERT INTO texts (text) VALUES (?)", (value,)))
            self._texts[value] = pk
        return pk

    def case(self, name: str, memlock: str, user: str) -> int:
        key = (name, memlock, user)
        pk = self._cases.get(key)
        if pk is None:
            sql = "SELECT id FROM cases WHERE case_name = ? AND memlock = ? AND user = ?"
            row = self._db.execute(sql, key).fetchone()
            pk = int(row[0]) if row else _lastrowid(
                self._db.execute("INSERT INTO cases (case_name, memlock, user) VALUES (?, ?, ?)", key)
            )  # fmt: skip
            self._cases[key] = pk
        return pk

    def pack(self, case: int, fingerprint: int, kernel: int | None, observation: str) -> tuple[int, bytes]:
        """(dictionaries.id, the observation JSON deflated with that dictionary)."""
        key = (case, fingerprint, kernel)
        found = self._dictionaries.get(key)
        if found is None:
            sql = "SELECT id, observation FROM dictionaries WHERE case_id = ? AND fingerprint = ? AND kernel IS ?"
            row = self._db.execute(sql, key).fetchone()
            if row:
                found = (int(row[0]), zlib.decompress(row[1]))
            else:
                text = observation.encode()
                cursor = self._db.execute(
                    "INSERT INTO dictionaries (case_id, fingerprint, kernel, observation) VALUES (?, ?, ?, ?)",
                    (*key, zlib.compress(text, 9)),
                )
                found = (_lastrowid(cursor), text)
            self._dictionaries[key] = found
        pk, dictionary = found
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=dictionary)
        return pk, packer.compress(observation.encode()) + packer.flush()

    def observation(
        self, pk: int | None, boot: int, kernel: int | None, case: str, memlock: str, user: str, outcome: str,
        fingerprint: str, message: str, expected: str, citation: str, duration_s: float, observation: str | None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """The parameters of _INSERT_OBSERVATION for one result (pk None: the next id)."""
        case_pk, fp_pk = self.case(case, memlock, user), self.text(fingerprint)
        dictionary, packed = (None, None) if observation is None else self.pack(case_pk, fp_pk, kernel, observation)
        return (pk, boot, case_pk, outcome, fp_pk, self.text(message), self.text(expected), self.text(citation),
                duration_s, packed, dictionary)  # fmt: skip


def _unpack(packed: bytes, dictionary: bytes) -> str:
    unpacker = zlib.decompressobj(-zlib.MAX_WBITS, zdict=zlib.decompress(dictionary))
    return (unpacker.decompress(packed) + unpacker.flush()).decode()


def _lastrowid(cursor: sqlite3.Cursor) -> int:
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _no_fingerprint(db: sqlite3.Connection) -> int:
    """texts.id of '' (a result without observed behaviour); 0, no row, when none was stored."""
    row = db.execute("SELECT id FROM texts WHERE text = ''").fetchone()
    return int(row[0]) if row else 0


def _tally(db: sqlite3.Connection, kernels: Collection[int] | None = None) -> None:
    """Recompute tallies from the observation rows: every row, or those of these kernel identities."""
    where = ""
    if kernels is None:
        db.execute("DELETE FROM tallies")
    else:
        ids = sorted(kernels)
        where = f" AND l.kernel IN ({', '.join(str(int(pk)) for pk in ids)})"
        db.execute(f"DELETE FROM tallies WHERE kernel IN ({', '.join('?' * len(ids))})", ids)
    (span,) = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM observations").fetchone()
    db.execute(_TALLY.format(kernels=where), {"span": span, "empty": _no_fingerprint(db)})


class History:
    """An open history file. Use as a context manager, or call close()."""

    def __init__(self, path: Path = DEFAULT_PATH, timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InfraError(f"{path}: cannot create the directory for the history file: {e}") from e
        try:
            # Autocommit mode, so the only transactions are _write()'s BEGIN IMMEDIATE: the module's
            # implicit BEGIN is deferred, which takes the write lock too late (see _write).
            self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise self._failure("cannot open", e) from e
        try:
            with self._guard("cannot open"):
                self._db.execute("PRAGMA foreign_keys = ON")
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, path: Path = DEFAULT_PATH, timeout: float = BUSY_TIMEOUT_S) -> History:
        return cls(path, timeout)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def version(self) -> int:
        with self._guard("cannot read"):
            return self._user_version()

    # --- writing -------------------------------------------------------------------------------

    def record(self, run: RunRecord, manifest: Mapping[str, Any], source: str = "") -> int:
        """Append a run and every case result of it; returns the results stored.

        A run_id already stored returns 0 and changes nothing. Record a run once it has ended:
        a later, fuller record of the same run_id is skipped like any other repeat.
        """
        probe = manifest.get("probe")
        probe_sha = str(probe.get("sha256") or "") if isinstance(probe, Mapping) else ""
        accel = manifest.get("accelerator")
        default_accel = str(accel.get("name") or "") if isinstance(accel, Mapping) else ""
        default_qemu = str(manifest.get("qemu_version") or "")
        recorded = datetime.now(UTC).isoformat(timespec="seconds")
        with self._guard(f"cannot record run {run.run_id}"), self._write() as db:
            # Checked inside the write lock: two processes importing one run at once must not
            # both see it missing.
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                return 0
            started = _utc_key(run.started)
            run_pk = _lastrowid(db.execute(
                "INSERT INTO runs (run_id, started, finished, interrupted, harness_version, probe_sha256, recorded,"
                " source, started_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.run_id, run.started, run.finished, int(run.interrupted),
                 str(manifest.get("harness_version") or ""), probe_sha, recorded, source, started),
            ))  # fmt: skip
            (first,) = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM observations").fetchone()
            store = _Store(db)
            added = 0
            for boot in run.boots:
                k = boot.kernel
                kernel_pk = None if k is None else self._kernel_pk(db, k)
                boot_pk = _lastrowid(db.execute(
                    "INSERT INTO boots (run, boot_id, kernel, label, source, ram_mb, accelerator, qemu_version, uname,"
                    " memtotal_kb, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_pk, boot.boot_id, kernel_pk, "" if k is None else k.label, "" if k is None else k.source,
                     boot.ram_mb, boot.accelerator or default_accel, boot.qemu_version or default_qemu, boot.uname,
                     boot.memtotal_kb, boot.error),
                ))  # fmt: skip
                rows = [
                    store.observation(
                        None, boot_pk, kernel_pk, r.case, r.memlock, r.user, r.outcome.value, r.fingerprint, r.message,
                        json.dumps(r.expected, sort_keys=True, default=str), r.citation, r.duration_s,
                        None if r.observation is None else json.dumps(r.observation, sort_keys=True, default=str),
                    )
                    for r in boot.cases
                ]  # fmt: skip
                db.executemany(_INSERT_OBSERVATION, rows)
                added += len(rows)
            db.executemany(
                "INSERT OR IGNORE INTO merged_from (run, shard_run_id, shard) VALUES (?, ?, ?)",
                [(run_pk, shard_id, shard) for shard_id, shard in _shards(manifest)],
            )
            self._count(db, run_pk, run.run_id, started, first)
            return added

    def import_run(self, run_dir: Path) -> int:
        """Record a run directory's results.json and manifest.json; 0 when the run is already stored."""
        run = report.read_results(run_dir)
        manifest = report.read_manifest(run_dir if run_dir.is_dir() else run_dir.parent)
        return self.record(run, manifest, source=str(run_dir))

    # --- views ---------------------------------------------------------------------------------

    def kernels(self) -> list[KernelInfo]:
        """Every kernel stored, oldest version first, as its latest run named it."""
        return [k.info for k in self._ordered_kernels(self._kernels().values())]

    def timelines(self, case: str | None = None, kernel: str | None = None) -> list[Timeline]:
        """Behaviour per kernel for every (case, memlock, user, RAM), kernels in version order.

        Only results with a fingerprint count (behaviour was observed); infrastructure errors and
        timeouts are stored but never shown as a change. `kernel` selects kernels (see _matches).
        """
        with self._guard("cannot read"):
            kernel_ids: set[int] | None = None
            if kernel is not None:
                matched = self._match(kernel)
                kernel_ids = set().union(*(k.ids for k in matched))
            if case is not None:
                self._check_case(case)
            groups = self._groups(case, kernel_ids)
            shown = self._shown({g.first for g in groups} | {g.earliest for g in groups} | {g.latest for g in groups})
            cases = {pk: (name, memlock, user) for pk, name, memlock, user in self._db.execute(
                "SELECT id, case_name, memlock, user FROM cases")}  # fmt: skip
        if not groups and (case is not None or kernel is not None):
            raise UserError(f"{self.path}: nothing observed for case {case or '(any)'} on kernel {kernel or '(any)'}")
        rows: dict[tuple[int, int], list[_Group]] = {}
        for group in sorted(groups, key=lambda g: g.first):  # first stored order = the probe's catalogue order
            rows.setdefault((group.case, group.ram_mb), []).append(group)
        return [_timeline((*cases[case_pk], ram_mb), row, shown) for (case_pk, ram_mb), row in rows.items()]

    def kernel_results(self, selector: str) -> tuple[KernelInfo, list[tuple[int, CaseResult]]]:
        """The latest observed result of every (case, memlock, user, RAM) on the one kernel `selector` names.

        CaseResult has no RAM field, so each comes as (ram_mb, result), its boot_id "<ram_mb>M"
        (e.g. "256M"). Ordered by RAM, then in the probe's catalogue order. A selector naming no
        kernel or several is a UserError listing the candidates.
        """
        with self._guard("cannot read"):
            matched = self._match(selector)
            if len(matched) > 1:
                names = ", ".join(_describe(k.info) for k in self._ordered_kernels(matched))
                raise UserError(f"{selector!r} matches {len(matched)} kernels ({names}); "
                                "name one by release, Debian version or sha256 prefix")  # fmt: skip
            # One kernel identity, so one group per (case, memlock, user, RAM).
            groups = sorted(self._groups(None, matched[0].ids), key=lambda g: (g.ram_mb, g.first))
            if not groups:
                raise UserError(f"{self.path}: kernel {_describe(matched[0].info)} has no observed results")
            results = self._results(g.latest for g in groups)
            shown = self._shown(g.latest for g in groups)
        newest = max(shown.values(), key=lambda s: s.when)
        return newest.kernel, [(g.ram_mb, results[g.latest]) for g in groups]

    # --- internals -----------------------------------------------------------------------------

    def _failure(self, action: str, e: sqlite3.Error) -> UserError | InfraError:
        reason = str(e).replace("\n", " ")
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            return UserError(f"{self.path}: not a history database ({reason}); give --history a file the harness "
                             "wrote, or move this one away to start a new history")  # fmt: skip
        return InfraError(f"{self.path}: {action}: {reason}")

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise self._failure(action, e) from e

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads first and
        # then writes gets SQLITE_BUSY at once, without the busy timeout, when another writer won.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _user_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        return int(version)

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise UserError(f"{self.path}: history schema {version} is newer than this harness knows "
                            f"({SCHEMA_VERSION}); use a newer harness or another --history file")  # fmt: skip

    def _migrate(self) -> None:
        version = self._user_version()
        self._check_version(version)
        if version == SCHEMA_VERSION:
            return  # no write lock for a reader of an up-to-date (maybe read-only) history
        for target in range(1, SCHEMA_VERSION + 1):
            with self._write() as db:
                # Read again under the write lock: another process may have migrated meanwhile.
                current = self._user_version()
                self._check_version(current)
                if current >= target:
                    continue
                if current == 0 and db.execute("SELECT 1 FROM sqlite_master").fetchone():
                    # Version 0 with tables is some other program's database: adding ours to it
                    # would hide the mistake and write into a file the user meant for something else.
                    raise UserError(f"{self.path}: an SQLite database, but not a history database; give --history "
                                    "a file the harness wrote, or a new file name")  # fmt: skip
                migration = MIGRATIONS[target - 1]
                if isinstance(migration, str):
                    _script(db, migration)
                else:
                    migration(db)
                db.execute(f"PRAGMA user_version = {target}")
        if 0 < version < 3:
            # Schema 3 holds the same history in a small fraction of the pages, but an SQLite file
            # keeps its size: the freed pages would only be reused by appends, for years. VACUUM
            # (outside any transaction) writes it anew. Busy or out of room, the history is
            # converted all the same and `sqlite3 FILE VACUUM` shrinks it later.
            with contextlib.suppress(sqlite3.OperationalError):
                self._db.execute("VACUUM")

    @staticmethod
    def _kernel_pk(db: sqlite3.Connection, k: KernelInfo) -> int:
        key = (k.sha256, k.package or "", k.version or "", k.release)
        db.execute("INSERT OR IGNORE INTO kernels (sha256, package, version, release) VALUES (?, ?, ?, ?)", key)
        (pk,) = db.execute(
            "SELECT id FROM kernels WHERE sha256 = ? AND package = ? AND version = ? AND release = ?", key
        ).fetchone()
        return int(pk)

    def _count(self, db: sqlite3.Connection, run_pk: int, run_id: str, started: str, first: int) -> None:
        """Bring tallies up to date with the run just stored (its observation ids start at `first`)."""
        if not db.execute("SELECT 1 FROM merged_from WHERE shard_run_id = ?", (run_id,)).fetchone():
            params = {"first": first, "empty": _no_fingerprint(db), "started": started, "run": run_pk}
            db.execute(_COUNT_RUN, params)
        # A merged run hides its shard runs, which were counted if stored before it: count their
        # kernels' tallies again from the rows.
        replaced = db.execute(
            f"SELECT DISTINCT {_IDENTITY} FROM boots b JOIN kernels k ON k.id = b.kernel JOIN runs r ON r.id = b.run"
            " WHERE r.id != ? AND r.run_id IN (SELECT shard_run_id FROM merged_from WHERE run = ?)",
            (run_pk, run_pk),
        ).fetchall()  # fmt: skip
        if replaced:
            _tally(db, [pk for (pk,) in replaced])

    def _check_case(self, case: str) -> None:
        """A UserError listing the observed cases unless `case` is one."""
        if self._db.execute("SELECT 1 FROM tallies t JOIN cases c ON c.id = t.case_id WHERE c.case_name = ?",
                            (case,)).fetchone():  # fmt: skip
            return  # the quick answer; the full one (a scan) also counts shard runs and boots without a kernel
        sql = ("SELECT DISTINCT c.case_name FROM cases c WHERE c.id IN (SELECT DISTINCT case_id FROM observations"
               " WHERE fingerprint != ?) ORDER BY c.case_name")  # fmt: skip
        known = [c for (c,) in self._db.execute(sql, (_no_fingerprint(self._db),))]
        if case not in known:
            raise UserError(f"{self.path}: no observed case {case!r}; known: {_few(known)}")

    def _groups(self, case: str | None, kernel_ids: Collection[int] | None) -> list[_Group]:
        """The tallies of these kernels (all kernels of an identity, or more) and of this case name."""
        sql, args = "SELECT case_id, ram_mb, runs, varies, first, earliest, latest FROM tallies WHERE 1", list[Any]()
        if kernel_ids is not None:
            ids = sorted(kernel_ids)
            sql += f" AND kernel IN ({', '.join('?' * len(ids))})"
            args += ids
        if case is not None:
            sql += " AND case_id IN (SELECT id FROM cases WHERE case_name = ?)"
            args.append(case)
        return [_Group(c, ram, runs, bool(varies), first, earliest, latest)
                for c, ram, runs, varies, first, earliest, latest in self._db.execute(sql, args)]  # fmt: skip

    def _shown(self, ids: Iterable[int]) -> dict[int, _Shown]:
        sql = ("SELECT o.id, o.outcome, f.text, b.label, b.source, k.sha256, k.package, k.version, k.release, r.run_id,"
               " r.started_utc, r.id FROM observations o JOIN texts f ON f.id = o.fingerprint"
               " JOIN boots b ON b.id = o.boot JOIN kernels k ON k.id = b.kernel JOIN runs r ON r.id = b.run"
               " WHERE o.id IN ({ids})")  # fmt: skip
        return {
            pk: _Shown(outcome, fingerprint, KernelInfo(label, release, package or None, version or None, sha, source),
                       run_id, (started, run, pk))
            for pk, outcome, fingerprint, label, source, sha, package, version, release, run_id, started, run
            in self._by_ids(sql, ids)
        }  # fmt: skip

    def _results(self, ids: Iterable[int]) -> dict[int, CaseResult]:
        sql = ("SELECT o.id, b.ram_mb, c.case_name, c.memlock, c.user, o.outcome, m.text, o.observation, d.observation,"
               " e.text, ci.text, o.duration_s, f.text"
               " FROM observations o JOIN boots b ON b.id = o.boot JOIN cases c ON c.id = o.case_id"
               " JOIN texts f ON f.id = o.fingerprint JOIN texts m ON m.id = o.message"
               " JOIN texts e ON e.id = o.expected JOIN texts ci ON ci.id = o.citation"
               " LEFT JOIN dictionaries d ON d.id = o.dictionary"
               " WHERE o.id IN ({ids})")  # fmt: skip
        return {
            pk: CaseResult(f"{ram}M", case, memlock, user, Outcome(outcome), message,
                           None if packed is None else json.loads(_unpack(packed, dictionary)), json.loads(expected),
                           citation, duration_s, fingerprint)
            for pk, ram, case, memlock, user, outcome, message, packed, dictionary, expected, citation, duration_s,
            fingerprint in self._by_ids(sql, ids)
        }  # fmt: skip

    def _by_ids(self, sql: str, ids: Iterable[int]) -> Iterator[tuple[Any, ...]]:
        """Rows of `sql`, whose `{ids}` is replaced by placeholders, for every id, a chunk at a time."""
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            yield from self._db.execute(sql.format(ids=", ".join("?" * len(chunk))), chunk)

    def _kernels(self) -> dict[str, _Kernel]:
        found: dict[str, _Kernel] = {}
        for pk, sha, package, version, release, label, source, started, run in self._db.execute(
            "SELECT k.id, k.sha256, k.package, k.version, k.release, b.label, b.source, r.started, r.id"
            " FROM kernels k JOIN boots b ON b.kernel = k.id JOIN runs r ON r.id = b.run"
        ):
            info = KernelInfo(label, release, package or None, version or None, sha, source)
            when = (_parse_time(started), run)
            entry = found.setdefault(_identity(sha, pk), _Kernel(set(), info, set(), when))
            entry.ids.add(pk)
            entry.labels.add(label)
            if when > entry.latest:
                entry.info, entry.latest = info, when
        return found

    @staticmethod
    def _ordered_kernels(kernels: Iterable[_Kernel]) -> list[_Kernel]:
        def by_version(a: _Kernel, b: _Kernel) -> int:
            return versions.compare(a.info, b.info)

        return sorted(kernels, key=functools.cmp_to_key(by_version))

    def _match(self, selector: str) -> list[_Kernel]:
        kernels = self._kernels()
        matched = [k for k in kernels.values() if _matches(selector, k)]
        if not matched:
            known = [versions.name(k.info) for k in self._ordered_kernels(kernels.values())]
            raise UserError(f"{self.path}: no kernel matches {selector!r}; known: {_few(known)}")
        return matched


def _matches(selector: str, kernel: _Kernel) -> bool:
    """Does `selector` name this kernel?

    Version numbers ("6", "6.1", "6.1.176") compare upstream version components, so 6.1 is not 6.12.
    Anything else is an exact release, package, Debian version or label, or a sha256 prefix of at
    least 8 hex digits.
    """
    info = kernel.info
    if _NUMERIC.fullmatch(selector):
        wanted = tuple(int(x) for x in selector.split("."))
        return versions.upstream(info)[: len(wanted)] == wanted
    if selector in (info.release, info.package, info.version) or selector in kernel.labels:
        return True
    return bool(_SHA_PREFIX.fullmatch(selector)) and info.sha256.startswith(selector.lower())


def _shards(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(run_id, "I/N") of each shard a merged run's manifest names; [] for an ordinary run."""
    found = []
    for entry in manifest.get("merged_from") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("run_id"), str):
            shard = entry.get("shard")
            index = f"{shard.get('index')}/{shard.get('count')}" if isinstance(shard, Mapping) else ""
            found.append((str(entry["run_id"]), index))
    return found


def _identity(sha256: str, pk: int) -> str:
    # The image's hash names a kernel; a row without one (never stored by the runner) stands alone.
    return sha256 or f"#{pk}"


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _utc_key(started: str) -> str:
    """`started` as fixed-width UTC text: text order is _parse_time's order (unparseable first)."""
    when = _parse_time(started)
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999: clamp
        when = (datetime.min if when.year == 1 else datetime.max).replace(tzinfo=UTC)
    return when.isoformat(timespec="microseconds")


def _script(db: sqlite3.Connection, script: str) -> None:
    for statement in _statements(script):
        db.execute(statement)


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT first and end the migration's transaction, so statements are
    # executed one by one inside it.
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip() and not all(x.strip().startswith("--") for x in pending.splitlines() if x.strip()):
        raise ValueError(f"unterminated SQL statement in migration: {pending.strip()[:60]}")


def _few(values: Sequence[str]) -> str:
    if not values:
        return "none (the history is empty; import a run with `harness history import DIR`)"
    shown = ", ".join(values[:_KNOWN_SHOWN])
    return shown + (f", … ({len(values)} in all)" if len(values) > _KNOWN_SHOWN else "")


def _describe(kernel: KernelInfo) -> str:
    return f"{versions.name(kernel)} ({kernel.release}, sha256 {kernel.sha256[:12]})"


def _timeline(key: tuple[str, str, str, int], groups: list[_Group], shown: Mapping[int, _Shown]) -> Timeline:
    # Builds of one version (compare() == 0) stay in the order they were first run.
    ordered = sorted(groups, key=lambda g: shown[g.earliest].when)

    def by_version(a: _Group, b: _Group) -> int:
        return versions.compare(shown[a.first].kernel, shown[b.first].kernel)

    ordered.sort(key=functools.cmp_to_key(by_version))
    points: list[Point] = []
    first_change: int | None = None
    for group in ordered:
        latest = shown[group.latest]
        previous = points[-1].fingerprint if points else None
        changed = previous is not None and previous != latest.fingerprint
        if changed and first_change is None:
            first_change = len(points)
        points.append(Point(
            latest.kernel, Outcome(latest.outcome), latest.fingerprint, group.runs, group.varies, changed,
            changed_fields(previous, latest.fingerprint) if changed and previous is not None else (), latest.run_id,
        ))  # fmt: skip
    return Timeline(*key, tuple(points), first_change)


# --- rendering ---------------------------------------------------------------------------------

_NOT_SEEN = "·"
_FIRST = "*"
_VARIES = "~"
_FIRST_STYLE = "bold yellow"


def _letter(n: int) -> str:
    # A..Z, then AA, AB…: a row rarely has more than a handful of behaviours, but never run out.
    text = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        text = chr(ord("A") + rem) + text
    return text


def _letters(timeline: Timeline) -> list[str]:
    names: dict[str, str] = {}
    return [names.setdefault(p.fingerprint, _letter(len(names))) for p in timeline.points]


def _kernel_key(kernel: KernelInfo) -> str:
    return kernel.sha256 or f"{kernel.package}|{kernel.version}|{kernel.release}"


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ",".join(_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_compact(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def behaviour(fingerprint: str) -> str:
    """A fingerprint as `key=value` pairs, for reading rather than parsing."""
    try:
        doc = json.loads(fingerprint)
    except json.JSONDecodeError:
        return fingerprint
    if not isinstance(doc, dict):
        return fingerprint
    return " ".join(f"{k}={_compact(v)}" for k, v in doc.items())


def render(timelines: Sequence[Timeline], console: Console, detail: bool = False, only_changes: bool = False) -> None:
    """Print timelines for a kernel developer: a letter grid, or with `detail` one line per kernel."""
    if not timelines:
        console.print(Text("no observed behaviour in the history"))
        return
    shown = [t for t in timelines if not only_changes or t.first_change is not None or t.varies]
    if detail:
        for timeline in shown:
            console.print(_detail_table(timeline))
    elif shown:
        console.print(_grid(shown))
    changing = sum(1 for t in timelines if t.first_change is not None)
    line = f"{changing} of {len(timelines)} rows change between kernels"
    if len(shown) < len(timelines):
        line += f"; {len(timelines) - len(shown)} rows that never change are hidden"
    if not detail:
        line += (f". Letters name the distinct behaviours within a row; {_FIRST} marks the first kernel whose "
                 f"behaviour changed, {_VARIES} a kernel whose runs disagreed (latest shown), {_NOT_SEEN} not "
                 "observed.")  # fmt: skip
    console.print(Text(line))


def _grid(timelines: Sequence[Timeline]) -> Table:
    kernels: dict[str, KernelInfo] = {}
    for t in timelines:
        for p in t.points:
            kernels.setdefault(_kernel_key(p.kernel), p.kernel)
    columns = versions.ordered(kernels.values())
    names = [versions.name(k) for k in columns]
    # Two builds of one version (a rebuilt path kernel) would get the same header otherwise.
    headers = [f"{n} {k.sha256[:8]}" if names.count(n) > 1 else n for n, k in zip(names, columns, strict=True)]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("case", "memlock", "user", "RAM"):
        table.add_column(header, overflow="fold")
    for header in headers:
        table.add_column(header, justify="center", overflow="fold")
    index = {_kernel_key(k): i for i, k in enumerate(columns)}
    for t in timelines:
        cells = [Text(_NOT_SEEN, style="dim") for _ in columns]
        for n, (p, letter) in enumerate(zip(t.points, _letters(t), strict=True)):
            first = n == t.first_change
            text = letter + (_FIRST if first else "") + (_VARIES if p.varies else "")
            cells[index[_kernel_key(p.kernel)]] = Text(
                text, style=_FIRST_STYLE if first else "bold" if p.changed else ""
            )
        table.add_row(Text(t.case), Text(t.memlock), Text(t.user), Text(f"{t.ram_mb}M"), *cells)
    return table


def _detail_table(timeline: Timeline) -> Table:
    # Text, not a str: rich would read "[memlock=…]" in the name as markup and drop it.
    table = Table(title=Text(timeline.name, style="bold"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("kernel", "release", "outcome", "runs", "behaviour"):
        table.add_column(header, overflow="fold", no_wrap=header in ("kernel", "outcome"))
    for n, (p, letter) in enumerate(zip(timeline.points, _letters(timeline), strict=True)):
        shown = f"{letter}: {behaviour(p.fingerprint)}" if n == 0 or p.changed else f"{letter}: as above"
        runs = f"{p.runs}, varies" if p.varies else str(p.runs)
        text = Text(shown)
        if p.changed:
            marker = "first change" if n == timeline.first_change else "changed"
            fields = ", ".join(p.changed_fields) or "fingerprint"
            text.append(f"  ← {marker}: {fields}", style=_FIRST_STYLE if n == timeline.first_change else "bold")
        table.add_row(Text(versions.name(p.kernel)), Text(p.kernel.release), Text(p.outcome.value), Text(runs), text)
    return table
