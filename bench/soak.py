"""Soak: many boots in a row, good ones and injected faults, then count what leaked or was lost.

    python bench/soak.py [--boots 100] [--suite bookworm]

Each boot runs a few probe cases through boot.run_boot, the runner's own path, with one of these:
  good        nothing injected
  panic       a case crashes the guest kernel (sysrq), the rest must still run after a reboot
  qemu-kill   QEMU is SIGKILLed from outside during a hanging case
  ssh-drop    the guest's dropbear serving the probe is killed during a hanging case
  boot-panic  the kernel panics while booting (80M of RAM: it cannot unpack the initramfs)
At the end it prints QEMU processes left, temp dirs left, the harness's open file descriptors
before and after, and results lost (planned cases with no result in results.json). All must be
zero (descriptors: equal). A script, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from harness import boot, judge, kit
from harness.boot import accel as accel_mod
from harness.boot import vm
from harness.boot.live import Live
from harness.cache import cache_dir
from harness.kernels import devices, sources
from harness.kernels.sources.debian import DebianKernel
from harness.kit import guest, image, verdict
from harness.plan import matrix
from harness.report import resultsfile, rundir
from harness.results import BootResult

SCENARIOS = ("good", "panic", "qemu-kill", "ssh-drop", "boot-panic")


def qemu_pids() -> set[int]:
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[0].endswith(b"qemu-system-x86_64"):
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("harness-*")}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def inject(result: BootResult, live: Live, fault: Callable[[vm.VM], None]) -> None:
    """Once the first case has a result (the hanging one has started), inject the fault."""

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if result.cases and live.vms:
                time.sleep(1.0)
                fault(next(iter(live.vms)))
                return
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--boots", type=int, default=100)
    parser.add_argument("--suite", default="bookworm")
    args = parser.parse_args()

    cache = cache_dir()
    spec = DebianKernel((args.suite,))
    kernel = sources.Kernels(sources.Context(cache)).fetch(spec)
    guests = kit.assemble(cache)
    img, key, disk = guests.image(devices.choose(kernel)), guests.key, guests.disk
    judging = judge.Judge(verdict.load())
    accel = accel_mod.for_host()

    qemu_before, temps_before, fds_before = qemu_pids(), temp_dirs(), open_fds()
    outcomes: Counter[str] = Counter()
    lost = 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-") as out:
        for i in range(args.boots):
            scenario = SCENARIOS[i % len(SCENARIOS)]
            cases = {
                "panic": ("limits", "_selftest_panic", "map_locked_over"),
                "qemu-kill": ("limits", "_selftest_hang", "map_locked_over"),
                "ssh-drop": ("limits", "_selftest_hang", "map_locked_over"),
            }.get(scenario, ("limits", "map_locked_over"))
            ram = 80 if scenario == "boot-panic" else 256
            plan = matrix.BootPlan(
                f"soak-{i:03d}-{scenario}",
                spec,
                ram,
                (matrix.RunPlan(None, "root", cases),),
                matrix.Timeouts(boot=120, case=60),
            )
            result = BootResult(plan.id, kernel.info(), ram)
            run_dir = Path(out, plan.id)
            writer = rundir.RunWriter(run_dir, plan.id, rundir.now(), [plan.id])
            live = Live()
            if scenario == "qemu-kill":
                inject(result, live, lambda machine: os.kill(machine.pid, signal.SIGKILL))
            elif scenario == "ssh-drop":
                inject(result, live, lambda machine: drop_ssh(machine, img, key))
            ctx = boot.BootContext(
                plan=plan,
                kernel=kernel,
                image=img,
                disk=disk,
                key=key,
                accel=accel.name,
                judge=judging.results,
                run_dir=run_dir,
            )
            boot.run_boot(ctx, result, writer.update, live)
            saved = resultsfile.document(run_dir)
            have = {c["case"] for c in saved["boots"][0]["cases"]}
            lost += len(set(cases) - have)
            for c in result.cases:
                outcomes[f"{scenario}:{c.case}:{c.outcome.value}"] += 1
            print(
                f"{i + 1:3d}/{args.boots} {scenario:10s} reboots={result.reboots} retries={result.retries} "
                f"{[c.outcome.value for c in result.cases]}",
                flush=True,
            )
    elapsed = time.monotonic() - start
    print(f"\n{args.boots} boots in {elapsed:.0f} s ({elapsed / args.boots:.1f} s each)")
    for key_, n in sorted(outcomes.items()):
        print(f"  {n:4d} {key_}")
    print(f"QEMU processes left: {len(qemu_pids() - qemu_before)}")
    print(f"temp dirs left: {len(temp_dirs() - temps_before)}")
    print(f"open file descriptors: {fds_before} before, {open_fds()} after")
    print(f"results lost: {lost}")
    return 0


def drop_ssh(machine: vm.VM, img: image.Image, key: object) -> None:
    with guest.Guest(guest.Endpoint(machine.config.port, img.host_key), "root", key) as g:  # type: ignore[arg-type]
        g.connect()
        g.run(
            [
                "sh",
                "-c",
                'for p in $(pidof dropbear); do [ "$p" = "$PPID" ] || '
                '[ "$p" = "$(cat /tmp/dropbear.pid)" ] || kill -9 "$p"; done',
            ],
            30,
        )


if __name__ == "__main__":
    sys.exit(main())
