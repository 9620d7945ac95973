"""What each command does: from its parsed arguments to its output and exit code. Errors are raised,
never turned into exit codes here (harness.cli.main does that)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from harness import history, kernels, kit, merge, prune, rejudge, replay, run
from harness.boot import accel
from harness.boot.live import Live
from harness.cache import cache_dir, disk_size, usage
from harness.cli import signals
from harness.errors import EXIT_FINDINGS, EXIT_OK, UserError
from harness.files import read_text
from harness.history import compare
from harness.kernels import devices, sources
from harness.kit import known, probe
from harness.plan import matrix, overrides
from harness.report import candidates, progress, resultsfile, rundir, terminal
from harness.results import BootResult, exit_code


def _history_path(args: argparse.Namespace) -> Path:
    if args.history is not None:
        return Path(args.history)
    return getattr(args, "results", rundir.results_dir()) / history.DEFAULT_PATH.name


def _matrix(path: Path | None) -> tuple[matrix.Matrix, str]:
    if path is None:
        return matrix.load_default(), matrix.default_text()
    mx = matrix.load(path)
    return mx, path.read_text()


def options_of(args: argparse.Namespace, cache: Path) -> run.Options:
    jobs = getattr(args, "jobs", 1)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give at least 1")
    return run.Options(
        jobs=jobs,
        results=getattr(args, "results", rundir.results_dir()),
        cache=cache,
        mirror=args.mirror,
        insecure=args.insecure,
        shard=getattr(args, "shard", None),
        history=_history_path(args) if hasattr(args, "history") else None,
        cold=getattr(args, "cold", False),
        fresh=getattr(args, "fresh", False),
        accel=accel.mode(args.accel) if hasattr(args, "accel") else accel.AUTO,
        known=getattr(args, "known", known.KNOWN_FILE),
    )


def _summed_up(boots: Sequence[BootResult], args: argparse.Namespace, console: Console) -> int:
    """Print what a run found (news first) and give its exit code; a known finding fails nothing,
    one that no longer deviates fails only with --strict."""
    entries = known.load_known(args.known)
    fixed = [(f"{k.case} ({k.origin})", where) for k, where in known.fixed(entries, boots)]
    explain = candidates.Finder(cache_of(args))
    terminal.print_summary(boots, console, args.verbose, fixed, explain, shown_of(args))
    code = exit_code(boots)
    return EXIT_FINDINGS if code == EXIT_OK and fixed and getattr(args, "strict", False) else code


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    if args.print_default_matrix:
        console.file.write(matrix.default_text())
        return 0
    planned = _run_matrix(args)
    if args.dry_run:
        return _dry_run(planned, args, console)
    mx, text = planned.matrix, planned.text
    options = options_of(args, cache_of(args))
    live, board = Live(), progress.Board()
    say = terminal.printer(console)
    try:
        with progress.shown(board, console):
            run_dir, boots = run.execute(mx, options, say, live, text, board=board)
    except (KeyboardInterrupt, signals.Interrupted):
        _interrupted(console)
        raise
    code = _summed_up(boots, args, console)
    say(f"results: {run_dir}")
    return code


def _run_matrix(args: argparse.Namespace) -> overrides.Planned:
    """--matrix (or the default matrix) with the fields --kernel, --case, --memlock, --user, --ram give."""
    if args.matrix is None:
        text, source = matrix.default_text(), matrix.DEFAULT_SOURCE
    else:
        text, source = read_text(args.matrix, matrix.MAX_BYTES, "matrix file"), str(args.matrix)
    flags = overrides.Flags(*(tuple(v) for v in (args.kernel, args.case, args.memlock, args.user, args.ram)))
    return overrides.apply(text, source, flags, probe.build().names if flags.cases else (), Path.cwd())


def _dry_run(planned: overrides.Planned, args: argparse.Namespace, console: Console) -> int:
    """The boots, runs and cases a run with these arguments would have, planned as the run plans them
    (matrix.expand, then run.select), with its checks; no kernel is resolved, fetched or booted."""
    mx = planned.matrix
    run.check_memory(mx)
    chosen = run.select(matrix.expand(mx, probe.build().names), options_of(args, Path(args.cache or ".")))

    def say(line: str) -> None:
        console.file.write(terminal.safe(line) + "\n")

    say(f"matrix: {mx.source}")
    if args.shard:
        say(f"shard {args.shard[0]}/{args.shard[1]}: {_count(len(chosen), 'boot')} of the plan's")
    many = []
    for plan in chosen:
        kernel = planned.kernels[mx.kernels.index(plan.kernel)]
        say(f"boot {plan.id}: kernel {kernel}, RAM {plan.ram_mb}M, transport {plan.transport}")
        builds = getattr(plan.kernel, "builds", "newest")  # a spec of many builds (sources.expand)
        if builds != "newest":
            many.append(builds)
            say(f"  builds: {builds} is expanded when the run resolves it: one boot per build, not this one")
        counts = {len(r.cases) for r in plan.runs}
        if len(counts) == 1:
            each = f"{_count(counts.pop(), 'case')} each"
            say(f"  {_count(len(plan.runs), 'run')} (limit/user), {each}: {', '.join(_run(r) for r in plan.runs)}")
        else:
            each_run = (f"{_run(r)} ({_count(len(r.cases), 'case')})" for r in plan.runs)
            say(f"  runs (limit/user): {', '.join(each_run)}")
    if chosen and mx.cases is not None:
        say(f"cases: {', '.join(chosen[0].runs[0].cases)}")
    elif chosen:
        say(f"cases: all {len(chosen[0].runs[0].cases)} of {', '.join(mx.suites)}")
    runs = sum(len(p.runs) for p in chosen)
    total = sum(len(r.cases) for p in chosen for r in p.runs)
    more = f" as listed, before builds: {'/'.join(dict.fromkeys(many))} is expanded" if many else ""
    say(
        f"{_count(len(chosen), 'boot')}, {_count(runs, 'run')}, {_count(total, 'result')}{more} "
        "(dry run: no kernel was resolved, downloaded, built or booted)"
    )
    return 0


def _run(r: matrix.RunPlan) -> str:
    return f"{r.memlock_label}/{r.user}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _interrupted(console: Console) -> None:
    console.print("[bold red]interrupted[/]: finished results were kept in results/latest")


def cmd_merge(args: argparse.Namespace, console: Console) -> int:
    shards, expected = merge.load_all(args.run_dirs), known.load_known(args.known)  # bad input before any write
    rundir.check_writable(args.results)
    run_id, run_dir = rundir.create(args.results)
    merged = merge.merge(shards, run_id, run_dir, rundir.now(), expected)
    say = terminal.printer(console)
    run.record_history(_history_path(args), run_dir, say)
    code = _summed_up(merged.boots, args, console)
    say(f"results: {run_dir}")
    return code


def _side(ref: str, args: argparse.Namespace) -> compare.Side:
    found = rundir.find_run(ref, args.results)
    if found is not None:
        return compare.run_side(resultsfile.read_results(found), f"run {found}")
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
    compare.render(diffs, base, new, console, candidates.Finder(cache_of(args)), shown_of(args))
    lost = 0 if args.allow_missing else compare.missing(base, new)
    if lost:
        terminal.printer(console)(
            f"compare: {lost} fewer answers than the baseline (timeouts, infrastructure errors); "
            "--allow-missing accepts that"
        )
    return compare.exit_code(diffs, lost)


def cmd_judge(args: argparse.Namespace, console: Console) -> int:
    say = terminal.printer(console)
    run_dir = rundir.locate(args.run, args.results)
    done = rejudge.rejudge(run_dir, args.expectations, args.known, _history_path(args), say)
    code = _summed_up(done.after.boots, args, console)
    before = compare.run_side(done.before, "as judged before")
    after = compare.run_side(done.after, f"as judged by {args.expectations}")
    changes = compare.compare(before, after, known.load_known(args.known))
    if changes:
        compare.render(changes, before, after, console)
    else:
        say(f"judge: every result of run {done.before.run_id} is judged as before")
    if done.kept:
        say(f"judge: {done.kept} results kept as they were judged (their observation cannot be read again)")
    say(f"results: {run_dir}")
    return code


def cmd_replay(args: argparse.Namespace, console: Console) -> int:
    options = options_of(args, cache_of(args))
    say, board = terminal.printer(console), progress.Board()
    try:
        with progress.shown(board, console):
            done = replay.replay(rundir.locate(args.run, args.results), args.boot, options, say, Live(), board)
    except (KeyboardInterrupt, signals.Interrupted):
        _interrupted(console)
        raise
    code = _summed_up(done.boots, args, console)
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
    return code


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
    entries = known.load_known(args.known)
    explain = candidates.Finder(cache_of(args)) if args.changes else None
    history.render(
        timelines,
        console,
        detail=args.case is not None,
        only_changes=args.changes,
        known=entries,
        explain=explain,
        candidates=shown_of(args),
    )
    return 0


def cmd_kernels(args: argparse.Namespace, console: Console) -> int:
    cache = cache_of(args)
    if args.action == "list":
        for k in kernels.list_cached(cache):
            _line(console, k.label, k.release, k.version or "-", k.sha256[:16], k.source)
        return 0
    mx, _ = _matrix(args.matrix)
    ctx = options_of(args, cache).sources(terminal.printer(console))
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
    cache = cache_of(args)
    if args.action == "prune":
        return _prune(args, cache, console)
    areas = usage(cache)
    for a in areas:
        _line(console, a.name, disk_size(a.bytes), f"{a.entries} entries", a.what)
    _line(console, "total", disk_size(sum(a.bytes for a in areas)), str(cache))
    return 0


def _prune(args: argparse.Namespace, cache: Path, console: Console) -> int:
    ctx = options_of(args, cache).sources(terminal.printer(console))
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
    cache = cache_of(args)
    mx, _ = _matrix(args.matrix)
    ctx = options_of(args, cache).sources(terminal.printer(console))
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


def shown_of(args: argparse.Namespace) -> int:
    shown = getattr(args, "candidates", candidates.SHOWN)
    if shown < 0:
        raise UserError(f"--candidates {shown}: give 0 or more")
    return int(shown)


def cache_of(args: argparse.Namespace) -> Path:
    if args.cache is not None:
        try:
            args.cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--cache {args.cache}: cannot create it: {e.strerror}") from e
        return Path(args.cache)
    return cache_dir()
