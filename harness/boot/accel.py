"""The accelerator: which one a run asks for, the check that proves KVM can run what a boot needs,
and the run's current choice, which falls back to TCG the first time KVM fails a boot.

A `/dev/kvm` that opens is no proof. One kind of machine here runs a real-mode boot sector under
KVM (SeaBIOS prints its banner), yet every Linux guest stops right after "Booting from ROM..":
its KVM emulates the guest instruction by instruction (a host without VMX), about a hundred times
slower than TCG, and fails outright on VEX-encoded instructions ("KVM internal error. Suberror:
1"). The check therefore boots what a kernel's entry needs (PVH: 32-bit protected mode; then
paging and 64-bit long mode, the serial port) under the boots' own `-cpu`, and times ten million
loop iterations in long mode: milliseconds on a CPU, seconds emulated.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import select
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import processes
from harness.boot import vm
from harness.errors import InfraError, UserError
from harness.files import atomic_write

AUTO, KVM, TCG = "auto", "kvm", "tcg"
MODES = (AUTO, KVM, TCG)
ENV = "HARNESS_ACCEL"  # the default of --accel
KVM_DEVICE = Path("/dev/kvm")


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    reason: str  # why this one: what was asked for, or what the KVM check saw


def mode(asked: str | None) -> str:
    """--accel, else HARNESS_ACCEL, else auto; UserError for anything else."""
    if asked is not None:
        if asked not in MODES:
            raise UserError(f"--accel {asked}: give one of {', '.join(MODES)}")
        return asked
    value = os.environ.get(ENV, "") or AUTO
    if value not in MODES:
        raise UserError(f"{ENV}={value}: give one of {', '.join(MODES)}, or unset it")
    return value


def choose(asked: str, check_timeout: float = 5.0, cache: Path | None = None) -> Accelerator:
    """The accelerator a run starts with. `auto` is KVM only when the check proves it (its answer
    kept in `cache` for this boot of the host); `kvm` is taken at its word, but a /dev/kvm this
    user cannot open is bad input."""
    if asked == TCG:
        return Accelerator(TCG, "asked for (--accel tcg or HARNESS_ACCEL=tcg)")
    if asked == KVM:
        if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
            raise UserError(f"--accel kvm: {KVM_DEVICE} is absent or not accessible; give --accel tcg or auto")
        return Accelerator(KVM, "asked for (--accel kvm or HARNESS_ACCEL=kvm): not checked, never left")
    return _auto(check_timeout, cache)


def for_host() -> Accelerator:
    """What `--accel` left to its default (HARNESS_ACCEL, else auto) starts with on this host."""
    return choose(mode(None))


@functools.cache
def _auto(check_timeout: float, cache: Path | None = None) -> Accelerator:
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return Accelerator(TCG, f"{KVM_DEVICE} is absent or not accessible")
    facts = _host() if cache is not None else None
    kept = cache / CHECKED if cache is not None else None
    if kept is not None and facts is not None and (answer := _recall(kept, facts)) is not None:
        return answer
    ok, detail = run_check(KVM, check_timeout)
    if ok:
        answer = Accelerator(KVM, "KVM ran the check guest in long mode at a CPU's speed")
    else:
        answer = Accelerator(TCG, f"KVM failed the check guest: {detail}")
    if kept is not None and facts is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with contextlib.suppress(InfraError):
            atomic_write(kept, json.dumps({**facts, "name": answer.name, "reason": answer.reason, "checked": when}))
    return answer


# The check takes seconds where KVM fails it (2.8 s here), on every run. Its answer holds while
# nothing it ran on changes: this boot of the host (a module loaded, a BIOS setting: a reboot, or a
# new /dev/kvm node), QEMU, the CPU model the boots ask for, the check guest itself.
CHECKED = "kvm-check.json"


def _host() -> dict[str, str] | None:
    """What a check's answer holds for; None when it cannot be told (no boot id to go by)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text()[:64].strip()
        st = KVM_DEVICE.stat()
    except OSError:
        return None
    return {
        "boot_id": boot_id,
        "device": f"{st.st_rdev}:{st.st_ino}:{st.st_ctime_ns}",
        "qemu": vm.qemu_version(),
        "cpu": vm.cpu(KVM),
        "check": hashlib.sha256(check_elf()).hexdigest(),
    }


