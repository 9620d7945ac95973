"""harness/terminal.py: nothing a guest or a file says reaches the terminal as a control sequence or
as rich markup, whether stdout is a terminal or a log file."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from harness.report import terminal
from harness.results import BootResult, CaseResult, KernelInfo, Outcome

HOSTILE = "ok\x1b[2J\x1b]0;owned\x07\x1b]8;;http://x\x1b\\link\x9b31m \u202eevil\r[bold]loud[/] \ud800 é\ttab"


def test_safe_shows_controls_as_escapes_and_keeps_text() -> None:
    shown = terminal.safe(HOSTILE)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown and "\r" not in shown
    assert "\\x1b[2J" in shown and "\\x07" in shown and "\\u202e" in shown and "\\x0d" in shown
    assert "\ufffd" in shown and "é" in shown and "\ttab" in shown and "[bold]loud[/]" in shown
    shown.encode("utf-8")


@pytest.mark.parametrize("tty", [True, False])
def test_printed_lines_and_tables_carry_no_raw_escape_and_no_markup(tty: bool) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=tty, width=200, color_system="standard" if tty else None)
    terminal.printer(console)(f"results: r[/]x {HOSTILE}")
    kernel = KernelInfo("k\x1b[31m", "6.1\x1b]0;t\x07", None, None, "ab" * 32, "path:/k")
    boot = BootResult(
        "b-256M",
        kernel,
        256,
        error="serial:\n\x1b[31mKernel panic\x1b[0m",
        timings={"marker": 1.0},
        cases=[CaseResult("b-256M", "a", "64K", "user", Outcome.DEVIATION, HOSTILE, None)],
    )
    terminal.print_summary([boot], console)
    text = out.getvalue()
    guest_escapes = [s for s in ("\x1b[2J", "\x1b]", "\x07", "\x9b", "\r", "\x1b[31m") if s in text]
    assert guest_escapes == []
    assert "r[/]x" in text and "[bold]loud[/]" in text  # printed as written, not taken as markup


# --- boots that did not start: one line per reason, not a row per case ------------------------

NOTHING = "the guest printed nothing in 20 s under kvm; --accel tcg"
EXCERPT = "[    0.000000] Linux version 6.1.0\n...\n[    1.250000] serial excerpt line"


def unstarted_boot(
    boot_id: str, error: str = f"{NOTHING}\n{EXCERPT}", outcome: Outcome = Outcome.TIMEOUT, cases: int = 61
) -> BootResult:
    """A boot whose guest never became ready: its failure's first line copied into every case (boot.fill)."""
    first = error.splitlines()[0]
    results = [CaseResult(boot_id, f"case_{i:02d}", "64K", "user", outcome, first, None) for i in range(cases)]
    return BootResult(boot_id, None, 256, error=error, cases=results)


def lost_boot(boot_id: str = "e-256M") -> BootResult:
    """A boot that started (its guest was ready, SSH connected) and then gave up on its guest."""
    error = f"gave up after losing the guest 3 times; last: SSH gone\n{EXCERPT}"
    results = [CaseResult(boot_id, f"case_{i:02d}", "64K", "user", Outcome.PASS, "ok", None) for i in range(58)]
    results += [
        CaseResult(boot_id, f"case_{i:02d}", "64K", "user", Outcome.INFRA_ERROR, "not run: gave up", None)
        for i in range(58, 61)
    ]
    return BootResult(boot_id, None, 256, timings={"marker": 3.0, "ssh": 5.5}, error=error, cases=results)


def summary(boots: list[BootResult], verbose: bool = False) -> str:
    out = io.StringIO()
    terminal.print_summary(boots, Console(file=out, width=250), verbose=verbose)
    return out.getvalue()


def test_boots_that_did_not_start_are_one_line_and_no_rows() -> None:
    boots = [unstarted_boot(f"{x}-256M") for x in "abcd"] + [lost_boot()]
    text = summary(boots)
    lines = text.splitlines()
    said = [line for line in lines if "did not start" in line]
    assert said == [f"4 boots did not start: {NOTHING} (boots: a-256M, b-256M, c-256M +1; 244 results: timeout)"]
    # None of their cases has a row, and their serial excerpt is printed nowhere.
    assert not [line for line in lines if "│" in line and any(f"{x}-256M" in line for x in "abcd")]
    assert "serial excerpt line" not in text and len(text.splitlines()) < 30
    # The boot that started and then lost its guest is still listed per case, its error as one line.
    assert [line.split("│")[1].strip() for line in lines if "e-256M" in line and "│" in line] == [
        "boot",
        "case_58",
        "case_59",
        "case_60",
    ]
    assert "5 boots: 58 pass, 0 deviation, 0 n/a, 0 oom, 0 panic, 244 timeout, 3 error; 5 boot errors" in text


def test_boots_that_did_not_start_are_grouped_by_the_first_line_of_their_error() -> None:
    panic = "guest kernel panicked while booting"
    boots = [
        unstarted_boot("a-256M"),
        unstarted_boot("b-256M", f"{panic}\nKernel panic - not syncing", Outcome.PANIC, cases=2),
        unstarted_boot("c-256M", f"{NOTHING}\nother serial lines"),
        BootResult("d-256M", None, 256, error="kernel not found: bookworm 6.1.0-99"),  # nothing was planned in it
    ]
    said = [line for line in summary(boots).splitlines() if "did not start" in line]
    assert said == [
        f"2 boots did not start: {NOTHING} (boots: a-256M, c-256M; 122 results: timeout)",
        f"1 boot did not start: {panic} (boot: b-256M; 2 results: panic)",
        "1 boot did not start: kernel not found: bookworm 6.1.0-99 (boot: d-256M)",
    ]


def test_verbose_lists_every_result_and_each_boot_error_once() -> None:
    boots = [unstarted_boot(f"{x}-256M") for x in "abcd"] + [lost_boot()]
    text = summary(boots, verbose=True)
    assert "did not start" not in text  # the table has it all
    assert text.count("serial excerpt line") == 5  # in each boot's error row, not per case
    assert len([line for line in text.splitlines() if "│ case_" in line and NOTHING in line]) == 244


def test_no_view_promises_serial_lines_that_are_not_there() -> None:
    """A producer that says "(last serial lines below)" and gives none: the views show the first line."""
    dangling = "no ready marker within 20s (last serial lines below)"
    for verbose in (False, True):
        text = summary([unstarted_boot("a-256M", dangling, cases=2)], verbose=verbose)
        assert "below" not in text and "no ready marker within 20s" in text


def test_lines_of_boots_that_did_not_start_are_safe() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=250, color_system="standard")
    boot = unstarted_boot("x\x1b]0;t\x07-256M", f"{HOSTILE}\n\x1b[31mKernel panic\x1b[0m", cases=1)
    terminal.print_summary([boot], console)
    line = next(line for line in out.getvalue().splitlines() if "did not start" in line)
    assert "\x1b]" not in out.getvalue() and "\x07" not in out.getvalue() and "\x9b" not in out.getvalue()
    assert "x\\x1b]0;t\\x07-256M" in line and "[bold]loud[/]" in line and "\\u202eevil" in line
