"""Command line: arguments -> request -> handler. The only place that maps exceptions to exit codes
(EXIT_CODES below; the traceback of an internal error is in a file named on stderr)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from harness import (
    accel,
    bisect,
    compare,
    crashes,
    history,
    kernels,
    kit,
    matrix,
    merge,
    probe,
    progress,
    prune,
    replay,
    run,
    rundir,
    signals,
    sources,
    terminal,
)
from harness.cache import cache_dir, disk_size, usage
from harness.errors import EXIT_INFRA, EXIT_INTERNAL, EXIT_USAGE, InfraError, UserError
from harness.live import Live
from harness.results import exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


DESCRIPTION = """Boot Linux kernels in QEMU and record how each behaves for mmap(MAP_LOCKED), mlock,
mlock2, mlockall and their relatives, under chosen RLIMIT_MEMLOCK limits and users.

Start with `harness run`: it runs the embedded default matrix (four Debian kernels) and writes
junit.xml, results.json, report.html and summary.md to results/<run-id>/. `harness run --matrix
FILE` runs your own; `harness COMMAND --help` says more about each command."""
EXIT_CODES = """exit codes: 0 every observation as expected, 1 some deviated, 2 bad input, 3 infrastructure
error, 70 internal error (a bug), 130/143 interrupted (finished results are kept), 141 the reader of
its output went away"""


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--cache", type=Path, help="cache directory (default: HARNESS_CACHE or ~/.cache/harness)")
    common.add_argument("--mirror", help="Debian mirror URL (default: HARNESS_DEBIAN_MIRROR or the host's apt sources)")
    common.add_argument("--insecure", action="store_true", help="accept unverified indexes and packages")
    p = _Parser(prog="harness", description=DESCRIPTION, epilog=EXIT_CODES,
                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="boot the matrix and run the probe", parents=[common])
    run.add_argument("--matrix", type=Path, help="matrix YAML file (default: the embedded default matrix)")
    run.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="VMs at once (default: host cores)")
    run.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    run.add_argument("--verbose", action="store_true", help="list every deviation and error, not one line per finding")
    run.add_argument("--print-default-matrix", action="store_true", help="print the embedded matrix and exit")
    run.add_argument("--shard", type=_shard, metavar="I/N", help="run the I-th of N deterministic slices of the boots")
    _history_option(run)

    m = sub.add_parser("merge", help="merge the run directories of shards into one run", parents=[common])
    m.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR", help="run directories of `run --shard`")
    m.add_argument("--results", type=Path, default=Path("results"), help="where the merged run goes (default: results)")
    m.add_argument("--verbose", action="store_true", help="list every deviation and error, not one line per finding")
    _history_option(m)

    c = sub.add_parser("compare", help="what differs between two runs or two kernels; exit 1 on new deviations",
                       parents=[common])  # fmt: skip
    c.add_argument("baseline", help="run directory or run id (or a kernel in the history: version, release, package)")
    c.add_argument("new", help="run directory or run id (or a kernel in the history)")
    c.add_argument("--known", type=Path, default=compare.KNOWN_FILE,
                   help="known deviations: expected failures (default: guest-tests/known-deviations.yaml)")
    c.add_argument("--results", type=Path, default=Path("results"), help="where run ids are found (default: results)")
    _history_option(c)

    rp = sub.add_parser("replay", help="run boots of an earlier run again, from its manifest", parents=[common])
    rp.add_argument("run", help="run directory or run id (e.g. latest)")
    rp.add_argument("--boot", help="only this boot (default: every boot of the run)")
    rp.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="VMs at once (default: host cores)")
    rp.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    rp.add_argument("--verbose", action="store_true", help="list every deviation and error, not one line per finding")
    _history_option(rp)
    for cmd in (run, rp):
        cmd.add_argument("--cold", action="store_true", help="boot every guest; do not load or save saved guests")

    bs = sub.add_parser("bisect", help="find the first commit where a case's behaviour changed", parents=[common])
    bs.add_argument("--repo", type=Path, required=True, help="kernel git work tree (left as it is found)")
    bs.add_argument("--good", required=True, help="a revision that behaves the old way")
    bs.add_argument("--bad", required=True, help="a later revision that behaves otherwise")
    bs.add_argument("--case", required=True, help="the case whose behaviour is compared: a probe case, or a "
                    "suite's program as SUITE:PROGRAM (kselftest-mm:mlock2-tests)")
    bs.add_argument("--ram", default="256M", help="guest RAM (default: 256M)")
    bs.add_argument("--memlock", default="default", help="RLIMIT_MEMLOCK, as in a matrix: 64K, 0, unlimited, default")
    bs.add_argument("--user", default="root", help="guest account the case runs as (default: root)")
    bs.add_argument("--config", type=Path, help="config fragment (default: images/kernel.config)")
    bs.add_argument("--compiler", default="gcc", help="gcc, or a Debian gcc-N for an older tree (installed if missing)")
    bs.add_argument("--base", default="tinyconfig", choices=sources.git.BASES,
                    help="config the fragment is merged onto")  # fmt: skip
    bs.add_argument("--tries", type=int, default=3, help="guests per commit at most, until two agree (default: 3)")
    bs.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    for cmd in (run, rp, bs):
        _accel_option(cmd)

    st = sub.add_parser("bisect-step", help="one step of `git bisect run` (called by harness bisect)", parents=[common])
    st.add_argument("--state", type=Path, required=True, help="the bisect's state.json")

    h = sub.add_parser("history", help="behaviour per kernel version, from the history database", parents=[common])
    h.add_argument("--case", help="only this case (shows every kernel's behaviour in detail)")
    h.add_argument("--kernel", help="only this kernel: 6.1 (any 6.1.x), a version, release, package or sha256 prefix")
    h.add_argument("--changes", action="store_true", help="only rows whose behaviour changes between kernels")
    _history_option(h)
    hsub = h.add_subparsers(dest="action", parser_class=_Parser)
    hi = hsub.add_parser("import", help="add existing run directories to the history", parents=[common])
    hi.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR")
    _history_option(hi)

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
    ca = sub.add_parser("cache", help="what the cache holds, folder by folder, and its size", parents=[common])
    pr = ca.add_subparsers(dest="action", parser_class=_Parser).add_parser(
        "prune", parents=[common], help="delete what was not used for DAYS (kernels, images, .debs...), and kernels "
        "that no --keep-matrix or --keep-history names")  # fmt: skip
    pr.add_argument("--older-than", type=float, metavar="DAYS", help="only what was last used DAYS ago or earlier")
    pr.add_argument("--keep-matrix", type=Path, action="append", default=[], metavar="FILE",
                    help="keep the kernels this matrix names (may be given more than once)")  # fmt: skip
    pr.add_argument("--keep-history", type=Path, metavar="DB", help="keep the kernels this history has results of")
    pr.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    return p


def _shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"{text!r}: give I/N with 1 <= I <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def _accel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accel", choices=accel.MODES, help="kvm, tcg, or auto: KVM when a check guest proves it runs "
                   "long-mode code on the CPU, and TCG for the rest of the run once KVM fails a boot (default: "
                   f"{accel.ENV}, else auto)")  # fmt: skip


def _history_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", type=Path, help="history database (default: <results>/history.sqlite)")


def _history_path(args: argparse.Namespace) -> Path:
    if args.history is not None:
        return Path(args.history)
    return getattr(args, "results", Path("results")) / history.DEFAULT_PATH.name


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
                       mirror=args.mirror, insecure=args.insecure, shard=getattr(args, "shard", None),
                       history=_history_path(args) if hasattr(args, "history") else None,
                       cold=getattr(args, "cold", False),
                       accel=accel.mode(args.accel) if hasattr(args, "accel") else accel.AUTO)  # fmt: skip


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    if args.print_default_matrix:
        console.file.write(matrix.default_text())
        return 0
    mx, text = _matrix(args.matrix)
    options = _options(args, _cache(args))
    live, board = Live(), progress.Board()
    say = terminal.printer(console)
    try:
        with progress.shown(board, console):
            run_dir, boots = run.execute(mx, options, say, live, text, board=board)
    except (KeyboardInterrupt, signals.Interrupted):
        _interrupted(console)
        raise
    terminal.print_summary(boots, console, args.verbose)
    say(f"results: {run_dir}")
    return exit_code(boots)


def _interrupted(console: Console) -> None:
    console.print("[bold red]interrupted[/]: finished results were kept in results/latest")


def cmd_merge(args: argparse.Namespace, console: Console) -> int:
    shards = merge.load_all(args.run_dirs)
    rundir.check_writable(args.results)
    run_id, run_dir = rundir.create(args.results)
    merged = merge.merge(shards, run_id, run_dir, rundir.now())
    say = terminal.printer(console)
    run.record_history(_history_path(args), run_dir, say)
    terminal.print_summary(merged.boots, console, args.verbose)
    say(f"results: {run_dir}")
    return exit_code(merged.boots)


def _side(ref: str, args: argparse.Namespace) -> compare.Side:
    found = rundir.find_run(ref, args.results)
    if found is not None:
        return compare.run_side(rundir.read_results(found), f"run {found}")
    path = _history_path(args)
    if not path.is_file():
        raise UserError(f"{ref}: not a run directory or run id in {args.results}, and there is no history "
                        f"({path}) to look a kernel up in")  # fmt: skip
    with history.History(path) as db:
        kernel, results = db.kernel_results(ref)
    return compare.kernel_side(kernel, results)


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    known = compare.load_known(args.known)
    base, new = _side(args.baseline, args), _side(args.new, args)
    diffs = compare.compare(base, new, known)
    compare.render(diffs, base, new, console)
    return compare.exit_code(diffs)


def cmd_replay(args: argparse.Namespace, console: Console) -> int:
    options = _options(args, _cache(args))
    say, board = terminal.printer(console), progress.Board()
    try:
        with progress.shown(board, console):
            done = replay.replay(rundir.locate(args.run, args.results), args.boot, options, say, Live(), board)
    except (KeyboardInterrupt, signals.Interrupted):
        _interrupted(console)
        raise
    terminal.print_summary(done.boots, console, args.verbose)
    if done.changes:
        compare.render(done.changes, compare.Side(f"run {done.original.run_id}", {}),
                       compare.Side(f"replay {done.run_dir.name}", {}), console)  # fmt: skip
    else:
        say(f"replay: every result behaved as in run {done.original.run_id}")
    say(f"results: {done.run_dir}")
    return exit_code(done.boots)


def cmd_bisect(args: argparse.Namespace, console: Console) -> int:
    if args.tries < 1:
        raise UserError(f"--tries {args.tries}: give at least 1")
    settings = bisect.Settings(args.repo.resolve(), args.case, args.ram, args.memlock, args.user,
                               args.config.resolve() if args.config else None, args.base, args.tries,
                               args.compiler)  # fmt: skip
    bisect.check_repo(settings.repo)
    bisect.check(settings, probe.build().names)
    say = terminal.printer(console)
    found = bisect.bisect(settings, args.good, args.bad, args.results, _cache(args), say, accel.mode(args.accel))
    say(f"first commit that changed {args.case}: {found.commit} {found.title}")
    for side, obs in (("before", found.good), ("after", found.bad)):
        say(f"  {side} ({obs.commit[:12]}): {obs.outcome} {obs.behaviour}")
        say(f"    evidence: {', '.join(obs.run_dirs)}")
    say(f"  changed: {', '.join(found.fields)}; bisect record: {found.directory}")
    return 0


def cmd_bisect_step(args: argparse.Namespace, console: Console) -> int:
    """`git bisect run` reads the exit code: 0 good, 1 bad, 125 skip, 128 abort (a harness error)."""
    err = terminal.printer(Console(stderr=True, width=1000))
    try:
        return bisect.step(args.state, _cache(args), terminal.printer(console))
    except UserError as e:
        err(f"harness bisect-step: error: {e}")
        return bisect.ABORT
    except InfraError as e:  # after the boot's own retries: this commit cannot answer
        err(f"harness bisect-step: skip: {e}")
        return bisect.SKIP
    except Exception as e:  # noqa: BLE001 - any harness bug must abort the bisect, not mark a commit
        err(f"harness bisect-step: internal error: {type(e).__name__}: {e}; traceback in {crashes.report()}")
        return bisect.ABORT


def cmd_history(args: argparse.Namespace, console: Console) -> int:
    path = _history_path(args)
    if args.action == "import":
        with history.History(path) as db:
            for run_dir in args.run_dirs:
                added = db.import_run(run_dir)
                _line(console, str(run_dir), f"{added} results added" if added else "already in the history")
        return 0
    if path.is_dir():
        raise UserError(f"{path}: a directory; give --history the history file (results/history.sqlite)")
    if not path.is_file():
        raise UserError(f"{path}: no history yet; `harness run` writes it, `harness history import DIR` fills it")
    with history.History(path) as db:
        timelines = db.timelines(args.case, args.kernel)
    history.render(timelines, console, detail=args.case is not None, only_changes=args.changes)
    return 0


def cmd_kernels(args: argparse.Namespace, console: Console) -> int:
    cache = _cache(args)
    if args.action == "list":
        for k in kernels.list_cached(cache):
            _line(console, k.label, k.release, k.version or "-", k.sha256[:16], k.source)
        return 0
    mx, _ = _matrix(args.matrix)
    ctx = _options(args, cache).sources(terminal.printer(console))
    source = sources.Kernels(ctx)
    for spec in sources.expand(mx.kernels, ctx):
        if args.action == "resolve":
            _line(console, spec.label, *source.describe(spec))
        else:
            k = source.fetch(spec)
            pvh = "PVH vmlinux" if k.vmlinux else "bzImage only"
            _line(console, spec.label, k.release, k.version or "-", k.sha256[:16], pvh)
    return 0


def cmd_cache(args: argparse.Namespace, console: Console) -> int:
    cache = _cache(args)
    if args.action == "prune":
        return _prune(args, cache, console)
    areas = usage(cache)
    for a in areas:
        _line(console, a.name, disk_size(a.bytes), f"{a.entries} entries", a.what)
    _line(console, "total", disk_size(sum(a.bytes for a in areas)), str(cache))
    return 0


def _prune(args: argparse.Namespace, cache: Path, console: Console) -> int:
    ctx = _options(args, cache).sources(terminal.printer(console))
    doomed = prune.plan(cache, args.older_than, args.keep_matrix, args.keep_history, ctx)
    # One line per entry, deleted or kept (a run holds it: harness.lease), as it goes.
    gone = prune.take(doomed, args.dry_run, lambda *fields: _line(console, *fields))
    _line(console, "would free" if args.dry_run else "freed", disk_size(sum(e.bytes for e in gone)),
          f"{len(gone)} entries")  # fmt: skip
    return 0


def cmd_image(args: argparse.Namespace, console: Console) -> int:
    cache = _cache(args)
    mx, _ = _matrix(args.matrix)
    ctx = _options(args, cache).sources(terminal.printer(console))
    source = sources.Kernels(ctx)
    guests = kit.assemble(cache)
    for spec in sources.expand(mx.kernels, ctx):
        k = source.fetch(spec)
        img = guests.image(k)
        _line(console, spec.label, k.release, str(img.path), " ".join(img.modules))
    return 0


def cmd_cases(args: argparse.Namespace, console: Console) -> int:
    for name, description in probe.build().catalogue:
        _line(console, name, description)
    return 0


def _line(console: Console, *fields: str) -> None:
    """Tab-separated listings go out as plain text, so `cut -f1` works (rich would expand tabs)."""
    console.file.write("\t".join(terminal.safe(f).replace("\t", "\\t").replace("\n", "\\n") for f in fields) + "\n")


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
    "cache": cmd_cache,
    "merge": cmd_merge,
    "compare": cmd_compare,
    "replay": cmd_replay,
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
        args = _parser().parse_args(argv)
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
        err(f"harness: internal error (a bug in the harness, please report it): {type(e).__name__}: {e}; "
            f"traceback in {crashes.report()}")  # fmt: skip
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
