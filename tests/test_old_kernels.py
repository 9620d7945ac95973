"""Real boots of an old kernel: vanilla 4.4.178 (2019; the 4.4 line is from January 2016), built here.

`../shared/kernels/` beside the project holds it (how it was built: its README). It has no PVH
note, so QEMU boots it through the firmware; it never credits RDRAND, so without the host's
virtio-rng dropbear would wait for entropy for ever; it comes without modules, so the harness
reaches it over the serial line. Nothing is mocked.

The static musl userland that kernels older than glibc's minimum need is checked here too, on a
kernel both userlands run on: same verdicts and fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import results_doc

from harness.kit import probe

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
OLD_KERNELS = Path(os.environ.get("HARNESS_OLD_KERNELS", REPO.parent / "shared" / "kernels"))
LINUX_4_4 = OLD_KERNELS / "linux-4.4.178"


def harness(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "220"},
    )


@pytest.fixture(scope="module")
def bzimage() -> Path:
    image = LINUX_4_4 / "bzImage"
    if not image.is_file():
        pytest.skip(f"{image}: no such file (the old kernels beside the project; set HARNESS_OLD_KERNELS)")
    sums = dict(reversed(line.split()) for line in (LINUX_4_4 / "SHA256SUMS").read_text().splitlines() if line)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == sums["bzImage"]
    return image


AXES = "memlock: [default, 64K, 0, unlimited]\nusers: [root, user]\n"


@pytest.fixture(scope="module")
def glibc_run(bzimage: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4.4.178 beside Debian 12's 6.1 in one run, with today's (glibc) userland."""
    tmp = tmp_path_factory.mktemp("old")
    (tmp / "m.yaml").write_text(f"kernels:\n  - path: {bzimage}\n  - debian: bookworm\n{AXES}")
    proc = harness("run", "--matrix", str(tmp / "m.yaml"), "--results", str(tmp / "results"), "--jobs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # both kernels deviate, as known
    return tmp / "results"


def test_linux_4_4_runs_the_whole_catalogue_and_joins_the_history_of_debian_kernels(glibc_run: Path) -> None:
    """Every case under every limit and user, none an error, the era's documented behaviours judged
    by their own cited rules, one history for both kernels."""
    results = glibc_run
    run_dir = (results / "latest").resolve()
    data = results_doc(run_dir)
    old = next(b for b in data["boots"] if b["uname"].startswith("4.4.178"))
    assert old["error"] == "" and old["transport"] == "net"  # virtio-net, as its config beside it says
    assert len(old["cases"]) == 4 * 2 * len(probe.build().names)
    assert {c["outcome"] for c in old["cases"]} <= {"pass", "not_applicable", "deviation"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    booted = {b["id"]: b for b in manifest["boots"]}[old["boot_id"]]
    assert booted["transport"] == "net" and "virtio-rng-pci" in booted["qemu_command"]
    assert "userland" not in booted  # 4.4 is above glibc's minimum: today's userland, unsaid
    kernel = {k["spec"]: k for k in manifest["kernels"]}[booted["kernel"]]
    assert kernel["pvh"] is False and kernel["release"] == "4.4.178+"

    def result(case: str, memlock: str, user: str) -> dict[str, object]:
        return next(c for c in old["cases"] if (c["case"], c["memlock"], c["user"]) == (case, memlock, user))

    # MREMAP_DONTUNMAP is from 5.7: not applicable, with the reason, never a deviation.
    for case in ("mremap_dontunmap_whole", "mremap_dontunmap_partial", "mremap_dontunmap_shared"):
        r = result(case, "unlimited", "root")
        assert r["outcome"] == "not_applicable" and "before 5.7" in str(r["message"]), r
    # mlockall(MCL_ONFAULT) alone succeeded until 5.2 (commit dedca63504a2)...
    alone = result("future_onfault_alone", "default", "root")
    assert alone["outcome"] == "pass" and alone["observation"]["result"] == "ok"  # type: ignore[index]
    assert "dedca63504a2" in str(alone["citation"])
    # ... and an overlapping mlock was charged twice until 4.9 (mlock(2) BUGS).
    relock = result("account_relock_overlap", "64K", "user")
    assert relock["outcome"] == "pass" and relock["observation"]["result"] == "ENOMEM"  # type: ignore[index]
    assert "4.9" in str(relock["citation"])

    proc = harness("history", "--history", str(results / "history.sqlite"), "--case", "future_onfault_alone")
    assert proc.returncode == 0, proc.stderr
    assert "4.4.178" in proc.stdout and "6.1." in proc.stdout, proc.stdout


def test_the_musl_userland_gives_the_glibc_userland_s_verdicts(glibc_run: Path, tmp_path: Path) -> None:
    """Debian 12's kernel again with busybox, dropbear and the probe built static with musl (from
    Debian's sources): every result's outcome and behaviour fingerprint as with glibc's."""
    (tmp_path / "m.yaml").write_text(f"kernels:\n  - debian: bookworm\n{AXES}userland: musl\n")
    proc = harness("run", "--matrix", str(tmp_path / "m.yaml"), "--results", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # every finding known
    musl_dir = (tmp_path / "results" / "latest").resolve()
    (entry,) = json.loads((musl_dir / "manifest.json").read_text())["boots"]
    assert entry["userland"] == "musl" and entry["userland_reason"] == "asked for by the matrix"

    def verdicts(run_dir: Path) -> dict[tuple[str, str, str], tuple[str, str]]:
        boot = next(b for b in results_doc(run_dir)["boots"] if b["boot_id"] == "bookworm-256M")
        return {(c["case"], c["memlock"], c["user"]): (c["outcome"], c["fingerprint"]) for c in boot["cases"]}

    glibc, musl = verdicts((glibc_run / "latest").resolve()), verdicts(musl_dir)
    assert len(musl) == 4 * 2 * len(probe.build().names)
    assert {k: (glibc[k], musl[k]) for k in glibc if glibc[k] != musl.get(k)} == {}
