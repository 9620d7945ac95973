"""harness/boot.py: the reboot/retry/give-up policy, and the boot loop driven through fake guests.

The VM and the SSH session are fakes here (boot.Seams): what is tested is how the loop reacts to
each way a guest can fail, which a real QEMU can only show one slow boot at a time. The same
faults on real guests are in tests/test_integration.py (panic, QEMU killed, SSH dropped, no NIC).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import log_text

from harness import boot, judge
from harness.boot import accel, policy, vm
from harness.boot.live import Cancelled, Live
from harness.boot.policy import Attempts, Phase, next_step
from harness.errors import InfraError
from harness.kernels import Kernel
from harness.kernels.sources.debian import DebianKernel
from harness.kit import guest
from harness.kit.image import Image
from harness.kit.suites import Built
from harness.kit.verdict import Expectations, Rule
from harness.plan.matrix import BootPlan, Memlock, RunPlan, Timeouts
from harness.results import BootResult, Outcome
from harness.streams import Line

CASES = ("a", "b", "c")
EXPECT = Expectations({c: (Rule({}, {"result": "ok"}, "cite"),) for c in CASES}, ())


# --- the policy, pure --------------------------------------------------------------------------


def test_a_lost_guest_is_booted_again_until_max_reboots() -> None:
    lost = policy.GuestLost(Outcome.PANIC, "panicked")
    step = next_step(Attempts(), lost)
    assert (step.phase, step.attempts) == (Phase.BOOT, Attempts(1, 0))
    step = next_step(Attempts(policy.MAX_REBOOTS, 1), lost)
    assert step.phase is Phase.GIVEN_UP and step.attempts == Attempts(policy.MAX_REBOOTS + 1, 1)
    assert step.error == f"gave up after losing the guest {policy.MAX_REBOOTS + 1} times; last: panicked"
    assert step.message == "not run: " + step.error and step.outcome is Outcome.INFRA_ERROR


def test_machinery_failures_are_retried_a_panic_while_booting_never() -> None:
    qemu = vm.BootFailure("QEMU exited with status 1 before the guest was ready: x", "tail")
    assert next_step(Attempts(), qemu) == policy.Step(Phase.BOOT, Attempts(0, 1))
    final = next_step(Attempts(0, policy.INFRA_RETRIES), qemu)
    assert (final.phase, final.outcome, final.error) == (Phase.FAILED, Outcome.INFRA_ERROR, f"{qemu}\ntail")
    panic = vm.BootFailure("guest kernel panicked while booting", "Kernel panic", panicked=True)
    step = next_step(Attempts(), panic)
    assert (step.phase, step.outcome, step.message) == (Phase.FAILED, Outcome.PANIC, str(panic))
    hang = vm.BootFailure("no ready marker within 9s", "", timed_out=True)
    assert next_step(Attempts(0, policy.INFRA_RETRIES), hang).outcome is Outcome.TIMEOUT
    ssh = guest.SSHFailure("cannot reach root@[127.0.0.1]:1: refused")
    assert next_step(Attempts(0, policy.INFRA_RETRIES), ssh) == policy.Step(
        Phase.FAILED, Attempts(0, policy.INFRA_RETRIES), Outcome.INFRA_ERROR, str(ssh), str(ssh)
    )


def test_a_guest_that_prints_nothing_is_dead_and_not_tried_again() -> None:
    """The silence bound is ten times what a boot needs: another try would wait as long for nothing."""
    silent = vm.BootFailure("the guest printed nothing in 30s under tcg: ...", "", silent=True)
    step = next_step(Attempts(), silent)
    assert (step.phase, step.outcome, step.attempts) == (Phase.FAILED, Outcome.INFRA_ERROR, Attempts())
    assert step.error == str(silent)  # no excerpt to promise


# --- the loop, through fakes -------------------------------------------------------------------

# What a fake guest does when the probe reaches a case: answer it, or fail in one of these ways.
PANIC, HANG, QEMU_GONE, DROP = "panic", "hang", "qemu gone", "ssh dropped"
QUIT = "quit"  # the probe stops there and exits with the session's exit code


class FakeMachine:
    def __init__(self, config: vm.VMConfig) -> None:
        self.config = vm.VMConfig(config.kernel, config.initrd, config.ram_mb, config.accel, 2222, config.disk)
        self.started = 0.0
        self.ready_after: float | None = 1.5
        self.panicked = False
        self.alive = True
        self.exit_status: int | None = None
        self.closed = False
        self.restored = ""
        self.saved = ""

    def wait_exit(self, timeout: float) -> None:
        pass

    def excerpt(self, lines: int = 25) -> str:
        return "Kernel panic - not syncing: sysrq triggered crash" if self.panicked else "last serial lines"

    def endpoint(self, host_key: str) -> guest.Endpoint:
        return guest.Endpoint(self.config.port, host_key)

    def close(self) -> None:
        self.closed = True
        self.alive = False


class FakeSession:
    def __init__(
        self, machine: FakeMachine, faults: dict[str, Any], exit_code: int, refuse: guest.SSHFailure | None = None
    ) -> None:
        self.machine = machine
        self.faults = faults
        self.exit_code = exit_code
        self.refuse = refuse
        self.argvs: list[list[str]] = []

    def connect(self) -> float:
        if self.refuse is not None:
            raise self.refuse
        return 0.1

    def run(self, argv: Sequence[str], timeout: float, on_line: Callable[[Line], None] | None = None) -> guest.Result:
        self.argvs.append(list(argv))
        if argv[0] == "uname":
            return guest.Result(0, "6.1.0-50-amd64\n", "")
        if argv[0] == "sh":  # a suite's program, in the shell that reports how it ended
            fault = self.faults.pop(argv[-1].rsplit("/", 1)[-1], None)
            if fault == HANG:
                raise guest.CommandTimeout(f"sh did not finish within {timeout:g}s")
            status, output = fault if isinstance(fault, tuple) else (0, "TAP version 13\n1..1\nok 1 one\n")
            return guest.Result(0, f"{output}\nharness-exit {status} 0\n", "")
        assert on_line is not None
        for case in argv[argv.index("--timeout") + 2 :]:
            fault = self.faults.pop(case, None)
            if fault == PANIC:
                self.machine.panicked, self.machine.alive = True, False
                raise guest.SSHFailure("SSH connection to the guest broke while running /harness/probe: EOF")
            if fault == HANG:
                raise guest.CommandTimeout(f"/harness/probe did not finish within {timeout:g}s")
            if fault == QEMU_GONE:
                self.machine.alive, self.machine.exit_status = False, -9
                raise guest.SSHFailure("SSH connection to the guest broke while running /harness/probe: EOF")
            if fault == DROP:
                raise guest.SSHFailure("SSH connection to the guest broke while running /harness/probe: reset")
            if fault == QUIT:
                return guest.Result(self.exit_code, "", "probe: cannot set the limit\n" if self.exit_code else "")
            if isinstance(fault, list):  # what the probe prints instead of this case's record
                for raw in fault:
                    on_line(raw if isinstance(raw, Line) else Line(raw))
                continue
            record = {"kind": "case", "case": case, "status": "ok", "result": "ok", "memtotal_kb": 250000}
            on_line(Line(json.dumps(record).encode()))
        return guest.Result(0, "", "")


class Guests:
    """Fake seams: each boot attempt takes the next entry of `boots` (an exception to fail with, or
    None to come up); the probe meets `faults` (case -> fault, each once) in whatever guest runs it."""

    def __init__(
        self,
        boots: Sequence[BaseException | None] = (),
        faults: dict[str, Any] | None = None,
        exit_code: int = 0,
        refuse: guest.SSHFailure | None = None,
    ) -> None:
        self.boots = list(boots)
        self.faults = dict(faults or {})
        self.exit_code = exit_code
        self.refuse = refuse
        self.started: list[FakeMachine] = []
        self.sessions: list[FakeSession] = []
        self.loaded: list[str] = []  # per guest started: the saved guest it is loaded from ("" booted)
        self.stores: list[object] = []  # the store each guest was asked for

    @contextlib.contextmanager
    def boot(
        self, config: vm.VMConfig, serial: Path, timeout: float, cancel: threading.Event, saved: object
    ) -> Iterator[FakeMachine]:
        failure = self.boots.pop(0) if self.boots else None
        if failure is not None:
            raise failure
        self.stores.append(saved)
        machine = FakeMachine(config)
        machine.restored = self.loaded.pop(0) if self.loaded else ""
        self.started.append(machine)
        try:
            yield machine
        finally:
            machine.close()

    @contextlib.contextmanager
    def session(self, endpoint: guest.Endpoint, user: str, key: object) -> Iterator[FakeSession]:
        assert endpoint.port == 2222 and user == "root"
        session = FakeSession(self.started[-1], self.faults, self.exit_code, self.refuse)
        self.sessions.append(session)
        yield session

    def seams(self) -> boot.Seams:
        return boot.Seams(self.boot, self.session)  # type: ignore[arg-type]


def plan(*runs: RunPlan) -> BootPlan:
    return BootPlan(
        "k-256M", DebianKernel(("bookworm",)), 256, runs or (RunPlan(None, "root", CASES),), Timeouts(boot=10, case=5)
    )


def context(tmp_path: Path, p: BootPlan, **fields: Any) -> boot.BootContext:
    """A boot's context with a fake kernel, image and data disk, judged by EXPECT; `fields` as given."""
    kernel = Kernel("bookworm", "6.1.0-50-amd64", tmp_path / "vmlinuz", None, None, "ab" * 32, None, None, (), "x")
    image = Image(tmp_path / "image.cpio", "cd" * 32, "ssh-ed25519 AAAA", ())
    given = {
        "plan": p,
        "kernel": kernel,
        "image": image,
        "disk": tmp_path / "disk.img",
        "key": None,
        "accel": "tcg",
        "judge": judge.Judge(EXPECT).results,
        "run_dir": tmp_path,
        **fields,
    }
    return boot.BootContext(**given)


