"""Build bisect against booting every build: what it costs to find the build where one case changed.

Lists every build of one Debian line (default: bookworm's 6.1, main and security archive), fetches
them all first (downloads are not what is compared), then
  every build  `harness run` of the one case, limit and user on every build of the line, cold, one
               guest at a time (--jobs 1, as the bisect), and the first build that behaves
               otherwise than the first one, read from its results;
  bisect       `harness bisect --debian` from the first build to the last, with --tries 1 and 3;
and prints the boots, the wall time and the build each named. A script, not a test: figures.

  .venv/bin/python bench/bisect_builds.py [--suites bookworm,bookworm-security] [--line 6.1]
      [--case mremap_dontunmap_partial] [--memlock 64K] [--user user]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from harness import versions
from harness.bisect import builds
from harness.cache import cache_dir, lease
from harness.kernels import sources
from harness.report import resultsfile, rundir

HARNESS = [sys.executable, "-m", "harness"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default="bookworm,bookworm-security")
    ap.add_argument("--line", default="6.1", help="upstream line whose builds are searched")
    ap.add_argument("--case", default="mremap_dontunmap_partial")
    ap.add_argument("--memlock", default="64K")
    ap.add_argument("--user", default="user")
    ap.add_argument(
        "--empty-cache",
        action="store_true",
        help="give each method an empty cache of its own: downloads and images count (a first bisect)",
    )
    args = ap.parse_args()
    console = Console()
    suites = args.suites.split(",")
    ctx = sources.Context(cache_dir(), lambda m: None, None, False, lease.Leases())
    line = tuple(int(x) for x in args.line.split("."))
    listed = [b for b in builds.debian_builds(suites, "linux-image-amd64", ctx) if b.line == line]
    console.print(f"{len(listed)} builds of {args.line} in {args.suites}: {listed[0].name} ... {listed[-1].name}")

    with tempfile.TemporaryDirectory(prefix="bench-bisect-") as tmp:
        work = Path(tmp)
        text = yaml.safe_dump(
            {
                "kernels": [b.entry for b in listed],
                "ram": ["256M"],
                "memlock": [args.memlock],
                "users": [args.user],
                "cases": [args.case],
                "timeouts": {"boot": 180, "case": 60},
            }
        )
        (work / "line.yaml").write_text(text)
        if not args.empty_cache:
            started = time.monotonic()
            fetch = [*HARNESS, "kernels", "fetch", "--matrix", str(work / "line.yaml")]
            subprocess.run(fetch, check=True, capture_output=True)
            console.print(f"fetched (or found in the cache) in {time.monotonic() - started:.1f} s")

        def cache(name: str) -> list[str]:
            return ["--cache", str(work / f"cache-{name}")] if args.empty_cache else []

        rows = []
        started = time.monotonic()
        every = [*HARNESS, "run", "--matrix", str(work / "line.yaml"), "--cold", "--jobs", "1"]
        subprocess.run([*every, *cache("every"), "--results", str(work / "every")], capture_output=True)
        rows.append(("every build", len(listed), time.monotonic() - started, first_change(work / "every")))

        for tries in (1, 3):
            out = work / f"bisect-{tries}"
            cmd = [*HARNESS, "bisect", "--debian", args.suites, "--good", listed[0].name, "--bad", listed[-1].name]
            cmd += ["--case", args.case, "--memlock", args.memlock, "--user", args.user, "--tries", str(tries)]
            started = time.monotonic()
            subprocess.run([*cmd, *cache(str(tries)), "--results", str(out)], capture_output=True)
            wall = time.monotonic() - started
            (record,) = out.glob("bisect-*/bisect.json")
            found = json.loads(record.read_text())
            rows.append((f"bisect, --tries {tries}", found["boots"], wall, found["first_build"]["name"]))

    how = "each from an empty cache" if args.empty_cache else "every kernel in the cache"
    table = Table(title=f"{args.case} under {args.memlock}/{args.user}, {len(listed)} builds of {args.line}, {how}")
    for header in ("method", "boots", "wall (s)", "first build that changed"):
        table.add_column(header)
    for method, boots, wall, first in rows:
        table.add_row(method, str(boots), f"{wall:.1f}", first)
    console.print(table)


def first_change(results: Path) -> str:
    """The first build (in version order) whose fingerprint differs from the first build's."""
    run = resultsfile.read_results(rundir.locate("latest", results))
    ordered = versions.ordered_by(run.boots, lambda b: b.kernel)
    prints = [(b.kernel.release if b.kernel else b.boot_id, b.cases[0].fingerprint if b.cases else "") for b in ordered]
    return next((name for name, fp in prints if fp != prints[0][1]), "none")


if __name__ == "__main__":
    main()
