"""One boot: a kernel started in QEMU and every (limit, user) of its plan run in it over SSH.

A small state machine. The boot starts a guest, and the guest answers cases until every run of
the plan has its results. When a case loses the guest (a panic, a hang, QEMU or SSH gone) the
case is recorded and a new guest goes on with the rest; when the machinery fails (QEMU, SSH), the
boot is tried again. `next_step` is that policy, a pure function of what happened so far; the
guests come from `Seams`, which tests replace with fakes.
"""

from __future__ import annotations

import dataclasses
import gzip
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paramiko

from harness import versions
from harness.boot import accel, lanes, snapshot, vm
from harness.boot.live import Cancelled, Live
from harness.boot.policy import GuestLost, Phase, next_step
from harness.errors import InfraError
from harness.files import atomic_write
from harness.kernels import Kernel, devices
from harness.kit import guest, suites
from harness.kit.image import Image
from harness.kit.suites import Answer, Built, Observed, Under, Where
from harness.kit.suites.base import Invocation
from harness.plan.matrix import BootPlan, RunPlan
from harness.results import BootResult, CaseResult, Outcome
from harness.streams import Line

Publish = Callable[[BootResult, bool], None]  # what is known of the boot now; True: write it out now
# The judging stage (harness.judge): an observation of the guest, made into results. The boot only
# hands observations over; what they are worth is no concern of it.
Judge = Callable[[Observed, Where], Sequence[CaseResult]]


@dataclass(frozen=True)
class BootContext:
    """Everything one boot needs, fixed before QEMU starts."""

    plan: BootPlan
    kernel: Kernel
    image: Image
    disk: Path | None  # the read-only data disk; None when the kernel can read none
    key: paramiko.PKey  # the harness's SSH client key
    accel: str  # kvm or tcg
    judge: Judge
    run_dir: Path  # the serial log goes to serial/<boot id>.log in it, and .log.gz when the boot ends
    transport: str = "net"  # how the harness reaches the guest (harness.kit.transports), decided for `auto`
    devices: devices.Devices = devices.VIRTIO  # the guest's NIC and disk, as its kernel can drive them
    suites: Mapping[str, Built | str] = field(default_factory=dict)  # built for this kernel, or why not
    saved: snapshot.Store | None = None  # where guests are saved and loaded from; None: every guest boots cold

    @property
    def serial_log(self) -> Path:
        return self.run_dir / "serial" / f"{self.plan.id}.log"


# --- the seams: what a boot needs of QEMU and of an SSH session --------------------------------


class Machine(Protocol):
    """A running guest (vm.VM)."""

    config: vm.VMConfig
    started: float
    restored: str  # the saved guest this one was loaded from (harness.boot.snapshot); "" when booted
    saved: str  # the saved guest this one is, loaded or saved; "" when none

    @property
    def ready_after(self) -> float | None: ...

    @property
    def panicked(self) -> bool: ...

    @property
    def alive(self) -> bool: ...

    @property
    def exit_status(self) -> int | None: ...

    def wait_exit(self, timeout: float) -> None: ...

    def excerpt(self, lines: int = 25) -> str: ...

    def endpoint(self, host_key: str) -> guest.Endpoint: ...

    def close(self) -> None: ...


class Session(Protocol):
    """An SSH session to the guest (guest.Guest)."""

    def connect(self) -> float: ...

    def run(
        self, argv: Sequence[str], timeout: float, on_line: Callable[[Line], None] | None = None
    ) -> guest.Result: ...


def _boot_vm(
    config: vm.VMConfig, serial: Path, timeout: float, cancel: threading.Event, saved: snapshot.Store | None
) -> AbstractContextManager[Machine]:
    return snapshot.boot(saved, config, serial, timeout, cancel)


@dataclass(frozen=True)
class Seams:
    """How a boot starts guests and talks to them: QEMU and fabric, or a test's fakes."""

    boot: Callable[
        [vm.VMConfig, Path, float, threading.Event, snapshot.Store | None], AbstractContextManager[Machine]
    ] = _boot_vm
    session: Callable[[guest.Endpoint, str, paramiko.PKey], AbstractContextManager[Session]] = guest.Guest


REAL = Seams()


# --- the machine -------------------------------------------------------------------------------


