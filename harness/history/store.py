"""Writing the history's rows the way schema 3 stores them, and keeping `tallies` up to date.

Years of nightly runs repeat the same strings and nearly the same observations every night: Store
keeps each repeated string once (`texts`, `cases`) and each observation as a small zlib delta
against a dictionary. Every append also updates `tallies`, one row per (case, RAM, kernel), which is
what the views read: they take as long after years of nightly runs as after one.

The v3 migration (schema.py) writes with Store and tally too, so this module never imports schema.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from harness.history.timeline import Shown
from harness.results import CaseResult, KernelInfo, Outcome

# A kernel's identity in SQL (see db._identity): the lowest kernels.id with its sha256, else its own id.
IDENTITY = "CASE k.sha256 WHEN '' THEN k.id ELSE (SELECT MIN(id) FROM kernels WHERE sha256 = k.sha256) END"

# tallies computed from the observation rows. `live` is the boots the views read: those of runs no
# merged run replaced, with a kernel. `rank` orders runs by start, then id, so `rank * :span + o.id`
# (:span above every observation id; far from 2**63 with 10**5 runs of 10**9 rows) orders rows as
# (started_utc, run, id): its MIN and MAX name the earliest and latest row. A window function keeps
# SQLite from flattening `live`: it is computed once, a few rows a run.
_TALLY = f"""
WITH live AS (
    SELECT b.id AS boot, b.run AS run, b.ram_mb AS ram_mb, {IDENTITY} AS kernel,
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
_WHEN = (
    "(SELECT r.started_utc, r.id, x.id FROM observations x JOIN boots y ON y.id = x.boot"
    " JOIN runs r ON r.id = y.run WHERE x.id = tallies.{column})"
)
_COUNT_RUN = f"""
INSERT INTO tallies (case_id, ram_mb, kernel, runs, fingerprint, varies, first, earliest, latest)
SELECT o.case_id, b.ram_mb, {IDENTITY}, 1, MIN(o.fingerprint), MIN(o.fingerprint) != MAX(o.fingerprint),
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

INSERT_OBSERVATION = (
    "INSERT INTO observations (id, boot, case_id, outcome, fingerprint, message, expected, citation, duration_s,"
    " observation, dictionary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class Store:
    """Writes schema-3 observation rows: strings and cases stored once, observations as zlib deltas.

    One per transaction, because its caches hold row ids a rollback would take back. The v3
    migration uses it too: a later schema change to what it writes must give schema._v3_convert a
    copy of this version.
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
            pk = int(row[0]) if row else lastrowid(self._db.execute("INSERT INTO texts (text) VALUES (?)", (value,)))
            self._texts[value] = pk
        return pk

    def case(self, name: str, memlock: str, user: str) -> int:
        key = (name, memlock, user)
        pk = self._cases.get(key)
        if pk is None:
            sql = "SELECT id FROM cases WHERE case_name = ? AND memlock = ? AND user = ?"
            row = self._db.execute(sql, key).fetchone()
            pk = (
                int(row[0])
                if row
                else lastrowid(self._db.execute("INSERT INTO cases (case_name, memlock, user) VALUES (?, ?, ?)", key))
            )
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
                found = (lastrowid(cursor), text)
            self._dictionaries[key] = found
        pk, dictionary = found
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=dictionary)
        return pk, packer.compress(observation.encode()) + packer.flush()

    def observation(
        self,
        pk: int | None,
        boot: int,
        kernel: int | None,
        case: str,
        memlock: str,
        user: str,
        outcome: str,
        fingerprint: str,
        message: str,
        expected: str,
        citation: str,
        duration_s: float,
        observation: str | None,
    ) -> tuple[Any, ...]:
        """The parameters of INSERT_OBSERVATION for one result (pk None: the next id)."""
        case_pk, fp_pk = self.case(case, memlock, user), self.text(fingerprint)
        dictionary, packed = (None, None) if observation is None else self.pack(case_pk, fp_pk, kernel, observation)
        return (
            pk,
            boot,
            case_pk,
            outcome,
            fp_pk,
            self.text(message),
            self.text(expected),
            self.text(citation),
            duration_s,
            packed,
            dictionary,
        )


