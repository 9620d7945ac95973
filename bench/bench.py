"""Boot-path benchmark: where the seconds go, per kernel, next to plain QEMU with no harness.

For every kernel of a matrix (default: the embedded one) it boots the same kernel and image
twice, one after the other so each has a core to itself:
  floor    plain `qemu-system-x86_64` with the harness's argv, timed until the ready marker
           appears on the serial console (no reader thread, no SSH, no Python in the loop);
  harness  vm.boot -> ready marker, SSH session open, the whole probe catalogue as root, once over
           each transport (net: virtio-net; serial: the second UART), side by side.
It prints medians over --repeat rounds. A script, not a test: figures, never assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import guest, image, kit, matrix, probe, sources, vm
from harness.cache import cache_dir
from harness.transports import net


def floor(config: vm.VMConfig, timeout: float) -> float:
    argv = vm.VMConfig(config.kernel, config.initrd, config.ram_mb, config.accel, net.free_port()).argv()
    start = time.monotonic()
    with vm.Process(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.popen.stdout is not None
        seen = b""
        while time.monotonic() - start < timeout:
            chunk = proc.popen.stdout.read1(65536)
            if not chunk:
                break
            seen = seen[-4096:] + chunk
            if vm.READY_MARKER.encode() in seen:
                return time.monotonic() - start
    raise RuntimeError(f"plain QEMU never printed the ready marker for {config.kernel}")


def harness_path(config: vm.VMConfig, img: image.Image, key: object, cases: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp, \
            vm.boot(config, Path(tmp, "serial.log"), 300) as machine:  # fmt: skip
        marker = machine.ready_after or 0.0
        endpoint = machine.endpoint(img.host_key)
        with guest.Guest(endpoint, "root", key) as session:  # type: ignore[arg-type]
            session.connect()
            ssh = time.monotonic() - machine.started
            session.run([probe.IN_GUEST, "run", *cases], 600)
            done = time.monotonic() - machine.started
    return {"marker": marker, "ssh": ssh, "done": done}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--matrix", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mx = matrix.load(args.matrix) if args.matrix else matrix.load_default()
    cache = cache_dir()
    source = sources.Kernels(sources.Context(cache))
    guests = kit.assemble(cache)
    built, key, disk = guests.probe, guests.key, guests.disk
    accel = vm.accelerator()
    console = Console(width=160)
    console.print(f"accelerator: {accel.name} ({accel.reason}); {args.repeat} rounds; {len(built.names)} cases")

    table = Table(title="Seconds from QEMU start (median)", title_justify="left")
    for header in ("kernel", "release", "boot via", "floor: marker", "net: marker", "net: ssh ready",
                   "net: probe done", "overhead", "serial: ssh ready", "serial: probe done"):  # fmt: skip
        table.add_column(header, justify="left" if header in ("kernel", "release", "boot via") else "right")
    for spec in dict.fromkeys(mx.kernels):
        kernel = source.fetch(spec)
        img = guests.image(kernel)
        config = vm.VMConfig(kernel.vmlinux or kernel.image, img.path, mx.ram_mb[0], accel.name, 0, disk)
        serial = dataclasses.replace(config, transport="serial")
        floors, runs, lines = [], [], []
        for _ in range(args.repeat):
            floors.append(floor(config, 300))
            runs.append(harness_path(config, img, key, built.names))
            lines.append(harness_path(serial, img, key, built.names))
        med = {k: statistics.median(r[k] for r in runs) for k in ("marker", "ssh", "done")}
        over = {k: statistics.median(r[k] for r in lines) for k in ("ssh", "done")}
        f = statistics.median(floors)
        table.add_row(spec.label, kernel.release, "PVH vmlinux" if kernel.vmlinux else "bzImage",
                      f"{f:.2f}", f"{med['marker']:.2f}", f"{med['ssh']:.2f}", f"{med['done']:.2f}",
                      f"{med['marker'] - f:+.2f}", f"{over['ssh']:.2f}", f"{over['done']:.2f}")  # fmt: skip
        console.print(f"{spec.label}: floor {floors}, net {runs}, serial {lines}", highlight=False)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