# panic=-1 reboots at once (and -no-reboot ends QEMU) only where panic() reboots for any timeout
# but 0: 2.6.32's reboots only for a positive one, and its guest would spin until the boot timeout.
# 3.16.0 is the oldest kernel seen here to end QEMU on panic=-1 (../shared/kernels/linux-3.16.0);
# panic=1 ends it on every era, a second later.
PANIC_REBOOTS_AT_ONCE = (3, 16)


def vm_config(ctx: BootContext) -> vm.VMConfig:
    """The QEMU a guest of this boot is: what its saved guests and its reuse are keyed by."""
    hw = ctx.devices
    config = vm.VMConfig(
        ctx.kernel.vmlinux or ctx.kernel.image,
        ctx.image.path,
        ctx.plan.ram_mb,
        ctx.accel,
        0,
        ctx.disk,
        transport=ctx.transport,
        nic=(hw.nic or devices.NICS[0]).name,
        disk_bus=(hw.disk or devices.DISKS[0]).name,
    )
    if versions.release_version(ctx.kernel.release) < PANIC_REBOOTS_AT_ONCE:
        config = dataclasses.replace(config, cmdline=config.cmdline.replace("panic=-1", "panic=1"))
    return config


def run_boot(
    ctx: BootContext, result: BootResult, publish: Publish, live: Live, seams: Seams = REAL, guests: int = 1
) -> None:
    """Boot one kernel and run every (limit, user) of the plan in it, publishing results as they arrive.

    With `guests` above one, the plan's runs are spread over that many guests at once (each its own
    QEMU, SSH session and serial log, merged into the boot's at the end; the extra guests load the
    state the first one saved, when guests are saved), and the boot's results are put back in plan
    order. `result` is filled in place (a watcher may read it meanwhile); it has a result for every
    planned case when this returns. Raises Cancelled when the run is interrupted.
    """
    plan = ctx.plan
    ctx.serial_log.parent.mkdir(parents=True, exist_ok=True)
    result.serial_log = str(ctx.serial_log.relative_to(ctx.run_dir))
    config = vm_config(ctx)
    result.transport = ctx.transport
    result.qemu_argv = config.argv()  # port 0 until QEMU has one; kept for boots that never come up
    count = max(1, min(guests, len(plan.runs)))
    saved_key = snapshot.key(config) if count > 1 and ctx.saved is not None else ""
    costs = ctx.saved.costs(saved_key) if ctx.saved is not None and saved_key else {}
    share = lanes.Share(plan.runs, lanes.longest_first(plan.runs, costs))
    guest_lanes = [lanes.Lane(n, ctx.serial_log if n == 0 else lanes.log_of(ctx.serial_log, n)) for n in range(count)]
    lock = threading.Lock()

    def locked(result: BootResult, flush: bool) -> None:
        with lock:
            publish(result, flush)

    this = _Boot(ctx, result, locked, live, seams, share)

    def run_lane(lane: lanes.Lane) -> None:
        _lane(this, config, lane)

    try:
        if count == 1:
            run_lane(guest_lanes[0])
        else:
            # With no saved guest yet, the first guest boots and saves one, and the others load it.
            first_saves = ctx.saved is not None and ctx.saved.find(saved_key) is None
            lanes.side_by_side(guest_lanes, share, run_lane, first_saves, live.cancelled, plan.id)
            lanes.merged(result, share, guest_lanes, ctx.serial_log)
        ended = [lane.ended for lane in guest_lanes if lane.ended is not None]
        if ended and share.untaken():  # every guest gave up: the rest shares the last reason
            result.error = result.error or ended[-1].error
            fill(result, share.untaken(), ended[-1].outcome, ended[-1].message)
        if ctx.saved is not None:
            for key in this.saved:
                ctx.saved.remember(key, lanes.spent(result))
    finally:
        packed = pack(ctx.serial_log)
        if packed is not None:
            result.serial_log = str(packed.relative_to(ctx.run_dir))
        publish(result, True)


