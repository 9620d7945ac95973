"""A run's results file, results.json.gz: every observation with its verdict, and its codec.

`results_json` is the document (docs/results-schema.md), `boot_entry` and `joined` write it as gzip
members (a boot compressed once per change, the file joined from them), and `read_results` reads
it back, bounded and checked field by field, for merge, compare, replay, judging and history: an
older run's plain results.json too. The run directory's owner (rundir) writes it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from harness.errors import UserError
from harness.jsondoc import Doc, load
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord, outcome_counts

SCHEMA_VERSION = 1  # results.json "schema"; bump on any incompatible change
# Compact JSON, gzipped: every observation of 90 boots is 136 MB as indented text and 9 MB so.
RESULTS_FILE = "results.json.gz"
PLAIN_RESULTS_FILE = "results.json"  # what runs before the compressed one wrote; read, never written
MAX_RESULTS_BYTES = 1 << 30  # what it holds: a 90-boot run's is 90 MB


def results_file(run_dir: Path) -> Path:
    """The run's results file: results.json.gz, or an older run's results.json when it has only that."""
    plain = run_dir / PLAIN_RESULTS_FILE
    return plain if plain.is_file() and not (run_dir / RESULTS_FILE).exists() else run_dir / RESULTS_FILE


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


# Each gzip member stands alone and readers join them (RFC 1952, 2.2): a boot is compressed once per
# change, and a rewrite of the file joins what is already compressed.
def _packed(text: str) -> bytes:
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


_COMMA = _packed(",")


def boot_entry(boot: BootResult) -> bytes:
    """One boot as it stands in results.json's "boots" list, compressed."""
    # ensure_ascii (json's default) keeps the text ASCII, every control character escaped.
    return _packed(json.dumps(_boot_json(boot), separators=(",", ":"), default=str))


def joined(doc: dict[str, Any], entries: Sequence[bytes]) -> bytes:
    """results.json.gz: json.dumps(doc with its boots) compact, from boots compressed apart."""
    head = json.dumps({**doc, "boots": []}, separators=(",", ":"), default=str)
    # "boots" is the last key: its "[]" and the closing brace end the text.
    joined = [_packed(head[: -len("]}")])]
    for i, entry in enumerate(entries):
        joined += [_COMMA, entry] if i else [entry]
    return b"".join([*joined, _packed("]}\n")])


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
    """Read a run's results (the run directory, its results.json.gz, or an older run's results.json)
    back into records.

    Raises UserError naming the file and the field when it is not a results file this harness wrote.
    """
    file = results_file(path) if path.is_dir() else path
    what = "a results.json the harness wrote"
    if not file.exists():
        raise UserError(f"{file}: no such file; give a run directory (results/<run-id>) or its {RESULTS_FILE}")
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


def document(run_dir: Path) -> Any:
    """The run's results as the JSON document, unchecked: for scripts that read fields themselves."""
    return load(results_file(run_dir), MAX_RESULTS_BYTES, "results.json")
