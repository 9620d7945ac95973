"""Command line: arguments -> request -> handler. The only place that maps exceptions to exit codes
(args.EXIT_CODES; the traceback of an internal error is in a file named on stderr)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from rich.console import Console

from harness.cache import crashes
from harness.cli import signals
from harness.cli.args import parser
from harness.cli.bisecting import cmd_bisect, cmd_bisect_step
from harness.cli.commands import (
    cmd_cache,
    cmd_cases,
    cmd_compare,
    cmd_history,
    cmd_image,
    cmd_judge,
    cmd_kernels,
    cmd_merge,
    cmd_replay,
    cmd_run,
)
from harness.errors import EXIT_INFRA, EXIT_INTERNAL, EXIT_USAGE, InfraError, UserError
from harness.report import terminal

HANDLERS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "run": cmd_run,
    "kernels": cmd_kernels,
    "image": cmd_image,
    "cases": cmd_cases,
    "cache": cmd_cache,
    "merge": cmd_merge,
    "compare": cmd_compare,
    "replay": cmd_replay,
    "judge": cmd_judge,
    "history": cmd_history,
    "bisect": cmd_bisect,
    "bisect-step": cmd_bisect_step,
}


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    # Logs (CI, files) have no width; rich would assume 80 columns and squeeze the tables.
    console = console or (signals.Console() if sys.stdout.isatty() else signals.Console(width=160))
    err = terminal.printer(Console(stderr=True, width=1000))
    with signals.sigterm_interrupts():
        return _handle(argv, console, err)


def _handle(argv: Sequence[str] | None, console: Console, err: Callable[[str], None]) -> int:
    try:
        args = parser().parse_args(argv)
        return HANDLERS[args.command](args, console)
    except UserError as e:
        err("harness: error: " + " ".join(str(e).split("\n")))  # one line, whatever the message holds
        return EXIT_USAGE
    except InfraError as e:
        err(f"harness: infrastructure error: {e}")
        return EXIT_INFRA
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except signals.Interrupted as e:
        return 128 + e.signum
    except BrokenPipeError:
        return signals.reader_left()
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback in a file, its own exit code
        err(
            f"harness: internal error (a bug in the harness, please report it): {type(e).__name__}: {e}; "
            f"traceback in {crashes.report()}"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