def run_boot(
    tmp_path: Path,
    guests: Guests,
    p: BootPlan | None = None,
    live: Live | None = None,
    saved: object = None,
    accel_name: str = "tcg",
) -> tuple[BootResult, list[tuple[int, bool]]]:
    """Run one boot plan through the fakes; returns the result and (cases known, flushed) per publish."""
    p = p or plan()
    ctx = context(tmp_path, p, accel=accel_name, saved=saved)
    result = BootResult(p.id, None, p.ram_mb)
    published: list[tuple[int, bool]] = []
    boot.run_boot(ctx, result, lambda r, flush: published.append((len(r.cases), flush)), live or Live(), guests.seams())
    return result, published


def outcomes(result: BootResult) -> list[tuple[str, str, Outcome]]:
    return [(c.case, c.memlock, c.outcome) for c in result.cases]


def test_a_boot_asks_for_guests_from_its_store_and_records_the_saved_guest_they_came_from(tmp_path: Path) -> None:
    """The first guest booted (and was saved), a case lost it, the next one was loaded: the boot
    says which saved guest it used. Without a store every guest is asked for cold."""
    guests = Guests(faults={CASES[1]: PANIC})
    guests.loaded = ["", "5eed"]
    result, _ = run_boot(tmp_path / "a", guests, saved="the store")
    assert (result.restored, result.reboots, guests.stores) == ("5eed", 1, ["the store", "the store"])
    assert outcomes(result)[1] == (CASES[1], "default", Outcome.PANIC)

    cold = Guests()
    result, _ = run_boot(tmp_path / "b", cold)
    assert (result.restored, cold.stores) == ("", [None])


