"""How report.html scales: a real run's boots copied up to N boots (default 110, about every Debian
build), rendered, measured, and opened in headless chromium.

    python bench/report.py [RUN_DIR] [--boots N]

Prints the size of report.html, of the boot pages and of the whole directory, the render time, and
two browser figures for report.html: when its last byte was parsed (performance.now() at the end
of the document) and the wall time of a screenshot of its first screen, minus that of a blank
page (chromium's own start). A script, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.report import overview, report_html, resultsfile, rundir  # noqa: E402
from harness.results import RunRecord  # noqa: E402

PARSED = "<script>document.title='parsed '+performance.now().toFixed(0)</script>"


def scaled(run: RunRecord, boots: int) -> RunRecord:
    """`boots` boots, each a copy of one of the run's, with its own id and a later kernel version."""
    copies = []
    for i in range(boots):
        b = run.boots[i % len(run.boots)]
        k = b.kernel and dataclasses.replace(b.kernel, version=f"{b.kernel.version}+{i:03d}")
        boot_id = f"{b.boot_id}-{i:03d}"
        cases = [dataclasses.replace(c, boot_id=boot_id) for c in b.cases]
        copies.append(dataclasses.replace(b, boot_id=boot_id, kernel=k, cases=cases))
    return dataclasses.replace(run, boots=copies)


def chromium(*args: str, home: Path) -> tuple[float, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("chromium is not installed (make test-deps installs it)")
    start = time.perf_counter()
    proc = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={home}",
            "--window-size=1600,1000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    return time.perf_counter() - start, proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", type=Path, default=Path("results/latest"))
    p.add_argument("--boots", type=int, default=110)
    p.add_argument("--tries", type=int, default=3, help="browser runs per figure; the median is printed")
    args = p.parse_args()
    run = scaled(resultsfile.read_results(args.run_dir), args.boots)
    results = sum(len(b.cases) for b in run.boots)
    print(f"{len(run.boots)} boots, {results} results (from {args.run_dir})")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        out.mkdir()
        start = time.perf_counter()
        rundir.write_views(out, run)
        render_s = time.perf_counter() - start
        index = out / overview.HTML_FILE
        boot_pages = sorted((out / report_html.BOOT_DIR).glob("*.html"), key=lambda f: f.stat().st_size)
        total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(
            f"report.html {index.stat().st_size / 1e6:.2f} MB; {len(boot_pages)} boot pages, largest "
            f"{boot_pages[-1].stat().st_size / 1e6:.2f} MB; directory {total / 1e6:.1f} MB; written in {render_s:.1f} s"
        )

        probe = Path(tmp) / "parsed.html"
        probe.write_text(index.read_text(encoding="utf-8").replace("</body>", PARSED + "</body>"), encoding="utf-8")
        blank = Path(tmp) / "blank.html"
        blank.write_text("<!DOCTYPE html><title>blank</title>")
        home = Path(tmp) / "home"
        parsed, shot, base = [], [], []
        for i in range(args.tries):
            _, dom = chromium("--dump-dom", probe.as_uri(), home=home)
            parsed.append(float(dom.split("<title>parsed ", 1)[1].split("<", 1)[0]) / 1000)
            base.append(chromium(f"--screenshot={tmp}/b{i}.png", blank.as_uri(), home=home)[0])
            shot.append(chromium(f"--screenshot={tmp}/r{i}.png", index.as_uri(), home=home)[0])
        print(
            f"report.html in chromium (median of {args.tries}): parsed {statistics.median(parsed):.2f} s; "
            f"first screen {statistics.median(shot) - statistics.median(base):.2f} s "
            f"({statistics.median(shot):.2f} s wall, a blank page {statistics.median(base):.2f} s)"
        )


if __name__ == "__main__":
    main()
