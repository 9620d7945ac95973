"""Real boots: Debian kernels from the mirror, QEMU (TCG here), dropbear over SSH, the real probe.

Nothing is mocked. Kernels are downloaded once into the harness cache and reused.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
import xmlschema
from conftest import log_text, results_doc
from junitparser import JUnitXml
from test_junit_consumers import JENKINS_XSD, expected_counts, junitparser_counts, render_junit2html
from test_overview import kernel_cells, matrix_rows, parse

from harness import boot, judge, kernels, kit
from harness.boot import accel, policy, snapshot, vm
from harness.boot.live import Live
from harness.cache import cache_dir
from harness.kernels import devices, sources
from harness.kernels.sources.debian import DebianKernel
from harness.kit import guest, image, probe, verdict
from harness.plan import matrix
from harness.report import resultsfile, rundir
from harness.results import BootResult, Outcome

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def qemu_pids() -> set[int]:
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv0 = cmdline.read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith(b"qemu-system-x86_64"):
            found.add(int(cmdline.parent.name))
    return found


Prepared = tuple[kernels.Kernel, image.Image, paramiko.PKey]


@pytest.fixture(scope="module")
def bookworm() -> Prepared:
    """Debian 12's kernel, fetched and verified from the mirror, and its guest image."""
    cache = cache_dir()
    kernel = sources.Kernels(sources.Context(cache)).fetch(DebianKernel(("bookworm",)))
    guests = kit.assemble(cache)
    return kernel, guests.image(devices.choose(kernel)), guests.key


@pytest.fixture(scope="module")
def booted(bookworm: Prepared) -> Iterator[tuple[vm.VM, image.Image, paramiko.PKey]]:
    """One bookworm guest shared by the SSH tests below."""
    kernel, img, key = bookworm
    cache = cache_dir()
    # The port QEMU is asked for is already taken: boot() must move to another one (pitfall 9).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        disk = image.disk_image(cache / "images")
        config = vm.VMConfig(kernel.vmlinux or kernel.image, img.path, 256, accel.for_host().name, port, disk)
        log = cache / "test-serial.log"
        log.unlink(missing_ok=True)
        with vm.boot(config, log, 240) as machine:
            assert machine.config.port != port
            yield machine, img, key
    assert not machine.alive


def test_panic_during_boot_fails_fast_with_excerpt(bookworm: Prepared, tmp_path: Path) -> None:
    """No /init: the kernel panics; with panic=-1 QEMU exits and the boot fails long before its deadline."""
    kernel, img, _ = bookworm
    config = vm.VMConfig(
        kernel.vmlinux or kernel.image,
        img.path,
        256,
        accel.for_host().name,
        0,
        cmdline="console=ttyS0 panic=-1 rdinit=/nonexistent",
    )
    start = time.monotonic()
    with pytest.raises(vm.BootFailure) as failure, vm.boot(config, tmp_path / "serial.log", 240):
        pass
    assert failure.value.panicked
    assert "Kernel panic" in failure.value.excerpt
    assert "Kernel panic" in (tmp_path / "serial.log").read_text()
    assert time.monotonic() - start < 120


def test_guest_has_the_data_disk_and_huge_pages(booted: tuple[vm.VM, image.Image, paramiko.PKey]) -> None:
    """What the file-backed and hugetlb cases stand on: a read-only ext4 disk and 8 reserved huge pages."""
    machine, img, key = booted
    with guest.Guest(guest.Endpoint(machine.config.port, img.host_key), "user", key) as g:
        g.connect()
        out = g.run(
            [
                "sh",
                "-c",
                "wc -c < /mnt/disk/data.bin; grep -E '^HugePages_Total' /proc/meminfo; grep ' /mnt/disk ' /proc/mounts",
            ],
            30,
        ).stdout.split("\n")
    assert out[0].strip() == str(image.DISK_FILE_SIZE)
    assert out[1].split() == ["HugePages_Total:", "8"]
    assert out[2].split()[:3] == ["/dev/vda", "/mnt/disk", "ext4"] and "ro" in out[2].split()[3].split(",")


