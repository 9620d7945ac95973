"""The serial transport on real boots: SSH over the guest's second UART, for kernels without a NIC driver.

Real QEMU, real Debian kernels, the real probe over real dropbear; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import results_doc
from test_integration import REPO, Prepared, _inject_during_next_case, bookworm, boot_plan, qemu_pids  # noqa: F401

from harness import kit
from harness.boot import policy, vm
from harness.cache import cache_dir
from harness.kernels import devices
from harness.kit import image, probe
from harness.plan import matrix
from harness.results import BootResult, Outcome

pytestmark = pytest.mark.integration
DISK_CASES = {"file_disk_map_locked", "file_disk_mmap_mlock", "file_disk_mmap_touch"}


def run(tmp_path: Path, text: str) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    m = tmp_path / "m.yaml"
    m.write_text(text)
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--matrix", str(m), "--results", str(results)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1200,
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    data: dict[str, Any] = results_doc(results / "latest")
    return data


def behaviour(boot_doc: dict[str, Any]) -> dict[tuple[str, str, str], tuple[str, str]]:
    return {(c["case"], c["memlock"], c["user"]): (c["outcome"], c["fingerprint"]) for c in boot_doc["cases"]}


def test_results_do_not_depend_on_the_transport_and_a_kernel_without_modules_still_runs(
    bookworm: Prepared,  # noqa: F811
    tmp_path: Path,  # noqa: F811
) -> None:
    """Debian 12's kernel over net and over serial: identical verdicts and fingerprints. The same
    kernel given with no modules at all goes over serial by itself; the disk cases are not
    applicable with the reason, and everything else behaves exactly as with its modules."""
    kernel, _, _ = bookworm
    limits = "memlock: [64K, unlimited]\nusers: [root, user]\n"
    both = run(tmp_path / "a", f"kernels: [{{debian: bookworm}}]\ntransport: [net, serial]\n{limits}")
    over_net, over_serial = both["boots"]
    assert (over_net["transport"], over_serial["transport"]) == ("net", "serial")
    assert behaviour(over_net) == behaviour(over_serial)
    assert len(behaviour(over_net)) == 4 * len(probe.build().names)

    bare = run(tmp_path / "b", f"kernels:\n  - path: {kernel.image}\n{limits}")
    (alone,) = bare["boots"]
    assert alone["transport"] == "serial" and not alone["error"]
    manifest = json.loads(next((tmp_path / "b" / "results").glob("2*/manifest.json")).read_text())
    assert manifest["boots"][0]["transport_reason"] == "the kernel has no NIC driver the guest can load"
    with_modules, without = behaviour(over_net), behaviour(alone)
    assert {k for k in with_modules if with_modules[k] != without[k]} == {k for k in without if k[0] in DISK_CASES}
    for c in alone["cases"]:
        if c["case"] in DISK_CASES:
            assert (c["outcome"], c["message"]) == ("not_applicable", "no disk-backed file in this guest")


def serial_boot(
    bookworm: Prepared,  # noqa: F811
    tmp_path: Path,
    cases: tuple[str, ...],
    *,
    case_timeout: float = 60,  # noqa: F811
    img: image.Image | None = None,
    before: Any = None,
) -> BootResult:
    result = boot_plan(
        bookworm,
        tmp_path,
        (matrix.RunPlan(None, "root", cases),),
        case_timeout=case_timeout,
        img=img,
        before=before,
        transport="serial",
    )
    assert results_doc(tmp_path)["boots"][0]["cases"], "results were written"
    return result


def test_a_guest_that_never_opens_the_line_is_an_infrastructure_error_after_the_usual_retries(
    bookworm: Prepared,  # noqa: F811
    tmp_path: Path,  # noqa: F811
) -> None:
    """An /init that serves SSH only on the NIC: the harness waits on a silent line. Each boot fails
    at the SSH handshake, is tried again as any machinery failure is, and no QEMU stays."""
    guests = kit.assemble(cache_dir())
    init = (image.IMAGES_DIR / "init").read_text().replace("harness.transport=serial", "harness.transport=none")
    base = [e for e in guests.base if e.path != "init"] + [image.file("init", init.encode(), 0o755)]
    deaf = image.build(base, kit.guest_modules(devices.choose(bookworm[0])), guests.secret, tmp_path / "images")
    before = qemu_pids()
    result = serial_boot(bookworm, tmp_path, ("limits", "mlock_over"), img=deaf)
    assert [c.outcome for c in result.cases] == [Outcome.INFRA_ERROR, Outcome.INFRA_ERROR]
    assert result.error.startswith("cannot reach root@serial: ")  # no banner, or no session: paramiko says either
    assert result.retries == policy.INFRA_RETRIES and result.reboots == 0
    assert qemu_pids() <= before


def test_a_line_that_stalls_mid_case_times_the_case_out_and_the_rest_go_on(
    bookworm: Prepared,  # noqa: F811
    tmp_path: Path,  # noqa: F811
) -> None:
    """QEMU stopped (SIGSTOP) during a case: nothing moves on the line. The case times out, the
    guest is booted again as for any lost guest, and the next case passes over a fresh line."""
    before = qemu_pids()

    def stall(machine: vm.VM) -> None:
        os.kill(machine.pid, signal.SIGSTOP)

    result = serial_boot(
        bookworm,
        tmp_path,
        ("limits", "_selftest_hang", "map_locked_over"),
        case_timeout=20,
        before=lambda r, live: _inject_during_next_case(r, live, "limits", stall),
    )
    got = {c.case: c for c in result.cases}
    assert got["limits"].outcome is Outcome.PASS
    assert got["_selftest_hang"].outcome is Outcome.TIMEOUT
    assert got["map_locked_over"].outcome is Outcome.PASS
    assert result.reboots == 1 and result.error == "" and result.transport == "serial"
    assert qemu_pids() <= before
