"""The run directory: its one owner. Creating it (and `latest`), writing its files, reading them back.

results/<run-id>/ holds junit.xml and results.json (rewritten atomically as results arrive, so a
killed run leaves valid reports of everything finished), manifest.json (`harness.manifest`),
report.html and summary.md (written when the run ends), and serial/<boot>.log (written by the
boots). results.json's codec is here: `results_json` writes it and `read_results` reads it back
for merge, compare, replay and history. docs/results-schema.md documents the files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from harness import REPO, manifest
from harness.errors import InfraError, UserError
from harness.files import atomic_write, os_failure
from harness.jsondoc import Doc, load
from harness.report import candidates, overview, report_html, summary_md
from harness.report.junit import SuiteXml, document, suite_xml
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord, outcome_counts

SCHEMA_VERSION = 1  # results.json "schema"; bump on any incompatible change
JUNIT_FILE = "junit.xml"
RESULTS_FILE = "results.json"
MANIFEST_FILE = manifest.FILE
HTML_FILE = overview.HTML_FILE
SUMMARY_FILE = overview.SUMMARY_FILE
MAX_RESULTS_BYTES = 512 << 20  # a 10-kernel run writes 12 MB


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
    """A run given as a directory (or its results.json), or as a run id or "latest" under `results`."""
    for candidate in (Path(ref), results / ref):
        if (candidate / RESULTS_FILE).is_file():
            return candidate
        if candidate.name == RESULTS_FILE and candidate.is_file():
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


# --- results.json ------------------------------------------------------------------------------


def _case_json(result: CaseResult) -> dict[str, Any]:
    return {
        "case": result.case,
        "memlock": result.memlock,
        "user": result.user,
        "outcome": result.outcome.value,
        "message": result.message,
        "expected": result.expected,
        "citation": result.citation,
        "duration_s": result.duration_s,
        "fingerprint": result.fingerprint,
        **({"known": result.known} if result.known else {}),
        "observation": result.observation,
    }


def _boot_json(boot: BootResult) -> dict[str, Any]:
    return {
        "boot_id": boot.boot_id,
        "kernel": None if boot.kernel is None else dataclasses.asdict(boot.kernel),
        "ram_mb": boot.ram_mb,
        "accelerator": boot.accelerator,
        "qemu_version": boot.qemu_version,
        "memtotal_kb": boot.memtotal_kb,
        "uname": boot.uname,
        "qemu_argv": list(boot.qemu_argv),
        "serial_log": boot.serial_log,
        "timings": dict(boot.timings),
        "error": boot.error,
        "reboots": boot.reboots,
        "retries": boot.retries,
        "transport": boot.transport,
        "restored": boot.restored,
        "inputs": boot.inputs,
        "reused_from": boot.reused_from,
        "cases": [_case_json(r) for r in boot.cases],
    }


def results_json(
    boots: Sequence[BootResult], run_id: str, started: str, finished: str | None, interrupted: bool = False
) -> dict[str, Any]:
    """The results.json document; `finished` is None while the run is still going."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "started": started,
        "finished": finished,
        "complete": finished is not None and not interrupted,
        "interrupted": interrupted,
        "counts": outcome_counts(boots),
        "boots": [_boot_json(boot) for boot in boots],
    }


def _boot_entry(boot: BootResult) -> str:
    """One boot as it stands in results.json's "boots" list (indented to its depth there)."""
    # ensure_ascii (json's default) escapes every control character, so "\n" only ends lines.
    text = json.dumps(_boot_json(boot), indent=2, default=str)
    return "\n".join("    " + line for line in text.split("\n"))


def _results_text(doc: dict[str, Any], entries: Sequence[str]) -> str:
    """results.json as json.dumps(doc with its boots, indent=2) writes it, from boots rendered apart."""
    head = json.dumps({**doc, "boots": []}, indent=2, default=str)
    if not entries:
        return head
    # "boots" is the last key: its "[]" and the closing brace end the text.
    return head[: -len("[]\n}")] + "[\n" + ",\n".join(entries) + "\n  ]\n}"


