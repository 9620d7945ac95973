"""The run's progress board (harness/progress.py): what it says as boots go, the line CI gets per
finished boot, and that it is drawn live only on a terminal."""

from __future__ import annotations

import contextlib
import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from harness.report import progress
from harness.results import BootResult, CaseResult, Outcome

REPO = Path(__file__).resolve().parent.parent


def result(boot_id: str, *outcomes: Outcome, **kw: object) -> BootResult:
    cases = [CaseResult(boot_id, f"c{i}", "64K", "user", o, o.value, None) for i, o in enumerate(outcomes)]
    return BootResult(boot_id, None, 256, cases=cases, **kw)  # type: ignore[arg-type]


def shown(board: progress.Board) -> str:
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    console.print(board)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_board_follows_kernels_boots_and_results() -> None:
    board = progress.Board()
    assert shown(board).startswith("preparing the run")
    board.plan(2, {"a-256M": 4, "b-256M": 4, "c-256M": 4})
    assert "kernels 0/2 ready · boots 0/3 done, 0 running · results 0/12: no results" in shown(board)

    board.kernel_ready()
    board.boot_started("a-256M")
    text = shown(board)
    assert "kernels 1/2 ready" in text and "1 running" in text
    assert "a-256M" in text and "booting" in text and "b-256M" not in text  # waiting boots are not listed

    board.boot_update(result("a-256M", timings={"marker": 2.5}))
    assert "guest up, first case" in shown(board)
    board.boot_update(result("a-256M", Outcome.PASS, Outcome.DEVIATION, timings={"marker": 2.5}, reboots=1))
    text = shown(board)
    assert "2/4 results, at 64K/user" in text and "1 restarts" in text
    assert "results 2/12: 1 pass, 1 deviation" in text

    line = board.boot_done("a-256M")
    assert line == "boot a-256M done (1/3): 1 pass, 1 deviation"
    assert "a-256M" not in shown(board).splitlines()[1:]  # done boots leave the list
    board.boot_started("b-256M")
    board.boot_update(result("b-256M", Outcome.INFRA_ERROR, error="no ready marker after 60 s"))
    assert board.boot_done("b-256M") == "boot b-256M done (2/3): 1 error; no ready marker after 60 s"


def test_a_boot_held_by_admission_says_so() -> None:
    board = progress.Board()
    held = {"b-256M"}
    board.plan(1, {"a-256M": 1, "b-256M": 1}, lambda: held)
    board.boot_started("a-256M")
    board.boot_started("b-256M")
    text = shown(board)
    assert re.search(r"a-256M +booting \d+s", text) and re.search(r"b-256M +waiting for memory", text)
    held.clear()
    assert re.search(r"b-256M +booting \d+s", shown(board))


def test_guest_text_on_the_board_is_made_safe() -> None:
    board = progress.Board()
    board.plan(1, {"evil\x1b]0;title\x07-256M": 1})
    board.boot_started("evil\x1b]0;title\x07-256M")
    text = shown(board)
    assert "\x1b" not in text and "\\x1b]0;title\\x07" in text


def test_the_board_is_drawn_live_on_a_terminal_only() -> None:
    board = progress.Board()
    board.plan(1, {"a-256M": 1})
    plain = Console(file=io.StringIO(), width=120)  # a file, as in CI
    with progress.shown(board, plain):
        plain.print("a log line")
    assert plain.file.getvalue() == "a log line\n"  # type: ignore[attr-defined]

    tty = Console(file=io.StringIO(), width=120, force_terminal=True)
    with progress.shown(board, tty):
        tty.print("a log line")
    out = tty.file.getvalue()  # type: ignore[attr-defined]
    assert "a log line" in out and "kernels 0/1 ready" in out


@pytest.mark.integration
def test_a_run_on_a_terminal_shows_the_board_live_and_in_a_file_prints_done_lines(tmp_path: Path) -> None:
    """`harness run` under a real pseudo-terminal (Debian 12's kernel in QEMU, three cases, two users),
    then with stdout a file, as in CI."""
    m = tmp_path / "m.yaml"
    m.write_text(
        "kernels:\n  - debian: bookworm\nmemlock: [64K]\nusers: [user, root]\n"
        "cases: [limits, map_locked_over, mlock_over]\n"
    )
    argv = [sys.executable, "-m", "harness", "run", "--matrix", str(m), "--results", str(tmp_path / "r"), "--jobs", "1"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdout is the terminal
        os.chdir(REPO)
        os.execve(argv[0], argv, {**os.environ, "COLUMNS": "120", "LINES": "40"})
    out = b""
    with contextlib.suppress(OSError):  # EIO once the child has gone
        while chunk := os.read(fd, 65536):
            out += chunk
    _, status = os.waitpid(pid, 0)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode("utf-8", "replace"))
    assert os.waitstatus_to_exitcode(status) == 0, screen[-3000:]
    assert "kernels 1/1 ready · boots 0/1 done, 1 running · results 0/6" in screen
    assert re.search(r"bookworm-256M +booting \d+s", screen)
    assert "kernels 1/1 ready · boots 1/1 done, 0 running · results 6/6: 6 pass" in screen

    plain = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "boot bookworm-256M done (1/1): 6 pass" in plain.stdout
    assert "\x1b" not in plain.stdout and "ready ·" not in plain.stdout