def test_unprivileged_user_logs_in(booted: tuple[vm.VM, image.Image, paramiko.PKey]) -> None:
    machine, img, key = booted
    with guest.Guest(guest.Endpoint(machine.config.port, img.host_key), "user", key) as g:
        g.connect()
        assert g.run(["id", "-u"], 30).stdout.strip() == "1000"


def test_probe_drops_privileges_and_applies_limit(booted: tuple[vm.VM, image.Image, paramiko.PKey]) -> None:
    machine, img, key = booted
    lines: list[str] = []
    with guest.Guest(guest.Endpoint(machine.config.port, img.host_key), "root", key) as g:
        g.connect()
        argv = [probe.IN_GUEST, "run", "--memlock", "65536:65536", "--user", "user", "map_locked_over", "mlock_over"]
        result = g.run(argv, 120, lambda line: lines.append(line.data.decode()))
    assert result.exit_code == 0
    records = {r["case"]: r for r in map(json.loads, lines) if r.get("kind") == "case"}
    assert records["map_locked_over"]["uid"] == 1000
    assert records["map_locked_over"]["cap_ipc_lock"] is False
    assert records["map_locked_over"]["rlimit_soft"] == 65536
    assert records["map_locked_over"]["result"] == "EAGAIN"
    assert records["mlock_over"]["result"] == "ENOMEM"


def test_host_key_is_pinned(booted: tuple[vm.VM, image.Image, paramiko.PKey]) -> None:
    """A guest presenting any other host key is refused at once, not retried or remembered."""
    machine, _, key = booted
    other = image.openssh_public(image.host_key(b"another secret", "x"))
    with (
        guest.Guest(guest.Endpoint(machine.config.port, other), "root", key) as g,
        pytest.raises(guest.SSHFailure, match="host key"),
    ):
        g.connect(attempts=3)


def test_wrong_client_key_is_not_retried(booted: tuple[vm.VM, image.Image, paramiko.PKey]) -> None:
    machine, img, _ = booted
    stranger = paramiko.Ed25519Key.from_private_key_file(str(_stranger_key()))
    with (
        guest.Guest(guest.Endpoint(machine.config.port, img.host_key), "root", stranger) as g,
        pytest.raises(guest.SSHFailure, match="refused the harness key"),
    ):
        g.connect(attempts=5, delay=5)  # five slow retries would take 50 s; a refusal returns at once