def _case_from(d: Doc, boot_id: str) -> CaseResult:
    try:
        outcome = Outcome(d.doc.get("outcome"))
    except ValueError:
        raise UserError(
            f"{d.where}outcome: {d.doc.get('outcome')!r} is not one of the outcomes; give {d.what}"
        ) from None
    observation = d.doc.get("observation")
    return CaseResult(
        boot_id=boot_id,
        case=d.text("case", True),
        memlock=d.text("memlock", True),
        user=d.text("user", True),
        outcome=outcome,
        message=d.text("message"),
        observation=observation if isinstance(observation, dict) else None,
        expected=d.mapping("expected"),
        citation=d.text("citation"),
        duration_s=d.number("duration_s"),
        fingerprint=d.text("fingerprint"),
        known=d.text("known"),
    )


def _boot_from(d: Doc) -> BootResult:
    boot_id = d.text("boot_id", True)
    kernel = d.each(
        "kernel",
        lambda k: KernelInfo(
            label=k.text("label", True),
            release=k.text("release"),
            package=k.opt_text("package"),
            version=k.opt_text("version"),
            sha256=k.text("sha256"),
            source=k.text("source"),
        ),
        None,
    )
    timings = d.mapping("timings")
    return BootResult(
        boot_id=boot_id,
        kernel=kernel,
        ram_mb=d.integer("ram_mb", True),
        accelerator=d.text("accelerator"),
        qemu_version=d.text("qemu_version"),
        memtotal_kb=d.opt_integer("memtotal_kb"),
        uname=d.text("uname"),
        qemu_argv=d.texts("qemu_argv"),
        serial_log=_inside(d, "serial_log"),
        timings={k: Doc(timings, f"{d.where}timings.", d.what).number(k) for k in timings},
        error=d.text("error"),
        reboots=d.integer("reboots"),
        retries=d.integer("retries"),
        cases=d.items("cases", lambda c: _case_from(c, boot_id), required=True),
        transport=d.text("transport"),
        restored=d.text("restored"),
        inputs=d.text("inputs"),
        reused_from=d.text("reused_from"),
    )


def _inside(d: Doc, key: str) -> str:
    """A path in the run directory, as results.json names it: relative, and never out of the directory
    (merge copies the file it names; report.html links to it)."""
    value = d.text(key)
    parts = PurePosixPath(value).parts
    if value and (value.startswith("/") or ".." in parts or "\0" in value or not parts):
        raise UserError(f"{d.where}{key}: {value[:100]!r} is not a path inside the run directory; give {d.what}")
    return value


def read_results(path: Path) -> RunRecord:
    """Read a results.json (or the run directory holding one) back into records.

    Raises UserError naming the file and the field when it is not a results.json this harness wrote.
    """
    file = path / RESULTS_FILE if path.is_dir() else path
    what = "a results.json the harness wrote"
    if not file.exists():
        raise UserError(f"{file}: no such file; give a run directory (results/<run-id>) or its results.json")
    top = Doc(load(file, MAX_RESULTS_BYTES, "results.json"), f"{file}: ", what)
    if top.doc.get("schema") != SCHEMA_VERSION:
        raise UserError(
            f"{file}: schema: {repr(top.doc.get('schema'))[:20]}, this harness reads schema "
            f"{SCHEMA_VERSION}; give {what}"
        )
    boots = top.items("boots", _boot_from, required=True)
    return RunRecord(
        top.text("run_id", True), top.text("started"), top.opt_text("finished"), top.flag("interrupted"), boots
    )


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
    """Writes a run directory's files: junit.xml and results.json as results arrive, manifest.json,
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
    ) -> None:
        self.run_dir = run_dir
        self.explain = explain  # changelog candidates for the views' changes within a line
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
        self._rendered: dict[str, tuple[str, SuiteXml]] = {}
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

    def _render(self, boot: BootResult) -> tuple[str, SuiteXml]:
        rendered = self._rendered.get(boot.boot_id)
        if rendered is None:
            rendered = self._rendered[boot.boot_id] = (_boot_entry(boot), suite_xml(boot, self.run_id))
        return rendered

    def _write_reports(self) -> None:
        start = time.monotonic()
        boots = self._ordered()
        # Render both before writing either: a rendering bug must not leave them disagreeing.
        entries, suites = zip(*map(self._render, boots), strict=True) if boots else ((), ())
        doc = results_json((), self.run_id, self.started, self.finished, self.interrupted)
        doc["counts"] = outcome_counts(boots)
        results = _results_text(doc, entries)
        junit = document(suites, self.run_id)
        atomic_write(self.results_path, results + "\n")
        atomic_write(self.junit_path, junit)
        self._last_write = time.monotonic()
        self._write_cost = self._last_write - start
