"""History store: every run's results in one SQLite file, and views of behaviour across kernel versions.

Runs are appended, never updated: a run_id already stored is skipped, so recording a run and later
importing its directory (or importing twice) is harmless. The schema is versioned with
`PRAGMA user_version` and upgraded by MIGRATIONS; docs/history.md describes tables and views.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
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

# Append only: a released script never changes, because databases out there already ran it.
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)

# SQLite primary result codes that mean "this file is not a usable database" (the user's to fix).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_NUMERIC = re.compile(r"\d{1,3}(?:\.\d+){0,3}")  # a version, never an all-digit sha256 prefix
_SHA_PREFIX = re.compile(r"[0-9a-fA-F]{8,64}")
_KNOWN_SHOWN = 8


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
class _Row:
    obs: int
    case: str
    memlock: str
    user: str
    outcome: str
    fingerprint: str
    message: str
    observation: str | None
    expected: str
    citation: str
    duration_s: float
    ram_mb: int
    label: str
    source: str
    kernel: int
    sha256: str
    package: str
    version: str
    release: str
    run: int
    run_id: str
    started: str

    @property
    def identity(self) -> str:
        return _identity(self.sha256, self.kernel)

    @property
    def when(self) -> tuple[datetime, int, int]:
        # Latest by when the run started, not by insertion: importing an old run must not
        # make its results "latest".
        return (_parse_time(self.started), self.run, self.obs)

    def kernel_info(self) -> KernelInfo:
        return KernelInfo(self.label, self.release, self.package or None, self.version or None, self.sha256,
                          self.source)  # fmt: skip


_ROWS = """
SELECT o.id, o.case_name, o.memlock, o.user, o.outcome, o.fingerprint, o.message, o.observation, o.expected,
       o.citation, o.duration_s, b.ram_mb, b.label, b.source, k.id, k.sha256, k.package, k.version, k.release,
       r.id, r.run_id, r.started
