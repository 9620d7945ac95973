"""The run directory: its one owner. Creating it (and `latest`), writing its files, reading them back.

results/<run-id>/ holds junit.xml and results.json.gz (rewritten atomically as results arrive, so
a killed run leaves valid reports of everything finished), manifest.json (`harness.manifest`),
report.html and summary.md (written when the run ends), and serial/<boot>.log.gz (written by the
boots). results.json.gz's codec is `resultsfile`; docs/results-schema.md documents the files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from harness import REPO, manifest
from harness.errors import InfraError, UserError
from harness.files import atomic_write, os_failure
from harness.kit.known import Known
from harness.report import candidates, overview, report_html, resultsfile, summary_md
from harness.report.junit import SuiteXml, document, suite_xml
from harness.report.resultsfile import PLAIN_RESULTS_FILE, RESULTS_FILE, results_file, results_json
from harness.results import BootResult, RunRecord, outcome_counts

JUNIT_FILE = "junit.xml"
MANIFEST_FILE = manifest.FILE
HTML_FILE = overview.HTML_FILE
SUMMARY_FILE = overview.SUMMARY_FILE


# --- creating and finding runs -----------------------------------------------------------------


RESULTS_ENV = "HARNESS_RESULTS"


def results_dir() -> Path:
    """Where runs go and are found: HARNESS_RESULTS, else results/ in the source tree (git-ignored),
    wherever the command is started from."""
    explicit = os.environ.get(RESULTS_ENV)
    return Path(explicit) if explicit else REPO / "results"


def check_writable(results: Path) -> None:
    """Before anything is downloaded or booted: could results be written there? (Creates nothing.)"""
    existing = results
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = (
        "is not a directory"
        if not existing.is_dir()
        else "is not writable"
        if not os.access(existing, os.W_OK | os.X_OK)
        else ""
    )
    if problem:
        raise UserError(
            f"{results}: results cannot be written there ({existing} {problem}); give --results a writable directory"
        )


def create(results: Path) -> tuple[str, Path]:
    """A new run directory under `results`, named by time and a random suffix; `latest` points at it."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{stamp}-{secrets.token_hex(2)}"
    run_dir = results / run_id
    try:
        run_dir.mkdir(parents=True)
        latest = results / "latest"
        tmp = results / f".latest-{run_id}"
        tmp.symlink_to(run_id)
        os.replace(tmp, latest)
    except OSError as e:
        raise InfraError(f"{results}: cannot create the run directory: {e.strerror}") from e
    return run_id, run_dir


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def find_run(ref: str, results: Path) -> Path | None:
    """A run given as a directory (or its results file), or as a run id or "latest" under `results`."""
    for candidate in (Path(ref), results / ref):
        if results_file(candidate).is_file():
            return candidate
        if candidate.name in (RESULTS_FILE, PLAIN_RESULTS_FILE) and candidate.is_file():
            return candidate.parent
    return None


def locate(ref: str, results: Path) -> Path:
    """find_run, or bad input saying what a run reference is."""
    found = find_run(ref, results)
    if found is not None:
        return found
    raise UserError(f"{ref}: no such run (neither a run directory nor a run id in {results}); give results/<run-id>")


def read_manifest(run_dir: Path) -> manifest.Manifest | None:
    """The run's manifest; None when it has none (a run killed before writing it)."""
    return manifest.read(run_dir)


# --- writing -----------------------------------------------------------------------------------


def write_views(run_dir: Path, run: RunRecord, explain: candidates.Explain | None = None) -> None:
    """report.html with its boot pages, and summary.md, each file written atomically.

    Everything is rendered before anything is written, and report.html is written after the pages
    it links to. A boot page no longer in the run (none today: a run only gains boots) is removed.
    """
    pages, markdown = report_html.pages(run, explain), summary_md.markdown(run, explain)
    boot_dir = run_dir / report_html.BOOT_DIR
    boot_dir.mkdir(exist_ok=True)
    for path, text in pages.items():
        if path != HTML_FILE:
            atomic_write(run_dir / path, text)
    for stale in boot_dir.glob("*.html"):
        if f"{report_html.BOOT_DIR}/{stale.name}" not in pages:
            stale.unlink()
    atomic_write(run_dir / HTML_FILE, pages[HTML_FILE])
    atomic_write(run_dir / SUMMARY_FILE, markdown)


def _snapshot(boot: BootResult) -> BootResult:
    # The runner keeps appending to its own BootResult; copying the mutable parts in the caller's
    # thread means another thread's rewrite never iterates a dict that is changing under it.
    return dataclasses.replace(boot, qemu_argv=list(boot.qemu_argv), timings=dict(boot.timings), cases=list(boot.cases))


