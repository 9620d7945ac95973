"""Boot-path benchmark: where the seconds go, per kernel, side by side in one run.

For every kernel of a matrix (default: the embedded one) it boots the same kernel and image
one after the other, so each has the machine to itself:
  floor      plain `qemu-system-x86_64` with the harness's argv, timed until the ready marker
             appears on the serial console (no reader thread, no SSH, no Python in the loop);
  cold boot  vm.boot -> ready marker -> SSH session open, over each transport (net: virtio-net;
             serial: the second UART);
  catalogue  the whole probe catalogue once, as root (one limit/user run), after that boot;
  restored   a guest booted and saved as `harness run` saves it (harness.boot.snapshot; the seconds
             the save took), then one loaded from it: SSH and the catalogue, and whether each
             case's fingerprint equals the cold boot's.
Then it runs the whole matrix as `harness run --jobs J` does (every limit, user and case), once
with `--cold` and once with saved guests, and prints both wall times and, per boot, the seconds
to done and how many of them the OOM cases took; the matrix's first kernel alone, its runs in
one guest and spread over J guests side by side; and three nights of a part of the every-build
matrix (bookworm's builds of 6.1, main and security archive) sharing one history: the first night
without the newest build, the next with it (one new build), the third with nothing new.
It prints medians over --repeat rounds. A script, not a test: figures, never assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness import kit, run
from harness.boot import accel as accel_mod
from harness.boot import snapshot, vm
from harness.cache import cache_dir, lease
from harness.kernels import devices, sources
from harness.kit import guest, image, probe, verdict
from harness.kit.transports import net
from harness.plan import matrix


def _ready(proc: vm.Process, start: float, timeout: float, what: str) -> float:
    """Seconds from `start` until the guest's ready marker appears on the serial console (stdout)."""
    assert proc.popen.stdout is not None
    seen = b""
    while time.monotonic() - start < timeout:
        chunk = proc.popen.stdout.read1(65536)
        if not chunk:
            break
        seen = seen[-4096:] + chunk
        if vm.READY_MARKER.encode() in seen:
            return time.monotonic() - start
    raise RuntimeError(f"plain QEMU never printed the ready marker for {what}")


