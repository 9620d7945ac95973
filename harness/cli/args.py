"""The command line's grammar: every command, its options and their help (argparse), and the
exit codes `--help` lists."""

from __future__ import annotations

import argparse
import difflib
import os
import re
from pathlib import Path

from harness import __version__
from harness.boot import accel
from harness.errors import UserError
from harness.history import compare
from harness.kernels import sources
from harness.kit import verdict
from harness.report import rundir


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(_unknown_command(self, message) or f"{self.prog}: {message}{_near(self, message)} (see --help)")


def _unknown_command(p: argparse.ArgumentParser, message: str) -> str:
    """A mistyped command, with the nearest one: unknown command 'rnu'; did you mean 'run'?"""
    m = re.match(r"argument (\S+): invalid choice: '([^']*)'", message)
    commands = [a for a in p._actions if isinstance(a, argparse._SubParsersAction) and a.dest == (m and m.group(1))]
    if not m or not commands:
        return ""
    before = p.prog.removeprefix("harness").strip()  # "kernels" for `harness kernels resovle`
    said, names = " ".join((before, m.group(2))).strip(), list(commands[0].choices)
    near = difflib.get_close_matches(m.group(2), names, n=1)
    if near:
        return f"unknown command '{said}'; did you mean '{' '.join((before, near[0])).strip()}'?"
    return f"unknown command '{said}'; the commands are {', '.join(names)} (see {p.prog} --help)"


def _near(p: argparse.ArgumentParser, message: str) -> str:
    """For an option argparse does not know (`--cases`), the nearest one of any command."""
    m = re.match(r"unrecognized arguments: (-[^\s=]+)", message)
    if not m:
        return ""
    options: set[str] = set()
    stack = [p]
    while stack:
        for action in stack.pop()._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    near = difflib.get_close_matches(m.group(1), sorted(options), n=1)
    return f"; did you mean {near[0]}?" if near else ""


DESCRIPTION = """Boot Linux kernels in QEMU and record how each behaves for mmap(MAP_LOCKED), mlock,
mlock2, mlockall and their relatives, under chosen RLIMIT_MEMLOCK limits and users.

Start with `harness run`: it runs the embedded default matrix (four Debian kernels) and writes
junit.xml, results.json.gz, report.html and summary.md to results/<run-id>/. `harness run --matrix
FILE` runs your own; `harness COMMAND --help` says more about each command."""
EXIT_CODES = """exit codes: 0 nothing new (every deviation a known one), 1 new findings, 2 bad input, 3 infrastructure
error, 70 internal error (a bug), 130/143 interrupted (finished results are kept), 141 the reader of
its output went away"""


def parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--cache", type=Path, help="cache directory (default: HARNESS_CACHE or ~/.cache/harness)")
    common.add_argument("--mirror", help="Debian mirror URL (default: HARNESS_DEBIAN_MIRROR or the host's apt sources)")
    common.add_argument("--insecure", action="store_true", help="accept unverified indexes and packages")
    p = _Parser(
        prog="harness", description=DESCRIPTION, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="boot the matrix and run the probe", parents=[common])
    run.add_argument("--matrix", type=Path, help="matrix YAML file (default: the embedded default matrix)")
    run.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="VMs at once (default: host cores)")
    run.add_argument(
        "--results",
        type=Path,
        default=rundir.results_dir(),
        help="results directory (default: HARNESS_RESULTS, else results/ in the source tree)",
    )
    run.add_argument("--verbose", action="store_true", help="list every deviation and error, not one line per finding")
    run.add_argument("--print-default-matrix", action="store_true", help="print the embedded matrix and exit")
    run.add_argument("--shard", type=_shard, metavar="I/N", help="run the I-th of N deterministic slices of the boots")
    _flag_options(run)
    _history_option(run)

    m = sub.add_parser("merge", help="merge the run directories of shards into one run", parents=[common])
    m.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR", help="run directories of `run --shard`")
    m.add_argument(
        "--results",
        type=Path,
        default=rundir.results_dir(),
        help="where the merged run goes (default: HARNESS_RESULTS, else results/ in the source tree)",
    )
    m.add_argument("--verbose", action="store_true", help="list every deviation and error, not one line per finding")
    _history_option(m)

    c = sub.add_parser(
        "compare", help="what differs between two runs or two kernels; exit 1 on new deviations", parents=[common]
    )
    c.add_argument("baseline", help="run directory or run id (or a kernel in the history: version, release, package)")
    c.add_argument("new", help="run directory or run id (or a kernel in the history)")
    c.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit 0 even when the new side has fewer answers than the baseline (default: exit 3)",
    )
    _candidates_option(c)
    c.add_argument(
        "--known",
        type=Path,
        default=compare.KNOWN_FILE,
        help="known deviations: expected failures (default: guest-tests/known-deviations.yaml)",
    )
    c.add_argument(
        "--results",
        type=Path,
        default=rundir.results_dir(),
        help="where run ids are found (default: HARNESS_RESULTS, else results/ in the source tree)",
    )
    _history_option(c)

    j = sub.add_parser(
        "judge",
        help="judge a finished run again from its observations (no boot), and rewrite its "
        "reports and its results in the history",
        parents=[common],
    )
    j.add_argument("run", help="run directory or run id (e.g. latest)")
    j.add_argument(
        "--expectations",
        type=Path,
        default=verdict.EXPECTATIONS,
        help="the expectations to judge by (default: guest-tests/expectations.yaml)",
    )
    j.add_argument(
        "--results",
        type=Path,
        default=rundir.results_dir(),
        help="where run ids are found (default: HARNESS_RESULTS, else results/ in the source tree)",
    )
    j.add_argument("--verbose", action="store_true", help="list every deviation and error, not one line per finding")
    _history_option(j)

    rp = sub.add_parser("replay", help="run boots of an earlier run again, from its manifest", parents=[common])
    rp.add_argument("run", help="run directory or run id (e.g. latest)")
    rp.add_argument("--boot", help="only this boot (default: every boot of the run)")
    rp.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="VMs at once (default: host cores)")
    rp.add_argument(
        "--results",
        type=Path,
        default=rundir.results_dir(),
        help="results directory (default: HARNESS_RESULTS, else results/ in the source tree)",
    )
    rp.add_argument("--verbose", action="store_true", help="list every deviation and error, not one line per finding")
    _history_option(rp)
    for cmd in (run, rp):
        cmd.add_argument("--cold", action="store_true", help="boot every guest; do not load or save saved guests")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="boot every kernel; take no boot's results from the history (by default a boot whose "
        "kernel, image, QEMU and probe a stored boot had takes its results)",
    )

    bs = sub.add_parser(
        "bisect",
        help="find the first commit, or the first built kernel, where a case's behaviour changed",
        parents=[common],
    )
    where = bs.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", type=Path, help="kernel git work tree (left as it is found): bisect its commits")
    where.add_argument(
        "--debian",
        metavar="SUITES",
        help="bisect Debian's builds of one line in these suites, comma-separated: bookworm,bookworm-security",
    )
    where.add_argument(
        "--kernels", type=Path, nargs="+", metavar="PATH", help="bisect these kernel images, in build order"
    )
    where.add_argument("--resume", type=Path, metavar="DIR", help="go on with a bisect that stopped (results/bisect-*)")
    bs.add_argument(
        "--good",
        help="the end that behaves the old way: a revision (--repo), an ABI or package version "
        "(--debian), a path (--kernels; default: the first)",
    )
    bs.add_argument("--bad", help="the later end, which behaves otherwise (--kernels: default the last)")
    bs.add_argument(
        "--package", default="linux-image-amd64", help="with --debian: the kernel package (default: linux-image-amd64)"
    )
    bs.add_argument(
        "--case",
        help="the case whose behaviour is compared: a probe case, or a "
        "suite's program as SUITE:PROGRAM (kselftest-mm:mlock2-tests)",
    )
    bs.add_argument("--ram", default="256M", help="guest RAM (default: 256M)")
    bs.add_argument("--memlock", default="default", help="RLIMIT_MEMLOCK, as in a matrix: 64K, 0, unlimited, default")
    bs.add_argument("--user", default="root", help="guest account the case runs as (default: root)")
    bs.add_argument("--config", type=Path, help="config fragment (default: images/kernel.config)")
    bs.add_argument("--compiler", default="gcc", help="gcc, or a Debian gcc-N for an older tree (installed if missing)")
    bs.add_argument(
        "--base", default="tinyconfig", choices=sources.git.BASES, help="config the fragment is merged onto"
    )
    _candidates_option(bs)
    bs.add_argument("--tries", type=int, default=3, help="guests per commit at most, until two agree (default: 3)")
    bs.add_argument(
        "--results",
        type=Path,
        default=rundir.results_dir(),
        help="results directory (default: HARNESS_RESULTS, else results/ in the source tree)",
    )
    for cmd in (run, rp, bs):
        _accel_option(cmd)
    for cmd in (run, m, rp, j):
        _known_options(cmd)
        _candidates_option(cmd)

    st = sub.add_parser("bisect-step", help="one step of `git bisect run` (called by harness bisect)", parents=[common])
    st.add_argument("--state", type=Path, required=True, help="the bisect's state.json")

    h = sub.add_parser("history", help="behaviour per kernel version, from the history database", parents=[common])
    h.add_argument(
        "--known",
        type=Path,
        default=compare.KNOWN_FILE,
        help="known deviations, marked as such (default: guest-tests/known-deviations.yaml)",
    )
    h.add_argument("--case", help="only this case (shows every kernel's behaviour in detail)")
    h.add_argument("--kernel", help="only this kernel: 6.1 (any 6.1.x), a version, release, package or sha256 prefix")
    h.add_argument("--changes", action="store_true", help="only rows whose behaviour changes between kernels")
    _candidates_option(h)
    _history_option(h)
    hsub = h.add_subparsers(dest="action", parser_class=_Parser)
    hi = hsub.add_parser("import", help="add existing run directories to the history", parents=[common])
    hi.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR")
    _history_option(hi)

    k = sub.add_parser("kernels", help="resolve, fetch or list kernels")
    ksub = k.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for name, text in (
        ("resolve", "show what a matrix's kernels resolve to"),
        ("fetch", "download and extract a matrix's kernels"),
    ):
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
        "prune",
        parents=[common],
        help="delete what was not used for DAYS (kernels, images, .debs...), and kernels "
        "that no --keep-matrix or --keep-history names",
    )
    pr.add_argument("--older-than", type=float, metavar="DAYS", help="only what was last used DAYS ago or earlier")
    pr.add_argument(
        "--keep-matrix",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="keep the kernels this matrix names (may be given more than once)",
    )
    pr.add_argument("--keep-history", type=Path, metavar="DB", help="keep the kernels this history has results of")
    pr.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    return p


