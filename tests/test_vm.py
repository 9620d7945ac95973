"""harness/vm.py: QEMU argv, process-group cleanup, boot failure (the accelerator check: test_accel.py)."""

from __future__ import annotations

import dataclasses
import os
import random
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness import processes
from harness.boot import vm
from harness.kit.transports import net

needs_qemu = pytest.mark.skipif(shutil.which(vm.QEMU) is None, reason=f"{vm.QEMU} is not installed")


def alive(pid: int) -> bool:
    """True while the process runs; a zombie (dead, not yet reaped by init) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def gone_soon(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- argv (pure) ------------------------------------------------------------------------------


def config(tmp_path: Path, port: int = 10022) -> vm.VMConfig:
    return vm.VMConfig(tmp_path / "my kernel's bzImage", tmp_path / "initrd.cpio", 256, "tcg", port)


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_argv_fast_path_and_safety(tmp_path: Path) -> None:
    cfg = config(tmp_path, port=40123)
    argv = cfg.argv()
    assert argv[0] == vm.QEMU
    # RDRAND (fast dropbear handshakes); without ERMS under TCG (pages cleared 8 bytes an iteration).
    assert option(argv, "-cpu") == ["max,-erms"]
    assert option(dataclasses.replace(cfg, accel="kvm").argv(), "-cpu") == ["max"]
    assert option(argv, "-accel") == ["tcg"]
    assert option(argv, "-m") == ["256M"]
    assert "-no-reboot" in argv
    assert option(argv, "-kernel") == [str(cfg.kernel)]
    assert option(argv, "-initrd") == [str(cfg.initrd)]
    rng, device = option(argv, "-device")
    assert device.split(",")[0] == "virtio-net-pci" and "romfile=" in device.split(",")
    # Entropy from the host, counted: kernels that never credit RDRAND (4.4) would block getrandom().
    assert rng == "virtio-rng-pci"
    (netdev,) = option(argv, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:40123-:22" in netdev.split(",")
    assert "restrict=on" in netdev.split(",")  # the guest reaches nothing on the host or beyond
    (append,) = option(argv, "-append")
    assert "panic=-1" in append.split() and "console=ttyS0" in append.split()
    assert "rng_core.default_quality=1000" in append.split()
    assert option(argv, "-serial") == ["stdio"]


def test_command_line_is_shell_quoted(tmp_path: Path) -> None:
    argv = config(tmp_path).argv()
    line = vm.command_line(argv)
    assert shlex.split(line) == argv
    assert "'console=ttyS0 panic=-1 hugepages=8 cryptomgr.notests rng_core.default_quality=1000'" in line


def test_the_serial_transport_swaps_the_nic_for_a_second_uart(tmp_path: Path) -> None:
    """No NIC, no forward: the guest's ttyS1 on a socket QEMU waits on, and /init told to relay it."""
    net = config(tmp_path, port=1)
    serial = dataclasses.replace(net, transport="serial", port=0, channel=tmp_path / "ssh.sock")
    argv = serial.argv()
    assert option(argv, "-serial") == ["stdio", f"unix:{tmp_path / 'ssh.sock'},server=on,wait=on"]
    assert "-netdev" not in argv and option(argv, "-device") == ["virtio-rng-pci"]
    (append,) = option(argv, "-append")
    assert append == option(net.argv(), "-append")[0] + " harness.transport=serial"


def test_free_port_is_bindable() -> None:
    import socket

    port = net.free_port()
    assert 1024 <= port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# --- Process: the whole group dies --------------------------------------------------------------

SPAWNER = ["sh", "-c", "sleep 100 & echo $!; echo $$; exec sleep 100"]


def read_pids(proc: processes.Process) -> tuple[int, int]:
    assert proc.popen.stdout is not None
    grandchild = int(proc.popen.stdout.readline())
    child = int(proc.popen.stdout.readline())
    return child, grandchild


def test_process_kills_child_and_grandchild() -> None:
    with processes.Process(SPAWNER, stdout=subprocess.PIPE) as proc:
        child, grandchild = read_pids(proc)
        assert child == proc.popen.pid
        assert alive(child) and alive(grandchild)
    assert proc.popen.returncode is not None
    assert gone_soon(child) and gone_soon(grandchild)