def floor(config: vm.VMConfig, timeout: float) -> float:
    # The harness's own argv, data disk included: without it the guest's /init waits for the disk.
    argv = dataclasses.replace(config, port=net.free_port()).argv()
    start = time.monotonic()
    with vm.Process(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        return _ready(proc, start, timeout, str(config.kernel))


def fingerprints(records: str) -> dict[str, str]:
    expectations = verdict.load()
    docs = [json.loads(line) for line in records.splitlines() if line.startswith("{")]
    return {d["case"]: verdict.fingerprint(d, expectations) for d in docs if d.get("kind") == "case"}


def harness_path(
    config: vm.VMConfig, img: image.Image, key: object, cases: list[str], store: snapshot.Store | None = None
) -> dict[str, Any]:
    """A guest as `harness run` gets one (from `store`: loaded when it has the guest, else booted
    and saved), then SSH and the catalogue once as root: seconds from QEMU's start to each."""
    with (
        tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp,
        snapshot.boot(store, config, Path(tmp, "serial.log"), 300) as machine,
    ):
        marker = machine.ready_after or 0.0
        ready = time.monotonic() - machine.started  # after the marker: the save, for a guest saved now
        endpoint = machine.endpoint(img.host_key)
        with guest.Guest(endpoint, "root", key) as session:  # type: ignore[arg-type]
            session.connect()
            ssh = time.monotonic() - machine.started
            out = session.run([probe.IN_GUEST, "run", *cases], 600).stdout
            done = time.monotonic() - machine.started
    return {"marker": marker, "ready": ready, "ssh": ssh, "done": done, "records": out, "loaded": machine.restored}


def restored(config: vm.VMConfig, img: image.Image, key: object, cases: list[str]) -> dict[str, Any]:
    """A guest booted and saved (the seconds the save took), then one loaded from it, as
    `harness run` does: the loaded guest's seconds to SSH and to the catalogue done, and the
    state file's size."""
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        store = snapshot.Store(Path(tmp), lease.UNLEASED)  # a folder of its own, outside any cache
        first = harness_path(config, img, key, cases, store)
        again = harness_path(config, img, key, cases, store)
        assert again["loaded"], "the second guest was booted, not loaded"
        state = next(Path(tmp).glob(f"*/{snapshot.STATE}"))
        return {**again, "save": first["ready"] - first["marker"], "state_mb": state.stat().st_size / 2**20}


def whole_matrix(
    mx: matrix.Matrix, jobs: int, cache: Path, cold: bool, accel_name: str
) -> tuple[float, int, dict[str, dict[str, float]]]:
    """The matrix as `harness run --jobs J [--cold]` runs it: wall seconds, boots whose guests
    were loaded, and per kernel label its boot's seconds to done and inside the OOM cases."""
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        start = time.monotonic()
        options = run.Options(jobs=jobs, results=Path(tmp), cache=cache, cold=cold, accel=accel_name)
        _, boots = run.execute(mx, options, lambda line: None)
        wall = time.monotonic() - start
    per: dict[str, dict[str, float]] = {}
    for b in boots:
        oom = sum(c.duration_s for c in b.cases if c.case.startswith("oom_"))
        per[b.kernel.label if b.kernel else b.boot_id] = {"done": b.timings.get("probe", float("nan")), "oom": oom}
    return wall, sum(1 for b in boots if b.restored), per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--matrix", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="VMs at once for the whole-matrix run (default: 2)")
    parser.add_argument(
        "--accel",
        choices=accel_mod.MODES,
        help=f"kvm, tcg or auto (default: {accel_mod.ENV}, else auto: KVM when its check guest runs on the CPU)",
    )
    args = parser.parse_args()
    mx = matrix.load(args.matrix) if args.matrix else matrix.load_default()
    cache = cache_dir()
    source = sources.Kernels(sources.Context(cache))
    guests = kit.assemble(cache)
    built, key, disk = guests.probe, guests.key, guests.disk
    accel = accel_mod.choose(accel_mod.mode(args.accel))
    console = Console(width=200)
    console.print(f"accelerator: {accel.name} ({accel.reason}); {args.repeat} rounds; {len(built.names)} cases")

    rows = []
    for spec in dict.fromkeys(mx.kernels):
        kernel = source.fetch(spec)
        img = guests.image(devices.choose(kernel))
        config = vm.VMConfig(kernel.vmlinux or kernel.image, img.path, mx.ram_mb[0], accel.name, 0, disk)
        serial = dataclasses.replace(config, transport="serial")
        floors, runs, lines, saved = [], [], [], []
        for _ in range(args.repeat):
            floors.append(floor(config, 300))
            runs.append(harness_path(config, img, key, built.names))
            lines.append(harness_path(serial, img, key, built.names))
            saved.append(restored(config, img, key, built.names))
        med = {k: statistics.median(r[k] for r in runs) for k in ("marker", "ssh", "done")}
        over = {k: statistics.median(r[k] for r in lines) for k in ("ssh", "done")}
        back = {k: statistics.median(r[k] for r in saved) for k in ("save", "ssh", "done", "state_mb")}
        # Restored guests against cold ones, case by case: a fingerprint that differs is a finding
        # a restore would change (cold boots are compared among themselves for the noise).
        cold = [fingerprints(r["records"]) for r in runs]
        warm = [fingerprints(r["records"]) for r in saved]
        differ = sum(1 for c in cold[0] if any(w.get(c) != cold[0][c] for w in warm))
        noise = sum(1 for c in cold[0] if any(o.get(c) != cold[0][c] for o in cold[1:]))
        rows.append((spec.label, kernel.release, statistics.median(floors), med, over, back, differ, noise))
        timings = [{k: v for k, v in r.items() if k != "records"} for r in (*runs, *lines, *saved)]
        console.print(f"{spec.label}: floor {floors}; net, serial, restored {timings}", highlight=False)

    cold_wall, _, cold_per = whole_matrix(mx, args.jobs, cache, cold=True, accel_name=accel.name)
    wall, loaded, per = whole_matrix(mx, args.jobs, cache, cold=False, accel_name=accel.name)
    if loaded < len(per):  # the cache had not saved these guests yet: that run saved them
        wall, loaded, per = whole_matrix(mx, args.jobs, cache, cold=False, accel_name=accel.name)
    table = Table(
        title=f"Seconds (median of {args.repeat}; the whole matrix once, --jobs {args.jobs})", title_justify="left"
    )
    headers = (
        "kernel",
        "release",
        "floor: marker",
        "cold: marker",
        "cold: SSH",
        "catalogue (root, once)",
        "save",
        "restored: SSH",
        "restored: catalogue",
        "restored vs cold: cases differing (cold vs cold)",
        "serial: SSH",
        "serial: catalogue",
        "matrix cold: boot done",
        "matrix restored: boot done",
        "matrix: OOM cases",
    )
    for header in headers:
        table.add_column(header, justify="left" if header in ("kernel", "release") else "right")
    nan = {"done": float("nan"), "oom": float("nan")}
    for label, release, f, med, over, back, differ, noise in rows:
        c, m = cold_per.get(label, nan), per.get(label, nan)
        table.add_row(
            label,
            release,
            f"{f:.2f}",
            f"{med['marker']:.2f}",
            f"{med['ssh']:.2f}",
            f"{med['done'] - med['ssh']:.2f}",
            f"{back['save']:.2f}",
            f"{back['ssh']:.2f}",
            f"{back['done'] - back['ssh']:.2f}",
            f"{differ} ({noise})",
            f"{over['ssh']:.2f}",
            f"{over['done'] - over['ssh']:.2f}",
            f"{c['done']:.1f}",
            f"{m['done']:.1f}",
            f"{m['oom']:.1f}",
        )
    console.print(
        f"restored guests: state files of {statistics.median(r[5]['state_mb'] for r in rows):.0f} MiB "
        "(median); harness.boot.snapshot saves a guest once at its ready marker (QEMU's migration, zstd)"
    )
    console.print(table)
    results = sum(len(one.cases) for plan in matrix.expand(mx, built.names) for one in plan.runs)
    console.print(
        f"whole matrix: {len(per)} boots, {results} results, --jobs {args.jobs}: {cold_wall:.1f} s wall "
        f"booting every guest (--cold), {wall:.1f} s with saved guests ({loaded} boots loaded theirs)"
    )
    one_kernel(mx, args, cache, accel.name, console)
    nights(args, cache, accel.name, console)
    return 0


def one_kernel(mx: matrix.Matrix, args: argparse.Namespace, cache: Path, accel_name: str, console: Console) -> None:
    """A run of one kernel (a developer's loop, `run --kernel`), its runs in one guest (--jobs 1)
    and spread over --jobs guests side by side (harness.boot.lanes), alternating, saved guests."""
    single = dataclasses.replace(mx, kernels=mx.kernels[:1])
    whole_matrix(single, 1, cache, cold=False, accel_name=accel_name)  # its guest saved, if it was not
    walls: dict[int, list[float]] = {1: [], args.jobs: []}
    for _ in range(args.repeat):
        for jobs in walls:
            walls[jobs].append(whole_matrix(single, jobs, cache, cold=False, accel_name=accel_name)[0])
    one, several = (statistics.median(walls[j]) for j in (1, args.jobs))
    console.print(
        f"one kernel ({single.kernels[0].label}, every limit, user and case): {one:.1f} s wall in one guest, "
        f"{several:.1f} s in {args.jobs} guests side by side ({several / one:.2f}x; medians of {args.repeat}: "
        f"{walls})"
    )


# A part of guest-tests/matrices/debian-every-build.yaml whose nights take minutes, not an hour: one
# stable line's every build. The whole (88 builds) is a figure in docs/benchmarks.md.
NIGHTS = """
kernels:
  - debian: {suite: [bookworm, bookworm-security], builds: all}
ram: [256M]
memlock: [default, 64K, 0, unlimited]
users: [root, user]
cases: all
"""


def nights(args: argparse.Namespace, cache: Path, accel_name: str, console: Console) -> None:
    """Night after night with one history (harness.reuse): a boot whose inputs a stored boot had takes
    its results. Saved guests as a nightly has them (the first night saves what it lacks)."""
    mx = matrix.parse(NIGHTS, "bench: bookworm's every build")
    builds = sources.expand(mx.kernels, sources.Context(cache))
    figures = []
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        options = run.Options(jobs=args.jobs, results=Path(tmp), cache=cache, accel=accel_name)
        options = dataclasses.replace(options, history=Path(tmp) / "history.sqlite")
        for name, kernels in (("first night", builds[:-1]), ("one new build", builds), ("nothing new", builds)):
            start = time.monotonic()
            _, boots = run.execute(dataclasses.replace(mx, kernels=kernels), options, lambda line: None)
            reused = sum(1 for b in boots if b.reused_from)
            figures.append(f"{name} {time.monotonic() - start:.1f} s ({len(boots)} boots, {reused} reused)")
    console.print(f"every build of bookworm's 6.1, --jobs {args.jobs}, one history: {'; '.join(figures)}")


if __name__ == "__main__":
    sys.exit(main())
