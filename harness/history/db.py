"""The History class: opening (and migrating) a history file, storing runs (append.py), and the
read queries. A run_id already stored is skipped, so recording a run and later importing its
directory is harmless; only a run judged anew replaces its rows. The views read `tallies`
(store.py), never every observation, and build Timelines (timeline.py) for views.py to render.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from harness import versions
from harness.errors import InfraError, UserError
from harness.history import append, schema, store
from harness.history.timeline import Group, Shown, Timeline, build
from harness.manifest import Manifest
from harness.report import resultsfile, rundir
from harness.results import CaseResult, KernelInfo, Outcome, RunRecord

DEFAULT_PATH = Path("results") / "history.sqlite"
# Two runs on one machine may append at the same moment; each append is one short transaction,
# so waiting for the other writer is always better than failing a run that has finished.
BUSY_TIMEOUT_S = 60.0

# SQLite primary result codes that mean "this file is not a usable database" (the user's to fix).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SHA_PREFIX = re.compile(r"[0-9a-fA-F]{8,64}")
_KNOWN_SHOWN = 8
_CHUNK = 500  # ids per IN (...): far below SQLite's limit on parameters


@dataclass
class _Kernel:
    """One kernel identity (its image's sha256) and every row and label it was stored under."""

    ids: set[int]
    info: KernelInfo  # from the latest boot
    labels: set[str]
    latest: tuple[datetime, int]


@dataclass(frozen=True)
class Reusable:
    """A stored boot another boot of the same inputs may take the results of (harness.reuse)."""

    run_id: str
    uname: str
    memtotal_kb: int | None
    results: list[CaseResult]


# Results that say nothing of the kernel: a boot that has one is booted again, not reused.
_UNANSWERED = (Outcome.TIMEOUT, Outcome.INFRA_ERROR)


class History:
    """An open history file. Use as a context manager, or call close()."""

    def __init__(self, path: Path = DEFAULT_PATH, timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        if path.is_dir():
            raise UserError(f"{path}: a directory; give --history the history file (results/history.sqlite)")
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

    def record(self, run: RunRecord, manifest: Manifest, source: str = "") -> int:
        """Append a run and every case result of it; returns the results stored.

        A run_id already stored returns 0 and changes nothing. Record a run once it has ended:
        a later, fuller record of the same run_id is skipped like any other repeat.
        """
        with self._guard(f"cannot record run {run.run_id}"), self._write() as db:
            # Checked inside the write lock: two processes importing one run at once must not
            # both see it missing.
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                return 0
            return append.insert(db, run, manifest, source)

    def replace(self, run: RunRecord, manifest: Manifest, source: str = "") -> int:
        """Store a run stored before again, in one transaction: its results judged anew (`harness
        judge`) take the place of the old ones. Returns the results stored; 0 when the history does
        not hold the run (nothing is added)."""
        with self._guard(f"cannot store run {run.run_id} again"), self._write() as db:
            row = db.execute("SELECT id FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
            if row is None:
                return 0
            (run_pk,) = row
            kernels = append.forget(db, run_pk)
            added = append.insert(db, run, manifest, source)
            if kernels:
                store.tally(db, kernels)
            return added

    def import_run(self, run_dir: Path) -> int:
        """Record a run directory's results.json.gz and manifest.json; 0 when the run is already stored."""
        run = resultsfile.read_results(run_dir)
        manifest = rundir.read_manifest(run_dir if run_dir.is_dir() else run_dir.parent)
        return self.record(run, manifest or Manifest(), source=str(run_dir))

    def reusable(self, inputs: str, wanted: Collection[tuple[str, str, str]]) -> Reusable | None:
        """The latest stored boot of these inputs that answered every (case, memlock, user) wanted,
        none with a timeout or an infrastructure error: its run, what it saw and those results."""
        boots = self._db.execute(
            "SELECT b.id, r.run_id, b.uname, b.memtotal_kb FROM boots b JOIN runs r ON r.id = b.run"
            " WHERE b.inputs = ? AND b.inputs != '' AND b.error = '' ORDER BY r.started_utc DESC, b.id DESC LIMIT 5",
            (inputs,),
        ).fetchall()
        for boot_pk, run_id, uname, memtotal_kb in boots:
            sql = "SELECT o.id FROM observations o WHERE o.boot = ?"
            ids = [pk for (pk,) in self._db.execute(sql, (boot_pk,))]
            found = {(r.case, r.memlock, r.user): r for r in self._results(ids).values()}
            picked = [found.get(key) for key in wanted]
            if all(r is not None and r.outcome not in _UNANSWERED for r in picked):
                return Reusable(run_id, uname, memtotal_kb, [r for r in picked if r is not None])
        return None

    # --- views ---------------------------------------------------------------------------------

    def kernels(self) -> list[KernelInfo]:
        """Every kernel stored, oldest version first, as its latest run named it."""
        return [k.info for k in self._ordered_kernels(self._kernels().values())]

    def kernel_digests(self) -> set[str]:
        """The sha256 of every kernel image the history holds results of."""
        with self._guard("cannot read"):
            return {row[0] for row in self._db.execute("SELECT DISTINCT sha256 FROM kernels")}

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
            cases = {
                pk: (name, memlock, user)
                for pk, name, memlock, user in self._db.execute("SELECT id, case_name, memlock, user FROM cases")
            }
        if not groups and (case is not None or kernel is not None):
            raise UserError(f"{self.path}: nothing observed for case {case or '(any)'} on kernel {kernel or '(any)'}")
        rows: dict[tuple[int, int], list[Group]] = {}
        for group in sorted(groups, key=lambda g: g.first):  # first stored order = the probe's catalogue order
            rows.setdefault((group.case, group.ram_mb), []).append(group)
        return [build((*cases[case_pk], ram_mb), row, shown) for (case_pk, ram_mb), row in rows.items()]

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
                raise UserError(
                    f"{selector!r} matches {len(matched)} kernels ({names}); "
                    "name one by release, Debian version or sha256 prefix"
                )
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
            return UserError(
                f"{self.path}: not a history database ({reason}); give --history a file the harness "
                "wrote, or move this one away to start a new history"
            )
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
        if version > schema.SCHEMA_VERSION:
            raise UserError(
                f"{self.path}: history schema {version} is newer than this harness knows "
                f"({schema.SCHEMA_VERSION}); use a newer harness or another --history file"
            )

    def _migrate(self) -> None:
        version = self._user_version()
        self._check_version(version)
        if version == schema.SCHEMA_VERSION:
            return  # no write lock for a reader of an up-to-date (maybe read-only) history
        for target in range(1, schema.SCHEMA_VERSION + 1):
            with self._write() as db:
                # Read again under the write lock: another process may have migrated meanwhile.
                current = self._user_version()
                self._check_version(current)
                if current >= target:
                    continue
                if current == 0 and db.execute("SELECT 1 FROM sqlite_master").fetchone():
                    # Version 0 with tables is some other program's database: adding ours to it
                    # would hide the mistake and write into a file the user meant for something else.
                    raise UserError(
                        f"{self.path}: an SQLite database, but not a history database; give --history "
                        "a file the harness wrote, or a new file name"
                    )
                migration = schema.MIGRATIONS[target - 1]
                if isinstance(migration, str):
                    schema.script(db, migration)
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

    def _check_case(self, case: str) -> None:
        """A UserError listing the observed cases unless `case` is one."""
        if self._db.execute(
            "SELECT 1 FROM tallies t JOIN cases c ON c.id = t.case_id WHERE c.case_name = ?", (case,)
        ).fetchone():
            return  # the quick answer; the full one (a scan) also counts shard runs and boots without a kernel
        sql = (
            "SELECT DISTINCT c.case_name FROM cases c WHERE c.id IN (SELECT DISTINCT case_id FROM observations"
            " WHERE fingerprint != ?) ORDER BY c.case_name"
        )
        known = [c for (c,) in self._db.execute(sql, (store.no_fingerprint(self._db),))]
        if case not in known:
            raise UserError(f"{self.path}: no observed case {case!r}; known: {_few(known)}")

    def _groups(self, case: str | None, kernel_ids: Collection[int] | None) -> list[Group]:
        """The tallies of these kernels (all kernels of an identity, or more) and of this case name."""
        sql, args = "SELECT case_id, ram_mb, runs, varies, first, earliest, latest FROM tallies WHERE 1", list[Any]()
        if kernel_ids is not None:
            ids = sorted(kernel_ids)
            sql += f" AND kernel IN ({', '.join('?' * len(ids))})"
            args += ids
        if case is not None:
            sql += " AND case_id IN (SELECT id FROM cases WHERE case_name = ?)"
            args.append(case)
        return [
            Group(c, ram, runs, bool(varies), first, earliest, latest)
            for c, ram, runs, varies, first, earliest, latest in self._db.execute(sql, args)
        ]

    def _shown(self, ids: Iterable[int]) -> dict[int, Shown]:
        sql = (
            "SELECT o.id, o.outcome, f.text, b.label, b.source, k.sha256, k.package, k.version, k.release, r.run_id,"
            " r.started_utc, r.id FROM observations o JOIN texts f ON f.id = o.fingerprint"
            " JOIN boots b ON b.id = o.boot JOIN kernels k ON k.id = b.kernel JOIN runs r ON r.id = b.run"
            " WHERE o.id IN ({ids})"
        )
        return {row[0]: store.shown(*row) for row in self._by_ids(sql, ids)}

    def _results(self, ids: Iterable[int]) -> dict[int, CaseResult]:
        sql = (
            "SELECT o.id, b.ram_mb, c.case_name, c.memlock, c.user, o.outcome, m.text, o.observation, d.observation,"
            " e.text, ci.text, o.duration_s, f.text"
            " FROM observations o JOIN boots b ON b.id = o.boot JOIN cases c ON c.id = o.case_id"
            " JOIN texts f ON f.id = o.fingerprint JOIN texts m ON m.id = o.message"
            " JOIN texts e ON e.id = o.expected JOIN texts ci ON ci.id = o.citation"
            " LEFT JOIN dictionaries d ON d.id = o.dictionary"
            " WHERE o.id IN ({ids})"
        )
        return {row[0]: store.result(*row[1:]) for row in self._by_ids(sql, ids)}

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
            info = KernelInfo(
                label=label,
                release=release,
                package=package or None,
                version=version or None,
                sha256=sha,
                source=source,
            )
            when = (store.parse_time(started), run)
            entry = found.setdefault(_identity(sha, pk), _Kernel(set(), info, set(), when))
            entry.ids.add(pk)
            entry.labels.add(label)
            if when > entry.latest:
                entry.info, entry.latest = info, when
        return found

    @staticmethod
    def _ordered_kernels(kernels: Iterable[_Kernel]) -> list[_Kernel]:
        return versions.ordered_by(kernels, lambda k: k.info)

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
    wanted = versions.line(selector)
    if wanted is not None:
        return versions.in_line(info, wanted)
    if selector in (info.release, info.package, info.version) or selector in kernel.labels:
        return True
    return bool(_SHA_PREFIX.fullmatch(selector)) and info.sha256.startswith(selector.lower())


def _identity(sha256: str, pk: int) -> str:
    # The image's hash names a kernel; a row without one (never stored by the runner) stands alone.
    return sha256 or f"#{pk}"


def _few(values: Sequence[str]) -> str:
    if not values:
        return "none (the history is empty; import a run with `harness history import DIR`)"
    shown = ", ".join(values[:_KNOWN_SHOWN])
    return shown + (f", … ({len(values)} in all)" if len(values) > _KNOWN_SHOWN else "")


def _describe(kernel: KernelInfo) -> str:
    return f"{versions.name(kernel)} ({kernel.release}, sha256 {kernel.sha256[:12]})"
