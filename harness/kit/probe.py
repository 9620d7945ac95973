"""The probe, from the host's side: building it, its catalogue, its command line, and its records.

The probe runs in a guest whose kernel is under test, so what comes back is untrusted: a record may
be cut, garbled, huge, deeply nested or typed wrong, by a broken kernel or a probe rebuilt with a
bug. `parse` is the one reader of a probe line: it bounds the record's size, depth, strings and
numbers, checks the types of the fields the harness reads, and turns anything else into a
`Malformed` with the reason, which becomes that case's error. Nothing a line says can raise.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import REPO
from harness.errors import InfraError
from harness.jsondoc import encodable
from harness.kit import image
from harness.sizes import Memlock
from harness.streams import Line

GUEST_TESTS = REPO / "guest-tests"
IN_GUEST = "/" + image.PROBE_PATH

MAX_DEPTH = 6  # record -> calls -> call -> value is 3; steps and context stay below
MAX_ITEMS = 10_000  # elements of one list, keys of one object
MAX_TEXT = 64 << 10  # characters of one string
_INT_RANGE = (-(1 << 63), 1 << 64)  # what a C long long or an unsigned rlim_t can print
CASE_NAME = re.compile(r"_?[a-z][a-z0-9_]{0,79}")
_REASON_MAX = 200


@dataclass(frozen=True)
class Probe:
    path: Path
    sha256: str
    catalogue: tuple[tuple[str, str], ...]  # (name, description)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.catalogue]


def build(source: Path = GUEST_TESTS) -> Probe:
    """Build the static probe (make is a no-op when it is current) and read its catalogue."""
    try:
        subprocess.run(["make", "-s", "-C", str(source)], check=True, capture_output=True, text=True)
        listing = subprocess.run([str(source / "probe"), "--list"], check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise InfraError(f"cannot build the probe: {e.filename} is missing; install make and gcc") from e
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or "").strip().splitlines()
        raise InfraError(f"building the probe in {source} failed: {detail[-1] if detail else e}") from e
    catalogue = tuple(tuple(line.split("\t", 1)) for line in listing.stdout.splitlines() if "\t" in line)
    path = source / "probe"
    return Probe(path, hashlib.sha256(path.read_bytes()).hexdigest(), catalogue)  # type: ignore[arg-type]


def memlock_arg(limit: Memlock | None) -> str:
    if limit is None:
        return "default"

    def one(v: int | None) -> str:
        return "unlimited" if v is None else str(v)

    return f"{one(limit.soft)}:{one(limit.hard)}"


def argv(limit: Memlock | None, user: str, timeout: float, cases: Sequence[str]) -> list[str]:
    """The probe's command line in the guest: these cases, as `user`, under `limit`."""
    return [IN_GUEST, "run", "--memlock", memlock_arg(limit), "--user", user, "--timeout", f"{timeout:g}", *cases]


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """A line that is not a record the harness can use, and why."""

    reason: str
    case: str | None = None  # the case it names, when it names one by a valid name


_NONE = type(None)
# The fields the harness reads, with the types the probe prints (guest-tests/README.md lists them all);
# every other field is only bounded, and compared by the expectations that name it.
_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "case": (str,),
    "status": (str,),
    "duration_ms": (int,),
    "child_pid": (int,),
    "exit_code": (int,),
    "signal": (int,),
    "signal_name": (str,),
    "kernel_log": (list, _NONE),
    "oom_killed": (bool, _NONE),
    "applicable": (bool,),
    "reason": (str, _NONE),
    "result": (str, _NONE),
    "error": (str, _NONE),
    "calls": (list,),
    "steps": (list, _NONE),
    "signals": (list,),
    "uid": (int,),
    "cap_ipc_lock": (bool,),
    "rlimit_soft": (int, _NONE),
    "rlimit_hard": (int, _NONE),
    "page_size": (int,),
    # measurements: null where the case did not take them (an opt_t in the probe)
    "memtotal_kb": (int, _NONE),
    "size": (int, _NONE),
    "total_pages": (int, _NONE),
    "resident_pages": (int, _NONE),
    "vmlck_before_kb": (int, _NONE),
    "vmlck_after_kb": (int, _NONE),
    "vmlck_end_kb": (int, _NONE),
    "minflt_touch": (int, _NONE),
}
_ITEMS: dict[str, tuple[type, ...]] = {"kernel_log": (str,), "signals": (str,), "calls": (dict,), "steps": (dict,)}
_CALL: dict[str, tuple[type, ...]] = {"call": (str,), "args": (str,), "ret": (int,), "errno": (str, _NONE)}


