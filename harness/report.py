"""Report writers: turn BootResult records into junit.xml, results.json and a terminal summary.

The functions are pure (records in, text or dicts out). `RunWriter` owns the run directory and
rewrites its files atomically after every update, so a run killed at any point leaves valid reports
of everything finished so far. docs/results-schema.md documents what the files contain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from junit_xml import TestCase, TestSuite, to_xml_report_string
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness import overview
from harness.errors import InfraError, UserError
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord

SCHEMA_VERSION = 1  # results.json "schema"; bump on any incompatible change
JUNIT_FILE = "junit.xml"
RESULTS_FILE = "results.json"
MANIFEST_FILE = "manifest.json"

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INFRA = 3

BOOT_CASE = "boot"  # JUnit testcase that carries a boot's infrastructure error


# --- JUnit XML ---------------------------------------------------------------------------------

# XML 1.0 `Char` production. junit_xml strips bad characters only after serialising, by which time
# a lone surrogate (from surrogateescape-decoded guest output) has become "&#55296;", a reference
# to a character XML forbids, so every string is cleaned before it reaches the library.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry (NUL, most C0 controls, surrogates, FFFE/FFFF)."""
    # \r\n would come back as \n from any parser anyway; normalising keeps round trips exact.
    return _XML_INVALID.sub("", text.replace("\r\n", "\n"))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _properties(boot: BootResult, run_id: str) -> dict[str, str]:
    props: dict[str, str] = {"run_id": run_id}
    kernel = boot.kernel
    if kernel is not None:
        for key, value in (
            ("label", kernel.label),
            ("package", kernel.package),
            ("version", kernel.version),
            ("release", kernel.release),
            ("sha256", kernel.sha256),
            ("source", kernel.source),
        ):
            if value:
                props[f"kernel.{key}"] = value
    props["ram_mb"] = str(boot.ram_mb)
    if boot.memtotal_kb is not None:
        props["memtotal_kb"] = str(boot.memtotal_kb)
    for key, value in (
        ("accelerator", boot.accelerator),
        ("qemu_version", boot.qemu_version),
        ("uname", boot.uname),
    ):
        if value:
            props[key] = value
    return {xml_safe(k): xml_safe(v) for k, v in props.items()}


def _detail(result: CaseResult) -> str:
    """The body of a <failure>/<error>: enough to judge the result without opening results.json."""
    lines = [result.message] if result.message else []
    if result.expected:
        lines.append(f"expected: {_compact(result.expected)}")
    observed = "(none)" if result.observation is None else _compact(result.observation)
    lines.append(f"observed: {observed}")
    if result.citation:
        lines.append(f"citation: {result.citation}")
    return "\n".join(lines)


def _testcase(boot_id: str, result: CaseResult) -> TestCase:
    stdout = None if result.observation is None else xml_safe(_compact(result.observation))
    case = TestCase(
        xml_safe(result.name),
        classname=xml_safe(f"harness.{boot_id}"),
        # Milliseconds are plenty, and a rounded value never prints in exponent notation.
        elapsed_sec=round(result.duration_s, 3),
        stdout=stdout,
    )
    # junit_xml silently drops a failure/error with an empty message and output; never let a
    # result with no message turn into a pass.
    message = xml_safe(result.message) or result.outcome.value
    outcome = result.outcome
    if outcome.is_failure:
        case.add_failure_info(message=message, output=xml_safe(_detail(result)), failure_type=outcome.value)
    elif outcome.is_error:
        case.add_error_info(message=message, output=xml_safe(_detail(result)), error_type=outcome.value)
    elif outcome is Outcome.NOT_APPLICABLE:
        case.add_skipped_info(message=message)
    return case


def _boot_testcase(boot: BootResult) -> TestCase:
    case = TestCase(BOOT_CASE, classname=xml_safe(f"harness.{boot.boot_id}"))
    output = f"serial log: {boot.serial_log}" if boot.serial_log else None
    case.add_error_info(
        message=xml_safe(boot.error),
        output=None if output is None else xml_safe(output),
        error_type=Outcome.INFRA_ERROR.value,
    )
    return case


def _suite(boot: BootResult, run_id: str) -> TestSuite:
    cases = [_testcase(boot.boot_id, r) for r in boot.cases]
    if boot.error:
        # Also when some cases did finish: a boot that died half-way must still be red in CI.
        cases.insert(0, _boot_testcase(boot))
    return TestSuite(
        xml_safe(boot.boot_id),
        cases,
        hostname="qemu",
        properties=_properties(boot, run_id),
    )


