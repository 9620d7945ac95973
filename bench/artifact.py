"""How big a nightly's run directory is: a real run's boots copied up to N boots (default 90, the
every-build matrix), written as `harness run` writes them, and measured file by file.

    python bench/artifact.py [RUN_DIR] [--boots N]

Prints the size of results.json.gz, junit.xml, the boot pages, report.html, summary.md, the serial
logs (each boot's copied from the run's) and the whole directory, and checks nothing is lost:
the written results.json.gz read back gives every result the run has, observations included.
A script, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import scaled  # noqa: E402

from harness import boot as boot_mod  # noqa: E402
from harness.report import report_html, resultsfile, rundir  # noqa: E402


def size(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", type=Path, default=Path("results/latest"))
    p.add_argument("--boots", type=int, default=90)
    args = p.parse_args()
    source = args.run_dir.resolve()
    run = scaled(resultsfile.read_results(source), args.boots)
    results = sum(len(b.cases) for b in run.boots)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / run.run_id
        start = time.perf_counter()
        writer = rundir.RunWriter(out, run.run_id, run.started, [b.boot_id for b in run.boots])
        writer.min_interval = float("inf")  # written once at the end, as a finished run leaves it
        for boot in run.boots:
            original = source / boot.serial_log if boot.serial_log else None
            if original is not None and original.is_file():
                packed = original.name.endswith(".gz")
                log = out / "serial" / f"{boot.boot_id}.log{'.gz' if packed else ''}"
                log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(original, log)
                if not packed:  # an older run's: compressed as a boot now leaves it
                    log = boot_mod.pack(log) or log
                boot.serial_log = str(log.relative_to(out))
            writer.add_boot(boot)
        writer.finish(run.finished or run.started)
        wall = time.perf_counter() - start
        back = resultsfile.read_results(out)
        assert sum(len(b.cases) for b in back.boots) == results
        assert [c.observation for b in back.boots for c in b.cases] == [
            c.observation for b in run.boots for c in b.cases
        ]
        files = [f for f in out.rglob("*") if f.is_file()]
        rows = {
            "results.json": [f for f in files if f.name.startswith("results.json")],
            "junit.xml": [f for f in files if f.name.startswith("junit.xml")],
            "report.html": [out / "report.html"],
            "boot pages": list((out / report_html.BOOT_DIR).glob("*")),
            "summary.md": [out / "summary.md"],
            "serial logs": list((out / "serial").glob("*")) if (out / "serial").is_dir() else [],
            "whole directory": files,
        }
        print(f"{len(run.boots)} boots, {results} results (from {source}); written in {wall:.1f} s")
        for name, group in rows.items():
            print(f"  {name:<16} {size(group):8.1f} MB  ({len(group)} files)")


if __name__ == "__main__":
    main()
