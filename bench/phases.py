"""Where a run's seconds went, phase by phase, read from a finished run directory.

    python bench/phases.py results/RUN

Per boot: QEMU start to the ready marker, to SSH, to done; then the time inside the guest's cases
(the probe's own duration of each case) split by (limit, user) and by case class (the name's first
word: oom, file, huge, mremap...), and what is left over (SSH sessions, the probe starting, the
harness between cases). Medians over the run's boots. A script, not a test: it prints figures.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.report import resultsfile  # noqa: E402


def case_class(case: str) -> str:
    if ":" in case:
        return case.split(":", 1)[0]  # a suite's programs and subtests, as one class
    return case.split("_", 1)[0]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    data: dict[str, Any] = resultsfile.document(Path(argv[0]))
    boots = [b for b in data["boots"] if b.get("timings")]
    if not boots:
        print(f"{argv[0]}: no boot with timings")
        return 1
    console = Console()
    phases = Table(
        title=f"Boots of {data['run_id']} (seconds from QEMU start, median of {len(boots)})", title_justify="left"
    )
    for column in ("ready marker", "SSH", "done", "inside cases", "left over"):
        phases.add_column(column, justify="right")
    inside, left = [], []
    by_run: dict[str, list[float]] = defaultdict(list)
    by_class: dict[str, list[float]] = defaultdict(list)
    for b in boots:
        t = b["timings"]
        total = sum(c.get("duration_s") or 0.0 for c in b["cases"])
        inside.append(total)
        left.append(t.get("probe", 0.0) - t.get("ssh", 0.0) - total)
        runs: dict[str, float] = defaultdict(float)
        classes: dict[str, float] = defaultdict(float)
        for c in b["cases"]:
            runs[f"{c['memlock']}/{c['user']}"] += c.get("duration_s") or 0.0
            classes[case_class(c["case"])] += c.get("duration_s") or 0.0
        for k, v in runs.items():
            by_run[k].append(v)
        for k, v in classes.items():
            by_class[k].append(v)

    def med(key: str) -> str:
        return f"{statistics.median(b['timings'].get(key, 0.0) for b in boots):.1f}"

    phases.add_row(
        med("marker"), med("ssh"), med("probe"), f"{statistics.median(inside):.1f}", f"{statistics.median(left):.1f}"
    )
    console.print(phases)
    for title, groups in (("Inside cases, per limit/user", by_run), ("Inside cases, per case class", by_class)):
        table = Table(title=f"{title} (seconds per boot, median)", title_justify="left")
        table.add_column("group")
        table.add_column("seconds", justify="right")
        for name, values in sorted(groups.items(), key=lambda kv: -statistics.median(kv[1])):
            table.add_row(name, f"{statistics.median(values):.2f}")
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