def test_every_case_in_one_guest(tmp_path: Path) -> None:
    guests = Guests()
    result, published = run_boot(tmp_path, guests)
    assert outcomes(result) == [(c, "default", Outcome.PASS) for c in CASES]
    assert (result.reboots, result.retries, result.error, result.uname) == (0, 0, "", "6.1.0-50-amd64")
    assert result.serial_log == "serial/k-256M.log" and (tmp_path / "serial").is_dir()
    assert result.memtotal_kb == 250000 and set(result.timings) == {"marker", "ssh", "probe"}
    assert published[-1] == (3, True) and (1, False) in published  # each case as it arrives, flushed at the end
    assert len(guests.started) == 1 and all(m.closed for m in guests.started)
    (session,) = guests.sessions
    assert session.argvs[1][:4] == ["/harness/probe", "run", "--memlock", "default"]


@pytest.mark.parametrize(
    ("fault", "outcome", "message"),
    [
        (PANIC, Outcome.PANIC, "the guest kernel panicked during this case:\nKernel panic"),
        (HANG, Outcome.TIMEOUT, "the guest stopped answering during this case (/harness/probe did not finish"),
        (QEMU_GONE, Outcome.INFRA_ERROR, "QEMU exited during this case (status -9)"),
        (DROP, Outcome.INFRA_ERROR, "lost the guest during this case: SSH connection to the guest broke"),
    ],
)
def test_a_case_that_loses_the_guest_is_recorded_and_a_new_guest_goes_on(
    tmp_path: Path, fault: str, outcome: Outcome, message: str
) -> None:
    guests = Guests(faults={"b": fault})
    result, _ = run_boot(tmp_path, guests)
    assert [c.outcome for c in result.cases] == [Outcome.PASS, outcome, Outcome.PASS]
    assert result.cases[1].message.startswith(message)
    assert (result.reboots, result.retries, result.error) == (1, 0, "")
    assert len(guests.started) == 2
    # The second guest runs only what has no result yet.
    assert guests.sessions[1].argvs[1][-1:] == ["c"]