def _conform(root: ET.Element, run_id: str) -> None:
    """Make junit_xml's output valid against Jenkins' junit-10.xsd, the strictest common consumer."""
    root.set("name", xml_safe(run_id))
    for element in (root, *root.iter("testsuite")):
        # junit_xml always writes disabled="0", an attribute the schema does not declare.
        element.attrib.pop("disabled", None)
        for key in ("tests", "failures", "errors"):
            element.set(key, element.get(key, "0"))
        # str(float) sums such as 12.300000000000001 or 1e-05 break the schema's time pattern.
        element.set("time", f"{float(element.get('time', '0')):.3f}")
    for case in root.iter("testcase"):
        # junit_xml writes "%f", and nothing at all for a zero duration, which Ant's schema requires.
        case.set("time", f"{float(case.get('time', '0')):.3f}")


def junit_xml(boots: Sequence[BootResult], run_id: str) -> str:
    """One <testsuite> per boot, one <testcase> per CaseResult, plus a "boot" testcase for a boot error."""
    suites = [_suite(boot, run_id) for boot in boots]
    raw = to_xml_report_string(suites, prettyprint=False, encoding="utf-8")
    root = ET.fromstring(raw)
    _conform(root, run_id)
    # Indent with ElementTree, not junit_xml's minidom pretty-printer: on Python 3.11 minidom
    # writes newlines inside attributes raw, so multi-line messages would read back as spaces.
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


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
        "cases": [_case_json(r) for r in boot.cases],
    }


def outcome_counts(boots: Iterable[BootResult]) -> dict[str, int]:
    """Cases per outcome value, every outcome present (zeros included) so consumers need no defaults."""
    seen = Counter(r.outcome for boot in boots for r in boot.cases)
    return {o.value: seen[o] for o in Outcome}


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


def _need(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"{where}{key}: missing or not {getattr(kind, '__name__', 'of the right type')}")
    return value


def _case_from(doc: Mapping[str, Any], boot_id: str, where: str) -> CaseResult:
    try:
        outcome = Outcome(doc.get("outcome"))
    except ValueError:
        raise ValueError(f"{where}outcome: {doc.get('outcome')!r} is not one of the outcomes") from None
    observation = doc.get("observation")
    return CaseResult(
        boot_id, _need(doc, "case", str, where), _need(doc, "memlock", str, where), _need(doc, "user", str, where),
        outcome, str(doc.get("message") or ""), observation if isinstance(observation, dict) else None,
        dict(doc.get("expected") or {}), str(doc.get("citation") or ""), float(doc.get("duration_s") or 0.0),
        str(doc.get("fingerprint") or ""),
    )  # fmt: skip


def _boot_from(doc: Mapping[str, Any], where: str) -> BootResult:
    boot_id = _need(doc, "boot_id", str, where)
    k = doc.get("kernel")
    kernel = None
    if isinstance(k, dict):
        kw = f"{where}kernel."
        kernel = KernelInfo(_need(k, "label", str, kw), str(k.get("release") or ""), k.get("package"),
                            k.get("version"), str(k.get("sha256") or ""), str(k.get("source") or ""))  # fmt: skip
    cases = _need(doc, "cases", list, where)
    return BootResult(
        boot_id, kernel, int(_need(doc, "ram_mb", int, where)), str(doc.get("accelerator") or ""),
        str(doc.get("qemu_version") or ""), doc.get("memtotal_kb"), str(doc.get("uname") or ""),
        [str(a) for a in doc.get("qemu_argv") or []], str(doc.get("serial_log") or ""),
        {str(a): float(b) for a, b in (doc.get("timings") or {}).items()}, str(doc.get("error") or ""),
        int(doc.get("reboots") or 0), int(doc.get("retries") or 0),
        [_case_from(c, boot_id, f"{where}cases[{i}].") for i, c in enumerate(cases)],
    )  # fmt: skip


