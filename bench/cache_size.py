"""What a matrix's kernels take in the cache, and the cache folder by folder.

    python bench/cache_size.py [MATRIX] [--cache DIR]

Resolves the matrix's kernels (the embedded default matrix without one), finds the folder each is
kept in (Source.cached) and prints how many are there, their size on disk (total, median, largest)
and what one is made of, then `harness cache`'s figures for every folder. A script, not a test: it
prints figures and asserts nothing; it downloads nothing (a kernel not in the cache is counted
as missing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.cache import blocks, cache_dir, disk_size, disk_usage, usage  # noqa: E402
from harness.kernels import sources  # noqa: E402
from harness.kernels.sources.base import Context  # noqa: E402
from harness.plan import matrix


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("matrix", nargs="?", type=Path)
    p.add_argument("--cache", type=Path)
    args = p.parse_args()
    cache = args.cache or cache_dir()
    mx = matrix.load(args.matrix) if args.matrix else matrix.load_default()
    ctx = Context(cache, log=lambda s: None)
    kernels = sources.Kernels(ctx)
    specs = sources.expand(mx.kernels, ctx)
    folders = [kernels.cached(spec) for spec in specs]
    present = [f for f in folders if f is not None and f.is_dir()]
    sizes = [disk_usage(f) for f in present]
    parts: Counter[str] = Counter()
    for f in present:
        for item in f.iterdir():
            name, size = (item.name + "/", disk_usage(item)) if item.is_dir() else (item.name, blocks(item))
            parts[name] += size
    print(
        f"{args.matrix or 'default matrix'}: {len(specs)} kernels, {len(present)} in the cache "
        f"({sum(f is None for f in folders)} kept nowhere, {len(folders) - len(present)} missing)"
    )
    if sizes:
        print(
            f"  their folders: {disk_size(sum(sizes))} in all; median {disk_size(int(statistics.median(sizes)))}, "
            f"largest {disk_size(max(sizes))}"
        )
        print("  made of: " + ", ".join(f"{name} {disk_size(n)}" for name, n in parts.most_common(5)))
    print(f"cache {cache}:")
    areas = usage(cache)
    for a in areas:
        print(f"  {a.name:12} {disk_size(a.bytes):>10} {a.entries:6} entries")
    print(f"  {'total':12} {disk_size(sum(a.bytes for a in areas)):>10}")


if __name__ == "__main__":
    main()