def _recall(kept: Path, facts: dict[str, str]) -> Accelerator | None:
    """The answer a check on this same host gave, when the file holds one (bounded, checked)."""
    try:
        with kept.open("rb") as f:
            doc = json.loads(f.read(1 << 16))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in facts.items()):
        return None
    name, reason, when = doc.get("name"), doc.get("reason"), doc.get("checked")
    if name not in (KVM, TCG) or not isinstance(reason, str) or not isinstance(when, str):
        return None
    return Accelerator(name, f"{reason[:500]}; checked at {when[:20]} on this boot of the host ({kept})")


class Current:
    """The accelerator a run's boots start their guests with, shared by every boot of the run.

    Under `auto`, the first boot that KVM fails (the guest prints nothing, or QEMU reports a KVM
    internal error) turns KVM off for the rest of the run: that boot and every later one run under
    TCG. An accelerator asked for by name never changes: its failure is the run's answer.
    """

    def __init__(self, start: Accelerator, may_fall_back: bool, log: Callable[[str], None] = lambda _: None) -> None:
        self.start = start
        self._may_fall_back = may_fall_back and start.name == KVM
        self._log = log
        self._lock = threading.Lock()
        self._name = start.name
        self.fell_back = ""  # why KVM was turned off during the run; "" while it was not

    @classmethod
    def of(cls, asked: str, log: Callable[[str], None] = lambda _: None, cache: Path | None = None) -> Current:
        return cls(choose(asked, cache=cache), asked == AUTO, log)

    @property
    def name(self) -> str:
        with self._lock:
            return self._name

    def kvm_failed(self, boot_id: str, why: str) -> bool:
        """A boot's guest failed under KVM for KVM's sake: True when the boot may go on under TCG.
        The first call turns KVM off for the run (`fell_back` says why)."""
        with self._lock:
            if not self._may_fall_back:
                return False
            if self._name == KVM:
                self._name = TCG
                self.fell_back = f"boot {boot_id}: {why}"
                self._log(f"accelerator: KVM failed boot {boot_id} ({why}); this boot and the rest of the run use tcg")
            return True

    def record(self) -> Accelerator:
        """What the manifest records: the accelerator the run started with, and any fallback."""
        if not self.fell_back:
            return self.start
        return Accelerator(self.start.name, f"{self.start.reason}; then KVM failed {self.fell_back}")


# --- the check guest ---------------------------------------------------------------------------

# Loaded at 1 MiB and entered through PVH (32-bit protected mode, flat segments, paging off). It
# writes 'P' to COM1, builds page tables at 0x101000 that identity-map the first GiB, enables PAE,
# EFER.LME and paging, far-jumps to 64-bit code, writes 'L', counts ECX down from ten million,
# writes 'K' and leaves through isa-debug-exit with 0x10, which QEMU turns into exit status 33.
# Assembled with GNU as from this listing (tests/test_accel.py assembles it again and compares):
CHECK_SOURCE = """\
    .code32
    mov     $0x3f8, %dx
    mov     $'P', %al
    out     %al, %dx
    mov     $0x101000, %edi
    xor     %eax, %eax
    mov     $3072, %ecx
    rep stosl
    movl    $0x102003, 0x101000
    movl    $0x103003, 0x102000
    mov     $0x103000, %edi
    mov     $0x83, %eax
    mov     $512, %ecx
1:  mov     %eax, (%edi)
    add     $0x200000, %eax
    add     $8, %edi
    loop    1b
    mov     %cr4, %eax
    or      $0x20, %eax
    mov     %eax, %cr4
    mov     $0x101000, %eax
    mov     %eax, %cr3
    mov     $0xc0000080, %ecx
    rdmsr
    or      $0x100, %eax
    wrmsr
    mov     %cr0, %eax
    or      $0x80000001, %eax
    mov     %eax, %cr0
    lgdt    gdtr
    ljmp    $8, $long
    .code64
long:
    mov     $0x3f8, %dx
    mov     $'L', %al
    out     %al, %dx
    mov     $10000000, %ecx
2:  dec     %ecx
    jnz     2b
    mov     $'K', %al
    out     %al, %dx
    mov     $0xf4, %dx
    mov     $0x10, %al
    out     %al, %dx
3:  hlt
    jmp     3b
    .p2align 3
gdt:
    .quad   0
    .quad   0x00209a0000000000
gdtr:
    .word   gdtr - gdt - 1
    .long   gdt
"""
CHECK_CODE = bytes.fromhex(
    "66baf803b050eebf0010100031c0b9000c0000f3abc7050010100003201000c705002010"
    "0003301000bf00301000b883000000b9000200008907050000200083c708e2f40f20e083"
    "c8200f22e0b8001010000f22d8b9800000c00f320d000100000f300f20c00d010000800f"
    "22c00f0115b0011000ea7c011000080066baf803b04ceeb980969800ffc975fcb04bee66"
    "baf400b010eef4ebfd0f1f8000000000000000000000000000000000009a20000f00a001"
    "1000"
)
LOAD_AT = 0x100000
CODE_AT = 0x100  # the code's offset in the file: after the ELF header, two program headers and the note
CHECK_EXIT = 33
LOOP_BOUND = 1.0  # seconds from 'L' to 'K': ten million iterations take milliseconds on a CPU