class RunWriter:
    """Writes a run directory's files: junit.xml and results.json.gz as results arrive, manifest.json,
    and at the end report.html and summary.md.

    Every add_boot/update/finish rewrites both reports atomically under one lock, so boots running
    in parallel threads can report case by case and a killed run still leaves valid files. Each
    boot is rendered once per change and kept, so a rewrite renders only the boots that changed.
    Boots are listed in `order` (the plan's boot ids); ids not in it follow in the order first seen.
    """

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        started: str,
        order: Sequence[str] = (),
        explain: candidates.Explain | None = None,
        known: Sequence[Known] = (),
    ) -> None:
        self.run_dir = run_dir
        self.explain = explain  # changelog candidates for the views' changes within a line
        self.known = tuple(known)  # known-deviations entries: junit.xml shows the results of one no longer seen
        self.run_id = run_id
        self.started = started
        self.finished: str | None = None
        self.interrupted = False
        self._rank: dict[str, int] = {}
        for boot_id in order:
            self._rank.setdefault(boot_id, len(self._rank))
        self._boots: dict[str, BootResult] = {}
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self.min_interval = 1.0
        self._last_write = 0.0
        self._write_cost = 0.0
        self._rendered: dict[str, tuple[bytes, SuiteXml]] = {}
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_failure("cannot create run directory", run_dir, e) from e

    @property
    def junit_path(self) -> Path:
        return self.run_dir / JUNIT_FILE

    @property
    def results_path(self) -> Path:
        return self.run_dir / RESULTS_FILE

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST_FILE

    def add_boot(self, result: BootResult) -> None:
        """Register a new boot and rewrite the reports. A repeated id is a runner bug: ValueError."""
        snapshot = _snapshot(result)
        with self._lock:
            if result.boot_id in self._boots:
                raise ValueError(f"boot {result.boot_id!r} was already added; use update()")
            self._store(snapshot)
            self._write_reports()

    def add_boots(self, results: Sequence[BootResult]) -> None:
        """Register finished boots at once (a run judged again, say) and write the reports once."""
        snapshots = [_snapshot(r) for r in results]
        with self._lock:
            for snapshot in snapshots:
                self._store(snapshot)
            self._write_reports()

    def update(self, result: BootResult, flush: bool = True) -> None:
        """Replace what is known of this boot (adding it if new) and rewrite the reports.

        With flush=False (a case just finished) the files are rewritten only if the last write is
        older than `min_interval` and ten times what that write took: the files grow with the run
        (90 MB at 40 boots), so writing them after every case would take the host's CPU from the
        guests. A killed run loses at most that interval's cases; a boot's end always writes.
        """
        snapshot = _snapshot(result)
        with self._lock:
            self._store(snapshot)
            wait = max(self.min_interval, 10 * self._write_cost)
            if flush or time.monotonic() - self._last_write >= wait:
                self._write_reports()

    def write_manifest(self, record: manifest.Manifest) -> None:
        text = manifest.write_text(record)
        with self._lock:
            atomic_write(self.manifest_path, text)

    def finish(self, finished: str | None, interrupted: bool = False) -> None:
        """Mark the run ended ("complete" when `finished` is set and it was not interrupted) and write
        the reports once more. `finished` is None for a merge that lacks shards: it never completed."""
        with self._lock:
            self.finished = finished
            self.interrupted = interrupted
            self._write_reports()
            # Only now: the page and summary are for people, and rendering a big run takes a second.
            run = RunRecord(self.run_id, self.started, finished, interrupted, self._ordered())
            write_views(self.run_dir, run, self.explain)

    def boots(self) -> list[BootResult]:
        """What has been reported so far, in report order (for the summary and the exit code)."""
        with self._lock:
            return self._ordered()

    def _store(self, boot: BootResult) -> None:
        self._seen.setdefault(boot.boot_id, len(self._seen))
        self._boots[boot.boot_id] = boot
        self._rendered.pop(boot.boot_id, None)

    def _ordered(self) -> list[BootResult]:
        def key(boot: BootResult) -> tuple[int, int]:
            rank = self._rank.get(boot.boot_id)
            return (0, rank) if rank is not None else (1, self._seen[boot.boot_id])

        return sorted(self._boots.values(), key=key)

    def _render(self, boot: BootResult) -> tuple[bytes, SuiteXml]:
        rendered = self._rendered.get(boot.boot_id)
        if rendered is None:
            rendered = self._rendered[boot.boot_id] = (
                resultsfile.boot_entry(boot),
                suite_xml(boot, self.run_id, self.known),
            )
        return rendered

    def _write_reports(self) -> None:
        start = time.monotonic()
        boots = self._ordered()
        # Render both before writing either: a rendering bug must not leave them disagreeing.
        entries, suites = zip(*map(self._render, boots), strict=True) if boots else ((), ())
        doc = results_json((), self.run_id, self.started, self.finished, self.interrupted)
        doc["counts"] = outcome_counts(boots)
        results = resultsfile.joined(doc, entries)
        junit = document(suites, self.run_id)
        atomic_write(self.results_path, results)
        atomic_write(self.junit_path, junit)
        self._last_write = time.monotonic()
        self._write_cost = self._last_write - start