def test_losing_the_guest_too_often_gives_up_the_rest(tmp_path: Path) -> None:
    cases = tuple(f"c{i}" for i in range(6))
    guests = Guests(faults={c: PANIC for c in cases[:4]})
    p = plan(RunPlan(None, "root", cases), RunPlan(Memlock(65536, 65536), "user", ("c5",)))
    result, _ = run_boot(tmp_path, guests, p)
    assert [c.outcome for c in result.cases[:4]] == [Outcome.PANIC] * 4
    assert result.reboots == policy.MAX_REBOOTS + 1 and len(guests.started) == policy.MAX_REBOOTS + 1
    assert result.error.startswith(f"gave up after losing the guest {policy.MAX_REBOOTS + 1} times; last: the guest")
    rest = result.cases[4:]
    assert [(c.case, c.memlock, c.user) for c in rest] == [
        ("c4", "default", "root"),
        ("c5", "default", "root"),
        ("c5", "64K", "user"),
    ]
    assert all(c.outcome is Outcome.INFRA_ERROR and c.message.startswith("not run: gave up") for c in rest)


def test_a_boot_that_fails_on_the_machinery_is_tried_again(tmp_path: Path) -> None:
    flaky = vm.BootFailure("QEMU exited with status 1 before the guest was ready: port taken", "")
    guests = Guests(boots=[flaky, guest.SSHFailure("cannot reach root@[127.0.0.1]:2222: refused")])
    result, _ = run_boot(tmp_path, guests)
    assert [c.outcome for c in result.cases] == [Outcome.PASS] * 3
    assert (result.retries, result.reboots, result.error) == (policy.INFRA_RETRIES, 0, "")


def test_a_boot_that_keeps_failing_errs_every_case_after_the_retries(tmp_path: Path) -> None:
    failures: list[BaseException | None] = [InfraError(f"attempt {i}") for i in range(policy.INFRA_RETRIES + 1)]
    guests = Guests(boots=failures)
    result, published = run_boot(tmp_path, guests)
    assert not guests.boots and not guests.started  # every attempt used, no more
    assert result.error == f"attempt {policy.INFRA_RETRIES}" and result.retries == policy.INFRA_RETRIES
    assert outcomes(result) == [(c, "default", Outcome.INFRA_ERROR) for c in CASES]
    assert published[-1] == (3, True)


def test_a_kernel_that_panics_while_booting_is_not_tried_again(tmp_path: Path) -> None:
    panic = vm.BootFailure("guest kernel panicked while booting", "Kernel panic - not syncing: VFS", panicked=True)
    guests = Guests(boots=[panic, None])
    result, _ = run_boot(tmp_path, guests)
    assert guests.boots == [None]  # the second attempt was never made
    assert [c.outcome for c in result.cases] == [Outcome.PANIC] * 3
    assert result.error == "guest kernel panicked while booting\nKernel panic - not syncing: VFS"
    assert result.cases[0].message == "guest kernel panicked while booting"


def test_a_probe_that_exits_with_an_error_errs_the_rest_of_its_run_without_a_reboot(tmp_path: Path) -> None:
    guests = Guests(faults={"b": QUIT}, exit_code=2)
    p = plan(RunPlan(None, "root", CASES), RunPlan(None, "user", ("a",)))
    result, _ = run_boot(tmp_path, guests, p)
    assert [(c.case, c.user, c.outcome) for c in result.cases] == [
        ("a", "root", Outcome.PASS),
        ("b", "root", Outcome.INFRA_ERROR),
        ("c", "root", Outcome.INFRA_ERROR),
        ("a", "user", Outcome.PASS),
    ]
    assert result.cases[1].message == "probe exited 2: probe: cannot set the limit"
    assert (result.reboots, result.retries, result.error) == (0, 0, "") and len(guests.started) == 1


def test_an_interrupted_run_stops_the_boot(tmp_path: Path) -> None:
    live = Live()
    live.cancel()
    guests = Guests()
    with pytest.raises(Cancelled):
        run_boot(tmp_path, guests, live=live)
    assert not guests.started


def test_an_interrupt_during_a_failed_boot_is_not_retried(tmp_path: Path) -> None:
    live = Live()

    class Interrupting(Guests):
        @contextlib.contextmanager
        def boot(
            self, config: vm.VMConfig, serial: Path, timeout: float, cancel: threading.Event, saved: object
        ) -> Iterator[FakeMachine]:
            live.cancel()
            raise vm.BootFailure("boot cancelled: the run was interrupted", "")
            yield  # pragma: no cover

    guests = Interrupting()
    with pytest.raises(Cancelled):
        run_boot(tmp_path, guests, live=live)


def record(case: str) -> bytes:
    return json.dumps({"kind": "case", "case": case, "status": "ok", "result": "ok"}).encode()


def test_malformed_output_is_the_error_of_the_case_it_belongs_to(tmp_path: Path) -> None:
    hostile = {
        "b": [b'{"kind":"case","case":"b","duration_ms":"5"}', record("b")],
        "c": [b"\x1b]0;junk\x07", record("c")],
    }
    result, _ = run_boot(tmp_path, Guests(faults=hostile))
    assert [(c.case, c.outcome) for c in result.cases] == [
        ("a", Outcome.PASS),
        ("b", Outcome.INFRA_ERROR),
        ("c", Outcome.INFRA_ERROR),
    ]
    assert result.cases[1].message == "malformed probe output: duration_ms: a string, not int"
    assert result.cases[2].message.startswith("malformed probe output: not a JSON record")
    assert (result.reboots, result.error) == (0, "")  # the guest itself is fine: the next run goes on


def test_records_the_run_did_not_ask_for_are_errors_not_rows(tmp_path: Path) -> None:
    # A record for a case no one asked for, then b's own (too late); a second answer for a.
    result, _ = run_boot(tmp_path, Guests(faults={"b": [record("zzz"), record("b")], "c": [record("a"), record("c")]}))
    assert [(c.case, c.outcome) for c in result.cases] == [
        ("a", Outcome.PASS),
        ("b", Outcome.INFRA_ERROR),
        ("c", Outcome.PASS),
    ]
    assert result.cases[1].message == "malformed probe output: a record for case 'zzz', which was not asked for"


def test_a_stream_that_stops_mid_record_errs_the_case_and_the_probe_that_exits_errs_the_rest(tmp_path: Path) -> None:
    guests = Guests(faults={"b": [Line(record("b")[:20], complete=False)], "c": QUIT}, exit_code=0)
    result, _ = run_boot(tmp_path, guests)
    assert [(c.case, c.outcome) for c in result.cases] == [
        ("a", Outcome.PASS),
        ("b", Outcome.INFRA_ERROR),
        ("c", Outcome.INFRA_ERROR),
    ]
    assert "stopped in the middle of a line" in result.cases[1].message
    assert result.cases[2].message == "probe exited 0 without a record for this case"
    assert len(guests.started) == 1  # answered by an error, not booted again and again


def test_a_guest_that_is_not_ours_is_a_security_event_never_retried(tmp_path: Path) -> None:
    refused = guest.TrustFailure("[127.0.0.1]:2222 presented a host key that is not the image's")
    guests = Guests(refuse=refused)
    result, _ = run_boot(tmp_path, guests)
    assert len(guests.started) == 1 and result.retries == 0
    assert result.error == f"security: {refused}; not retried"
    assert all(c.outcome is Outcome.INFRA_ERROR and c.message == result.error for c in result.cases)


# --- KVM given up, saved guests that do not answer ----------------------------------------------


def kvm_live(log: list[str], may_fall_back: bool = True) -> Live:
    return Live(accel=accel.Current(accel.Accelerator("kvm", "the check ran"), may_fall_back, log.append))


def test_a_guest_kvm_cannot_run_is_booted_again_under_tcg_and_the_run_gives_kvm_up(tmp_path: Path) -> None:
    """Under --accel auto, the first boot KVM fails turns it off for the run: that boot goes on under
    TCG without spending a retry, says so once in the log and in its serial log, and boots that
    start later start under TCG."""
    log: list[str] = []
    live = kvm_live(log)
    dead = vm.BootFailure("the guest printed nothing in 10s under kvm; --accel tcg", "", silent=True, kvm_failed=True)
    guests = Guests(boots=[dead])
    result, _ = run_boot(tmp_path / "a", guests, live=live, accel_name="kvm")
    assert outcomes(result) == [(c, "default", Outcome.PASS) for c in CASES]
    assert (result.accelerator, result.retries, result.error) == ("tcg", 0, "")
    assert [m.config.accel for m in guests.started] == ["tcg"]
    assert log == [
        "accelerator: KVM failed boot k-256M (the guest printed nothing in 10s under kvm); this boot and "
        "the rest of the run use tcg"
    ]
    # Once the boot ended its serial log was compressed, the plain one removed.
    assert result.serial_log == "serial/k-256M.log.gz" and not (tmp_path / "a" / "serial" / "k-256M.log").exists()
    assert "this guest is booted again under tcg" in log_text(tmp_path / "a" / result.serial_log)
    assert live.accel is not None
    assert live.accel.record().reason.endswith("KVM failed boot k-256M: the guest printed nothing in 10s under kvm")
    later = Guests()
    after, _ = run_boot(tmp_path / "b", later, live=live, accel_name="kvm")
    assert [m.config.accel for m in later.started] == ["tcg"] and after.accelerator == "tcg"
    assert len(log) == 1


def test_kvm_asked_for_by_name_is_never_left(tmp_path: Path) -> None:
    """--accel kvm: a guest KVM cannot run fails its boot at once, with the fix in its one line."""
    log: list[str] = []
    dead = vm.BootFailure("the guest printed nothing in 10s under kvm; --accel tcg", "", silent=True, kvm_failed=True)
    guests = Guests(boots=[dead])
    result, _ = run_boot(tmp_path, guests, live=kvm_live(log, may_fall_back=False), accel_name="kvm")
    assert {o for _, _, o in outcomes(result)} == {Outcome.INFRA_ERROR}
    assert result.error == "the guest printed nothing in 10s under kvm; --accel tcg"
    assert (result.accelerator, result.retries, log, guests.started) == ("kvm", 0, [], [])


class Store:
    """A fake snapshot.Store: what was found and discarded."""

    def __init__(self) -> None:
        self.discarded: list[str] = []

    def find(self, key: str) -> object:
        return key

    def discard(self, saved: object) -> None:
        self.discarded.append(str(saved))


def test_a_loaded_guest_that_does_not_answer_is_deleted_and_the_guest_boots_cold_once(tmp_path: Path) -> None:
    """A saved guest whose sshd cannot be reached is the state's fault, not the kernel's: it is
    deleted, the next guest of the boot is booted cold (and saved), no retry is spent, and a second
    loaded guest of the same state that does not answer either is an ordinary failure."""
    log: list[str] = []
    guests = Guests(refuse=guest.SSHFailure("cannot reach root@serial: No existing session"))
    guests.loaded = ["5eed"]
    store = Store()
    sessions = iter([True])

    @contextlib.contextmanager
    def session(endpoint: guest.Endpoint, user: str, key: object) -> Iterator[FakeSession]:
        s = FakeSession(guests.started[-1], guests.faults, 0, guests.refuse if next(sessions, False) else None)
        yield s

    seams = boot.Seams(guests.boot, session)  # type: ignore[arg-type]
    p = plan()
    ctx = context(tmp_path, p, disk=None, saved=store)
    result = BootResult(p.id, None, p.ram_mb)
    boot.run_boot(ctx, result, lambda r, flush: None, Live(log=log.append), seams)
    assert outcomes(result) == [(c, "default", Outcome.PASS) for c in CASES]
    assert (store.discarded, result.restored, result.retries, result.reboots) == (["5eed"], "", 0, 0)
    assert [m.restored for m in guests.started] == ["5eed", ""]
    assert log == [
        "boot k-256M: the saved guest 5eed did not answer (cannot reach root@serial: No existing "
        "session); it is deleted, and the guest boots cold"
    ]
    assert "it is deleted, and the guest boots cold" in log_text(tmp_path / result.serial_log)

    again = Guests(refuse=guest.SSHFailure("cannot reach root@serial: No existing session"))
    again.loaded = ["5eed"] * 5  # a state another run keeps: found again and again
    result, _ = run_boot(tmp_path / "b", again, saved=Store())
    assert result.retries == policy.INFRA_RETRIES and "cannot reach root@serial" in result.error