FROM observations o JOIN boots b ON b.id = o.boot JOIN kernels k ON k.id = b.kernel JOIN runs r ON r.id = b.run
WHERE o.fingerprint != '' AND r.run_id NOT IN (SELECT shard_run_id FROM merged_from)
"""


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
            run_pk = db.execute(
                "INSERT INTO runs (run_id, started, finished, interrupted, harness_version, probe_sha256, recorded,"
                " source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run.run_id, run.started, run.finished, int(run.interrupted),
                 str(manifest.get("harness_version") or ""), probe_sha, recorded, source),
            ).lastrowid  # fmt: skip
            added = 0
            for boot in run.boots:
                k = boot.kernel
                kernel_pk = None if k is None else self._kernel_pk(db, k)
                boot_pk = db.execute(
                    "INSERT INTO boots (run, boot_id, kernel, label, source, ram_mb, accelerator, qemu_version, uname,"
                    " memtotal_kb, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_pk, boot.boot_id, kernel_pk, "" if k is None else k.label, "" if k is None else k.source,
                     boot.ram_mb, boot.accelerator or default_accel, boot.qemu_version or default_qemu, boot.uname,
                     boot.memtotal_kb, boot.error),
                ).lastrowid  # fmt: skip
                rows = [
                    (boot_pk, r.case, r.memlock, r.user, r.outcome.value, r.fingerprint, r.message,
                     None if r.observation is None else json.dumps(r.observation, sort_keys=True, default=str),
                     json.dumps(r.expected, sort_keys=True, default=str), r.citation, r.duration_s)
                    for r in boot.cases
                ]  # fmt: skip
                db.executemany(
                    "INSERT INTO observations (boot, case_name, memlock, user, outcome, fingerprint, message,"
                    " observation, expected, citation, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                added += len(rows)
            db.executemany(
                "INSERT OR IGNORE INTO merged_from (run, shard_run_id, shard) VALUES (?, ?, ?)",
                [(run_pk, shard_id, shard) for shard_id, shard in _shards(manifest)],
            )
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
                sql = "SELECT DISTINCT case_name FROM observations WHERE fingerprint != '' ORDER BY case_name"
                known = [c for (c,) in self._db.execute(sql)]
                if case not in known:
                    raise UserError(f"{self.path}: no observed case {case!r}; known: {_few(known)}")
            rows = self._rows(case, kernel_ids)
        if not rows and (case is not None or kernel is not None):
            raise UserError(f"{self.path}: nothing observed for case {case or '(any)'} on kernel {kernel or '(any)'}")
        groups: dict[tuple[str, str, str, int], list[_Row]] = {}
        for row in sorted(rows, key=lambda r: r.obs):  # first stored order = the probe's catalogue order
            groups.setdefault((row.case, row.memlock, row.user, row.ram_mb), []).append(row)
        return [_timeline(key, group) for key, group in groups.items()]

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
            rows = self._rows(None, matched[0].ids)
        if not rows:
            raise UserError(f"{self.path}: kernel {_describe(matched[0].info)} has no observed results")
        latest: dict[tuple[int, str, str, str], _Row] = {}
        first: dict[tuple[int, str, str, str], int] = {}
        for row in rows:
            key = (row.ram_mb, row.case, row.memlock, row.user)
            first[key] = min(first.get(key, row.obs), row.obs)
            if key not in latest or row.when > latest[key].when:
                latest[key] = row
        results = [
            (r.ram_mb, CaseResult(f"{r.ram_mb}M", r.case, r.memlock, r.user, Outcome(r.outcome), r.message,
                       None if r.observation is None else json.loads(r.observation), json.loads(r.expected),
                       r.citation, r.duration_s, r.fingerprint))
            for key, r in sorted(latest.items(), key=lambda kv: (kv[0][0], first[kv[0]]))
        ]  # fmt: skip
        newest = max(latest.values(), key=lambda r: r.when)
        return newest.kernel_info(), results

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
                for statement in _statements(MIGRATIONS[target - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    @staticmethod
    def _kernel_pk(db: sqlite3.Connection, k: KernelInfo) -> int:
        key = (k.sha256, k.package or "", k.version or "", k.release)
        db.execute("INSERT OR IGNORE INTO kernels (sha256, package, version, release) VALUES (?, ?, ?, ?)", key)
        (pk,) = db.execute(
            "SELECT id FROM kernels WHERE sha256 = ? AND package = ? AND version = ? AND release = ?", key
        ).fetchone()
        return int(pk)

    def _rows(self, case: str | None, kernel_ids: Iterable[int] | None) -> list[_Row]:
        sql, args = _ROWS, list[Any]()
        if case is not None:
            sql += " AND o.case_name = ?"
            args.append(case)
        if kernel_ids is not None:
            ids = sorted(kernel_ids)
            sql += f" AND k.id IN ({', '.join('?' * len(ids))})"
            args += ids
        return [_Row(*row) for row in self._db.execute(sql, args)]

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


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _changed_fields(before: str, after: str) -> tuple[str, ...]:
    try:
        a, b = json.loads(before), json.loads(after)
    except json.JSONDecodeError:
        return ()  # not a verdict.fingerprint document: the change is real but cannot be itemised
    if not isinstance(a, dict) or not isinstance(b, dict):
        return ()
    # Compare canonical text, not Python values: true == 1 in Python, not in a fingerprint.
    return tuple(sorted(k for k in a.keys() | b.keys() if _canonical(a.get(k)) != _canonical(b.get(k))
                        or (k in a) != (k in b)))  # fmt: skip


def _timeline(key: tuple[str, str, str, int], rows: list[_Row]) -> Timeline:
    per_kernel: dict[str, list[_Row]] = {}
    for row in rows:
        per_kernel.setdefault(row.identity, []).append(row)
    # Builds of one version (compare() == 0) stay in the order they were first run.
    groups = sorted(per_kernel.values(), key=lambda g: min(r.when for r in g))

    def by_version(a: list[_Row], b: list[_Row]) -> int:
        return versions.compare(a[0].kernel_info(), b[0].kernel_info())

    groups.sort(key=functools.cmp_to_key(by_version))
    points: list[Point] = []
    first_change: int | None = None
    for group in groups:
        latest = max(group, key=lambda r: r.when)
        previous = points[-1].fingerprint if points else None
        changed = previous is not None and previous != latest.fingerprint
        if changed and first_change is None:
            first_change = len(points)
        points.append(Point(
            latest.kernel_info(), Outcome(latest.outcome), latest.fingerprint, len({r.run for r in group}),
            len({r.fingerprint for r in group}) > 1, changed,
            _changed_fields(previous, latest.fingerprint) if changed and previous is not None else (), latest.run_id,
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
