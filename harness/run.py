"""A run: matrix -> plan of boots -> kernels and images -> boots in parallel -> verdicts -> reports.

Side effects live here and in the seams it calls (kernels, image, vm, guest); the stages it
connects (matrix expansion, verdicts, report writing) are pure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from harness import (
    __version__,
    archive,
    guest,
    history,
    image,
    kbuild,
    kernels,
    matrix,
    modules,
    report,
    verdict,
    versions,
    vm,
)
from harness.aptsources import mirror_from
from harness.cache import secret
from harness.errors import InfraError, UserError
from harness.results import BootResult, CaseResult, Outcome

GUEST_TESTS = Path(__file__).resolve().parent.parent / "guest-tests"
PROBE_IN_GUEST = "/" + image.PROBE_PATH


@dataclass(frozen=True)
class Options:
    jobs: int
    results: Path
    cache: Path
    mirror: str | None = None
    insecure: bool = False
    accel: vm.Accelerator | None = None  # None: check KVM, else TCG
    shard: tuple[int, int] | None = None  # (I, N): run the I-th of N deterministic slices of the boots
    boots: tuple[str, ...] = ()  # run only these boot ids (replay); () for all
    history: Path | None = None  # SQLite history the finished run is appended to; None: none


@dataclass(frozen=True)
class Probe:
    path: Path
    sha256: str
    catalogue: tuple[tuple[str, str], ...]  # (name, description)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.catalogue]


def build_probe(source: Path = GUEST_TESTS) -> Probe:
    """Build the static probe (make is a no-op when it is current) and read its catalogue."""
    try:
        subprocess.run(["make", "-s", "-C", str(source)], check=True, capture_output=True, text=True)
        listing = subprocess.run([str(source / "probe"), "--list"], check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise InfraError(f"cannot build the probe: {e.filename} is missing; install make and gcc") from e
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or "").strip().splitlines()
        raise InfraError(f"building the probe in {source} failed: {detail[-1] if detail else e}") from e
    catalogue = tuple(tuple(line.split("\t", 1)) for line in listing.stdout.splitlines() if "\t" in line)
    path = source / "probe"
    return Probe(path, hashlib.sha256(path.read_bytes()).hexdigest(), catalogue)  # type: ignore[arg-type]


# --- kernels and images -----------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything a boot needs before QEMU starts, or the reason it cannot start."""

    kernel: kernels.Kernel | None = None
    image: image.Image | None = None
    error: str = ""


class Kernels:
    """Resolves and fetches each distinct kernel spec once per run."""

    def __init__(
        self, options: Options, log: Callable[[str], None], pinned: Mapping[matrix.KernelSpec, kernels.Kernel] = {}
    ) -> None:
        self.options = options
        self.log = log
        self._archive: archive.Archive | None = None
        # Path kernels once read, and kernels a replay pins to exactly what an earlier run booted.
        self._local: dict[matrix.KernelSpec, kernels.Kernel] = dict(pinned)
        self._sources: dict[matrix.GitKernel, kbuild.Source] = {}

    def archive(self) -> archive.Archive:
        if self._archive is None:
            mirror = mirror_from(self.options.mirror, os.environ, Path("/"))
            self._archive = archive.Archive(mirror, self.options.cache, insecure=self.options.insecure)
        return self._archive

    def resolve(self, spec: matrix.KernelSpec) -> kernels.Resolved | None:
        """Resolution errors about the spec itself are the user's (exit 2) and surface here."""
        if spec in self._local:
            return None
        with _from(spec):
            if isinstance(spec, matrix.PathKernel):
                # local and cheap: a bad file is bad input, found before any boot; kept for fetch()
                self._local[spec] = kernels.from_path(spec, self.options.cache)
                return None
            if isinstance(spec, matrix.GitKernel):
                self._sources[spec] = kbuild.resolve(spec)  # a bad revision is bad input; building waits
                return None
            return kernels.resolve(spec, self.archive())

    def fetch(self, spec: matrix.KernelSpec, resolved: kernels.Resolved | None) -> kernels.Kernel:
        if spec in self._local or isinstance(spec, matrix.PathKernel):
            if spec not in self._local:
                self.resolve(spec)
            return self._local[spec]
        if isinstance(spec, matrix.GitKernel):
            if spec not in self._sources:
                self.resolve(spec)
            with _from(spec):
                return kbuild.build(self._sources[spec], self.options.cache, self.log, spec.label)
        assert resolved is not None
        return kernels.fetch(resolved, self.archive(), self.options.cache)