def read_results(path: Path) -> RunRecord:
    """Read a results.json (or the run directory holding one) back into records.

    Raises UserError naming the file and the field when it is not a results.json this harness wrote.
    """
    file = path / RESULTS_FILE if path.is_dir() else path
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file}: no such file; give a run directory (results/<run-id>) or its results.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: cannot read it as JSON ({e}); give a results.json the harness wrote") from None
    try:
        if not isinstance(doc, dict):
            raise ValueError("top level: not an object")
        if doc.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"schema: {doc.get('schema')!r}, this harness reads schema {SCHEMA_VERSION}")
        boots = [_boot_from(b, f"boots[{i}].") for i, b in enumerate(_need(doc, "boots", list, ""))]
        return RunRecord(_need(doc, "run_id", str, ""), str(doc.get("started") or ""), doc.get("finished"),
                         bool(doc.get("interrupted")), boots)  # fmt: skip
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{file}: {e}; give a results.json the harness wrote") from None


def find_run(ref: str, results: Path) -> Path | None:
    """A run given as a directory (or its results.json), or as a run id or "latest" under `results`."""
    for candidate in (Path(ref), results / ref):
        if (candidate / RESULTS_FILE).is_file():
            return candidate
        if candidate.name == RESULTS_FILE and candidate.is_file():
            return candidate.parent
    return None


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest.json ({} when the run has none, as a run killed before writing it)."""
    file = run_dir / MANIFEST_FILE
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{file}: top level is not an object")
    return doc


# --- files -------------------------------------------------------------------------------------


def _os_failure(action: str, path: Path, e: OSError) -> InfraError:
    code = errno.errorcode.get(e.errno, f"errno {e.errno}") if e.errno is not None else type(e).__name__
    reason = e.strerror or str(e)
    return InfraError(f"{path}: {action}: {code} ({reason})".replace("\n", " "))


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so readers see either the old file or the new one, never a mix.

    Raises InfraError (path and errno in one line); the previous file is left as it was.
    """
    data = text.encode("utf-8")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates 0600; reports are read by CI and other users.
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise _os_failure("cannot write", path, e) from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    # The rename is already visible to readers; syncing the directory only makes it survive a
    # power cut, and some filesystems refuse fsync on a directory, so failure here is not fatal.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _snapshot(boot: BootResult) -> BootResult:
    # The runner keeps appending to its own BootResult; copying the mutable parts in the caller's
    # thread means another thread's rewrite never iterates a dict that is changing under it.
    return dataclasses.replace(
        boot, qemu_argv=list(boot.qemu_argv), timings=dict(boot.timings), cases=list(boot.cases)
    )


class RunWriter:
    """Owns a run directory's junit.xml, results.json and manifest.json.

    Every add_boot/update/finish rewrites both reports atomically under one lock, so boots running
    in parallel threads can report case by case and a killed run still leaves valid files.
    Boots are listed in `order` (the plan's boot ids); ids not in it follow in the order first seen.
    """

    def __init__(self, run_dir: Path, run_id: str, started: str, order: Sequence[str] = ()) -> None:
        self.run_dir = run_dir
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
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _os_failure("cannot create run directory", run_dir, e) from e

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

    def update(self, result: BootResult, flush: bool = True) -> None:
        """Replace what is known of this boot (adding it if new) and rewrite the reports.

        With flush=False (a case just finished) the files are rewritten only if the last write is
        older than `min_interval`: rendering every boot's results after every case grows with
        the run, and a killed run then loses at most that interval.
        """
        snapshot = _snapshot(result)
        with self._lock:
            self._store(snapshot)
            if flush or time.monotonic() - self._last_write >= self.min_interval:
                self._write_reports()

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, default=str) + "\n"
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
            overview.write(self.run_dir, run)

    def boots(self) -> list[BootResult]:
        """What has been reported so far, in report order (for the summary and the exit code)."""
        with self._lock:
            return self._ordered()

    def _store(self, boot: BootResult) -> None:
        self._seen.setdefault(boot.boot_id, len(self._seen))
        self._boots[boot.boot_id] = boot

    def _ordered(self) -> list[BootResult]:
        def key(boot: BootResult) -> tuple[int, int]:
            rank = self._rank.get(boot.boot_id)
            return (0, rank) if rank is not None else (1, self._seen[boot.boot_id])

        return sorted(self._boots.values(), key=key)

    def _write_reports(self) -> None:
        boots = self._ordered()
        # Render both before writing either: a rendering bug must not leave them disagreeing.
        results = json.dumps(
            results_json(boots, self.run_id, self.started, self.finished, self.interrupted), indent=2, default=str
        )
        junit = junit_xml(boots, self.run_id)
        atomic_write(self.results_path, results + "\n")
        atomic_write(self.junit_path, junit)
        self._last_write = time.monotonic()


