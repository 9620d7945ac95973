"""harness/accel.py: the check guest, the choice of accelerator, and the fallback to TCG when KVM
fails a boot; run end to end against a fake QEMU whose KVM behaves like /dev/kvm on one kind of
machine here (tests/data/fake-kvm-qemu: it runs a real-mode boot sector, but a guest booted with
-kernel never runs). The fake stands in for that machine wherever this one's /dev/kvm is another:
absent, or a KVM that works. Everything but the fake's KVM is the real QEMU."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import log_text, results_doc
from elftools.elf.elffile import ELFFile
from rich.console import Console

from harness import cli
from harness.boot import accel, vm
from harness.errors import UserError

FAKE = Path(__file__).parent / "data" / "fake-kvm-qemu"
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")


@pytest.fixture
def fake_kvm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The fake QEMU in place of the real one, and a /dev/kvm this user can open (a plain file: the
    fake never hands KVM to the real QEMU)."""
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    monkeypatch.setattr(accel, "KVM_DEVICE", device)
    monkeypatch.setattr(vm, "QEMU", str(FAKE))
    monkeypatch.setenv("FAKE_REAL_QEMU", shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    monkeypatch.delenv(accel.ENV, raising=False)
    accel._auto.cache_clear()
    yield
    accel._auto.cache_clear()


# --- the check guest ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None, reason="no GNU as/ld")
def test_the_check_guest_is_its_listing_assembled(tmp_path: Path) -> None:
    """The bytes the harness boots are what the listing in accel.py says, assembled with GNU as."""
    (tmp_path / "check.S").write_text(accel.CHECK_SOURCE)
    subprocess.run(["as", "--64", "-o", str(tmp_path / "check.o"), str(tmp_path / "check.S")], check=True)
    at = hex(accel.LOAD_AT + accel.CODE_AT)
    subprocess.run(
        [
            "ld",
            "-m",
            "elf_x86_64",
            "-e",
            at,
            f"-Ttext={at}",
            "--oformat",
            "binary",
            "-o",
            str(tmp_path / "check.bin"),
            str(tmp_path / "check.o"),
        ],
        check=True,
    )
    assert (tmp_path / "check.bin").read_bytes() == accel.CHECK_CODE


def test_the_check_guest_is_an_elf_with_a_pvh_entry(tmp_path: Path) -> None:
    path = tmp_path / "check.elf"
    path.write_bytes(accel.check_elf())
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert (elf.elfclass, elf["e_machine"], elf["e_entry"]) == (64, "EM_X86_64", accel.LOAD_AT + accel.CODE_AT)
        load, note = elf.iter_segments()
        assert (load["p_type"], load["p_vaddr"], load["p_memsz"]) == ("PT_LOAD", accel.LOAD_AT, 0x4000)
        (entry,) = note.iter_notes()
        assert (entry["n_name"], entry["n_type"]) == ("Xen", 18)  # XEN_ELFNOTE_PHYS32_ENTRY
        assert int.from_bytes(entry["n_descdata"], "little") == elf["e_entry"]


@needs_qemu
def test_the_check_guest_runs_under_tcg() -> None:
    """Protected mode, long mode and ten million iterations: TCG needs a fraction of a second."""
    assert accel.run_check(accel.TCG, 10) == (True, "")


def test_what_the_check_saw_is_said_plainly() -> None:
    t = 100.0
    assert accel._judge("PLK", {"P": t, "L": t, "K": t + 0.01}, 33, "", 5) == (True, "")
    slow = accel._judge("PLK", {"P": t, "L": t, "K": t + 4}, 33, "", 5)
    assert not slow[0] and "in 4.0s, over 1s: the guest is emulated" in slow[1]
    stuck = accel._judge("PL", {"P": t, "L": t}, None, "", 5)
    assert stuck == (
        False,
        "the guest reached long mode, but ten million loop iterations did not end within 1s: "
        "the guest is emulated, not run on the CPU",
    )
    assert accel._judge("", {}, None, "", 5) == (False, "the guest printed nothing (no answer in 5s)")
    assert accel._judge("P", {"P": t}, 1, "\nqemu: KVM internal error. Suberror: 1\n\n", 5) == (
        False,
        "the guest stopped before long mode (exit 1: qemu: KVM internal error. Suberror: 1)",
    )
    assert accel._judge("", {}, 1, "", 5) == (False, "the guest printed nothing (exit 1: no message)")


# A boot sector that writes 'K' to COM1 and leaves through isa-debug-exit: the check the harness
# made before it proved long mode, which KVM on one kind of machine here passes.
REAL_MODE_SECTOR = bytes([0xBA, 0xF8, 0x03, 0xB0, ord("K"), 0xEE, 0xBA, 0xF4, 0x00, 0xB0, 0x10, 0xEE, 0xF4, 0xEB, 0xFD])


@needs_qemu
def test_the_check_refuses_a_kvm_that_runs_real_mode_code_but_not_linux(fake_kvm: None, tmp_path: Path) -> None:
    disk = tmp_path / "boot.img"
    disk.write_bytes(REAL_MODE_SECTOR.ljust(510, b"\0") + b"\x55\xaa")
    old = subprocess.run(
        [
            str(FAKE),
            "-accel",
            "kvm",
            "-cpu",
            "max",
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "16",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
            f"file={disk},format=raw,if=floppy",
        ],
        capture_output=True,
        timeout=30,
    )
    assert (old.returncode, old.stdout[:1]) == (33, b"K")  # what the old check accepted
    start = accel.choose(accel.AUTO, check_timeout=3)
    assert start == accel.Accelerator("tcg", "KVM failed the check guest: the guest printed nothing (no answer in 3s)")


@needs_qemu
def test_the_check_s_answer_is_kept_for_this_boot_of_the_host(
    fake_kvm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check (against the fake's KVM, seconds) runs once: a later run on the same boot of the
    host, with the same /dev/kvm, QEMU and check, takes its answer and says when it was made. A new
    /dev/kvm node, or a file that is not what was kept, checks again."""
    cache = tmp_path / "cache"
    first = accel.choose(accel.AUTO, check_timeout=3, cache=cache)
    assert first == accel.Accelerator("tcg", "KVM failed the check guest: the guest printed nothing (no answer in 3s)")
    assert json.loads((cache / accel.CHECKED).read_text())["name"] == "tcg"
    checks: list[str] = []

    def counted(name: str, timeout: float) -> tuple[bool, str]:
        checks.append(name)
        return True, ""

    monkeypatch.setattr(accel, "run_check", counted)
    accel._auto.cache_clear()  # another run: a new process
    again = accel.choose(accel.AUTO, check_timeout=3, cache=cache)
    assert checks == [] and again.name == "tcg" and again.reason.startswith(first.reason + "; checked at ")
    assert "on this boot of the host" in again.reason and str(cache / accel.CHECKED) in again.reason
    assert accel._auto(3, None) == accel.Accelerator("kvm", "KVM ran the check guest in long mode at a CPU's speed")
    assert checks == ["kvm"]  # no cache given: checked

    device = tmp_path / "kvm-again"  # the module loaded again: a new node
    device.write_bytes(b"")
    monkeypatch.setattr(accel, "KVM_DEVICE", device)
    accel._auto.cache_clear()
    assert accel.choose(accel.AUTO, check_timeout=3, cache=cache).name == "kvm" and len(checks) == 2
    for junk in ("[", '{"name": "kvm"}', json.dumps({"name": "tcg"}) * 2):
        (cache / accel.CHECKED).write_text(junk)
        accel._auto.cache_clear()
        assert accel.choose(accel.AUTO, check_timeout=3, cache=cache).name == "kvm"
    assert len(checks) == 5


@needs_qemu
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm")
@pytest.mark.skipif(os.environ.get("HARNESS_EXPECT_KVM") == "1", reason="HARNESS_EXPECT_KVM=1: KVM works here")
def test_kvm_fails_the_check_on_this_machine() -> None:
    """This kind of machine's /dev/kvm (set HARNESS_EXPECT_KVM=1 where KVM really runs guests)."""
    ok, detail = accel.run_check(accel.KVM, 5)
    assert ok is False and detail


# --- asking for one ----------------------------------------------------------------------------


def test_the_mode_comes_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.ENV, raising=False)
    assert accel.mode(None) == "auto"
    monkeypatch.setenv(accel.ENV, "tcg")
    assert (accel.mode(None), accel.mode("kvm")) == ("tcg", "kvm")
    monkeypatch.setenv(accel.ENV, "hvf")
    with pytest.raises(UserError, match=r"HARNESS_ACCEL=hvf: give one of auto, kvm, tcg, or unset it"):
        accel.mode(None)


def test_kvm_by_name_needs_a_device_this_user_opens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "no-kvm")
    with pytest.raises(UserError, match=r"--accel kvm: .*no-kvm is absent or not accessible; give --accel tcg"):
        accel.choose(accel.KVM)
    assert accel.choose(accel.TCG).name == "tcg"
    accel._auto.cache_clear()
    assert accel.choose(accel.AUTO, check_timeout=1) == accel.Accelerator(
        "tcg", f"{tmp_path / 'no-kvm'} is absent or not accessible"
    )
    accel._auto.cache_clear()


def test_the_run_gives_kvm_up_once_and_only_under_auto() -> None:
    said: list[str] = []
    current = accel.Current(accel.Accelerator("kvm", "checked"), True, said.append)
    assert current.kvm_failed("a", "the guest printed nothing in 10s under kvm") is True
    assert current.kvm_failed("b", "again") is True  # b goes on under TCG too, unsaid
    assert current.name == "tcg" and len(said) == 1 and "KVM failed boot a" in said[0]
    assert current.record() == accel.Accelerator(
        "kvm", "checked; then KVM failed boot a: the guest printed nothing in 10s under kvm"
    )
    forced = accel.Current(accel.Accelerator("kvm", "asked for"), False)
    assert forced.kvm_failed("a", "x") is False and forced.name == "kvm" and forced.record().reason == "asked for"
    assert accel.Current(accel.Accelerator("tcg", "no kvm"), True).kvm_failed("a", "x") is False


# --- whole runs against the fake KVM -----------------------------------------------------------


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, Console(file=out, width=400))
    return code, out.getvalue()