@contextlib.contextmanager
def _from(spec: matrix.KernelSpec) -> Iterator[None]:
    """Bad input about a kernel names where the matrix gave it."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{spec.origin}: {e}" if spec.origin else str(e)) from e


def guest_modules(kernel: kernels.Kernel) -> list[tuple[str, bytes]]:
    if kernel.modules_dir is None:
        return []  # a self-made kernel may have virtio built in; the boot will tell
    paths = modules.resolve(modules.GUEST_MODULES, kernel.modules_dir, modules.CRC32C_PROVIDERS)
    return [(modules.module_name(p), modules.decompress_module(p)) for p in paths]


# --- one boot ---------------------------------------------------------------------------------


class Cancelled(Exception):
    """The run was interrupted; finished results are kept."""


@dataclass
class Live:
    """VMs currently running, so an interrupt can kill them all at once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    vms: set[vm.VM] = field(default_factory=set)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @contextlib.contextmanager
    def track(self, v: vm.VM) -> Iterator[None]:
        with self.lock:
            self.vms.add(v)
        try:
            yield
        finally:
            with self.lock:
                self.vms.discard(v)

    def cancel(self) -> None:
        self.cancelled.set()
        with self.lock:
            for v in list(self.vms):
                v.close()


MAX_REBOOTS = 3  # guests lost in one boot plan before its remaining cases are given up
INFRA_RETRIES = 2  # boots that fail for the machinery's sake (not a kernel panic) are tried again


