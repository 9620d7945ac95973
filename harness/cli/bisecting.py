"""`harness bisect` (over commits, Debian builds or path kernels; resumed) and `bisect-step`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from harness.bisect import ABORT, SKIP, STATE_FILE, builds, commits
from harness.bisect import check as check_options
from harness.boot import accel
from harness.cache import crashes
from harness.cli.commands import cache_of, options_of, shown_of
from harness.errors import InfraError, UserError
from harness.kit import probe
from harness.report import terminal


def cmd_bisect(args: argparse.Namespace, console: Console) -> int:
    if args.tries < 1:
        raise UserError(f"--tries {args.tries}: give at least 1")
    say = terminal.printer(console)
    cache, mode = cache_of(args), accel.mode(args.accel)
    if args.resume is not None:
        return _resume(args, say, cache, mode)
    if not args.case:
        raise UserError("--case: missing; name the case whose behaviour changed (harness cases lists them)")
    if args.repo is not None:
        return _commits(args, say, cache, mode)
    return _builds(args, say, cache, mode, _settings(args, say, cache))


def _commits(args: argparse.Namespace, say: Callable[[str], None], cache: Path, mode: str) -> int:
    for option in ("good", "bad"):
        if not getattr(args, option):
            raise UserError(f"--{option}: missing; with --repo give the two revisions to search between")
    settings = commits.Settings(
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
    commits.check_repo(settings.repo)
    check_options(settings, probe.build().names, "HEAD")
    found = commits.bisect_commits(settings, args.good, args.bad, args.results, cache, say, mode)
    _say_commit(found, settings.case, say)
    return 0


def _say_commit(found: commits.Found, case: str, say: Callable[[str], None]) -> None:
    say(f"first commit that changed {case}: {found.commit} {found.title}")
    for side, obs in (("before", found.good), ("after", found.bad)):
        say(f"  {side} ({obs.point[:12]}): {obs.outcome} {obs.behaviour}")
        say(f"    evidence: {', '.join(obs.run_dirs)}")
    say(f"  changed: {', '.join(found.fields)}; bisect record: {found.directory}")


def _settings(args: argparse.Namespace, say: Callable[[str], None], cache: Path) -> builds.Settings:
    if args.debian is not None:
        suites = [s.strip() for s in args.debian.replace("+", ",").split(",") if s.strip()]
        if not suites:
            raise UserError("--debian: give one or more suites, comma-separated: bookworm,bookworm-security")
        for option in ("good", "bad"):
            if not getattr(args, option):
                raise UserError(f"--{option}: missing; with --debian give an ABI or package version of the line")
        ctx = options_of(args, cache).sources(say)
        listed = builds.debian_builds(suites, args.package, ctx)
        if not listed:
            raise UserError(f"--debian {args.debian}: no {args.package} build listed in these suites")
    else:
        listed = builds.path_builds(args.kernels)
        if len(listed) < 2:
            raise UserError("--kernels: give at least two kernel images, in build order")
    good = builds.pick(listed, args.good, "--good") if args.good else 0
    bad = builds.pick(listed, args.bad, "--bad") if args.bad else len(listed) - 1
    chosen = builds.within_line(listed, good, bad)
    settings = builds.Settings(args.case, chosen, args.ram, args.memlock, args.user, args.tries)
    check_options(settings, probe.build().names, chosen[0].name)
    return settings


def _builds(
    args: argparse.Namespace, say: Callable[[str], None], cache: Path, mode: str, settings: builds.Settings
) -> int:
    found = builds.bisect_builds(settings, args.results, cache, say, mode, args.resume)
    first, last = found.first, found.last_good
    say(f"first build that changed {settings.case}: {first.name}" + (f" ({first.version})" if first.version else ""))
    for side, obs in (("before", found.good), ("after", found.bad)):
        say(f"  {side} ({obs.point}): {obs.outcome} {obs.behaviour}")
        say(f"    evidence: {', '.join(obs.run_dirs)}")
    say(
        f"  changed: {', '.join(found.fields)}; {found.boots} boots for {len(settings.builds)} builds "
        f"({found.steps} between the ends); last build that behaves like --good: {last.name}"
    )
    say(f"  bisect record: {found.directory}")
    for text in found.candidates.lines(shown_of(args)) if found.candidates is not None else ():
        say(text)
    return 0


def _resume(args: argparse.Namespace, say: Callable[[str], None], cache: Path, mode: str) -> int:
    directory = args.resume
    if builds.kind(directory) == "builds":
        return _builds(args, say, cache, mode, builds.read_state(directory))
    settings, doc = commits.read_state(directory / STATE_FILE)
    revs = doc.get("revs")
    if not (isinstance(revs, list) and len(revs) == 2 and all(isinstance(r, str) for r in revs)):
        raise UserError(f"{directory / STATE_FILE}: revs: not two revisions; start the bisect again")
    commits.check_repo(settings.repo)
    found = commits.bisect_commits(settings, revs[0], revs[1], args.results, cache, say, mode, directory)
    _say_commit(found, settings.case, say)
    return 0


def cmd_bisect_step(args: argparse.Namespace, console: Console) -> int:
    """`git bisect run` reads the exit code: 0 good, 1 bad, 125 skip, 128 abort (a harness error)."""
    err = terminal.printer(Console(stderr=True, width=1000))
    try:
        return commits.step(args.state, cache_of(args), terminal.printer(console))
    except UserError as e:
        err(f"harness bisect-step: error: {e}")
        return ABORT
    except InfraError as e:  # after the boot's own retries: this commit cannot answer
        err(f"harness bisect-step: skip: {e}")
        return SKIP
    except Exception as e:  # noqa: BLE001 - any harness bug must abort the bisect, not mark a commit
        err(f"harness bisect-step: internal error: {type(e).__name__}: {e}; traceback in {crashes.report()}")
        return ABORT
