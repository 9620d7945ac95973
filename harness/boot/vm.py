"""QEMU: the argv (pure), and the VM context manager that owns the process.

The fast path is the prototype's: PVH vmlinux when the kernel has the entry note, `-cpu max`,
virtio-net without its option ROM, user-mode networking forwarded to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.boot import qmp
from harness.errors import InfraError
from harness.kit import transports
from harness.kit.guest import Endpoint
from harness.processes import Process
from harness.streams import Lines

QEMU = os.environ.get("HARNESS_QEMU", "qemu-system-x86_64")
READY_MARKER = "HARNESS-READY"  # printed by the guest's /init once port 22 listens
PANIC_MARKERS = ("Kernel panic - not syncing", "---[ end Kernel panic")
# A guest may print without end: the log on disk stops here, and a line is looked at up to this long.
SERIAL_LOG_MAX = 64 << 20
SERIAL_LINE_MAX = 4096


# How long a booting guest may print nothing at all before it counts as dead, not slow. Measured
# here under TCG (QEMU start to the first console byte): 0.14-0.6 s for PVH vmlinux files and the
# 2.6.20-4.4 bzImages built beside the project, 0.8-2.5 s for Debian's bzImages (xz decompression). TCG's
# bound leaves a host busy with other guests ten times that; under KVM a kernel prints within a second.
SILENT_AFTER = {"kvm": 10.0, "tcg": 30.0}
KVM_FAILED = "KVM internal error"  # what QEMU prints when KVM cannot run (or emulate) a guest instruction


def cpu(accel: str) -> str:
    """The guest CPU of a boot under `accel` (and of the KVM check, which proves what boots need).

    Under TCG every iteration of a `rep` string instruction is a trip through QEMU's translator
    loop, and a kernel told the CPU has ERMS clears each page with `rep stosb`
    (arch/x86/include/asm/page_64.h: clear_page picks clear_page_erms). Without it, it uses `rep
    stosq` or an unrolled loop: 8 bytes an iteration. The OOM cases fault in the whole guest RAM:
    one root catalogue on bookworm 8.95 s of OOM cases with ERMS, 2.89 s without.
    """
    return "max,-erms" if accel == "tcg" else "max"


@functools.cache
def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise InfraError(f"{QEMU}: cannot run it ({e}); install qemu-system-x86") from e
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else out.strip()


@dataclass(frozen=True)
class VMConfig:
    kernel: Path  # vmlinux (PVH) or bzImage
    initrd: Path
    ram_mb: int
    accel: str
    port: int  # net: the host port forwarded to the guest's 22 (0 until placed)
    disk: Path | None = None  # the data disk, never written (/dev/vda or /dev/sda in the guest)
    # hugepages: a small reserve for the hugetlb cases, taken at boot before memory fragments.
    # cryptomgr.notests: Debian kernels self-test every crypto algorithm at boot, 1.3 s of a 5 s
    # TCG boot (initcall_debug), and nothing the probe measures depends on it.
    # rng_core.default_quality: kernels before 4.19 (RANDOM_TRUST_CPU) and 5.4 (jitter entropy) never
    # credit RDRAND, so getrandom() blocks and dropbear waits for ever; the host's virtio-rng counts
    # as entropy only with a quality. Kernels that load no virtio-rng driver ignore both.
    cmdline: str = "console=ttyS0 panic=-1 hugepages=8 cryptomgr.notests rng_core.default_quality=1000"
    transport: str = "net"  # how the harness reaches the guest's sshd (harness.kit.transports)
    channel: Path | None = None  # serial: the Unix socket QEMU connects the guest's ttyS1 to
    nic: str = "virtio-net-pci"  # net: the NIC model the guest's kernel drives (harness.kernels.devices)
    disk_bus: str = "virtio"  # the data disk's drive interface: virtio, or ide for older kernels

    @property
    def cpu(self) -> str:
        return cpu(self.accel)

    @property
    def kernel_args(self) -> str:
        extra = transports.get(self.transport).kernel_arg
        return f"{self.cmdline} {extra}" if extra else self.cmdline

    def argv(self) -> list[str]:
        """The QEMU command line; pure, printed shell-quoted so anyone can rerun the boot."""
        return [
            QEMU,
            "-machine",
            "pc",
            "-accel",
            self.accel,
            "-cpu",
            self.cpu,
            "-smp",
            "1",
            "-m",
            f"{self.ram_mb}M",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-kernel",
            str(self.kernel),
            "-initrd",
            str(self.initrd),
            "-append",
            self.kernel_args,
            "-device",
            "virtio-rng-pci",
            *transports.get(self.transport).qemu_args(self.port, self.channel, self.nic),
        ] + (self._drive() if self.disk else [])

    def _drive(self) -> list[str]:
        # QEMU's IDE disks cannot be read-only: snapshot=on sends the guest's writes (there are none,
        # it mounts read-only) to a throwaway overlay, so the cached image is never written either.
        mode = "readonly=on" if self.disk_bus == "virtio" else "snapshot=on"
        return ["-drive", f"file={self.disk},format=raw,if={self.disk_bus},{mode}"]


def command_line(argv: list[str]) -> str:
    return shlex.join(argv)


def note(serial_log: Path, text: str) -> None:
    """A line of the harness's own in a guest's serial log, where its evidence is read."""
    with serial_log.open("ab") as f:
        f.write(f"\n[harness: {text}]\n".encode())


class BootFailure(InfraError):
    """The guest never became ready: QEMU exited, the kernel panicked, or the deadline passed."""

    def __init__(
        self,
        message: str,
        excerpt: str,
        panicked: bool = False,
        timed_out: bool = False,
        silent: bool = False,
        kvm_failed: bool = False,
    ) -> None:
        super().__init__(message)
        self.excerpt = excerpt
        self.panicked = panicked
        self.timed_out = timed_out  # the guest neither came up nor died: a hang (or a very slow host)
        self.silent = silent  # it printed nothing at all within SILENT_AFTER: dead, not slow
        self.kvm_failed = kvm_failed  # KVM, not the kernel, is why: the guest may boot under TCG


@dataclass
class _Serial:
    """What the reader thread has seen on the serial console."""

    ready: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    panic: bool = False
    panic_context: list[str] = field(default_factory=list)  # the panic line and what led to it
    spoke: bool = False  # the guest printed something (a byte) on its console
    tail: list[str] = field(default_factory=list)
    ready_at: float | None = None


class VM:
    """A running guest. Use `boot()`; leaving the `with` block always kills QEMU's process group.

    A config not yet placed (port 0, no channel) gets its way in from its transport: a free port,
    or a socket in the VM's own directory, which only this user can enter and which goes with it.
    QEMU's QMP socket is in that directory too. With `incoming` (a QEMU -incoming URI) the guest is
    not booted but loaded from a saved state (harness.boot.snapshot), and it is ready once it runs.
    """

    LINE_TIMEOUT = 10.0  # seconds for QEMU to open a serial line (it opens it before starting the guest)

    def __init__(self, config: VMConfig, serial_log: Path, incoming: str | None = None) -> None:
        transport = transports.get(config.transport)
        self._workdir = Path(tempfile.mkdtemp(prefix="harness-vm-"))
        if not (config.port or config.channel):
            port, channel = transport.place(self._workdir)
            config = dataclasses.replace(config, port=port, channel=channel)
        self.config = config
        self.serial_log = serial_log
        self.restored = ""  # the saved guest (harness.boot.snapshot key) this one was loaded from
        self.saved = ""  # the saved guest this one is: loaded from it, or saved as it
        self.incoming = incoming  # a loaded guest prints nothing new until a case runs: no silence bound
        self.started = time.monotonic()
        self._serial = _Serial()
        self._link: transports.Link | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close(), like the process)
        self._stderr_text = ""
        self._log = serial_log.open("ab")
        self._log_start = self._log.tell()
        self.qmp_socket = self._workdir / "qmp.sock"
        # Not part of argv(): the printed command line is the boot's, without the harness's handles.
        extra = ["-qmp", f"unix:{self.qmp_socket},server=on,wait=off"] + (["-incoming", incoming] if incoming else [])
        self._proc = Process(config.argv() + extra, stdout=subprocess.PIPE, stderr=self._stderr)
        self._reader = threading.Thread(target=self._read, name=f"serial-{serial_log.stem}", daemon=True)
        self._reader.start()
        if incoming:
            threading.Thread(target=self._await_resume, name=f"resume-{serial_log.stem}", daemon=True).start()
        try:
            self._link = transport.open(config.port, config.channel, time.monotonic() + self.LINE_TIMEOUT)
        except BaseException as e:
            self.close()
            if isinstance(e, InfraError) and not self.alive:
                raise BootFailure(
                    f"QEMU exited with status {self.exit_status} before the guest was ready: {self._last_error()}",
                    self.excerpt(),
                ) from None
            raise

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stderr.closed:
            return  # closed already (boot() closes a VM that failed, then leaves its `with`)
        if self._link is not None:
            self._link.close()
        self._proc.kill()
        self._reader.join(timeout=10)
        self._log.close()
        self._stderr_text = self._read_stderr()
        self._stderr.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def endpoint(self, host_key: str) -> Endpoint:
        """Where the harness's SSH session reaches this guest, its host key pinned."""
        assert self._link is not None, "the VM is closed"
        return dataclasses.replace(self._link.endpoint(host_key), log=self.serial_log)

    def _read(self) -> None:
        stdout = self._proc.popen.stdout
        assert stdout is not None
        lines = Lines(SERIAL_LINE_MAX)
        room = SERIAL_LOG_MAX
        try:
            for chunk in iter(lambda: stdout.read1(65536), b""):
                self._serial.spoke = True
                if room > 0:
                    self._log.write(chunk[:room])
                    room -= len(chunk)
                    if room <= 0:
                        self._log.write(f"\n[harness: serial log cut at {SERIAL_LOG_MAX >> 20} MiB]\n".encode())
                    self._log.flush()
                for line in lines.feed(chunk):
                    self._line(line.data.decode(errors="replace").rstrip("\r"))
        except (OSError, ValueError):
            pass  # the pipe closed under us while the VM was being killed
        finally:
            rest = lines.end()
            if rest is not None:
                self._line(rest.data.decode(errors="replace"))
            self._serial.ended.set()
            self._serial.ready.set()  # wake a waiter: the guest can never become ready now

    def _await_resume(self) -> None:
        """A loaded guest prints no ready marker (it printed it before it was saved): it is ready
        when QEMU runs it. A load that fails ends QEMU, which the serial reader reports."""
        while not self.qmp_socket.exists():
            if self._serial.ended.wait(0.01):
                return
        with contextlib.suppress(InfraError), qmp.QMP(self.qmp_socket) as q:
            loaded = q.wait_for("query-status", "status", {"running", "paused", "postmigrate"}, timeout=600)
            if loaded["status"] != "running":
                q.command("cont")  # it was saved paused, and QEMU keeps the run state it was saved in
            self._serial.ready_at = time.monotonic() - self.started
            self._serial.ready.set()

    def console(self) -> bytes:
        """What this guest printed on its console so far, as the serial log has it."""
        self._log.flush()
        with self.serial_log.open("rb") as f:
            f.seek(self._log_start)
            return f.read(SERIAL_LOG_MAX)

    def _line(self, line: str) -> None:
        s = self._serial
        s.tail.append(line)
        del s.tail[:-60]
        if READY_MARKER in line and s.ready_at is None:
            s.ready_at = time.monotonic() - self.started
            s.ready.set()
        if any(m in line for m in PANIC_MARKERS):
            if not s.panic:
                s.panic_context = s.tail[-12:]  # the stack trace that follows can push it out of the tail
            s.panic = True

    @property
    def alive(self) -> bool:
        return self._proc.popen.poll() is None

    @property
    def pid(self) -> int:
        pid: int = self._proc.popen.pid
        return pid

    @property
    def exit_status(self) -> int | None:
        status: int | None = self._proc.popen.poll()
        return status

    def wait_exit(self, timeout: float) -> None:
        """Give a dying guest up to `timeout` seconds to end, and the serial reader to catch up."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.popen.wait(timeout=timeout)
        if not self.alive:
            self._serial.ended.wait(timeout=timeout)

    @property
    def panicked(self) -> bool:
        return self._serial.panic

    @property
    def ready_after(self) -> float | None:
        return self._serial.ready_at

    def excerpt(self, lines: int = 25) -> str:
        """The last serial lines; after a panic, the lines that led to it first."""
        tail = self._serial.tail[-lines:]
        context = [line for line in self._serial.panic_context if line not in tail]
        return "\n".join([*context, "...", *tail] if context else tail)

    def stderr_text(self) -> str:
        return self._stderr_text if self._stderr.closed else self._read_stderr()

    def _read_stderr(self) -> str:
        # pread: QEMU writes through a descriptor that shares this one's file offset, which a seek
        # would move under it while it runs.
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def _silent(self, seconds: float) -> BootFailure:
        kvm = self.config.accel == "kvm"
        fix = (
            "; --accel tcg"
            if kvm
            else ": does its kernel have a serial console (CONFIG_SERIAL_8250_CONSOLE=y) on ttyS0?"
        )
        return BootFailure(
            f"the guest printed nothing in {seconds:g}s under {self.config.accel}{fix}", "", silent=True, kvm_failed=kvm
        )

    def _check_kvm(self) -> None:
        """QEMU stops a guest KVM cannot run (an instruction it cannot emulate) but does not exit."""
        if self.config.accel != "kvm":
            return
        failed = next((line for line in self.stderr_text().splitlines() if KVM_FAILED in line), None)
        if failed is not None:
            raise BootFailure(
                f"KVM could not run the guest (QEMU: {failed.strip()[:200]}); --accel tcg",
                self.excerpt(),
                kvm_failed=True,
            )

    def _last_error(self) -> str:
        err = self.stderr_text().strip().splitlines()
        return err[-1] if err else "no message"

    def wait_ready(self, timeout: float, cancel: threading.Event | None = None) -> float:
        """Seconds from start to the ready marker; BootFailure on panic, QEMU exit, deadline or cancel,
        on a console silent for SILENT_AFTER (a booting guest prints within seconds), and on KVM's
        own failure."""
        deadline = self.started + timeout
        silent_after = SILENT_AFTER.get(self.config.accel, max(SILENT_AFTER.values()))
        while not self._serial.ready.wait(timeout=0.2):
            if self.panicked:
                break
            if cancel is not None and cancel.is_set():
                raise BootFailure("boot cancelled: the run was interrupted", self.excerpt())
            self._check_kvm()
            now = time.monotonic()
            if not (self._serial.spoke or self.incoming) and now > self.started + min(silent_after, timeout):
                raise self._silent(min(silent_after, timeout))
            if now > deadline:
                excerpt = self.excerpt()
                shown = " (last serial lines below)" if excerpt.strip() else ""
                raise BootFailure(f"no ready marker within {timeout:g}s{shown}", excerpt, timed_out=True)
        if self._serial.ready_at is not None and not self.panicked:
            return self._serial.ready_at
        if self.panicked:
            raise BootFailure("guest kernel panicked while booting", self.excerpt(40), panicked=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.popen.wait(timeout=5)
        raise BootFailure(
            f"QEMU exited with status {self._proc.popen.poll()} before the guest was ready: {self._last_error()}",
            self.excerpt(),
        )


@contextlib.contextmanager
def boot(
    config: VMConfig,
    serial_log: Path,
    timeout: float,
    tries: int = 5,
    cancel: threading.Event | None = None,
    incoming: str | None = None,
) -> Iterator[VM]:
    """Start QEMU and wait for the guest's ready marker (or, `incoming`, for the loaded guest to
    run), placing the VM again when its transport says the place was taken (another VM's port,
    with parallel VMs)."""
    for attempt in range(tries):
        vm = VM(config if attempt == 0 else dataclasses.replace(config, port=0, channel=None), serial_log, incoming)
        try:
            vm.wait_ready(timeout, cancel)
        except BootFailure:
            again = transports.get(vm.config.transport).retry_after(vm.stderr_text())
            vm.close()
            if again and attempt + 1 < tries:
                continue
            raise
        except BaseException:
            vm.close()
            raise
        with vm:
            yield vm
        return
    raise AssertionError("unreachable")