class GuestLost(Exception):
    """The guest stopped answering during a case: it panicked, QEMU went away, SSH dropped or hung."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def run_boot(
    plan: matrix.BootPlan,
    prepared: Prepared,
    result: BootResult,
    expectations: verdict.Expectations,
    accel: vm.Accelerator,
    key: paramiko.PKey,
    disk: Path,
    run_dir: Path,
    writer: report.RunWriter,
    live: Live,
) -> None:
    """Boot one kernel and run every (limit, user) of the plan in it, recording as results arrive.

    A case that kills the guest is recorded (panic, timeout or lost), the guest is booted again
    and the remaining cases go on, up to MAX_REBOOTS times.
    """
    if prepared.error or prepared.kernel is None or prepared.image is None:
        result.error = prepared.error or "kernel or image missing"
        _fill(result, plan, plan.runs, Outcome.INFRA_ERROR, result.error)
        writer.update(result)
        return
    kernel, img = prepared.kernel, prepared.image
    serial = run_dir / "serial" / f"{plan.id}.log"
    serial.parent.mkdir(parents=True, exist_ok=True)
    result.serial_log = str(serial.relative_to(run_dir))
    config = vm.VMConfig(kernel.vmlinux or kernel.image, img.path, plan.ram_mb, accel.name, 0, disk)
    result.qemu_argv = config.argv()  # port 0 until QEMU has one; kept for boots that never come up
    ctx = verdict.RunContext(versions.release_version(kernel.release), False)
    try:
        while _pending_runs(result, plan):
            if live.cancelled.is_set():
                raise Cancelled()
            try:
                _boot_and_probe(plan, config, serial, img, key, result, expectations, ctx, writer, live)
            except GuestLost as lost:
                result.reboots += 1
                if result.reboots > MAX_REBOOTS:
                    result.error = f"gave up after losing the guest {result.reboots} times; last: {lost.message}"
                    _fill(result, plan, plan.runs, Outcome.INFRA_ERROR, "not run: " + result.error)
                    return
            except InfraError as e:
                # A boot that failed on the machinery (QEMU, SSH) is tried again; a kernel that
                # panics while booting has given its answer. Verdicts are never retried.
                panicked = isinstance(e, vm.BootFailure) and e.panicked
                if panicked or live.cancelled.is_set() or result.retries >= INFRA_RETRIES:
                    raise
                result.retries += 1
    except vm.BootFailure as e:
        if live.cancelled.is_set():
            raise Cancelled() from e
        result.error = f"{e}\n{e.excerpt}" if e.excerpt else str(e)
        outcome = Outcome.PANIC if e.panicked else Outcome.TIMEOUT if e.timed_out else Outcome.INFRA_ERROR
        _fill(result, plan, plan.runs, outcome, str(e))
    except InfraError as e:
        if live.cancelled.is_set():
            raise Cancelled() from e
        result.error = str(e)
        _fill(result, plan, plan.runs, Outcome.INFRA_ERROR, str(e))
    finally:
        writer.update(result)


def _boot_and_probe(
    plan: matrix.BootPlan,
    config: vm.VMConfig,
    serial: Path,
    img: image.Image,
    key: paramiko.PKey,
    result: BootResult,
    expectations: verdict.Expectations,
    ctx: verdict.RunContext,
    writer: report.RunWriter,
    live: Live,
) -> None:
    """One guest: boot it and run every case that has no result yet. Raises GuestLost."""
    with vm.boot(config, serial, plan.timeouts.boot, cancel=live.cancelled) as machine, live.track(machine):
        result.qemu_argv = machine.config.argv()
        result.timings.setdefault("marker", round(machine.ready_after or 0.0, 3))
        writer.update(result)
        endpoint = guest.Endpoint(machine.config.port, img.host_key)
        with guest.Guest(endpoint, "root", key) as session:
            session.connect()
            result.timings.setdefault("ssh", round(time.monotonic() - machine.started, 3))
            result.uname = session.run(["uname", "-r"], 30).stdout.strip()
            for run_plan, cases in _pending_runs(result, plan):
                if live.cancelled.is_set():
                    raise Cancelled()
                _probe_run(session, run_plan, cases, plan, result, expectations, ctx, writer, machine)
                writer.update(result)
            result.timings["probe"] = round(time.monotonic() - machine.started, 3)


def _pending_runs(result: BootResult, plan: matrix.BootPlan) -> list[tuple[matrix.RunPlan, list[str]]]:
    """Each run of the plan with the cases that have no result yet, in plan order."""
    have = {(c.case, c.memlock, c.user) for c in result.cases}
    out = []
    for r in plan.runs:
        cases = [c for c in r.cases if (c, r.memlock_label, r.user) not in have]
        if cases:
            out.append((r, cases))
    return out


def _fill(result: BootResult, plan: matrix.BootPlan, runs: Sequence[matrix.RunPlan],
          outcome: Outcome, message: str) -> None:  # fmt: skip
    """Give every case that got no answer a result, so reports count what was planned."""
    have = {(c.case, c.memlock, c.user) for c in result.cases}
    for r in runs:
        for case in r.cases:
            if (case, r.memlock_label, r.user) not in have:
                result.cases.append(CaseResult(plan.id, case, r.memlock_label, r.user, outcome, message, None))


def memlock_arg(limit: matrix.Memlock | None) -> str:
    if limit is None:
        return "default"

    def one(v: int | None) -> str:
        return "unlimited" if v is None else str(v)

    return f"{one(limit.soft)}:{one(limit.hard)}"


def _probe_run(
    session: guest.Guest,
    run_plan: matrix.RunPlan,
    cases: Sequence[str],
    plan: matrix.BootPlan,
    result: BootResult,
    expectations: verdict.Expectations,
    ctx: verdict.RunContext,
    writer: report.RunWriter,
    machine: vm.VM,
) -> None:
    ctx = verdict.RunContext(ctx.kernel_version, run_plan.memlock is not None)
    argv = [
        PROBE_IN_GUEST, "run", "--memlock", memlock_arg(run_plan.memlock), "--user", run_plan.user,
        "--timeout", f"{plan.timeouts.case:g}", *cases,
    ]  # fmt: skip
    answered: set[str] = set()

    def on_line(line: str) -> None:
        try:
            obs = json.loads(line)
        except json.JSONDecodeError:
            return  # not a record (the probe only prints records; anything else is noise)
        if not isinstance(obs, dict) or obs.get("kind") != "case":
            return
        v = verdict.judge(obs, ctx, expectations)
        if result.memtotal_kb is None and isinstance(obs.get("memtotal_kb"), int):
            result.memtotal_kb = obs["memtotal_kb"]
        answered.add(str(obs.get("case")))
        result.cases.append(
            CaseResult(plan.id, str(obs.get("case")), run_plan.memlock_label, run_plan.user, v.outcome,
                       v.message, obs, v.expected, v.citation, (obs.get("duration_ms") or 0) / 1000,
                       verdict.fingerprint(obs, expectations))
        )  # fmt: skip
        writer.update(result, flush=False)

    # The probe enforces each case's deadline itself; this one only catches a guest that hangs.
    deadline = plan.timeouts.case * len(cases) + 30
    try:
        answer = session.run(argv, deadline, on_line)
    except InfraError as e:
        lost = _why_lost(e, machine)
        culprit = next((c for c in cases if c not in answered), None)
        if culprit is not None:
            result.cases.append(CaseResult(plan.id, culprit, run_plan.memlock_label, run_plan.user,
                                           lost.outcome, lost.message, None))  # fmt: skip
        raise lost from e
    if answer.exit_code != 0:
        detail = answer.stderr.strip().splitlines()
        msg = f"probe exited {answer.exit_code}: {detail[-1] if detail else 'no message'}"
        _fill(result, plan, [run_plan], Outcome.INFRA_ERROR, msg)


def _why_lost(error: InfraError, machine: vm.VM) -> GuestLost:
    """Tell a panic from a hang from a vanished QEMU from a dropped connection."""
    machine.wait_exit(5.0)  # a panicking guest ends QEMU (panic=-1); give the serial reader time
    if machine.panicked:
        return GuestLost(Outcome.PANIC, "the guest kernel panicked during this case:\n" + machine.excerpt(30))
    if isinstance(error, guest.CommandTimeout):
        return GuestLost(Outcome.TIMEOUT, f"the guest stopped answering during this case ({error})")
    if not machine.alive:
        return GuestLost(Outcome.INFRA_ERROR, f"QEMU exited during this case (status {machine.exit_status})")
    return GuestLost(Outcome.INFRA_ERROR, f"lost the guest during this case: {error}")


# --- the whole run ----------------------------------------------------------------------------


def check_writable(results: Path) -> None:
    """Before anything is downloaded or booted: could results be written there? (Creates nothing.)"""
    existing = results
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = ("is not a directory" if not existing.is_dir()
               else "is not writable" if not os.access(existing, os.W_OK | os.X_OK) else "")  # fmt: skip
    if problem:
        raise InfraError(f"{results}: results cannot be written there ({existing} {problem}); give --results "
                         "a writable directory")


def new_run_dir(results: Path) -> tuple[str, Path]:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{stamp}-{secrets.token_hex(2)}"
    run_dir = results / run_id
    try:
        run_dir.mkdir(parents=True)
        latest = results / "latest"
        tmp = results / f".latest-{run_id}"
        tmp.symlink_to(run_id)
        os.replace(tmp, latest)
    except OSError as e:
        raise InfraError(f"{results}: cannot create the run directory: {e.strerror}") from e
    return run_id, run_dir


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


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def execute(
    mx: matrix.Matrix,
    options: Options,
    log: Callable[[str], None],
    live: Live | None = None,
    matrix_text: str = "",
    pinned: dict[matrix.KernelSpec, kernels.Kernel] | None = None,
    provenance: dict[str, Any] | None = None,
) -> tuple[Path, list[BootResult]]:
    """Run a matrix end to end; returns the run directory and the boot results (also on disk).

    `pinned` kernels are used as they are instead of being resolved (replay); `provenance` is
    added to the manifest (what a replay reproduces).
    """
    live = live or Live()
    check_writable(options.results)
    probe = build_probe()
    planned = matrix.expand(mx, probe.names)
    plans = select(planned, options)
    expectations = verdict.load()
    source = Kernels(options, log, pinned or {})
    specs = list(dict.fromkeys(p.kernel for p in plans))
    specs.sort(key=lambda s: isinstance(s, matrix.DebianKernel))  # local first: bad input before downloads
    resolved: dict[matrix.KernelSpec, kernels.Resolved | InfraError | None] = {}
    for spec in specs:
        try:
            resolved[spec] = source.resolve(spec)
        except InfraError as e:  # this kernel's boots fail; the rest of the night goes on
            resolved[spec] = e
    accel = options.accel or vm.accelerator()
    log(f"accelerator: {accel.name} ({accel.reason})")

    run_id, run_dir = new_run_dir(options.results)
    writer = report.RunWriter(run_dir, run_id, now(), [p.id for p in plans])
    log(f"results: {run_dir}")
    results = {p.id: BootResult(p.id, None, p.ram_mb, accel.name, vm.qemu_version()) for p in plans}
    for r in results.values():
        writer.add_boot(r)

    key = guest.client_key(options.cache)
    base = image.base_entries(probe.path, guest.public_line(key))
    seed = secret(options.cache, "guest-host-key")
    disk = image.disk_image(options.cache / "images")
    prepared: dict[matrix.KernelSpec, Prepared] = {}
    for spec, res in resolved.items():
        prep = Prepared()
        try:
            if isinstance(res, InfraError):
                raise res
            prep.kernel = source.fetch(spec, res)
            prep.image = image.build(base, guest_modules(prep.kernel), seed, options.cache / "images")
            log(f"kernel {spec.label}: {prep.kernel.release} ({prep.kernel.version or prep.kernel.source})")
        except InfraError as e:
            prep.error = str(e)
            log(f"kernel {spec.label}: {e}")
        prepared[spec] = prep
    for p in plans:
        k = prepared[p.kernel].kernel
        results[p.id].kernel = k.info() if k else None
    setup = Setup(mx, matrix_text, options, accel, probe, prepared, planned, plans, disk, provenance or {})
    writer.write_manifest(manifest(setup, results))

    futures: dict[Future[None], str] = {}
    with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="boot") as pool:
        try:
            for p in plans:
                fut = pool.submit(run_boot, p, prepared[p.kernel], results[p.id], expectations,
                                  accel, key, disk, run_dir, writer, live)  # fmt: skip
                futures[fut] = p.id
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    exc = fut.exception()
                    if exc is not None and not isinstance(exc, Cancelled):
                        raise exc
                    log(f"boot {futures[fut]} done")
        except BaseException:
            live.cancel()
            for fut in futures:
                fut.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # first: no boot thread may still be adding cases
            for p in plans:
                _fill(results[p.id], p, p.runs, Outcome.INFRA_ERROR, "interrupted before this case ran")
                if live.cancelled.is_set():
                    results[p.id].error = results[p.id].error or "run interrupted"
                writer.update(results[p.id], flush=False)
            writer.write_manifest(manifest(setup, results))
            writer.finish(now(), interrupted=live.cancelled.is_set())
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
    accel: vm.Accelerator
    probe: Probe
    prepared: dict[matrix.KernelSpec, Prepared]
    planned: Sequence[matrix.BootPlan]  # every boot of the matrix
    plans: Sequence[matrix.BootPlan]  # those this run ran (a shard's, or a replay's)
    disk: Path
    provenance: dict[str, Any]


def manifest(setup: Setup, results: dict[str, BootResult]) -> dict[str, Any]:
    """Everything needed to reproduce the run."""
    kernels_out = []
    for spec, prep in setup.prepared.items():
        entry: dict[str, Any] = {"spec": spec.label, "error": prep.error}
        if prep.kernel:
            k = prep.kernel
            entry.update(release=k.release, package=k.package, version=k.version, sha256=k.sha256,
                         source=k.source, pvh=k.vmlinux is not None,
                         debs=[asdict(d) for d in k.debs])  # fmt: skip
            if isinstance(spec, matrix.GitKernel):
                # How it was built: commit, compiler, seconds, the config (its digest and file).
                build = {key: v for key, v in kbuild.metadata(k.image.parent).items() if key != "fragment"}
                entry["build"] = {**build, "config_file": str(k.image.parent / "config")}
        if prep.image:
            entry["image"] = {"sha256": prep.image.sha256, "modules": list(prep.image.modules),
                              "host_key": prep.image.host_key}  # fmt: skip
        kernels_out.append(entry)
    options, shard = setup.options, setup.options.shard
    return {
        "harness_version": __version__,
        "matrix_source": setup.mx.source,
        "matrix_text": setup.matrix_text,
        "options": {"jobs": options.jobs, "mirror": options.mirror, "insecure": options.insecure},
        "accelerator": {"name": setup.accel.name, "reason": setup.accel.reason},
        "qemu_version": vm.qemu_version(),
        "probe": {"sha256": setup.probe.sha256, "cases": [n for n, _ in setup.probe.catalogue]},
        "expectations_sha256": verdict.expectations_sha256(),
        "kernels": kernels_out,
        "disk": {"path": str(setup.disk), "sha256": hashlib.sha256(setup.disk.read_bytes()).hexdigest()},
        "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        "plan": [{"id": p.id, "kernel": p.kernel.label, "ram_mb": p.ram_mb} for p in setup.planned],
        "boots": [
            {"id": p.id, "kernel": p.kernel.label, "ram_mb": p.ram_mb,
             "runs": [{"memlock": r.memlock_label, "user": r.user} for r in p.runs],
             "qemu_argv": results[p.id].qemu_argv,
             "qemu_command": vm.command_line(results[p.id].qemu_argv) if results[p.id].qemu_argv else ""}
            for p in setup.plans
        ],  # fmt: skip
        "host": {"kernel": platform.release(), "python": platform.python_version()},
        **setup.provenance,
    }
