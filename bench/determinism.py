"""Determinism check: do several runs of one matrix give identical verdicts and fingerprints?

    python bench/determinism.py results/RUN1 results/RUN2 results/RUN3

Keys each result by (kernel release, RAM, case, limit, user) and prints every key whose outcome
or behaviour fingerprint differs between the runs, then a one-line summary. A script, not a
test: it reads finished runs and prints figures.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

Key = tuple[str, int, str, str, str]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.report import resultsfile  # noqa: E402


def load(run_dir: Path) -> dict[Key, tuple[str, str]]:
    data: dict[str, Any] = resultsfile.document(run_dir)
    out: dict[Key, tuple[str, str]] = {}
    for boot in data["boots"]:
        release = (boot.get("kernel") or {}).get("release") or boot["boot_id"]
        for case in boot["cases"]:
            key = (release, boot["ram_mb"], case["case"], case["memlock"], case["user"])
            out[key] = (case["outcome"], case.get("fingerprint", ""))
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    runs = [load(Path(a)) for a in argv]
    keys = sorted(set().union(*runs))
    differing = 0
    outcomes: Counter[str] = Counter()
    for key in keys:
        seen = [run.get(key, ("missing", "")) for run in runs]
        outcomes[seen[0][0]] += 1
        if len(set(seen)) > 1:
            differing += 1
            print(" ".join(map(str, key)))
            for name, (outcome, fp) in zip(argv, seen, strict=True):
                print(f"    {name}: {outcome} {fp}")
    counts = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
    print(f"{len(runs)} runs, {len(keys)} results each ({counts}); {differing} differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
