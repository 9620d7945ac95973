"""A run: matrix -> plan of boots -> kernels and images -> boots in parallel -> verdicts -> reports.

This module connects the stages; each has its owner: `matrix` plans, `sources` resolves and
fetches kernels, `kit` builds the guest images, `boot` runs one boot, `rundir` writes the run
directory, `history` keeps the results across runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from harness import __version__, boot, history, judge, kit, manifest, reuse, versions
from harness.boot import accel as accel_mod
from harness.boot import snapshot, vm
from harness.boot.live import Cancelled, Live
from harness.cache import lease
from harness.debian import aptsources
from harness.errors import InfraError, UserError
from harness.kernels import Kernel, devices, sources
from harness.kernels.sources import KernelSpec
from harness.kit import known as known_mod
from harness.kit import probe, suites, transports, userland, verdict
from harness.kit.image import Image
from harness.plan import matrix
from harness.report import candidates, progress, rundir
from harness.results import BootResult, Outcome


@dataclass(frozen=True)
class Options:
    jobs: int
    results: Path
    cache: Path
    mirror: str | None = None
    insecure: bool = False
    accel: str = accel_mod.AUTO  # auto (KVM if the check proves it, TCG after KVM fails a boot), kvm or tcg
    shard: tuple[int, int] | None = None  # (I, N): run the I-th of N deterministic slices of the boots
    boots: tuple[str, ...] = ()  # run only these boot ids (replay); () for all
    history: Path | None = None  # SQLite history the finished run is appended to; None: none
    cold: bool = False  # boot every guest: neither load nor save saved guests (harness.boot.snapshot)
    known: Path = known_mod.KNOWN_FILE  # findings expected to fail (harness.kit.known)
    fresh: bool = False  # boot everything: take no boot's results from the history (harness.reuse)

    def sources(self, log: Callable[[str], None], leases: lease.Leases | None = None) -> sources.Context:
        return sources.Context(self.cache, log, self.mirror, self.insecure, leases or lease.Leases())


@dataclass(frozen=True)
class Prepared:
    """Everything a kernel's boots need before QEMU starts, or the reason they cannot start."""

    kernel: Kernel | None = None
    image: Image | None = None
    error: str = ""
    devices: devices.Devices | None = None  # the guest's NIC, disk and filesystem (harness.kernels.devices)
    userland: tuple[str, str] = ("", "")  # the guest's programs (harness.kit.userland), and why
    suites: Mapping[str, suites.Built | str] = dataclasses.field(default_factory=dict)  # built, or why not

    def transport(self, plan: matrix.BootPlan) -> tuple[str, str]:
        """How this kernel's boot of `plan` reaches its guest, and why."""
        nic = self.devices.nic if self.devices else None
        return transports.choose(plan.transport, nic.driver if nic else None)


def select(plans: Sequence[matrix.BootPlan], options: Options) -> list[matrix.BootPlan]:
    """The boots this process runs: a shard's slice, or the boots named (replay), else all.

    Shard I of N takes every N-th boot starting at the I-th, in plan order: deterministic for one
    matrix and probe, and kernels listed together (often of one age and boot time) spread over shards.
    """
    chosen = list(plans)
    if options.boots:
        ids = [p.id for p in plans]
        unknown = [b for b in options.boots if b not in ids]
        if unknown:
            raise UserError(f"--boot {unknown[0]}: the run has no such boot; it has {', '.join(ids)}")
        chosen = [p for p in chosen if p.id in options.boots]
    if options.shard is not None:
        index, count = options.shard
        chosen = chosen[index - 1 :: count]
    return chosen


