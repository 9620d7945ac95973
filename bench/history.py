"""How the history and the reports scale: nights of a real run appended, then queried and rendered.

    python bench/history.py [RUN_DIR] [--nights N]

Takes a finished run (default results/latest) and appends it N times (default 30) to a fresh
history under a temporary directory, each copy a later night with its own run id, as a nightly
job would over N nights. Prints seconds per append, the time of the views `harness history`
uses (whole grid, one case, one kernel, a kernel comparison), the database size, and the size
and render time of report.html and summary.md for the run. A script, not a test: it prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import history
from harness.manifest import Manifest  # noqa: E402
from harness.report import report_html, resultsfile, rundir, summary_md  # noqa: E402

FIRST_NIGHT = dt.datetime(2027, 1, 1, 2, 17, tzinfo=dt.UTC)


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", type=Path, default=Path("results/latest"))
    p.add_argument("--nights", type=int, default=30)
    args = p.parse_args()
    run = resultsfile.read_results(args.run_dir)
    manifest = rundir.read_manifest(args.run_dir) or Manifest()
    results = sum(len(b.cases) for b in run.boots)
    print(f"run {run.run_id}: {len(run.boots)} boots, {results} results; {args.nights} nights")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.sqlite"
        appends = []
        with history.History(path) as db:
            for night in range(args.nights):
                when = (FIRST_NIGHT + dt.timedelta(days=night)).isoformat(timespec="seconds")
                copy = dataclasses.replace(run, run_id=f"{run.run_id}-n{night:04d}", started=when)
                seconds, _ = timed(lambda copy=copy: db.record(copy, manifest))
                appends.append(seconds)
            grid_s, timelines = timed(lambda: db.timelines())
            case = timelines[0].case if timelines else None
            case_s, _ = timed(lambda: db.timelines(case=case))
            kernel = run.boots[0].kernel
            selector = kernel.sha256[:12] if kernel else ""
            kernel_s, _ = timed(lambda: db.timelines(kernel=selector) if selector else [])
            pair_s, _ = timed(lambda: db.kernel_results(selector) if selector else None)
            console = Console(file=io.StringIO(), width=200)
            render_s, _ = timed(lambda: history.render(timelines, console, detail=False))
        size = path.stat().st_size
    print(f"append one night: median {statistics.median(appends):.3f}s, max {max(appends):.3f}s")
    print(
        f"views after {args.nights} nights ({args.nights * results} rows): grid {grid_s:.2f}s "
        f"({len(timelines)} rows), one case {case_s:.2f}s, one kernel {kernel_s:.2f}s, "
        f"kernel results for compare {pair_s:.2f}s, grid render {render_s:.2f}s"
    )
    print(f"database: {size / 1e6:.1f} MB ({size / (args.nights * results):.0f} bytes per result)")
    html_s, page = timed(lambda: report_html.html(run))
    md_s, summary = timed(lambda: summary_md.markdown(run))
    print(
        f"report.html: {len(page.encode()) / 1e6:.1f} MB in {html_s:.2f}s; "
        f"summary.md: {len(summary.encode()) / 1e3:.0f} kB in {md_s:.2f}s"
    )


if __name__ == "__main__":
    main()
