"""Command line: arguments -> request -> handler. The only place that maps exceptions to exit codes.

Exit codes: 0 every observation as expected, 1 some deviated, 2 bad input, 3 infrastructure
error, 130/143 interrupted by SIGINT/SIGTERM (finished results kept).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from rich.console import Console

from harness import guest, image, kernels, matrix, report, run
from harness.cache import cache_dir, secret
from harness.errors import InfraError, UserError

EXIT_USAGE = 2
EXIT_INFRA = 3


class Interrupted(BaseException):
    """SIGTERM, delivered like Ctrl-C so every `finally` and context manager runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--cache", type=Path, help="cache directory (default: HARNESS_CACHE or ~/.cache/harness)")
    common.add_argument("--mirror", help="Debian mirror URL (default: HARNESS_DEBIAN_MIRROR or the host's apt sources)")
    common.add_argument("--insecure", action="store_true", help="accept unverified indexes and packages")
    p = _Parser(prog="harness", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="boot the matrix and run the probe", parents=[common])
    run.add_argument("--matrix", type=Path, help="matrix YAML file (default: the embedded default matrix)")
    run.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="VMs at once (default: host cores)")
    run.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    run.add_argument("--print-default-matrix", action="store_true", help="print the embedded matrix and exit")

    k = sub.add_parser("kernels", help="resolve, fetch or list kernels")
    ksub = k.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for name, text in (("resolve", "show what a matrix's kernels resolve to"),
                       ("fetch", "download and extract a matrix's kernels")):  # fmt: skip
        a = ksub.add_parser(name, help=text, parents=[common])
        a.add_argument("--matrix", type=Path, help="matrix YAML file (default: the embedded default matrix)")
    ksub.add_parser("list", help="list kernels in the cache", parents=[common])

    img = sub.add_parser("image", help="guest images")
    isub = img.add_subparsers(dest="action", required=True, parser_class=_Parser)
    b = isub.add_parser("build", help="build the guest image of every kernel in a matrix", parents=[common])
    b.add_argument("--matrix", type=Path, help="matrix YAML file (default: the embedded default matrix)")

    sub.add_parser("cases", help="list the probe's cases", parents=[common])
    return p


def _matrix(path: Path | None) -> tuple[matrix.Matrix, str]:
    if path is None:
        return matrix.load_default(), matrix.default_text()
    mx = matrix.load(path)
    return mx, path.read_text()


def _options(args: argparse.Namespace, cache: Path) -> run.Options:
    jobs = getattr(args, "jobs", 1)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give at least 1")
    return run.Options(jobs=jobs, results=getattr(args, "results", Path("results")), cache=cache,
                   mirror=args.mirror, insecure=args.insecure)  # fmt: skip


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    if args.print_default_matrix:
        console.file.write(matrix.default_text())
        return 0
    mx, text = _matrix(args.matrix)
    options = _options(args, _cache(args))
    live = run.Live()
    try:
        run_dir, boots = run.execute(mx, options, lambda m: console.print(m, highlight=False), live, text)
    except (KeyboardInterrupt, Interrupted):
        console.print("[bold red]interrupted[/]: finished results were kept in results/latest")
        raise
    report.print_summary(boots, console)
    console.print(f"results: {run_dir}")
    return report.exit_code(boots)


def cmd_kernels(args: argparse.Namespace, console: Console) -> int:
    cache = _cache(args)
    if args.action == "list":
        for k in kernels.list_cached(cache):
            _line(console, k.label, k.release, k.version or "-", k.sha256[:16], k.source)
        return 0
    mx, _ = _matrix(args.matrix)
    options = _options(args, cache)
    source = run.Kernels(options, console.print)
    for spec in dict.fromkeys(mx.kernels):
        resolved = source.resolve(spec)
        if args.action == "resolve":
            if resolved is None:
                _line(console, spec.label, "path", str(spec))
            else:
                debs = ", ".join(f"{d.package}={d.version}" for d in resolved.debs)
                _line(console, spec.label, resolved.suite, resolved.abi, debs)
        else:
            k = source.fetch(spec, resolved)
            pvh = "PVH vmlinux" if k.vmlinux else "bzImage only"
            _line(console, spec.label, k.release, k.version or "-", k.sha256[:16], pvh)
    return 0


def cmd_image(args: argparse.Namespace, console: Console) -> int:
    cache = _cache(args)
    mx, _ = _matrix(args.matrix)
    options = _options(args, cache)
    probe = run.build_probe()
    key = guest.client_key(cache)
    base = image.base_entries(probe.path, guest.public_line(key))
    source = run.Kernels(options, console.print)
    for spec in dict.fromkeys(mx.kernels):
        k = source.fetch(spec, source.resolve(spec))
        img = image.build(base, run.guest_modules(k), secret(cache, "guest-host-key"), cache / "images")
        _line(console, spec.label, k.release, str(img.path), " ".join(img.modules))
    return 0


def cmd_cases(args: argparse.Namespace, console: Console) -> int:
    for name, description in run.build_probe().catalogue:
        _line(console, name, description)
    return 0


def _line(console: Console, *fields: str) -> None:
    """Tab-separated listings go out as plain text, so `cut -f1` works (rich would expand tabs)."""
    console.file.write("\t".join(fields) + "\n")


def _cache(args: argparse.Namespace) -> Path:
    if args.cache is not None:
        try:
            args.cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--cache {args.cache}: cannot create it: {e.strerror}") from e
        return Path(args.cache)
    return cache_dir()


HANDLERS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "run": cmd_run,
    "kernels": cmd_kernels,
    "image": cmd_image,
    "cases": cmd_cases,
}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    # Logs (CI, files) have no width; rich would assume 80 columns and squeeze the tables.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    err = Console(stderr=True, width=1000)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = _parser().parse_args(argv)
        return HANDLERS[args.command](args, console)
    except UserError as e:
        err.print(f"harness: error: {e}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_USAGE
    except InfraError as e:
        err.print(f"harness: infrastructure error: {e}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_INFRA
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Interrupted as e:
        return 128 + e.signum
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