def check_memory(mx: matrix.Matrix, meminfo: Path = Path("/proc/meminfo")) -> None:
    """Guest RAM this host does not have fails before anything is downloaded, not after a boot."""
    try:
        lines = meminfo.read_text().splitlines()
        total_kb = next(int(line.split()[1]) for line in lines if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return  # not Linux, or an odd /proc: QEMU will say
    for ram in mx.ram_mb:
        if ram << 10 > total_kb:
            raise UserError(
                f"{mx.source}: ram: {ram}M is more than this host's memory ({total_kb >> 10}M); give a smaller size"
            )


def prepare(
    specs: Sequence[KernelSpec],
    unresolved: Mapping[KernelSpec, InfraError],
    source: sources.Kernels,
    guests: kit.Kit,
    log: Callable[[str], None],
    libc: str = userland.AUTO,
    wanted: Sequence[str] = (),
    ready: Callable[[], None] = lambda: None,
) -> dict[KernelSpec, Prepared]:
    """Fetch every kernel, build the guest suites `wanted` for it and its image; a kernel that cannot
    be had fails only its own boots, a suite that cannot be built only its own cases."""
    prepared: dict[KernelSpec, Prepared] = {}
    mirror = functools.partial(aptsources.mirror_from, source.ctx.mirror, os.environ)
    for spec in specs:
        try:
            if spec in unresolved:
                raise unresolved[spec]
            kernel = source.fetch(spec)
            way = userland.choose(libc, versions.release_version(kernel.release))
            built = _suites(kernel, wanted, source.ctx, log)
            hardware = devices.choose(kernel)  # the one choice: the image, the boots and the manifest use it
            image = guests.image(hardware, guests.base_of(way[0], mirror, log), built)
            prepared[spec] = Prepared(kernel, image, devices=hardware, userland=way, suites=built)
            if way[0] != userland.GLIBC:
                log(f"kernel {spec.label}: {way[0]} userland ({way[1]})")
            log(f"kernel {spec.label}: {kernel.release} ({kernel.version or kernel.source})")
            if kernel.modules_dir is None:  # its drivers built in: its .config says which, when known
                where = f" ({kernel.config_from})" if kernel.config_from else ""
                known = f"from its config {kernel.config}{where}" if kernel.config else f"no config known{where}"
                log(f"kernel {spec.label}: {hardware.summary()}, {known}")
        except InfraError as e:
            prepared[spec] = Prepared(error=str(e))
            log(f"kernel {spec.label}: {e}")
        ready()
    return prepared


def _suites(
    kernel: Kernel, wanted: Sequence[str], ctx: sources.Context, log: Callable[[str], None]
) -> dict[str, suites.Built | str]:
    """Each wanted suite's programs for `kernel`, or why there are none."""
    built: dict[str, suites.Built | str] = {}
    for name in wanted:
        try:
            b = suites.get(name).build(kernel, ctx, log)
        except InfraError as e:
            built[name] = f"{name} could not be built for this kernel: {e}"
            log(f"kernel {kernel.label}: {built[name]}")
            continue
        built[name] = b
        log(f"kernel {kernel.label}: {name} from {b.provenance.get('what')}, {len(b.programs)} programs")
    return built


def execute(
    mx: matrix.Matrix,
    options: Options,
    log: Callable[[str], None],
    live: Live | None = None,
    matrix_text: str = "",
    pinned: Mapping[KernelSpec, Kernel] | None = None,
    replay_of: manifest.ReplayOf | None = None,
    board: progress.Board | None = None,
) -> tuple[Path, list[BootResult]]:
    """Run a matrix end to end; returns the run directory and the boot results (also on disk).

    `pinned` kernels are used as they are instead of being resolved (replay); `replay_of` goes into
    the manifest (what a replay reproduces); `board` follows the run (the live display).
    """
    live = live or Live()
    board = board or progress.Board()
    rundir.check_writable(options.results)
    check_memory(mx)
    built = probe.build()
    # Every cache entry the run uses, leased before it is looked at and held until the run ends, so
    # `harness cache prune` leaves it; a run that dies outright lets go as it dies.
    with lease.Leases() as leases:
        return _execute(mx, options, log, live, board, built, leases, matrix_text, pinned, replay_of)


def _execute(
    mx: matrix.Matrix,
    options: Options,
    log: Callable[[str], None],
    live: Live,
    board: progress.Board,
    built: probe.Probe,
    leases: lease.Leases,
    matrix_text: str,
    pinned: Mapping[KernelSpec, Kernel] | None,
    replay_of: manifest.ReplayOf | None,
) -> tuple[Path, list[BootResult]]:
    ctx = options.sources(log, leases)
    # A spec of many builds stands for one kernel per build: the plan has a boot for each.
    mx = dataclasses.replace(mx, kernels=sources.expand(mx.kernels, ctx))
    planned = matrix.expand(mx, built.names)
    plans = select(planned, options)
    judging = judge.Judge(verdict.load(), known_mod.load_known(options.known))
    source = sources.Kernels(ctx, pinned)
    specs = list(dict.fromkeys(p.kernel for p in plans))
    # Kernels that need no network first: bad input is found before anything is downloaded.
    specs.sort(key=lambda s: not sources.source_of(s).local)
    unresolved: dict[KernelSpec, InfraError] = {}
    for spec in specs:
        try:
            source.resolve(spec)
        except InfraError as e:  # this kernel's boots fail; the rest of the night goes on
            unresolved[spec] = e
    accel = accel_mod.Current.of(options.accel, log, options.cache)
    live.accel, live.log = accel, log
    log(f"accelerator: {accel.name} ({accel.start.reason})")
    saved = None if options.cold else snapshot.Store.of(options.cache, leases)

    run_id, run_dir = rundir.create(options.results)
    order = [p.id for p in plans]
    writer = rundir.RunWriter(run_dir, run_id, rundir.now(), order, candidates.Finder(options.cache), judging.known)
    log(f"results: {run_dir}")
    results = {
        p.id: BootResult(p.id, kernel=None, ram_mb=p.ram_mb, accelerator=accel.name, qemu_version=vm.qemu_version())
        for p in plans
    }
    for r in results.values():
        writer.add_boot(r)

    board.plan(len(specs), {p.id: sum(len(r.cases) for r in p.runs) for p in plans}, live.memory.waiting)
    guests = kit.assemble(options.cache, built, leases)
    wanted = sorted({s[0] for p in plans for r in p.runs for c in r.cases if (s := suites.split(c))})
    prepared = prepare(specs, unresolved, source, guests, log, mx.userland, wanted, board.kernel_ready)
    for p in plans:
        k = prepared[p.kernel].kernel
        results[p.id].kernel = k.info() if k else None
    setup = Setup(mx, matrix_text, options, accel, guests, prepared, planned, plans, replay_of)
    writer.write_manifest(setup.manifest(results))

    def publish(result: BootResult, flush: bool = True) -> None:
        writer.update(result, flush)
        board.boot_update(result)

    def context(plan: matrix.BootPlan) -> boot.BootContext | None:
        """The boot's context, or None (its results filled with why) when its kernel or image is missing."""
        prep, result = prepared[plan.kernel], results[plan.id]
        if prep.kernel is None or prep.image is None:
            result.error = prep.error or "kernel or image missing"
            boot.fill(result, plan.runs, Outcome.INFRA_ERROR, result.error)
            return None
        way, why = prep.transport(plan)
        if way != transports.PREFERRED:
            log(f"boot {plan.id}: over {way} ({why})")
        hw = prep.devices
        assert hw is not None, "a prepared kernel has its devices"
        ctx = boot.BootContext(
            plan=plan,
            kernel=prep.kernel,
            image=prep.image,
            disk=guests.disk_for(hw),
            key=guests.key,
            accel=accel.name,
            judge=judging.results,
            run_dir=run_dir,
            transport=way,
            devices=hw,
            suites=prep.suites,
            saved=saved,
        )
        result.inputs = reuse.inputs(boot.vm_config(ctx), built.sha256, plan)
        return ctx

    contexts: dict[str, boot.BootContext | None] = {}
    reusing = reuse.Reuse(None if options.fresh else options.history, judging)

    def reused() -> list[matrix.BootPlan]:
        """The boots whose inputs a stored boot had take its results (harness.reuse) and are done at
        once, as are those without a kernel; the rest, to boot."""
        to_boot = []
        for p in plans:
            result, bctx = results[p.id], contexts.setdefault(p.id, context(p))
            if bctx is not None and reusing.fill(p, result):
                log(f"boot {p.id}: the results of run {result.reused_from}, which booted the same inputs")
            elif bctx is not None:
                to_boot.append(p)
                continue
            board.boot_started(p.id)
            publish(result)
            log(board.boot_done(p.id))
        return to_boot

    # Cores a matrix of fewer boots would leave idle go to its boots' runs (harness.boot.lanes): one
    # kernel on two cores is two guests; a matrix of as many boots as cores, one guest each.
    guests_per_boot = 1

    def one(plan: matrix.BootPlan) -> None:
        board.boot_started(plan.id)
        bctx = contexts[plan.id]
        assert bctx is not None
        boot.run_boot(bctx, results[plan.id], publish, live, guests=guests_per_boot)

    futures: dict[Future[None], str] = {}
    with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="boot") as pool:
        try:
            to_boot = reused()
            guests_per_boot = max(1, options.jobs // max(1, len(to_boot)))
            futures = {pool.submit(one, p): p.id for p in to_boot}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    exc = fut.exception()
                    if exc is not None and not isinstance(exc, Cancelled):
                        raise exc
                    log(board.boot_done(futures[fut]))
        except BaseException:
            live.cancel()
            for fut in futures:
                fut.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # first: no boot thread may still be adding cases
            for p in plans:
                boot.fill(results[p.id], p.runs, Outcome.INFRA_ERROR, "interrupted before this case ran")
                if live.cancelled.is_set():
                    results[p.id].error = results[p.id].error or "run interrupted"
                writer.update(results[p.id], flush=False)
            writer.write_manifest(setup.manifest(results))
            leases.close()  # the manifest read the data disk: the run's last use of the cache
            writer.finish(rundir.now(), interrupted=live.cancelled.is_set())
            record_history(options.history, run_dir, log)
    return run_dir, [results[p.id] for p in plans]


def record_history(path: Path | None, run_dir: Path, log: Callable[[str], None]) -> None:
    """Append a run to the history. A history that cannot be written never costs the run's files."""
    if path is None:
        return
    try:
        with history.History(path) as db:
            added = db.import_run(run_dir)
        log(f"history: {added} results added to {path}")
    except (UserError, InfraError) as e:
        log(f"history: not recorded ({e}); `harness history import {run_dir}` adds the run later")


@dataclass(frozen=True)
class Setup:
    """How a run was set up: what its manifest records."""

    mx: matrix.Matrix
    matrix_text: str
    options: Options
    accel: accel_mod.Current
    kit: kit.Kit
    prepared: Mapping[KernelSpec, Prepared]
    planned: Sequence[matrix.BootPlan]  # every boot of the matrix
    plans: Sequence[matrix.BootPlan]  # those this run ran (a shard's, or a replay's)
    replay_of: manifest.ReplayOf | None

    def manifest(self, results: Mapping[str, BootResult]) -> manifest.Manifest:
        """Everything needed to reproduce the run."""
        options, shard, disk = self.options, self.options.shard, self.kit.disk
        return manifest.Manifest(
            harness_version=__version__,
            matrix_source=self.mx.source,
            matrix_text=self.matrix_text,
            options={"jobs": options.jobs, "mirror": options.mirror, "insecure": options.insecure},
            accelerator=manifest.Accelerator(self.accel.start.name, self.accel.start.reason, self.accel.fell_back),
            qemu_version=vm.qemu_version(),
            probe=manifest.Probe(self.kit.probe.sha256, tuple(self.kit.probe.names)),
            expectations_sha256=verdict.expectations_sha256(),
            kernels=tuple(_kernel_entry(spec, prep) for spec, prep in self.prepared.items()),
            disk={"path": str(disk), "sha256": hashlib.sha256(disk.read_bytes()).hexdigest()},
            shard=None if shard is None else manifest.Shard(*shard),
            plan=tuple(manifest.PlanEntry(p.id, p.kernel.label, p.ram_mb) for p in self.planned),
            boots=tuple(_boot_entry(p, results[p.id], self.prepared[p.kernel]) for p in self.plans),
            host={"kernel": platform.release(), "python": platform.python_version()},
            replay_of=self.replay_of,
        )


def _kernel_entry(spec: KernelSpec, prep: Prepared) -> manifest.Kernel:
    booted = image = None
    if prep.kernel is not None:
        k = prep.kernel
        # Which tree each guest suite came from (exact, or the nearest one packaged), or why none.
        built = {n: b.provenance if isinstance(b, suites.Built) else {"error": b} for n, b in prep.suites.items()}
        details = {**sources.source_of(spec).record(k), **({"suites": built} if built else {})}
        booted = manifest.Booted(
            release=k.release,
            package=k.package,
            version=k.version,
            sha256=k.sha256,
            source=k.source,
            pvh=k.vmlinux is not None,
            debs=k.debs,
            details=details,
        )
    if prep.image is not None:
        image = manifest.Image(prep.image.sha256, prep.image.modules, prep.image.host_key)
    return manifest.Kernel(spec=spec.label, error=prep.error, booted=booted, image=image)


def _boot_entry(plan: matrix.BootPlan, result: BootResult, prep: Prepared) -> manifest.Boot:
    argv = tuple(result.qemu_argv)
    way, why = prep.transport(plan) if prep.kernel is not None else ("", "")
    return manifest.Boot(
        id=plan.id,
        kernel=plan.kernel.label,
        ram_mb=plan.ram_mb,
        runs=tuple((r.memlock_label, r.user) for r in plan.runs),
        qemu_argv=argv,
        qemu_command=vm.command_line(list(argv)) if argv else "",
        transport=way,
        transport_reason=why,
        userland=prep.userland[0],
        userland_reason=prep.userland[1],
        devices=_unusual(prep.devices),
        accelerator=result.accelerator,
        reused_from=result.reused_from,
    )


def _unusual(hardware: devices.Devices | None) -> tuple[tuple[str, str], ...]:
    """The guest's devices for the manifest, when they are not virtio's (which go unsaid)."""
    if hardware is None or hardware.describe() == devices.VIRTIO.describe():
        return ()
    return tuple(hardware.describe().items())