def test_a_suite_s_programs_run_through_the_path_the_probe_s_cases_take(tmp_path: Path) -> None:
    """Probe cases and a suite's programs in one run, through the fake guest: the probe's cases in
    one invocation first, then each program that can run here under the run's limit and user; one
    that this tree lacks, or that does not apply to the user, is answered without running; a
    program's KTAP results are subtests; one that hangs loses the guest, and the next guest runs the
    rest."""
    built = Built(
        {"map_populate": tmp_path / "a", "mlock2-tests": tmp_path / "b", "on-fault-limit": tmp_path / "c"},
        {"mremap_dontunmap": "not in this kernel's tree"},
        {"what": "a tree"},
    )
    programs = [f"kselftest-mm:{p}" for p in ("mlock2-tests", "mremap_dontunmap", "on-fault-limit", "map_populate")]
    p = plan(RunPlan(None, "root", ("a", *programs, "b")))
    guests = Guests(faults={"mlock2-tests": HANG, "map_populate": (1, "TAP version 13\n1..2\nok 1 x\nnot ok 2 y\n")})
    ctx = context(tmp_path, p, disk=None, suites={"kselftest-mm": built})
    result = BootResult(p.id, None, p.ram_mb)
    boot.run_boot(ctx, result, lambda r, flush: None, Live(), guests.seams())
    got = {c.case: c for c in result.cases}
    first, second = (s.argvs for s in guests.sessions)
    assert first[1][0] == "/harness/probe" and first[1][-2:] == ["a", "b"]  # one invocation, before the programs
    assert [a[-1] for a in first[2:]] == ["/opt/suites/kselftest-mm/mlock2-tests"]  # it hangs: the guest is lost
    assert [a[-1] for a in second[1:]] == ["/opt/suites/kselftest-mm/map_populate"]  # the next guest runs the rest
    assert "--user" in first[2] and first[2][first[2].index("--user") + 1] == "root"
    assert got["kselftest-mm:map_populate"].outcome is Outcome.DEVIATION
    assert got["kselftest-mm:map_populate/x"].outcome is Outcome.PASS
    assert got["kselftest-mm:map_populate/y"].outcome is Outcome.DEVIATION
    assert got["kselftest-mm:map_populate"].observation["source"] == {"what": "a tree"}  # type: ignore[index]
    assert (got["kselftest-mm:mremap_dontunmap"].outcome, got["kselftest-mm:mremap_dontunmap"].message) == (
        Outcome.NOT_APPLICABLE,
        "not in this kernel's tree",
    )
    assert got["kselftest-mm:on-fault-limit"].outcome is Outcome.NOT_APPLICABLE  # run_vmtests.sh runs it unprivileged
    assert got["kselftest-mm:mlock2-tests"].outcome is Outcome.TIMEOUT and result.reboots == 1
    assert got["a"].outcome is got["b"].outcome is Outcome.PASS
    assert len(guests.started) == 2


# --- a boot's runs over several guests (harness.boot.lanes) ------------------------------------