def _stranger_key() -> Path:
    path = cache_dir() / "keys" / "stranger"
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_harness_run_end_to_end(tmp_path: Path) -> None:
    """`python -m harness run` on two kernels in parallel: the 6.1 layout and the newest 7.x split."""
    m = tmp_path / "m.yaml"
    m.write_text(
        "kernels:\n  - debian: bookworm\n  - debian: {suite: [sid, trixie-backports]}\n"
        "memlock: [default, 64K, 0]\nusers: [root, user]\n"
    )
    results = tmp_path / "results"
    before = qemu_pids()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--matrix", str(m), "--results", str(results), "--jobs", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    run_dir = (results / "latest").resolve()
    cases = len(probe.build().names)

    suites = ET.parse(run_dir / "junit.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["bookworm-256M", "sid+trixie-backports-256M"]
    for suite in suites:
        assert int(suite.get("tests", "0")) == 3 * 2 * cases
        assert int(suite.get("errors", "0")) == 0
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert props["accelerator"] == accel.for_host().name
        assert props["kernel.release"] == props["uname"]
        assert len(props["kernel.sha256"]) == 64
        assert 150_000 < int(props["memtotal_kb"]) < 262_144

    data = results_doc(run_dir)
    assert data["complete"] is True
    newest = data["boots"][1]
    assert newest["kernel"]["release"].startswith("7.")
    outcomes = {c["outcome"] for b in data["boots"] for c in b["cases"]}
    assert outcomes <= {Outcome.PASS.value, Outcome.NOT_APPLICABLE.value, Outcome.DEVIATION.value}
    by_key = {(b["boot_id"], c["case"], c["memlock"], c["user"]): c for b in data["boots"] for c in b["cases"]}
    assert by_key[("bookworm-256M", "map_locked_over", "64K", "user")]["observation"]["result"] == "EAGAIN"
    assert by_key[("bookworm-256M", "mlock_over", "0", "user")]["observation"]["result"] == "EPERM"
    assert by_key[("bookworm-256M", "mlock_over", "0", "root")]["outcome"] == "pass"

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(b["qemu_command"].startswith("qemu-system-x86_64 ") for b in manifest["boots"])
    assert len(manifest["probe"]["sha256"]) == 64
    for b in data["boots"]:
        assert "HARNESS-READY" in log_text(run_dir / b["serial_log"])
    assert "pass" in proc.stdout  # the summary table
    assert qemu_pids() <= before, "the run left QEMU processes behind"

    # What the run wrote, read the way its consumers read it.
    xmlschema.XMLSchema(JENKINS_XSD).validate(str(run_dir / "junit.xml"))
    record = resultsfile.read_results(run_dir)
    assert junitparser_counts(JUnitXml.fromfile(str(run_dir / "junit.xml"))) == {
        b.boot_id: expected_counts(b) for b in record.boots
    }
    assert "bookworm-256M" in render_junit2html(run_dir / "junit.xml", tmp_path / "junit.html")
    # Every cell of the matrix has its evidence on its boot's page, under its row's id.
    page = parse((run_dir / "report.html").read_text())
    rows = matrix_rows(page)
    for j, b in enumerate(page.one("div", id="matrix").iter("th", "col")):
        boot_page = parse((run_dir / f"boot/b{j}.html").read_text())
        places = [n.attrs["id"] for n in boot_page.iter() if re.fullmatch(r"r\d+", n.attrs.get("id", ""))]
        assert len(places) == len(next(r for r in record.boots if r.boot_id == b.attrs["data-boot"]).cases)
        assert all(rows[int(e[1:])].attrs["id"] == e for e in places)
    assert sum(len(kernel_cells(row)) for row in rows) == len(rows) * len(record.boots)
    assert (run_dir / "summary.md").read_text().startswith(f"## Run {record.run_id}")


def harness(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_nightly_shards_merge_history_compare_and_replay(tmp_path: Path) -> None:
    """The nightly flow of docs/ci: two shards on "two machines", merged, recorded, compared, replayed."""
    m = tmp_path / "m.yaml"
    m.write_text(
        "kernels:\n  - debian: bullseye\n  - debian: bookworm\nmemlock: [64K]\nusers: [user]\n"
        "cases: [limits, map_locked_over, mlock_over, protnone_mlock, mremap_dontunmap_partial]\n"
    )
    before = qemu_pids()
    shard_dirs = []
    for i in (1, 2):
        results = tmp_path / f"machine{i}"
        proc = harness("run", "--matrix", str(m), "--results", str(results), "--shard", f"{i}/2")
        assert proc.returncode == 0, proc.stdout + proc.stderr  # protnone_mlock deviates on every kernel: known
        shard_dirs.append((results / "latest").resolve())
        assert (results / "history.sqlite").is_file()
    assert [results_doc(d)["boots"][0]["boot_id"] for d in shard_dirs] == [
        "bullseye-256M",
        "bookworm-256M",
    ]

    results = tmp_path / "merged"
    proc = harness("merge", *map(str, shard_dirs), "--results", str(results))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # every finding known
    merged = (results / "latest").resolve()
    data = results_doc(merged)
    assert data["complete"] and [b["boot_id"] for b in data["boots"]] == ["bullseye-256M", "bookworm-256M"]
    for name in ("junit.xml", "report.html", "summary.md", "serial/bookworm-256M.log.gz"):
        assert (merged / name).is_file(), name

    # What changed between 5.10 and 6.1 for this case set: the default limit's size only shows in
    # `limits`, and mremap_dontunmap_partial misaccounts on both.
    proc = harness("history", "--history", str(results / "history.sqlite"), "--case", "protnone_mlock")
    assert proc.returncode == 0, proc.stderr
    assert "5.10." in proc.stdout and "6.1." in proc.stdout
    proc = harness("compare", str(merged), str(merged))
    assert proc.returncode == 0 and "no differences" in proc.stdout, proc.stdout + proc.stderr
    proc = harness("compare", "--results", str(results), "5.10", "6.1")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # both deviate alike, and the rest is known

    proc = harness("replay", str(merged), "--boot", "bookworm-256M", "--results", str(tmp_path / "replays"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"every result behaved as in run {merged.name}" in proc.stdout
    replayed = json.loads(((tmp_path / "replays") / "latest" / "manifest.json").read_text())
    assert replayed["replay_of"]["run_id"] == merged.name and replayed["replay_of"]["differences"] == []
    assert qemu_pids() <= before, "left QEMU processes behind"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_finished_results(tmp_path: Path, signum: int) -> None:
    """Ctrl-C or SIGTERM mid-run: exit 128+signal, finished cases kept, valid JUnit, no QEMU left."""
    m = tmp_path / "m.yaml"
    m.write_text("kernels: [{debian: bookworm}]\nmemlock: [default, 64K, 0, unlimited]\nusers: [root, user]\n")
    results = tmp_path / "results"
    before = qemu_pids()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--matrix", str(m), "--results", str(results)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            data = results_doc(results / "latest")
            done = sum(1 for c in data["boots"][0]["cases"] if c["outcome"] == "pass")
        except (OSError, ValueError, IndexError, KeyError):
            done = 0
        if done >= 5:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, out
    assert "Traceback" not in out

    run_dir = (results / "latest").resolve()
    suite = ET.parse(run_dir / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    data = results_doc(run_dir)
    assert data["interrupted"] is True and data["complete"] is False
    cases = data["boots"][0]["cases"]
    assert len(cases) == 8 * len(probe.build().names)
    assert int(suite.get("tests", "0")) == len(cases) + 1  # and the errored "boot" testcase
    assert data["boots"][0]["error"] == "run interrupted"
    assert sum(1 for c in cases if c["outcome"] == "pass") >= done
    assert any(c["message"] == "interrupted before this case ran" for c in cases)
    assert qemu_pids() <= before, "an interrupted run left QEMU running"


def boot_plan(
    bookworm: Prepared,
    tmp_path: Path,
    runs: tuple[matrix.RunPlan, ...],
    *,
    case_timeout: float = 60,
    img: image.Image | None = None,
    before: Callable[[BootResult, Live], None] | None = None,
    transport: str = "net",
    saved: snapshot.Store | None = None,
) -> BootResult:
    """One boot plan of bookworm through the runner's own path (boot.run_boot), results in tmp_path."""
    kernel, default_img, key = bookworm
    plan = matrix.BootPlan(
        "bookworm-test" if transport == "net" else f"bookworm-{transport}",
        DebianKernel(("bookworm",)),
        256,
        runs,
        matrix.Timeouts(boot=240, case=case_timeout),
        transport,
    )
    result = BootResult(plan.id, kernel.info(), 256)
    writer = rundir.RunWriter(tmp_path, "test", rundir.now(), [plan.id])
    live = Live()
    if before is not None:
        before(result, live)
    ctx = boot.BootContext(
        plan=plan,
        kernel=kernel,
        image=img or default_img,
        disk=image.disk_image(cache_dir() / "images"),
        key=key,
        accel=accel.for_host().name,
        judge=judge.Judge(verdict.load()).results,
        run_dir=tmp_path,
        transport=transport,
        saved=saved,
    )
    boot.run_boot(ctx, result, writer.update, live)
    return result


def test_a_case_that_panics_the_guest_is_recorded_and_the_rest_go_on(bookworm: Prepared, tmp_path: Path) -> None:
    """A real panic mid-run (sysrq 'c' from the probe's hidden self-test): that case is PANIC with
    the kernel's words, the guest is booted again, and the remaining cases of the boot still run."""
    cases = ("limits", "_selftest_panic", "map_locked_over")
    runs = (matrix.RunPlan(None, "root", cases), matrix.RunPlan(None, "user", ("limits",)))
    result = boot_plan(bookworm, tmp_path, runs)

    got = {(c.case, c.user): c for c in result.cases}
    assert [c.case for c in result.cases] == ["limits", "_selftest_panic", "map_locked_over", "limits"]
    assert got["_selftest_panic", "root"].outcome is Outcome.PANIC
    assert "Kernel panic" in got["_selftest_panic", "root"].message
    assert got["map_locked_over", "root"].outcome is Outcome.PASS
    assert got["limits", "user"].outcome is Outcome.PASS
    assert result.reboots == 1 and result.error == ""
    assert log_text(tmp_path / result.serial_log).count("HARNESS-READY") == 2
    saved = results_doc(tmp_path)
    assert saved["boots"][0]["reboots"] == 1


def test_a_guest_without_its_nic_driver_is_an_infrastructure_error_after_bounded_retries(
    bookworm: Prepared, tmp_path: Path
) -> None:
    """An image without the NIC's modules boots but can never be reached: every case is an
    infrastructure error naming the cause, the boot is tried 1 + INFRA_RETRIES times, no QEMU stays."""
    guests = kit.assemble(cache_dir())
    deaf = image.build(guests.base, [], guests.secret, tmp_path / "images")
    before = qemu_pids()
    result = boot_plan(bookworm, tmp_path, (matrix.RunPlan(None, "root", ("limits", "mlock_over")),), img=deaf)
    assert [c.outcome for c in result.cases] == [Outcome.INFRA_ERROR, Outcome.INFRA_ERROR]
    assert "cannot reach root@[127.0.0.1]" in result.error
    assert result.retries == policy.INFRA_RETRIES and result.reboots == 0
    assert log_text(tmp_path / result.serial_log).count("HARNESS-READY") == 1 + policy.INFRA_RETRIES
    assert qemu_pids() <= before


def _inject_during_next_case(result: BootResult, live: Live, after: str, fault: Callable[[vm.VM], None]) -> None:
    """Once `after` has a result (so the hanging self-test has started), inject the fault."""

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(c.case == after for c in result.cases) and live.vms:
                time.sleep(1.0)
                fault(next(iter(live.vms)))
                return
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()


def _run_with_fault(bookworm: Prepared, tmp_path: Path, fault: Callable[[vm.VM], None]) -> BootResult:
    runs = (matrix.RunPlan(None, "root", ("limits", "_selftest_hang", "map_locked_over")),)
    return boot_plan(
        bookworm,
        tmp_path,
        runs,
        case_timeout=120,
        before=lambda result, live: _inject_during_next_case(result, live, "limits", fault),
    )


def test_qemu_killed_from_outside_mid_case(bookworm: Prepared, tmp_path: Path) -> None:
    """SIGKILL to QEMU during a case: that case is an infrastructure error naming QEMU's exit,
    the guest is booted again and the next case passes."""
    before = qemu_pids()
    result = _run_with_fault(bookworm, tmp_path, lambda machine: os.kill(machine.pid, signal.SIGKILL))
    got = {c.case: c for c in result.cases}
    assert got["limits"].outcome is Outcome.PASS
    assert got["_selftest_hang"].outcome is Outcome.INFRA_ERROR
    assert "QEMU exited during this case" in got["_selftest_hang"].message
    assert got["map_locked_over"].outcome is Outcome.PASS
    assert result.reboots == 1 and result.error == ""
    assert qemu_pids() <= before


def test_ssh_connection_dropped_mid_case(bookworm: Prepared, tmp_path: Path) -> None:
    """The guest's dropbear process serving the probe run is killed (a real dropped connection):
    the case is an infrastructure error, the guest is booted again and the next case passes."""
    _, img, key = bookworm

    def drop_ssh(machine: vm.VM) -> None:
        with guest.Guest(guest.Endpoint(machine.config.port, img.host_key), "root", key) as g:
            g.connect()
            # every dropbear but the listener and the one serving this very command
            g.run(
                [
                    "sh",
                    "-c",
                    'for p in $(pidof dropbear); do [ "$p" = "$PPID" ] || '
                    '[ "$p" = "$(cat /tmp/dropbear.pid)" ] || kill -9 "$p"; done',
                ],
                30,
            )

    result = _run_with_fault(bookworm, tmp_path, drop_ssh)
    got = {c.case: c for c in result.cases}
    assert got["_selftest_hang"].outcome is Outcome.INFRA_ERROR
    assert "lost the guest during this case" in got["_selftest_hang"].message
    assert got["map_locked_over"].outcome is Outcome.PASS
    assert result.reboots == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_results_disk_filling_up_mid_run(tmp_path: Path) -> None:
    """The results file system fills up mid-run (a real 320 KiB tmpfs): exit 3 with one line naming
    the file and ENOSPC, the reports on disk stay valid (the last complete write), no QEMU stays."""
    m = tmp_path / "m.yaml"
    m.write_text("kernels: [{debian: bookworm}]\nmemlock: [default, 64K, 0, unlimited]\nusers: [root, user]\n")
    results = tmp_path / "small"
    results.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(results)], check=True)
    try:
        before = qemu_pids()
        proc = subprocess.run(
            [sys.executable, "-m", "harness", "run", "--matrix", str(m), "--results", str(results)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=900,
        )
        assert proc.returncode == 3, proc.stdout + proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith("harness: infrastructure error: ") and "ENOSPC" in line
        run_dir = (results / "latest").resolve()
        data = results_doc(run_dir)
        assert data["boots"][0]["cases"], "what finished before the disk filled up is kept"
        ET.parse(run_dir / "junit.xml")
        assert qemu_pids() <= before
    finally:
        subprocess.run(["umount", str(results)], check=False)


def test_an_oom_killed_case_is_told_from_the_kernel_log(bookworm: Prepared, tmp_path: Path) -> None:
    """A case that locks more than MemAvailable: the OOM killer takes the probe child (and not
    sshd or the guest), the kernel's own lines say so, and the next case runs in the same guest."""
    result = boot_plan(
        bookworm, tmp_path, (matrix.RunPlan(None, "root", ("oom_map_locked_between", "limits")),), case_timeout=120
    )
    oom, limits = result.cases
    assert oom.observation is not None and oom.observation["status"] == "killed"
    assert oom.observation["oom_killed"] is True
    assert any(f"Killed process {oom.observation['child_pid']} " in line for line in oom.observation["kernel_log"])
    assert oom.outcome is Outcome.PASS and "OOM killer" in oom.message  # the rule allows it: documented
    assert limits.outcome is Outcome.PASS and result.reboots == 0


# --- a hostile guest, and a harness killed outright ---------------------------------------------

HOSTILE_PROBE = REPO / "tests" / "data" / "hostile-probe.sh"
# `harness run` with the probe in one kernel's image replaced by tests/data/hostile-probe.sh; the
# other kernel's guests keep the real probe. Run as a child, so its peak memory can be read.
HOSTILE_RUN = """
import resource, sys
from pathlib import Path
from harness import cli, kit
from harness.kernels import devices
from harness.kit import image

real_choose, real_image, chosen = devices.choose, kit.Kit.image, []

def choose(kernel):  # a run chooses a kernel's devices, then asks for its image
    chosen.append(kernel)
    return real_choose(kernel)

def image_for(self, hardware, base=None, programs=None):
    if not chosen[-1].source.startswith("path:"):
        return real_image(self, hardware, base, programs)
    hostile = image.file(image.PROBE_PATH, Path(sys.argv[1]).read_bytes(), 0o755)
    base = tuple(e for e in (base or self.base) if e.path != image.PROBE_PATH) + (hostile,)
    return real_image(self, hardware, base, programs)

devices.choose, kit.Kit.image = choose, image_for
try:
    sys.exit(cli.main(sys.argv[3:]))
finally:
    Path(sys.argv[2]).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def test_a_hostile_guest_costs_only_its_own_cases(bookworm: Prepared, tmp_path: Path) -> None:
    """One guest's probe writes what issue 11 found breaking the harness: wrong types, a 5000-digit
    number, 200k-deep nesting, a lone surrogate with terminal escapes, random bytes, 100 MB without a
    newline, a record cut off mid-line. The run completes; that boot's cases are errors with the
    reason; the other boot's results are as always; memory stays bounded; the terminal sees no escape."""
    kernel, _, _ = bookworm
    assert kernel.modules_dir is not None
    cases = [
        "limits",
        "map_locked_under",
        "map_locked_at",
        "map_locked_over",
        "mlock_under",
        "mlock_at",
        "mlock_over",
        "mlock2_under",
    ]
    m = tmp_path / "m.yaml"
    m.write_text(
        f"kernels:\n  - debian: bookworm\n  - {{path: {kernel.image}, modules: {kernel.modules_dir}}}\n"
        f"memlock: [64K]\nusers: [user]\ncases: [{', '.join(cases)}]\n"
    )
    results = tmp_path / "results"
    before = qemu_pids()
    peak = tmp_path / "peak-rss-kib"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            HOSTILE_RUN,
            str(HOSTILE_PROBE),
            str(peak),
            "run",
            "--matrix",
            str(m),
            "--results",
            str(results),
        ],
        capture_output=True,
        cwd=REPO,
        timeout=1200,
    )
    peak_mib = int(peak.read_text()) / 1024
    print(f"peak RSS of the harness with a hostile guest: {peak_mib:.0f} MiB")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out.decode(errors="replace")  # some cases have no answer: infrastructure
    assert b"Traceback" not in out
    assert not [esc for esc in (b"\x1b]", b"\x1b[2J", b"\x1b[31m", b"\x07") if esc in out]
    assert peak_mib < 400  # the 100 MB line never sits in memory (the same run without it peaks at 230 MiB here)

    data = results_doc(results / "latest")
    good, bad = data["boots"]
    assert [c["case"] for c in bad["cases"]] == cases
    reasons = [c["message"] for c in bad["cases"]]
    assert all(c["outcome"] == "infra_error" for c in bad["cases"])
    assert reasons[0] == "malformed probe output: duration_ms: a string, not int"
    assert reasons[1] == "malformed probe output: kernel_log: an integer, not list or null"
    assert reasons[2].startswith("malformed probe output: not a JSON record (Exceeds the limit")
    assert reasons[3].startswith("malformed probe output: not a JSON record")
    assert reasons[4].startswith("probe child weird\ufffd \x1b]0;owned")  # kept as evidence, printed escaped
    assert reasons[5].startswith("malformed probe output: not a JSON record")
    assert reasons[6] == "malformed probe output: a line of 100000000 bytes, longer than any record"
    assert reasons[7].startswith("malformed probe output: the output stopped in the middle of a line")
    assert {c["outcome"] for c in good["cases"]} <= {"pass", "deviation", "not_applicable"} and not good["error"]
    assert qemu_pids() <= before


def test_a_killed_harness_leaves_no_qemu(tmp_path: Path) -> None:
    """SIGKILL (a CI job's timeout, the OOM killer) gives the harness no chance to clean up: the
    kernel kills its QEMUs, which run in sessions of their own, through their parent-death signal."""
    m = tmp_path / "m.yaml"
    m.write_text("kernels: [{debian: bookworm}]\nram: [256M, 320M]\nmemlock: [default]\nusers: [root]\n")
    before = qemu_pids()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--matrix", str(m), "--results", str(tmp_path / "results")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(qemu_pids() - before) < 2 and proc.poll() is None:
        time.sleep(0.2)
    started = qemu_pids() - before
    assert proc.poll() is None and len(started) == 2, "two guests should be running"
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while qemu_pids() & started and time.monotonic() - killed < 10:
        time.sleep(0.05)
    print(f"QEMUs gone {time.monotonic() - killed:.2f} s after SIGKILL of the harness")
    assert not qemu_pids() & started, "QEMU outlived the harness"
