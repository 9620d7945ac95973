"""Which cases behave differently on which kernels, in one run (by behaviour fingerprint).

    python bench/kernel_diff.py results/latest

For every (case, limit, user) whose fingerprint is not the same on all kernels, prints the groups
of kernels that agree, with what they observed; then every deviation from the documentation,
grouped by case. A script for reading a finished run, not a test.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.report import resultsfile  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    data: dict[str, Any] = resultsfile.document(Path(argv[0]))
    kernels = [(b.get("kernel") or {}).get("release") or b["boot_id"] for b in data["boots"]]
    behaviour: dict[tuple[str, str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    deviations: dict[str, list[str]] = defaultdict(list)
    for release, boot in zip(kernels, data["boots"], strict=True):
        for c in boot["cases"]:
            fp = c.get("fingerprint") or c["outcome"]
            behaviour[(c["case"], c["memlock"], c["user"])][fp].append(release)
            if c["outcome"] not in ("pass", "not_applicable"):
                deviations[c["case"]].append(
                    f"{release} memlock={c['memlock']} user={c['user']}: {c['outcome']}: {c['message']}"
                )
    split = {k: v for k, v in behaviour.items() if len(v) > 1}
    print(f"{len(kernels)} kernels: {', '.join(kernels)}")
    print(f"\n{len(split)} of {len(behaviour)} (case, limit, user) behave differently across kernels")
    for (case, memlock, user), groups in sorted(split.items()):
        print(f"\n{case} memlock={memlock} user={user}")
        for fp, releases in sorted(groups.items(), key=lambda g: -len(g[1])):
            print(f"  {', '.join(releases)}\n      {fp}")
    total = sum(len(v) for v in deviations.values())
    print(f"\n{total} results deviate from the documented expectations")
    for case, lines in sorted(deviations.items()):
        print(f"\n{case} ({len(lines)})")
        for line in lines:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
