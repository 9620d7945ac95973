"""How the harness ends when it is told to: SIGINT and SIGTERM (finished results are kept), and a
reader of its output that went away (`| head`, `| less` quit early)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from rich.console import Console as RichConsole


class Interrupted(BaseException):
    """SIGTERM, delivered like Ctrl-C so every `finally` and context manager runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM raises Interrupted in the main thread."""
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Console(RichConsole):
    """rich's console, but a reader that left is the harness's to handle: rich would exit with
    status 1 on its own, which from the harness means "some kernels deviate"."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError()


def reader_left() -> int:
    """stdout's reader went away: end quietly, as git does when SIGPIPE kills it. Python ignores
    SIGPIPE, so the write raised instead; what is still buffered for stdout would raise again when
    the interpreter flushes it on exit, so stdout now goes nowhere. The exit code is SIGPIPE's."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE
