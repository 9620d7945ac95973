"""Real boots of old kernels built here: 2.6.20 (2007), 2.6.32 (2009), 3.16.0 (2014) and 4.4.178
(2019; the 4.4 line is from 2016), each the whole catalogue under every limit and user, beside
Debian 12's 6.1 in one run and one history.

`../shared/kernels/` beside the project holds them (how each was built: its README), each with the
config it was built with beside its bzImage, which is how the harness knows their built-in drivers.
None has a PVH note, so QEMU boots them through the firmware; 2.6.20's image predates the bzImage
payload fields; before 2.6.26 /init makes its device nodes from sysfs; before 3.2 the guest gets
the musl userland; before 3.5 the probe reads the kernel log with syslog(2); before 3.14 it
estimates MemAvailable. Nothing is mocked.

The static musl userland is checked here too, on a kernel both userlands run on: same verdicts and
fingerprints as glibc's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import results_doc

from harness.kit import probe

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
OLD_KERNELS = Path(os.environ.get("HARNESS_OLD_KERNELS", REPO.parent / "shared" / "kernels"))
RELEASES = {"linux-2.6.20": "2.6.20", "linux-2.6.32": "2.6.32", "linux-3.16.0": "3.16.0", "linux-4.4.178": "4.4.178+"}


def harness(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "220"},
    )


@pytest.fixture(scope="module")
def images() -> list[Path]:
    """Each old kernel's bzImage, checked against its SHA256SUMS."""
    found = []
    for folder in RELEASES:
        image = OLD_KERNELS / folder / "bzImage"
        if not image.is_file():
            pytest.skip(f"{image}: no such file (the old kernels beside the project; set HARNESS_OLD_KERNELS)")
        sums = dict(reversed(line.split()) for line in (image.parent / "SHA256SUMS").read_text().splitlines() if line)
        assert hashlib.sha256(image.read_bytes()).hexdigest() == sums["bzImage"]
        found.append(image)
    return found


AXES = "memlock: [default, 64K, 0, unlimited]\nusers: [root, user]\n"