def pack(serial_log: Path) -> Path | None:
    """The boot's serial log compressed (.log.gz, the plain one removed) once no guest writes to it:
    90 boots' logs are 13 MB as text and a tenth of that so. None, and the plain log kept, when it
    cannot be (no log: the boot never started QEMU; a full disk)."""
    packed = serial_log.with_name(serial_log.name + ".gz")
    try:
        data = serial_log.read_bytes()
        atomic_write(packed, gzip.compress(data, compresslevel=6, mtime=0))
        serial_log.unlink()
    except (OSError, InfraError):
        return None
    return packed


@dataclass(frozen=True)
class _Boot:
    """What every guest of one boot shares."""

    ctx: BootContext
    result: BootResult
    publish: Publish
    live: Live
    seams: Seams
    share: lanes.Share
    saved: set[str] = field(default_factory=set)  # the saved guests its guests are (what the cases cost is kept there)


def _lane(boot: _Boot, config: vm.VMConfig, lane: lanes.Lane) -> None:
    """One guest's part of the boot: guests booted again after a loss, as the policy says, until the
    lane has nothing left or gives up (its own runs then get the outcome)."""
    ctx, result, live, share = boot.ctx, boot.result, boot.live, boot.share
    refused = set[str]()
    while share.left(lane.n, result):
        if live.cancelled.is_set():
            raise Cancelled()
        if live.accel is not None and not result.cases:  # KVM given up by another boot meanwhile
            config = dataclasses.replace(config, accel=live.accel.name)
        result.accelerator = config.accel
        try:
            _guest(boot, config, lane)
            continue
        except (GuestLost, InfraError) as event:
            if live.cancelled.is_set():
                raise Cancelled() from event
            if _kvm_failed(event, config, live, ctx.plan.id):
                vm.note(lane.serial, f"{str(event).split(';')[0]}; this guest is booted again under tcg")
                config = dataclasses.replace(config, accel=accel.TCG)
                continue
            if isinstance(event, SavedGuestLost) and event.key not in refused:
                refused.add(event.key)  # once: a state another run keeps from deletion is not tried again
                _forget(ctx, result, event, live, lane.serial)
                continue
            step = next_step(lane.attempts, event)
        lane.attempts = step.attempts
        result.reboots, result.retries = lane.attempts.reboots, lane.attempts.retries
        if step.phase is not Phase.BOOT:
            lane.ended = step
            result.error = result.error or step.error
            fill(result, share.mine(lane.n), step.outcome, step.message)
            return


class SavedGuestLost(InfraError):
    """A guest loaded from a saved state did not answer SSH: the state, not the kernel, is broken."""

    def __init__(self, key: str, error: guest.SSHFailure) -> None:
        super().__init__(f"the saved guest {key} did not answer ({error})")
        self.key = key


def _forget(ctx: BootContext, result: BootResult, event: SavedGuestLost, live: Live, serial: Path) -> None:
    """Delete the saved guest that did not answer, so this boot's next guest boots cold (and is saved)."""
    saved = ctx.saved.find(event.key) if ctx.saved is not None else None
    if saved is not None and ctx.saved is not None:
        ctx.saved.discard(saved)
    vm.note(serial, f"{event}; it is deleted, and the guest boots cold")
    live.log(f"boot {ctx.plan.id}: {event}; it is deleted, and the guest boots cold")
    result.restored = ""
    result.timings.pop("marker", None)


def _kvm_failed(event: Exception, config: vm.VMConfig, live: Live, boot_id: str) -> bool:
    """Whether the guest failed for KVM's sake and the run lets this boot go on under TCG."""
    if not (isinstance(event, vm.BootFailure) and event.kvm_failed and config.accel == accel.KVM):
        return False
    return live.accel is not None and live.accel.kvm_failed(boot_id, str(event).split(";")[0])