def check_elf(code: bytes = CHECK_CODE) -> bytes:
    """The check guest (or other `code` loaded as it is) as an ELF file QEMU's -kernel boots through
    its PVH entry note."""
    entry = LOAD_AT + CODE_AT
    note = struct.pack("<III4sI", 4, 4, 18, b"Xen", entry)  # XEN_ELFNOTE_PHYS32_ENTRY
    size = CODE_AT + len(code)
    header = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"", 2, 62, 1, entry, 64, 0, 0, 64, 56, 2, 64, 0, 0
    )
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, LOAD_AT, LOAD_AT, size, 0x4000, 0x1000)  # tables: the 3 pages after
    notes = struct.pack("<IIQQQQQQ", 4, 4, 176, LOAD_AT + 176, LOAD_AT + 176, len(note), len(note), 4)
    return (header + load + notes + note).ljust(CODE_AT, b"\0") + code


def run_check(accel: str, timeout: float) -> tuple[bool, str]:
    """Boot the check guest under `accel`; (True, "") when it ran, else (False, what went wrong)."""
    with tempfile.TemporaryDirectory(prefix="harness-kvmcheck-") as tmp:
        kernel = Path(tmp, "check.elf")
        kernel.write_bytes(check_elf())
        argv = [
            vm.QEMU,
            "-machine",
            "pc",
            "-accel",
            accel,
            "-cpu",
            vm.cpu(accel),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-m",
            "16",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
            str(kernel),
        ]
        with processes.Process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            seen, when, ended = _read_marks(proc.popen, time.monotonic() + timeout)
            if ended:  # it leaves by itself after 'K', or after an error: its status and message say which
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=2)
            status = proc.popen.poll()
            stderr = proc.popen.stderr
            err = stderr.read().decode(errors="replace") if status is not None and stderr is not None else ""
    return _judge(seen, when, status, err, timeout)


def _read_marks(popen: subprocess.Popen[bytes], deadline: float) -> tuple[str, dict[str, float], bool]:
    """The check guest's marks as they arrive on its serial port, with their arrival times, and
    whether its output ended (QEMU exited, or is about to)."""
    assert popen.stdout is not None
    seen, when = "", dict[str, float]()
    fd = popen.stdout.fileno()
    while "K" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return seen, when, False
        chunk = os.read(fd, 64)
        if not chunk:
            return seen, when, True
        for mark in chunk.decode(errors="replace"):
            if mark in "PLK" and mark not in seen:
                seen += mark
                when[mark] = time.monotonic()
                if mark == "L":  # the loop has its own bound: an emulated guest need not be waited out
                    deadline = min(deadline, when["L"] + LOOP_BOUND)
    return seen, when, True


def _judge(seen: str, when: dict[str, float], status: int | None, err: str, timeout: float) -> tuple[bool, str]:
    """Why the check guest did or did not prove the accelerator (pure)."""
    last = next((line for line in reversed(err.strip().splitlines()) if line.strip()), "")
    if "K" in seen and status == CHECK_EXIT:
        looped = when["K"] - when["L"]
        if looped > LOOP_BOUND:
            return False, (
                f"it ran ten million loop iterations in {looped:.1f}s, over {LOOP_BOUND:g}s: the guest is "
                "emulated, not run on the CPU"
            )
        return True, ""
    if "L" in seen and "K" not in seen:
        return False, (
            f"the guest reached long mode, but ten million loop iterations did not end within "
            f"{LOOP_BOUND:g}s: the guest is emulated, not run on the CPU"
        )
    stage = {"": "printed nothing", "P": "stopped before long mode"}.get(seen, "stopped")
    detail = f"exit {status}: {last or 'no message'}" if status is not None else f"no answer in {timeout:g}s"
    return False, f"the guest {stage} ({detail})"