@pytest.fixture(scope="module")
def glibc_run(images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four old kernels beside Debian 12's 6.1 in one run, each with the userland that runs on it."""
    tmp = tmp_path_factory.mktemp("old")
    kernels = "".join(f"  - path: {image}\n" for image in images)
    (tmp / "m.yaml").write_text(f"kernels:\n{kernels}  - debian: bookworm\n{AXES}")
    proc = harness("run", "--matrix", str(tmp / "m.yaml"), "--results", str(tmp / "results"), "--jobs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # every deviation of every era explained
    return tmp / "results"


def boots(results: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The run's boots and the manifest's, by release."""
    run_dir = (results / "latest").resolve()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    by_id = {b["id"]: b for b in manifest["boots"]}
    data = {b["uname"]: b for b in results_doc(run_dir)["boots"]}
    return data, {release: by_id[b["boot_id"]] for release, b in data.items()}


def test_every_old_kernel_runs_the_whole_catalogue_over_net_with_its_disk(glibc_run: Path) -> None:
    """Every case under every limit and user, none an error; reached over the NIC its config names,
    the data disk mounted where it has a driver for one; the userland that comes up on its era."""
    data, booted = boots(glibc_run)
    cases = 4 * 2 * len(probe.build().names)
    for release in RELEASES.values():
        boot = data[release]
        assert boot["error"] == "" and len(boot["cases"]) == cases, release
        assert {c["outcome"] for c in boot["cases"]} <= {"pass", "not_applicable", "deviation", "oom_killed"}, release
        assert boot["transport"] == "net" and booted[release]["transport"] == "net", release
        assert "virtio-rng-pci" in booted[release]["qemu_command"]
    assert booted["2.6.20"]["devices"] == {"nic": "e1000", "disk": "", "fs": ""}
    disk = {release: [c for c in data[release]["cases"] if c["case"].startswith("file_disk_")] for release in data}
    assert all("no disk-backed file" in c["message"] for c in disk["2.6.20"])  # no disk driver in 2.6.20's config
    for release in ("2.6.32", "3.16.0", "4.4.178+"):
        assert not [c for c in disk[release] if "no disk-backed file" in c["message"]], release
    assert {r: booted[r].get("userland", "glibc") for r in RELEASES.values()} == {
        "2.6.20": "musl",
        "2.6.32": "musl",
        "3.16.0": "glibc",
        "4.4.178+": "glibc",
    }
    assert "panic=1 " in booted["2.6.32"]["qemu_command"] and "panic=-1" in booted["3.16.0"]["qemu_command"]


def test_each_era_answers_as_its_sources_say(glibc_run: Path) -> None:
    """Facts of each era, read in its sources, and what the probe now measures there."""
    data, _ = boots(glibc_run)

    def result(release: str, case: str, memlock: str, user: str) -> dict[str, Any]:
        return next(c for c in data[release]["cases"] if (c["case"], c["memlock"], c["user"]) == (case, memlock, user))

    # MemAvailable is from 3.14 (commit 34e431b0ae39): estimated before, as that commit defines it.
    for release in ("2.6.20", "2.6.32"):
        observation = result(release, "limits", "default", "root")["observation"]
        assert "34e431b0ae39" in observation["memavailable_estimate"] and observation["memavailable_kb"] > 0
    assert "memavailable_estimate" not in result("3.16.0", "limits", "default", "root")["observation"]
    # /dev/kmsg is readable from 3.5: before, the log is read with syslog(2), and an OOM kill is seen.
    oom = result("2.6.32", "oom_map_locked_noreserve_above_total", "unlimited", "root")["observation"]
    assert oom["oom_killed"] is True and any("Killed process" in line for line in oom["kernel_log"])
    old = ("2.6.20", "2.6.32", "3.16.0", "4.4.178+")
    # The default RLIMIT_MEMLOCK was 8 pages until commit 0833422274ff (2.6.28), then 64 KiB.
    limits = {r: result(r, "limits", "default", "user") for r in old}
    assert {r: x["observation"]["rlimit_soft"] for r, x in limits.items()} == dict.fromkeys(old, 65536) | {
        "2.6.20": 32768
    }
    assert all(x["outcome"] == "pass" for x in limits.values()) and "0833422274ff" in limits["2.6.20"]["citation"]
    # A failed mlock keeps its lock on every era (known); its errno was EFAULT/EPERM until a477097d9c37.
    errno = {r: result(r, "protnone_mlock", "64K", "root") for r in old}
    assert {r: x["observation"]["result"] for r, x in errno.items()} == dict.fromkeys(old, "ENOMEM") | {
        "2.6.20": "EFAULT"
    }
    assert all(x["known"] for x in errno.values()) and "a477097d9c37" in errno["2.6.20"]["known"]
    assert result("2.6.20", "file_mlock_past_eof", "64K", "root")["observation"]["result"] == "EPERM"
    # mprotect() populates a locked range made writable only since 36f881883c57 (4.2).
    mprotect = {r: result(r, "protnone_map_locked", "64K", "root") for r in old}
    assert {r: x["observation"]["all_resident_after_mprotect"] for r, x in mprotect.items()} == {
        "2.6.20": False,
        "2.6.32": False,
        "3.16.0": False,
        "4.4.178+": True,
    }
    assert all(x["outcome"] == "pass" for x in mprotect.values()) and "36f881883c57" in mprotect["3.16.0"]["citation"]
    # A private MAP_POPULATE populates only since 2.6.23 (mmap(2); commit 54cb8821de07).
    populate = {r: result(r, "populate_map_populate", "64K", "root")["observation"]["resident_pages"] for r in old}
    assert populate == dict.fromkeys(old, 256) | {"2.6.20": 0}
    # mincore(2) refused anonymous memory before 2.6.21: residency is read from smaps there, and said so.
    assert "smaps" in result("2.6.20", "mlock_under", "64K", "user")["observation"]["residency_source"]
    assert "residency_source" not in result("2.6.32", "mlock_under", "64K", "user")["observation"]
    # A hugetlb MAP_NORESERVE fault past the pool: the OOM killer until 4a6018f7f4f1 (2.6.34), then SIGBUS.
    beyond = {r: result(r, "huge_map_locked_noreserve_beyond", "unlimited", "root") for r in ("2.6.32", "3.16.0")}
    assert beyond["2.6.32"]["observation"]["oom_killed"] is True and "4a6018f7f4f1" in beyond["2.6.32"]["citation"]
    assert beyond["3.16.0"]["observation"]["signal_touch"] == "SIGBUS"
    assert all(x["outcome"] == "pass" for x in beyond.values())
    # smaps has a Locked line on 3.16 and 4.4, not on 2.6.20 or 2.6.32: there the size is unknown, not 0.
    locked = {r: result(r, "mlock_under", "64K", "user")["observation"] for r in old}
    assert {r: o["smaps_locked_kb"] for r, o in locked.items()} == dict.fromkeys(old, 32) | {
        "2.6.20": None,
        "2.6.32": None,
    }
    assert "no Locked line" in locked["2.6.32"]["unknown"] and "Locked" not in locked["3.16.0"].get("unknown", "")
    # memfd_create(2) is from 3.17: a shared DONTUNMAP mapping has no memfd, and says why.
    for release in ("2.6.32", "3.16.0"):
        shared = result(release, "mremap_dontunmap_shared", "unlimited", "root")
        assert shared["outcome"] == "not_applicable" and "from Linux 3.17 (ENOSYS)" in shared["message"], shared
    # MREMAP_DONTUNMAP is from 5.7: not applicable, with the reason, never a deviation.
    for release in RELEASES.values():
        r = result(release, "mremap_dontunmap_whole", "unlimited", "root")
        assert r["outcome"] == "not_applicable" and "before 5.7" in str(r["message"]), r
    # mlockall(MCL_ONFAULT) alone succeeded until 5.2 (commit dedca63504a2)...
    alone = result("4.4.178+", "future_onfault_alone", "default", "root")
    assert alone["outcome"] == "pass" and alone["observation"]["result"] == "ok"
    assert "dedca63504a2" in str(alone["citation"])
    # ... and an overlapping mlock was charged twice until 4.9 (mlock(2) BUGS).
    relock = result("4.4.178+", "account_relock_overlap", "64K", "user")
    assert relock["outcome"] == "pass" and relock["observation"]["result"] == "ENOMEM"
    assert "4.9" in str(relock["citation"])


def test_one_history_orders_every_era_by_version(glibc_run: Path) -> None:
    proc = harness("history", "--history", str(glibc_run / "history.sqlite"), "--case", "limits")
    assert proc.returncode == 0, proc.stderr
    # The first (limit, user): a row per kernel, oldest first.
    rows = re.findall(r"^ (\S+) +\S+ +(?:pass|deviation|not_applicable) ", proc.stdout, re.M)
    assert rows[:5] == ["2.6.20", "2.6.32", "3.16.0", "4.4.178+", "6.1.176-1"], proc.stdout
    # 2.6.20's 32 KiB default limit beside the 64 KiB of 2.6.32 to 4.4 and 6.1's 8 MiB.
    assert all(f"rlimit_soft={n}" in proc.stdout for n in (32768, 65536, 8388608)), proc.stdout


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