def _guest(boot: _Boot, config: vm.VMConfig, lane: lanes.Lane) -> None:
    """One guest: boot it and run every case of the lane's runs that has no result yet, taking runs
    no guest has taken. Raises GuestLost."""
    ctx, result, publish, live, seams, share = boot.ctx, boot.result, boot.publish, boot.live, boot.seams, boot.share
    started = seams.boot(config, lane.serial, ctx.plan.timeouts.boot, live.cancelled, ctx.saved)
    with live.admitted(config.ram_mb, ctx.plan.id), started as machine, live.track(machine):
        share.up.set()
        if lane.n == 0:
            result.qemu_argv = machine.config.argv()
        result.restored = machine.restored or result.restored
        if machine.saved:
            boot.saved.add(machine.saved)
        result.timings.setdefault("marker", round(machine.ready_after or 0.0, 3))
        publish(result, True)
        endpoint = machine.endpoint(ctx.image.host_key)
        with seams.session(endpoint, "root", ctx.key) as session:
            try:
                session.connect()
            except guest.SSHFailure as e:
                if machine.restored and not isinstance(e, guest.TrustFailure):
                    raise SavedGuestLost(machine.restored, e) from e
                raise
            result.timings.setdefault("ssh", round(time.monotonic() - machine.started, 3))
            result.uname = session.run(["uname", "-r"], 30).stdout.strip()
            done: set[int] = set()
            while (taken := share.next(lane.n, result, done)) is not None:
                run_plan, cases = taken
                done.add(id(run_plan))
                under = Under(run_plan.memlock, run_plan.memlock_label, run_plan.user, ctx.plan.timeouts.case)
                where = Where(ctx.plan.id, ctx.kernel.release, run_plan.memlock_label, run_plan.user, ctx.kernel.info())

                def record(observed: Observed, where: Where = where) -> None:
                    found = observed.observation or {}
                    if result.memtotal_kb is None and isinstance(found.get("memtotal_kb"), int):
                        result.memtotal_kb = found["memtotal_kb"]
                    result.cases.extend(ctx.judge(observed, where))
                    publish(result, False)

                for suite, its in suites.grouped(cases):
                    built = ctx.suites.get(suite.name, f"suite {suite.name} was not built for this kernel")
                    for step in suite.steps(its, under, built):
                        if live.cancelled.is_set():
                            raise Cancelled()
                        if isinstance(step, Observed):
                            record(step)
                        else:
                            _invoke(step, session, machine, record)
                publish(result, True)
            result.timings["probe"] = max(
                result.timings.get("probe", 0.0), round(time.monotonic() - machine.started, 3)
            )


def fill(result: BootResult, runs: Sequence[RunPlan], outcome: Outcome, message: str) -> None:
    """Give every case that got no answer a result, so reports count what was planned."""
    have = {(c.case, c.memlock, c.user) for c in result.cases}
    for r in runs:
        for case in r.cases:
            if (case, r.memlock_label, r.user) not in have:
                result.cases.append(
                    CaseResult(
                        boot_id=result.boot_id,
                        case=case,
                        memlock=r.memlock_label,
                        user=r.user,
                        outcome=outcome,
                        message=message,
                        observation=None,
                    )
                )


def _invoke(step: Invocation, session: Session, machine: Machine, record: Callable[[Observed], None]) -> None:
    """One command of a suite in the guest, what it observes recorded as it comes; GuestLost (the
    loss recorded as the first unanswered case's) when the guest stops answering."""

    def on_line(line: Line) -> None:
        for observed in step.line(line):
            record(observed)

    started = time.monotonic()
    try:
        answer = session.run(step.argv, step.timeout, on_line)
    except (guest.SSHFailure, guest.CommandTimeout) as e:  # not a disk that filled up on this side
        lost = _why_lost(e, machine)
        if left := step.unanswered():
            record(Observed(left[0], None, lost.outcome, lost.message))
        raise lost from e
    for observed in step.end(Answer(answer.exit_code, answer.stdout, answer.stderr, time.monotonic() - started)):
        record(observed)


def _why_lost(error: guest.SSHFailure | guest.CommandTimeout, machine: Machine) -> GuestLost:
    """Tell a panic from a hang from a vanished QEMU from a dropped connection."""
    machine.wait_exit(5.0)  # a panicking guest ends QEMU (panic=-1); give the serial reader time
    if machine.panicked:
        return GuestLost(Outcome.PANIC, "the guest kernel panicked during this case:\n" + machine.excerpt(30))
    if isinstance(error, guest.CommandTimeout):
        return GuestLost(Outcome.TIMEOUT, f"the guest stopped answering during this case ({error})")
    if not machine.alive:
        return GuestLost(Outcome.INFRA_ERROR, f"QEMU exited during this case (status {machine.exit_status})")
    return GuestLost(Outcome.INFRA_ERROR, f"lost the guest during this case: {error}")