def small_matrix(folder: Path, *kernels: str, cases: str = "[limits, mlock_over, map_locked_over]") -> Path:
    path = folder / "m.yaml"
    listed = "".join(f"\n  - debian: {k}" for k in kernels)
    path.write_text(f"kernels:{listed}\nram: [256M]\nmemlock: [default]\nusers: [root]\ncases: {cases}\n")
    return path


def results(folder: Path) -> tuple[dict[str, object], dict[str, object]]:
    run_dir = (folder / "latest").resolve()
    return results_doc(run_dir), json.loads((run_dir / "manifest.json").read_text())


@pytest.mark.integration
@needs_qemu
def test_the_default_matrix_completes_under_tcg_where_kvm_runs_real_mode_but_not_linux(
    fake_kvm: None, tmp_path: Path
) -> None:
    """`make run`'s matrix, without HARNESS_ACCEL, on a machine whose KVM passes the old real-mode
    check: the check refuses that KVM, and every boot runs under TCG with real results."""
    code, out = run(["run", "--results", str(tmp_path), "--jobs", "2"])
    assert code == 0, out  # every deviation of these kernels is a known one (guest-tests/known-deviations.yaml)
    assert out.count("accelerator: ") == 1
    assert "accelerator: tcg (KVM failed the check guest: the guest printed nothing" in out
    data, manifest = results(tmp_path)
    assert manifest["accelerator"]["name"] == "tcg" and "fell_back" not in manifest["accelerator"]
    outcomes = {c["outcome"] for b in data["boots"] for c in b["cases"]}
    assert outcomes <= {"pass", "deviation", "not_applicable"} and "pass" in outcomes
    assert len(data["boots"]) == 4 and all(b["accelerator"] == "tcg" and not b["error"] for b in data["boots"])
    assert sum(len(b["cases"]) for b in data["boots"]) == 1952