def test_process_kills_the_group_on_exception() -> None:
    pids: tuple[int, int] = (0, 0)
    with pytest.raises(RuntimeError, match="boom"), processes.Process(SPAWNER, stdout=subprocess.PIPE) as proc:
        pids = read_pids(proc)
        assert all(alive(p) for p in pids)
        raise RuntimeError("boom")
    assert all(p > 0 for p in pids)
    assert gone_soon(pids[0]) and gone_soon(pids[1])


def test_process_kills_grandchild_after_the_leader_exited() -> None:
    grandchild = 0
    try:
        with processes.Process(["sh", "-c", "sleep 100 & echo $!"], stdout=subprocess.PIPE) as proc:
            assert proc.popen.stdout is not None
            grandchild = int(proc.popen.stdout.readline())
            proc.popen.wait(timeout=10)  # the leader is gone, its child is still in the group
        assert gone_soon(grandchild, within=1.0)
    finally:
        if grandchild and alive(grandchild):
            os.kill(grandchild, 9)  # don't leak it into the rest of the session


# --- a boot that cannot start --------------------------------------------------------------------


def qemu_pids_with(path: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if str(path).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@needs_qemu
def test_boot_of_a_non_kernel_fails_fast_and_cleans_up(tmp_path: Path) -> None:
    kernel = tmp_path / "not-a-kernel"
    kernel.write_bytes(random.Random(42).randbytes(256 * 1024))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\0" * 512)
    serial = tmp_path / "serial.log"
    cfg = vm.VMConfig(kernel, initrd, 128, "tcg", net.free_port())
    started = time.monotonic()
    with pytest.raises(vm.BootFailure) as info, vm.boot(cfg, serial, timeout=30):
        pytest.fail("a random file booted")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert message.startswith("QEMU exited with status 1 before the guest was ready: ")
    detail = message.split(": ", 1)[1]  # QEMU's own last stderr line
    assert any(s in detail for s in ("linux kernel too old", "invalid", "Error loading")), detail
    assert info.value.panicked is False
    assert serial.exists()
    assert qemu_pids_with(kernel) == []


def test_a_serial_flood_is_cut_on_disk_and_never_held_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU is replaced by a script that floods the serial console (a real guest needs minutes to
    print 100 MB through an emulated UART): 100 MB without a newline, then the ready marker."""
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\nhead -c 100000000 /dev/zero | tr '\\0' '\\033'\necho\necho HARNESS-READY\nsleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(vm, "QEMU", str(fake))
    cfg = vm.VMConfig(tmp_path / "vmlinux", tmp_path / "initrd", 256, "tcg", 0)
    with vm.VM(cfg, tmp_path / "serial.log") as machine:
        assert machine.wait_ready(60) > 0
        assert max(len(line) for line in machine._serial.tail) <= vm.SERIAL_LINE_MAX
    log = (tmp_path / "serial.log").read_bytes()
    assert len(log) < vm.SERIAL_LOG_MAX + 100 and log.endswith(b"[harness: serial log cut at 64 MiB]\n")


def test_qemu_dies_with_the_thread_that_started_it() -> None:
    """Every processes.Process runs under setpriv's parent-death signal: once the thread that started it is
    gone (with the harness, however it died), the kernel kills it, though it is in a session of its own."""
    started: list[processes.Process] = []

    def start() -> None:
        proc = processes.Process(["sleep", "30"], stdout=subprocess.DEVNULL)
        started.append(proc)
        # setpriv has set the signal once it has become `sleep`; a thread gone before that is a race
        # the harness does not run (its boot threads outlive their QEMUs).
        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.popen.pid}/exe").resolve().name != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    (proc,) = started
    try:
        assert proc.popen.wait(timeout=5) == -signal.SIGKILL
    finally:
        proc.kill()


@needs_qemu
def test_the_serial_socket_is_in_a_directory_only_this_user_enters_and_goes_with_the_vm(tmp_path: Path) -> None:
    """Real QEMU, which waits on the socket before it even loads the kernel (none exists here, so
    it exits once connected): whoever can reach the socket can speak SSH to the guest's dropbear."""
    cfg = vm.VMConfig(tmp_path / "no-kernel", tmp_path / "no-initrd", 256, "tcg", 0, transport="serial")
    machine = vm.VM(cfg, tmp_path / "serial.log")
    try:
        channel = machine.config.channel
        assert channel is not None and channel.name == "ssh.sock" and machine.config.port == 0
        folder = channel.parent
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.getuid()
        assert "-netdev" not in machine.config.argv()
    finally:
        machine.close()
    assert not folder.exists()
