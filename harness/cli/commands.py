"""What each command does: from its parsed arguments to its output and exit code. Errors are raised,
never turned into exit codes here (harness.cli.main does that)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from harness import bisect, history, kernels, kit, merge, prune, rejudge, replay, run
from harness.boot import accel
from harness.boot.live import Live
from harness.cache import cache_dir, crashes, disk_size, usage
from harness.cli import signals
from harness.errors import InfraError, UserError
from harness.history import compare
from harness.kernels import devices, sources
from harness.kit import probe
from harness.plan import matrix
from harness.report import progress, rundir, terminal
from harness.results import exit_code


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
    return run.Options(
        jobs=jobs,
        results=getattr(args, "results", Path("results")),
        cache=cache,
        mirror=args.mirror,
        insecure=args.insecure,
        shard=getattr(args, "shard", None),
        history=_history_path(args) if hasattr(args, "history") else None,
        cold=getattr(args, "cold", False),
        accel=accel.mode(args.accel) if hasattr(args, "accel") else accel.AUTO,
    )


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
        raise UserError(
            f"{ref}: not a run directory or run id in {args.results}, and there is no history "
            f"({path}) to look a kernel up in"
        )
    with history.History(path) as db:
        kernel, results = db.kernel_results(ref)
    return compare.kernel_side(kernel, results)


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    known = compare.load_known(args.known)
    base, new = _side(args.baseline, args), _side(args.new, args)
    diffs = compare.compare(base, new, known)
    compare.render(diffs, base, new, console)
    return compare.exit_code(diffs)


def cmd_judge(args: argparse.Namespace, console: Console) -> int:
    known = compare.load_known(args.known)
    say = terminal.printer(console)
    run_dir = rundir.locate(args.run, args.results)
    done = rejudge.rejudge(run_dir, args.expectations, _history_path(args), say)
    terminal.print_summary(done.after.boots, console, args.verbose)
    before = compare.run_side(done.before, "as judged before")
    after = compare.run_side(done.after, f"as judged by {args.expectations}")
    changes = compare.compare(before, after, known)
    if changes:
        compare.render(changes, before, after, console)
    else:
        say(f"judge: every result of run {done.before.run_id} is judged as before")
    if done.kept:
        say(f"judge: {done.kept} results kept as they were judged (their observation cannot be read again)")
    say(f"results: {run_dir}")
    return exit_code(done.after.boots)


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
        compare.render(
            done.changes,
            compare.Side(f"run {done.original.run_id}", {}),
            compare.Side(f"replay {done.run_dir.name}", {}),
            console,
        )
    else:
        say(f"replay: every result behaved as in run {done.original.run_id}")
    say(f"results: {done.run_dir}")
    return exit_code(done.boots)


def cmd_bisect(args: argparse.Namespace, console: Console) -> int:
    if args.tries < 1:
        raise UserError(f"--tries {args.tries}: give at least 1")
    settings = bisect.Settings(
        args.repo.resolve(),
        args.case,
        args.ram,
        args.memlock,
        args.user,
        args.config.resolve() if args.config else None,
        args.base,
        args.tries,
        args.compiler,
    )
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
    # One line per entry, deleted or kept (a run holds it: harness.cache.lease), as it goes.
    gone = prune.take(doomed, args.dry_run, lambda *fields: _line(console, *fields))
    _line(
        console,
        "would free" if args.dry_run else "freed",
        disk_size(sum(e.bytes for e in gone)),
        f"{len(gone)} entries",
    )
    return 0


def cmd_image(args: argparse.Namespace, console: Console) -> int:
    cache = _cache(args)
    mx, _ = _matrix(args.matrix)
    ctx = _options(args, cache).sources(terminal.printer(console))
    source = sources.Kernels(ctx)
    guests = kit.assemble(cache)
    for spec in sources.expand(mx.kernels, ctx):
        k = source.fetch(spec)
        img = guests.image(devices.choose(k))
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