@pytest.mark.integration
@needs_qemu
def test_a_kvm_that_passes_the_check_but_boots_no_linux_is_given_up_after_its_first_silent_boot(
    fake_kvm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback: both boots start under KVM (the check passed), print nothing for SILENT_AFTER
    seconds, and go on under TCG; the run says so once; every boot records tcg."""
    monkeypatch.setenv("FAKE_KVM", "passes-check")
    matrix = small_matrix(tmp_path, "bookworm", "trixie")
    code, out = run(["run", "--matrix", str(matrix), "--results", str(tmp_path / "r"), "--jobs", "2"])
    assert code == 0, out
    assert "accelerator: kvm (KVM ran the check guest in long mode at a CPU's speed)" in out
    assert out.count("accelerator: KVM failed boot") == 1
    assert f"the guest printed nothing in {vm.SILENT_AFTER['kvm']:g}s under kvm); this boot and the rest" in out
    data, manifest = results(tmp_path / "r")
    assert [b["accelerator"] for b in data["boots"]] == ["tcg", "tcg"]
    assert [b["accelerator"] for b in manifest["boots"]] == ["tcg", "tcg"]
    assert manifest["accelerator"]["name"] == "kvm" and manifest["accelerator"]["fell_back"].startswith("boot ")
    assert {c["outcome"] for b in data["boots"] for c in b["cases"]} == {"pass"}
    assert all(b["retries"] == 0 for b in data["boots"])
    run_dir = (tmp_path / "r" / "latest").resolve()
    for b in data["boots"]:
        log = log_text(run_dir / b["serial_log"])
        assert "under kvm; this guest is booted again under tcg]" in log and "HARNESS-READY" in log


@pytest.mark.integration
@needs_qemu
def test_kvm_asked_for_on_such_a_machine_fails_each_boot_in_one_line(fake_kvm: None, tmp_path: Path) -> None:
    """--accel kvm is never left: the boot fails once, not retried, and says what to do instead,
    without promising serial lines there are none of."""
    matrix = small_matrix(tmp_path, "bookworm")
    code, out = run(["run", "--accel", "kvm", "--matrix", str(matrix), "--results", str(tmp_path / "r")])
    assert code == 3, out
    error = f"the guest printed nothing in {vm.SILENT_AFTER['kvm']:g}s under kvm; --accel tcg"
    assert f"1 boot did not start: {error}" in out
    assert "lines below" not in out
    data, _ = results(tmp_path / "r")
    (boot,) = data["boots"]
    assert (boot["error"], boot["retries"], boot["accelerator"]) == (error, 0, "kvm")


@pytest.mark.integration
@needs_qemu
def test_a_kvm_internal_error_is_kvm_failing_not_a_slow_boot(
    fake_kvm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU stops a guest KVM cannot emulate an instruction of, and stays: its message ends the wait."""
    monkeypatch.setenv("FAKE_KVM", "internal")
    config = vm.VMConfig(tmp_path / "k", tmp_path / "initrd", 256, "kvm", 0)
    config.kernel.write_bytes(accel.check_elf())
    config.initrd.write_bytes(b"")
    with pytest.raises(vm.BootFailure) as info, vm.boot(config, tmp_path / "serial.log", timeout=120):
        pass
    assert info.value.kvm_failed and not info.value.silent
    assert str(info.value) == "KVM could not run the guest (QEMU: KVM internal error. Suberror: 1); --accel tcg"


@pytest.mark.integration
@needs_qemu
def test_a_guest_that_prints_nothing_under_tcg_is_stopped_at_the_silence_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel without a console on ttyS0 (here: a PVH guest that only halts) is dead, not slow:
    stopped at the bound, not retried, and its error says what to look at."""
    monkeypatch.setitem(vm.SILENT_AFTER, "tcg", 2.0)
    kernel = tmp_path / "halts"
    kernel.write_bytes(accel.check_elf(bytes([0xF4, 0xEB, 0xFD])))  # hlt; jmp back to it
    (tmp_path / "initrd").write_bytes(b"")
    config = vm.VMConfig(kernel, tmp_path / "initrd", 256, "tcg", 0)
    with pytest.raises(vm.BootFailure) as info, vm.boot(config, tmp_path / "serial.log", timeout=120):
        pass
    assert info.value.silent and not info.value.kvm_failed and info.value.excerpt == ""
    assert str(info.value) == (
        "the guest printed nothing in 2s under tcg: does its kernel have a serial console "
        "(CONFIG_SERIAL_8250_CONSOLE=y) on ttyS0?"
    )
