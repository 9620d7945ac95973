"""harness/terminal.py: nothing a guest or a file says reaches the terminal as a control sequence or
as rich markup, whether stdout is a terminal or a log file."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from harness import terminal
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
    boot = BootResult("b-256M", kernel, 256, error="serial:\n\x1b[31mKernel panic\x1b[0m",
                      cases=[CaseResult("b-256M", "a", "64K", "user", Outcome.DEVIATION, HOSTILE, None)])  # fmt: skip
    terminal.print_summary([boot], console)
    text = out.getvalue()
    guest_escapes = [s for s in ("\x1b[2J", "\x1b]", "\x07", "\x9b", "\r", "\x1b[31m") if s in text]
    assert guest_escapes == []
    assert "r[/]x" in text and "[bold]loud[/]" in text  # printed as written, not taken as markup
