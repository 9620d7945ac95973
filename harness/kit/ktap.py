"""KTAP (and the TAP 13 kselftest printed before it) read from a test's output; pure.

What Documentation/dev-tools/ktap.rst specifies and kselftest programs print: a version line
("KTAP version 1" / "TAP version 13"), a plan ("1..N"), result lines ("ok 3 name # SKIP why",
"not ok 4 name"), subtests indented four spaces under the line that ends them (KTAP) and "#"
diagnostics; "Bail out!" ends a run. Everything else (a test's own chatter, a program that
predates KTAP and prints none) is kept as diagnostics. The output is a guest's: every line is
bounded, names are made printable, and a test that died mid-output yields what it printed
and says how many planned results are missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_NAME = 200
MAX_LINES = 20_000  # of one program's output; the rest is ignored and said so
MAX_DIAGNOSTICS = 40  # kept per test, the last ones

_RESULT = re.compile(r"(not ok|ok)\b\s*(\d+)?\s*-?\s*([^#]*?)\s*(?:#\s*(.*))?$")
_PLAN = re.compile(r"1\.\.(\d+)\s*(?:#.*)?$")
_VERSION = re.compile(r"(KTAP version 1|TAP version 1[34])\s*$")


@dataclass
class Result:
    """One result line: a test, or a subtest of the test whose lines it is indented under."""

    name: str
    number: int | None
    ok: bool
    directive: str = ""  # SKIP, TODO, XFAIL (KTAP's directives), upper-case; "" for none
    reason: str = ""  # the directive's text
    subtests: list[Result] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """pass, fail, skip or xfail (an expected failure: kselftest's XFAIL, TAP's TODO)."""
        if self.directive == "SKIP":
            return "skip"
        if self.directive in ("XFAIL", "TODO") and not self.ok:
            return "xfail"
        return "pass" if self.ok else "fail"


@dataclass
class Document:
    """What a program printed, read as KTAP."""

    version: str = ""  # "" when the program printed no version line (not KTAP at all, perhaps)
    plan: int | None = None
    results: list[Result] = field(default_factory=list)
    bailed_out: str | None = None  # the reason after "Bail out!"
    diagnostics: list[str] = field(default_factory=list)  # lines outside any result, the last ones
    truncated: bool = False

    @property
    def missing(self) -> int:
        """Planned results that never came (the program died, hung or bailed out)."""
        return max(0, (self.plan or 0) - len(self.results))


def _clean(text: str, limit: int = MAX_NAME) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _level(line: str) -> tuple[int, str]:
    """Nesting depth (four spaces each; a tab counts as four) and the line without it."""
    expanded = line.replace("\t", "    ")
    stripped = expanded.lstrip(" ")
    return (len(expanded) - len(stripped)) // 4, stripped


def parse(text: str) -> Document:
    """The results of one program's output, subtests under their parents."""
    doc = Document()
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        lines, doc.truncated = lines[:MAX_LINES], True
    # Results seen at each depth, waiting for the line one level up that ends them.
    pending: dict[int, list[Result]] = {}
    notes: dict[int, list[str]] = {}
    for raw in lines:
        depth, line = _level(raw.rstrip())
        if not line:
            continue
        if depth == 0 and _VERSION.match(line) and not doc.version:
            doc.version = line
            continue
        if line.startswith("Bail out!"):
            doc.bailed_out = _clean(line[len("Bail out!") :].strip())
            break
        if m := _PLAN.match(line):
            if depth == 0 and doc.plan is None:
                doc.plan = int(m.group(1))
            continue
        if m := _RESULT.match(line):
            ok, number, name, directive = m.group(1) == "ok", m.group(2), m.group(3), m.group(4) or ""
            word, _, reason = directive.strip().partition(" ")
            known = word.upper() in ("SKIP", "TODO", "XFAIL")
            text = reason.strip() if known else directive.strip()
            result = Result(
                _clean(name.strip()) or f"test {number or '?'}",
                int(number) if number else None,
                ok,
                word.upper() if known else "",
                _clean(text),
            )
            result.subtests = pending.pop(depth + 1, [])
            result.diagnostics = notes.pop(depth + 1, [])[-MAX_DIAGNOSTICS:]
            for deeper in [d for d in pending if d > depth + 1]:  # a level skipped: keep, do not lose
                result.subtests.extend(pending.pop(deeper))
            pending.setdefault(depth, []).append(result)
            continue
        notes.setdefault(depth, []).append(_clean(line.removeprefix("#").strip(), 400))
    doc.results = pending.pop(0, [])
    # A program that died mid-subtests leaves results no parent line closed: keep them at the top.
    for depth in sorted(pending):
        doc.results.extend(pending[depth])
    doc.diagnostics = [n for d in sorted(notes) for n in notes[d]][-MAX_DIAGNOSTICS:]
    return doc
