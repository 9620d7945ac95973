"""The history's schema: its tables, and the migrations that bring any older history file up to date.

The schema is versioned with `PRAGMA user_version` and upgraded by MIGRATIONS: migration n takes a
database from version n-1 to n, inside the transaction that also sets the new user_version
(History._migrate in db.py runs them). docs/history.md describes every table and column.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

from harness.history import store

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
    db.executemany("UPDATE runs SET started_utc = ? WHERE id = ?", [(store.utc_key(s), pk) for pk, s in starts])
    writer = store.Store(db)
    rows = db.execute(
        "SELECT o.id, o.boot, b.kernel, o.case_name, o.memlock, o.user, o.outcome, o.fingerprint, o.message,"
        " o.expected, o.citation, o.duration_s, o.observation"
        " FROM observations_v2 o LEFT JOIN boots b ON b.id = o.boot ORDER BY o.id"
    )
    while chunk := rows.fetchmany(10_000):
        db.executemany(store.INSERT_OBSERVATION, [writer.observation(*row) for row in chunk])


# Append only: a released migration never changes, because databases out there already ran it. A
# migration is an SQL script, or a Python function for what SQL cannot do (v3 compresses); each
# runs inside the migration's transaction and must not commit (see docs/history.md).
Migration = str | Callable[[sqlite3.Connection], None]


def _v3(db: sqlite3.Connection) -> None:
    # store.Store and store.tally write schema 3; a later schema that changes them gives this a copy of them.
    script(db, _V3)
    _v3_convert(db)
    script(db, _V3_FINISH)
    store.tally(db)


_V4 = """
-- What a boot's results depend on (harness.reuse: kernel, image, disk, QEMU and its command line,
-- probe, case timeout), so a run can take the results of an equal boot instead of booting;
-- '' for boots stored before.
ALTER TABLE boots ADD COLUMN inputs TEXT NOT NULL DEFAULT '';
CREATE INDEX boots_inputs ON boots (inputs);
"""

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _v3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)


def script(db: sqlite3.Connection, text: str) -> None:
    """Execute an SQL script statement by statement, inside the caller's transaction."""
    for statement in _statements(text):
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
