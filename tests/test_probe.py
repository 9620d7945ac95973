"""harness/probe.py: the one reader of probe lines. Whatever a line says, it is a checked record, a
Malformed with the reason, or nothing: parse never raises."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from harness.kit import probe
from harness.kit.probe import Malformed
from harness.streams import Line

GUEST_TESTS = Path(__file__).resolve().parent.parent / "guest-tests"

GOOD = {
    "kind": "case",
    "case": "mlock_over",
    "status": "ok",
    "duration_ms": 5,
    "result": "ENOMEM",
    "calls": [{"call": "mlock", "args": "len=69632", "ret": -1, "errno": "ENOMEM"}],
    "kernel_log": [],
    "oom_killed": False,
    "rlimit_soft": 65536,
    "size": None,
}


def line(text: str | bytes, **kw: object) -> Line:
    return Line(text.encode() if isinstance(text, str) else text, **kw)  # type: ignore[arg-type]


def test_a_record_comes_back_as_it_was_printed() -> None:
    assert probe.parse(line(json.dumps(GOOD))) == GOOD
    assert probe.parse(line("   ")) is None


@pytest.mark.parametrize(
    ("text", "reason", "case"),
    [
        ('{"kind":"case","case":"mlock_over","duration_ms":"5"}', "duration_ms: a string, not int", "mlock_over"),
        (
            '{"kind":"case","case":"mlock_over","kernel_log":5}',
            "kernel_log: an integer, not list or null",
            "mlock_over",
        ),
        (
            '{"kind":"case","case":"mlock_over","kernel_log":["ok",7]}',
            "kernel_log[1]: an integer, not str",
            "mlock_over",
        ),
        ('{"kind":"case","case":"mlock_over","duration_ms":true}', "duration_ms: true or false, not int", "mlock_over"),
        (
            '{"kind":"case","case":"mlock_over","calls":[{"call":1}]}',
            "calls[0].call: an integer, not str",
            "mlock_over",
        ),
        ('{"kind":"case","case":"mlock_over","duration_ms":-1}', "duration_ms: negative", "mlock_over"),
        ('{"kind":"case","case":"mlock_over","size":' + "9" * 5000 + "}", "not a JSON record", None),
        ('{"kind":"case","case":"a","x":' + "[" * 100_000 + "]" * 100_000 + "}", "not a JSON record", None),
        ('{"kind":"case","case":"a","x":' + "[" * 20 + "]" * 20 + "}", "nested more than 6 deep", "a"),
        ('{"kind":"case","case":"a","x":1e999}', "x: not a finite number", "a"),
        ('{"kind":"case","case":"a","x":NaN}', "not a JSON record (NaN is not a number", None),
        ('{"kind":"case","case":"a","x":' + str(1 << 64) + "}", "x: an integer out of range", "a"),
        ('{"kind":"report","case":"a"}', "kind: 'report', not 'case'", "a"),
        ('{"kind":"case","case":"../../etc"}', "case: '../../etc' is not a case name", None),
        ('{"kind":"case"}', "case: None is not a case name", None),
        ("[1, 2]", "not a JSON object but a list", None),
        ("\x1b]0;pwned\x07 hello", "not a JSON record", None),
    ],
)
def test_what_is_not_a_record_says_why(text: str, reason: str, case: str | None) -> None:
    got = probe.parse(line(text))
    assert isinstance(got, Malformed), got
    assert reason in got.reason and got.case == case
    assert len(got.reason) <= 200


def test_strings_are_bounded_and_made_encodable() -> None:
    got = probe.parse(line('{"kind":"case","case":"a","status":"weird\\ud800","reason":"\\udcff"}'))
    assert isinstance(got, dict) and got["status"] == "weird\ufffd" and got["reason"] == "\ufffd"
    got.__repr__().encode("utf-8")  # nothing left that UTF-8 cannot hold
    long = json.dumps({"kind": "case", "case": "a", "reason": "x" * (probe.MAX_TEXT + 1)})
    assert probe.parse(line(long)) == Malformed(f"reason: {probe.MAX_TEXT + 1} characters, more than 65536", "a")
    many = json.dumps({"kind": "case", "case": "a", "signals": ["SIGSEGV"] * (probe.MAX_ITEMS + 1)})
    assert probe.parse(line(many)) == Malformed("signals: 10001 items, more than 10000", "a")


def test_cut_and_unfinished_lines_are_never_records() -> None:
    cut = probe.parse(Line(json.dumps(GOOD).encode()[:100], cut=2_000_000))
    assert isinstance(cut, Malformed) and "longer than any record" in cut.reason
    unfinished = probe.parse(Line(json.dumps(GOOD).encode(), complete=False))
    assert isinstance(unfinished, Malformed) and "stopped in the middle of a line" in unfinished.reason


def test_random_bytes_never_raise() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        if rng.random() < 0.3:
            data = b'{"kind":"case","case":"a",' + data + b"}"
        got = probe.parse(Line(data.replace(b"\n", b" "), complete=rng.random() < 0.9))
        assert got is None or isinstance(got, Malformed | dict)


SMAPS = """7f0000000000-7f0000004000 rw-p 00000000 00:00 0
Size:                 16 kB
Rss:                  16 kB
Locked:               16 kB
{flags}7f0000004000-7f0000008000 rw-p 00000000 00:00 0
Size:                 16 kB
Locked:                0 kB
"""


@pytest.mark.parametrize(
    ("flags", "lo"), [("VmFlags: rd wr mr mw me lo ac \n", 1), ("VmFlags: rd wr mr mw me ac\n", 0), ("", -1)]
)
def test_smaps_without_vmflags_leaves_lo_unknown(tmp_path: Path, flags: str, lo: int) -> None:
    """The probe's own smaps parser (guest-tests/procfs.c) on the text of a kernel with VmFlags
    (3.8 on) and of one without: `lo` is 1, 0, or unknown (-1), never false for want of the line;
    nor is the Locked size 0 for want of its line."""
    driver = tmp_path / "smaps.c"
    driver.write_text(
        '#include "procfs.h"\n#include <stdio.h>\n#include <stdlib.h>\n'
        "int main(int argc, char **argv) {\n"
        "    static char text[8192];\n    text[fread(text, 1, sizeof(text) - 1, stdin)] = 0;\n"
        "    struct smaps_info si;\n    smaps_parse(text, strtoull(argv[argc - 1], NULL, 16), &si);\n"
        '    printf("%d %d %d %lld %d\\n", si.found, si.flags, smaps_lo_of(&si), si.locked_kb, si.has_locked);\n'
        "    return 0;\n}\n"
    )
    exe = tmp_path / "smaps"
    subprocess.run(
        ["gcc", "-Wall", "-Werror", "-I", str(GUEST_TESTS), "-o", str(exe), str(driver), str(GUEST_TESTS / "procfs.c")],
        check=True,
    )

    def parse(addr: str, text: str = SMAPS.format(flags=flags)) -> str:
        return subprocess.run([str(exe), addr], input=text, capture_output=True, text=True, check=True).stdout.strip()

    assert parse("7f0000001000") == f"1 {int(bool(flags))} {lo} 16 1"
    assert parse("7f0000009000") == "0 0 0 0 0"  # no entry: not locked, as before
    # 2.6.20 and 2.6.32 print no Locked line either: how much is locked is unknown, not 0.
    assert parse("7f0000001000", SMAPS.format(flags="").replace("Locked:               16 kB\n", "")) == "1 0 -1 0 0"