# --- terminal summary --------------------------------------------------------------------------

_COUNT_COLUMNS: tuple[tuple[str, Outcome, str], ...] = (
    ("pass", Outcome.PASS, "green"),
    ("deviation", Outcome.DEVIATION, "bold red"),
    ("n/a", Outcome.NOT_APPLICABLE, "cyan"),
    ("oom", Outcome.OOM_KILLED, "bold red"),
    ("panic", Outcome.PANIC, "bold red"),
    ("timeout", Outcome.TIMEOUT, "yellow"),
    ("error", Outcome.INFRA_ERROR, "yellow"),
)

_OUTCOME_STYLE = {outcome: style for _, outcome, style in _COUNT_COLUMNS}


def _boot_counts(boot: BootResult) -> Counter[Outcome]:
    counts = Counter(r.outcome for r in boot.cases)
    if boot.error:
        # Counted as junit.xml counts it: one errored "boot" testcase.
        counts[Outcome.INFRA_ERROR] += 1
    return counts


def _seconds(boot: BootResult, key: str) -> str:
    value = boot.timings.get(key)
    return "-" if value is None else f"{value:.1f}"


def summary_table(boots: Sequence[BootResult]) -> Table:
    """One row per boot: what ran, how long it took to boot/SSH/probe, and results per outcome."""
    table = Table(title="Boots (seconds from QEMU start)", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)  # fmt: skip
    table.add_column("boot", no_wrap=True)
    table.add_column("release", no_wrap=True)
    for header in ("ready", "ssh", "done"):
        table.add_column(header, justify="right")
    for header, _, _ in _COUNT_COLUMNS:
        table.add_column(header, justify="right")
    for boot in boots:
        release = (boot.kernel.release if boot.kernel is not None else "") or boot.uname or "-"
        counts = _boot_counts(boot)
        cells: list[Text] = [Text(boot.boot_id), Text(release)]
        cells += [Text(_seconds(boot, key)) for key in ("marker", "ssh", "probe")]
        for _, outcome, style in _COUNT_COLUMNS:
            n = counts[outcome]
            cells.append(Text(str(n), style=style if n else "dim"))
        table.add_row(*cells)
    return table


def problems_table(boots: Sequence[BootResult]) -> Table:
    """Every result that is neither pass nor n/a, and every boot error; empty when the run is clean."""
    table = Table(title="Deviations and errors", title_justify="left")
    table.add_column("boot")
    table.add_column("case")
    table.add_column("outcome")
    table.add_column("message", overflow="fold")
    for boot in boots:
        if boot.error:
            style = _OUTCOME_STYLE[Outcome.INFRA_ERROR]
            table.add_row(
                Text(boot.boot_id), Text(BOOT_CASE), Text(Outcome.INFRA_ERROR.value, style), Text(boot.error)
            )
        for r in boot.cases:
            if r.outcome in (Outcome.PASS, Outcome.NOT_APPLICABLE):
                continue
            style = _OUTCOME_STYLE[r.outcome]
            table.add_row(Text(boot.boot_id), Text(r.name), Text(r.outcome.value, style), Text(r.message))
    return table


def print_summary(boots: Sequence[BootResult], console: Console) -> None:
    console.print(summary_table(boots))
    problems = problems_table(boots)
    if problems.row_count:
        console.print(problems)
    totals = outcome_counts(boots)
    line = ", ".join(f"{totals[outcome.value]} {header}" for header, outcome, _ in _COUNT_COLUMNS)
    boot_errors = sum(1 for boot in boots if boot.error)
    if boot_errors:
        line += f"; {boot_errors} boot error{'s' if boot_errors != 1 else ''}"
    console.print(Text(f"{len(boots)} boots: {line}"))


# --- exit code ---------------------------------------------------------------------------------


def exit_code(boots: Sequence[BootResult]) -> int:
    """0 all pass or n/a; 1 findings (deviation, OOM kill, panic); 3 infrastructure problems."""
    outcomes = [r.outcome for boot in boots for r in boot.cases]
    # Infrastructure beats findings: with a boot or case unanswered the results are incomplete, and
    # exit 1 would claim the rest of the matrix was checked and only the findings stood out.
    if any(boot.error for boot in boots) or any(o.is_error for o in outcomes):
        return EXIT_INFRA
    if any(o.is_failure for o in outcomes):
        return EXIT_FINDINGS
    return EXIT_OK