class SideBySide(Guests):
    """The fakes for guests running at once: each guest its own port and serial log, and every
    probe run held a moment, so that two guests overlap if they run side by side."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lock = threading.Lock()
        self.busy, self.most_busy, self.ports = 0, 0, 3000
        self.ran: dict[int, list[str]] = {}  # guest port -> the runs (memlock/user) its session ran

    @contextlib.contextmanager
    def boot(
        self, config: vm.VMConfig, serial: Path, timeout: float, cancel: threading.Event, saved: object
    ) -> Iterator[FakeMachine]:
        with self.lock:
            failure = self.boots.pop(0) if self.boots else None
            port, self.ports = self.ports, self.ports + 1
        if failure is not None:
            raise failure
        serial.write_text(f"guest on port {port} booted\n")
        machine = FakeMachine(config)
        machine.config = vm.VMConfig(config.kernel, config.initrd, config.ram_mb, config.accel, port, config.disk)
        with self.lock:
            self.stores.append(saved)
            self.started.append(machine)
        try:
            yield machine
        finally:
            machine.close()

    @contextlib.contextmanager
    def session(self, endpoint: guest.Endpoint, user: str, key: object) -> Iterator[FakeSession]:
        machine = next(m for m in self.started if m.config.port == endpoint.port)
        fake = FakeSession(machine, self.faults, self.exit_code, self.refuse)
        outer = self

        class Held(FakeSession):
            def run(self, argv: Sequence[str], timeout: float, on_line: Callable[[Line], None] | None = None) -> Any:
                if argv[0] != "/harness/probe":
                    return fake.run(argv, timeout, on_line)
                with outer.lock:
                    outer.busy += 1
                    outer.most_busy = max(outer.most_busy, outer.busy)
                    outer.ran.setdefault(endpoint.port, []).append(f"{argv[3]}/{argv[5]}")
                try:
                    threading.Event().wait(0.05)
                    with outer.lock:  # the faults are shared by the guests
                        return fake.run(argv, timeout, on_line)
                finally:
                    with outer.lock:
                        outer.busy -= 1

        yield Held(machine, self.faults, self.exit_code, self.refuse)


def four_runs() -> BootPlan:
    return plan(*(RunPlan(m, u, CASES) for m in (None, Memlock(65536, 65536)) for u in ("root", "user")))


def boot_with(tmp_path: Path, fakes: Guests, guests: int, saved: object = None) -> BootResult:
    p = four_runs()
    ctx = context(tmp_path, p, saved=saved)
    result = BootResult(p.id, None, p.ram_mb)
    boot.run_boot(ctx, result, lambda r, flush: None, Live(), fakes.seams(), guests=guests)
    return result


def test_two_guests_share_a_boot_s_runs_and_give_the_one_guest_results(tmp_path: Path) -> None:
    one = boot_with(tmp_path / "one", SideBySide(), 1)
    fakes = SideBySide()
    two = boot_with(tmp_path / "two", fakes, 2)
    assert [(c.case, c.memlock, c.user, c.outcome) for c in two.cases] == [
        (c.case, c.memlock, c.user, c.outcome) for c in one.cases
    ]  # in plan order, whichever guest answered first
    assert len(fakes.started) == 2 and fakes.most_busy == 2 and all(m.closed for m in fakes.started)
    assert sorted(run for runs in fakes.ran.values() for run in runs) == sorted(
        f"{m}/{u}" for m in ("default", "65536:65536") for u in ("root", "user")
    )  # each run once, in one guest or the other
    assert all(fakes.ran.values()) and len(fakes.ran) == 2
    log = log_text(tmp_path / "two" / two.serial_log)
    assert "guest on port 3000 booted" in log and "[harness: the serial log of guest 2 of this boot" in log
    assert not list((tmp_path / "two" / "serial").glob("*.guest1.log"))


def test_a_guest_lost_beside_another_is_booted_again_for_its_own_run(tmp_path: Path) -> None:
    fakes = SideBySide(faults={"b": PANIC})
    result = boot_with(tmp_path, fakes, 2)
    assert sorted(c.outcome.value for c in result.cases).count("panic") == 1
    assert len(result.cases) == 12 and result.reboots == 1 and len(fakes.started) == 3
    assert [(c.memlock, c.user) for c in result.cases[::3]] == [
        ("default", "root"),
        ("default", "user"),
        ("64K", "root"),
        ("64K", "user"),
    ]


def test_with_saved_guests_the_others_wait_for_the_first_and_start_nothing_if_it_cannot_boot(
    tmp_path: Path,
) -> None:
    """A kernel that panics while booting gives that answer once, not once per guest."""
    panic = vm.BootFailure("guest kernel panicked while booting", "Kernel panic", panicked=True)
    fakes = SideBySide(boots=[panic])
    for name in ("vmlinuz", "image.cpio", "disk.img"):  # what a saved guest's key reads
        (tmp_path / name).write_bytes(name.encode())
    result = boot_with(tmp_path, fakes, 2, saved=EmptyStore())
    assert fakes.started == [] and fakes.boots == []
    assert {c.outcome for c in result.cases} == {Outcome.PANIC} and len(result.cases) == 12
    assert result.error.startswith("guest kernel panicked while booting")


class EmptyStore:
    """A store of saved guests that has none yet: the first guest will save one."""

    def find(self, key: str) -> None:
        return None

    def costs(self, key: str) -> dict[str, float]:
        return {}


def test_a_panic_ends_qemu_on_every_era(tmp_path: Path) -> None:
    """panic=-1 reboots at once (QEMU, -no-reboot, exits) from 3.16 on, as seen here; 2.6.32's panic()
    reboots only for a positive timeout, so older kernels get panic=1: a second later, the same end."""

    def args(release: str) -> str:
        kernel = Kernel("k", release, tmp_path / "bzImage", None, None, "ab" * 32, None, None, (), "x")
        config = boot.vm_config(context(tmp_path, plan(), kernel=kernel))
        assert "-no-reboot" in config.argv()
        return config.kernel_args

    assert "panic=-1" in args("6.1.0-50-amd64") and "panic=-1" in args("3.16.0")
    assert "panic=1 " in args("2.6.32") and "panic=-1" not in args("2.6.20")