class _Bad(Exception):
    pass


def parse(line: Line) -> dict[str, Any] | Malformed | None:
    """One line of the probe's stdout: a checked record, a Malformed with the reason, or None (blank)."""
    if line.cut:
        return Malformed(f"a line of {len(line.data) + line.cut} bytes, longer than any record")
    text = line.data.decode("utf-8", "replace").strip()
    if not line.complete:
        return Malformed("the output stopped in the middle of a line" + (f" ({len(text)} bytes)" if text else ""))
    if not text:
        return None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        return Malformed(f"not a JSON record ({_short(str(e) or type(e).__name__)})")
    if not isinstance(doc, dict):
        return Malformed(f"not a JSON object but {_kind(doc)}")
    named = doc.get("case")
    case = named if isinstance(named, str) and CASE_NAME.fullmatch(named) else None
    try:
        record: dict[str, Any] = _clean(doc, 1, "")
        _check(record)
    except _Bad as e:
        return Malformed(_short(str(e)), case)
    if case is None:
        return Malformed(f"case: {_short(repr(named))} is not a case name")
    return record


def _check(record: dict[str, Any]) -> None:
    if record.get("kind") != "case":
        raise _Bad(f"kind: {_short(repr(record.get('kind')))}, not 'case'")
    for key, types in _FIELDS.items():
        if key in record:
            _typed(key, record[key], types)
            for i, item in enumerate(record[key] if key in _ITEMS and record[key] else ()):
                _typed(f"{key}[{i}]", item, _ITEMS[key])
    for i, call in enumerate(record.get("calls") or ()):
        for key, types in _CALL.items():
            if key in call:
                _typed(f"calls[{i}].{key}", call[key], types)
    if record.get("duration_ms", 0) < 0:
        raise _Bad("duration_ms: negative")


def _typed(where: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int in Python, but not in a record: true is no count of pages.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        wanted = " or ".join("null" if t is _NONE else t.__name__ for t in types)
        raise _Bad(f"{where}: {_kind(value)}, not {wanted}")


def _clean(value: Any, depth: int, where: str) -> Any:
    """`value` within the bounds, strings made encodable (a lone surrogate becomes U+FFFD)."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise _Bad(f"{where or 'a string'}: {len(value)} characters, more than {MAX_TEXT}")
        return encodable(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not _INT_RANGE[0] <= value < _INT_RANGE[1]:
            raise _Bad(f"{where}: an integer out of range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"{where}: not a finite number")
        return value
    if depth >= MAX_DEPTH:
        raise _Bad(f"{where}: nested more than {MAX_DEPTH} deep")
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise _Bad(f"{where}: {len(value)} items, more than {MAX_ITEMS}")
        return [_clean(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise _Bad(f"{where or 'the record'}: {len(value)} keys, more than {MAX_ITEMS}")
        out = {}
        for k, v in value.items():
            key = _clean(k, depth, where)
            out[key] = _clean(v, depth + 1, f"{where}.{key}" if where else key)
        return out
    raise _Bad(f"{where}: {_kind(value)}")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a record may hold")


def _kind(value: Any) -> str:
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        _NONE: "null",
    }
    return names.get(type(value), type(value).__name__)


def _short(text: str) -> str:
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"