def unpack(packed: bytes, dictionary: bytes) -> str:
    unpacker = zlib.decompressobj(-zlib.MAX_WBITS, zdict=zlib.decompress(dictionary))
    return (unpacker.decompress(packed) + unpacker.flush()).decode()


def lastrowid(cursor: sqlite3.Cursor) -> int:
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def no_fingerprint(db: sqlite3.Connection) -> int:
    """texts.id of '' (a result without observed behaviour); 0, no row, when none was stored."""
    row = db.execute("SELECT id FROM texts WHERE text = ''").fetchone()
    return int(row[0]) if row else 0


def tally(db: sqlite3.Connection, kernels: Collection[int] | None = None) -> None:
    """Recompute tallies from the observation rows: every row, or those of these kernel identities."""
    where = ""
    if kernels is None:
        db.execute("DELETE FROM tallies")
    else:
        ids = sorted(kernels)
        where = f" AND l.kernel IN ({', '.join(str(int(pk)) for pk in ids)})"
        db.execute(f"DELETE FROM tallies WHERE kernel IN ({', '.join('?' * len(ids))})", ids)
    (span,) = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM observations").fetchone()
    db.execute(_TALLY.format(kernels=where), {"span": span, "empty": no_fingerprint(db)})


def count_run(db: sqlite3.Connection, run_pk: int, run_id: str, started: str, first: int) -> None:
    """Bring tallies up to date with the run just stored (its observation ids start at `first`)."""
    if not db.execute("SELECT 1 FROM merged_from WHERE shard_run_id = ?", (run_id,)).fetchone():
        params = {"first": first, "empty": no_fingerprint(db), "started": started, "run": run_pk}
        db.execute(_COUNT_RUN, params)
    # A merged run hides its shard runs, which were counted if stored before it: count their
    # kernels' tallies again from the rows.
    replaced = db.execute(
        f"SELECT DISTINCT {IDENTITY} FROM boots b JOIN kernels k ON k.id = b.kernel JOIN runs r ON r.id = b.run"
        " WHERE r.id != ? AND r.run_id IN (SELECT shard_run_id FROM merged_from WHERE run = ?)",
        (run_pk, run_pk),
    ).fetchall()
    if replaced:
        tally(db, [pk for (pk,) in replaced])


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def utc_key(started: str) -> str:
    """`started` as fixed-width UTC text: text order is parse_time's order (unparseable first)."""
    when = parse_time(started)
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999: clamp
        when = (datetime.min if when.year == 1 else datetime.max).replace(tzinfo=UTC)
    return when.isoformat(timespec="microseconds")


def shown(
    pk: int,
    outcome: str,
    fingerprint: str,
    label: str,
    source: str,
    sha: str,
    package: str,
    version: str,
    release: str,
    run_id: str,
    started: str,
    run: int,
) -> Shown:
    return Shown(
        outcome=outcome,
        fingerprint=fingerprint,
        kernel=KernelInfo(
            label=label, release=release, package=package or None, version=version or None, sha256=sha, source=source
        ),
        run_id=run_id,
        when=(started, run, pk),
    )


def result(
    ram: int,
    case: str,
    memlock: str,
    user: str,
    outcome: str,
    message: str,
    packed: bytes | None,
    dictionary: Any,
    expected: str,
    citation: str,
    duration_s: float,
    fingerprint: str,
) -> CaseResult:
    """A stored row as a CaseResult of the kernel views: its boot_id names its RAM ("256M")."""
    observation = None if packed is None else json.loads(unpack(packed, dictionary))
    return CaseResult(
        boot_id=f"{ram}M",
        case=case,
        memlock=memlock,
        user=user,
        outcome=Outcome(outcome),
        message=message,
        observation=observation,
        expected=json.loads(expected),
        citation=citation,
        duration_s=duration_s,
        fingerprint=fingerprint,
    )