def _shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"{text!r}: give I/N with 1 <= I <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def _flag_options(run: argparse.ArgumentParser) -> None:
    """The matrix's fields as flags; each replaces its field of --matrix (or of the default matrix)."""
    each = " (repeat for more; replaces the matrix's %s)"
    run.add_argument(
        "--kernel",
        action="append",
        default=[],
        metavar="SPEC",
        help="a kernel image's path (bzImage, vmlinuz, vmlinux), debian:SUITE[@VERSION] (a line such as 6.1, "
        "a range, or an ABI), or git:REPO@REV" + each % "kernels",
    )
    run.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="GLOB",
        help="cases by name or glob ('mremap_*'), from `harness cases` or SUITE:PROGRAM" + each % "cases",
    )
    run.add_argument(
        "--memlock",
        action="append",
        default=[],
        metavar="LIMIT",
        help="RLIMIT_MEMLOCK: 64K, 0, unlimited, default, or SOFT:HARD" + each % "memlock",
    )
    run.add_argument("--user", action="append", default=[], metavar="USER", help="root or user" + each % "users")
    run.add_argument("--ram", action="append", default=[], metavar="SIZE", help="guest RAM such as 256M" + each % "ram")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the boots, runs and cases the run would have, and exit: nothing is downloaded, built or booted",
    )


def _known_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--known",
        type=Path,
        default=compare.KNOWN_FILE,
        help="known deviations: findings expected to fail, reported with their reason, failing nothing "
        "(default: guest-tests/known-deviations.yaml)",
    )
    p.add_argument(
        "--strict", action="store_true", help="exit 1 also when a known deviation no longer deviates (fixed)"
    )


def _candidates_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--candidates",
        type=int,
        default=5,
        metavar="N",
        help="changelog entries shown per change between two builds of a line (default: 5)",
    )


def _accel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accel",
        choices=accel.MODES,
        help="kvm, tcg, or auto: KVM when a check guest proves it runs "
        "long-mode code on the CPU, and TCG for the rest of the run once KVM fails a boot (default: "
        f"{accel.ENV}, else auto)",
    )


def _history_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", type=Path, help="history database (default: <results>/history.sqlite)")
