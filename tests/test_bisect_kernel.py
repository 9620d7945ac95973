"""The full bisect: a real kernel tree, real builds, real boots. `make test-bisect`; not in `make test`.

The tree is Debian's linux-source-6.1 from the mirror, unpacked at test time into the harness
cache (never committed here), made a git repository, and given four commits, one of which stops
mlock() from enforcing RLIMIT_MEMLOCK. `harness bisect` must name that commit and leave the tree
as it found it. Commits have fixed dates, so the tree and commit hashes are the same on every run
and kernels already built are taken from the cache; on a fresh cache the first build is the slow
part (see docs/bisect.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import results_doc
from debian.debian_support import Version

from harness import kernels
from harness.cache import cache_dir
from harness.debian import archive
from harness.debian.aptsources import mirror_from
from harness.kit import probe

pytestmark = [pytest.mark.integration, pytest.mark.bisect]
REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
ENV = {
    "GIT_AUTHOR_NAME": "harness",
    "GIT_AUTHOR_EMAIL": "harness@example.org",
    "GIT_COMMITTER_NAME": "harness",
    "GIT_COMMITTER_EMAIL": "harness@example.org",
}

# (title, file, old text, new text); the third is the behaviour change.
SERIES = [
    ("Documentation: say what the harness tree is", "README", "Linux kernel", "Linux kernel (harness bisect tree)"),
    (
        "mm/mlock: say why the limit is checked twice",
        "mm/mlock.c",
        "\t/* check against resource limits */",
        "\t/* check against resource limits (again: the VMA walk may have found locked pages) */",
    ),
    (
        "mm/mlock: stop enforcing RLIMIT_MEMLOCK in mlock()",
        "mm/mlock.c",
        "\tlock_limit = rlimit(RLIMIT_MEMLOCK);\n\tlock_limit >>= PAGE_SHIFT;\n\tlocked = len >> PAGE_SHIFT;",
        "\tlock_limit = RLIM_INFINITY;\n\tlock_limit >>= PAGE_SHIFT;\n\tlocked = len >> PAGE_SHIFT;",
    ),
    ("fork: a comment", "kernel/fork.c", "/*\n *  linux/kernel/fork.c", "/*\n *  linux/kernel/fork.c (harness)"),
]


def git(repo: Path, *args: str, date: int = 0) -> str:
    env = {**os.environ, **ENV}
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{date} +0000"
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def source_deb(cache: Path) -> archive.Deb:
    a = archive.Archive(mirror_from(None, os.environ, Path("/")), cache)
    stanzas = [s for s in a.packages(SUITE, "linux-source-") if s["Package"].startswith("linux-source-6.")]
    newest = max(stanzas, key=lambda s: Version(s["Version"]))
    deb = archive.deb_of(newest, SUITE)
    a.fetch_deb(deb)
    return deb


def make_tree(cache: Path) -> Path:
    """The git tree, made once per linux-source version and kept in the cache."""
    deb = source_deb(cache)
    root = cache / "bisect-test" / f"{deb.package}-{deb.version}"
    repo = root / "linux"
    if (root / "ready").exists():
        return repo
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    with kernels._data_tar(cache / "debs" / f"{deb.sha256}.deb") as data:
        for member in data:  # a stream: members in order, no seeking back
            if member.name.endswith(".tar.xz"):
                src = data.extractfile(member)
                assert src is not None
                with tarfile.open(fileobj=src, mode="r|xz") as inner:
                    inner.extractall(root, filter="data")
                break
    (top,) = [p for p in root.iterdir() if p.is_dir()]
    top.rename(repo)
    # Debian's tree ignores everything at the top level (its packaging is kept apart); a kernel
    # developer's tree does not.
    ignore = repo / ".gitignore"
    ignore.write_text(ignore.read_text().replace("\n/*\n!/debian/\n", "\n"))
    git(repo, "init", "-q", "-b", "master")
    git(repo, "config", "gc.auto", "0")  # a background repack of 80,000 objects would compete with the builds
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"{deb.package} {deb.version} as Debian ships it", date=1_700_000_000)
    for n, (title, name, old, new) in enumerate(SERIES, 1):
        path = repo / name
        text = path.read_text()
        assert text.count(old) == 1, (name, old)
        path.write_text(text.replace(old, new))
        git(repo, "commit", "-q", "-am", title, date=1_700_000_000 + n * 3600)
    (root / "ready").write_text(f"made in {time.monotonic() - started:.0f}s\n")
    return repo


def test_bisect_names_the_commit_that_stopped_enforcing_the_limit(tmp_path: Path) -> None:
    cache = cache_dir()
    started = time.monotonic()
    repo = make_tree(cache)
    made = time.monotonic() - started
    head = git(repo, "rev-parse", "HEAD")
    culprit = git(repo, "rev-parse", "HEAD~1")
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "bisect",
            "--repo",
            str(repo),
            "--good",
            "HEAD~4",
            "--bad",
            "HEAD",
            "--case",
            "mlock_over",
            "--memlock",
            "64K",
            "--user",
            "user",
            "--tries",
            "2",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=5400,
        env={**os.environ, "COLUMNS": "200"},
    )
    took = time.monotonic() - started - made
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert f"first commit that changed mlock_over: {culprit} mm/mlock: stop enforcing RLIMIT_MEMLOCK" in proc.stdout
    (record,) = results.glob("bisect-*/bisect.json")
    found = json.loads(record.read_text())
    assert found["first_commit"] == culprit and "result" in found["changed_fields"]
    assert json.loads(found["good"]["fingerprint"])["result"] == "ENOMEM"
    assert json.loads(found["bad"]["fingerprint"])["result"] == "ok"
    # Every step's run directory says how its kernel was built.
    manifest = sorted((record.parent / "steps" / culprit[:12]).glob("2*/manifest.json"))[0]  # run ids: the year
    build = json.loads(manifest.read_text())["kernels"][0]["build"]
    assert build["commit"] == culprit and build["seconds"] > 0 and build["missing_options"] == []
    assert Path(build["config_file"]).read_text().count("CONFIG_PVH=y") == 1
    # The user's tree as it was found.
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == ""
    assert not (repo / ".git" / "BISECT_START").exists()
    builds = [
        json.loads(p.read_text())
        for p in (cache / "builds").glob("*/build.json")
        if json.loads(p.read_text())["repo"] == str(repo)
    ]
    print(
        f"\ntree made in {made:.0f}s; bisect took {took:.0f}s; builds: "
        + ", ".join(f"{b['commit'][:12]} {b['seconds']}s" for b in builds)
    )


def run_good_end(repo: Path, tmp_path: Path, option: str) -> Path:
    """`harness run` of three cases on the tree's good end, built with one more `git:` option;
    the run directory of a run that must pass."""
    good = git(repo, "rev-parse", "HEAD~4")
    (tmp_path / "m.yaml").write_text(
        f"kernels:\n  - git: {{repo: {repo}, rev: {good}, {option}}}\n"
        "memlock: [64K]\nusers: [user]\ncases: [mlock_over, map_locked_over, limits]\n"
    )
    return harness_run(tmp_path, 1, (0,))


def harness_run(tmp_path: Path, jobs: int, codes: tuple[int, ...]) -> Path:
    """`harness run` of tmp_path/m.yaml into tmp_path/results; the run directory, once it exited
    with one of `codes`."""
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--matrix",
            str(tmp_path / "m.yaml"),
            "--results",
            str(results),
            "--jobs",
            str(jobs),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=5400,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode in codes, proc.stdout[-4000:] + proc.stderr
    return (results / "latest").resolve()


def test_a_tree_built_without_virtio_net_is_reached_over_the_serial_line(tmp_path: Path) -> None:
    """The same tree with CONFIG_VIRTIO_NET off: `auto` sees it in the build's .config, boots the
    guest without a NIC and gives the same answers over the second UART."""
    cache = cache_dir()
    repo = make_tree(cache)
    fragment = tmp_path / "no-net.config"
    text = (REPO / "images" / "kernel.config").read_text()
    assert text.count("CONFIG_VIRTIO_NET=y\n") == 1
    fragment.write_text(text.replace("CONFIG_VIRTIO_NET=y\n", "# CONFIG_VIRTIO_NET is not set\n"))
    run_dir = run_good_end(repo, tmp_path, "config: no-net.config")
    (boot,) = results_doc(run_dir)["boots"]
    assert boot["transport"] == "serial" and boot["error"] == ""
    assert {c["case"]: c["outcome"] for c in boot["cases"]} == {
        "mlock_over": "pass",
        "map_locked_over": "pass",
        "limits": "pass",
    }
    (entry,) = json.loads((run_dir / "manifest.json").read_text())["boots"]
    assert entry["transport_reason"] == "the kernel has no NIC driver the guest can load"
    (kernel,) = json.loads((run_dir / "manifest.json").read_text())["kernels"]
    config = Path(kernel["build"]["config_file"]).read_text()
    assert "# CONFIG_VIRTIO_NET is not set" in config and "CONFIG_SERIAL_8250=y" in config
    assert "-netdev" not in " ".join(boot["qemu_argv"])  # no NIC at all, not a NIC nobody drives


def test_an_older_compiler_builds_the_tree_and_the_manifest_says_which(tmp_path: Path) -> None:
    """`compiler: gcc-10`: installed from bullseye through apt with a private source list when the
    host lacks it (this test runs as root, as CI does), used as CC and HOSTCC, part of the build's
    cache key, recorded in build.json and the manifest; the kernel boots and answers as gcc-12's."""
    cache = cache_dir()
    repo = make_tree(cache)
    run_dir = run_good_end(repo, tmp_path, "compiler: gcc-10")
    (boot,) = results_doc(run_dir)["boots"]
    assert boot["error"] == "" and {c["outcome"] for c in boot["cases"]} == {"pass"}
    (kernel,) = json.loads((run_dir / "manifest.json").read_text())["kernels"]
    build = kernel["build"]
    assert build["cc"] == "gcc-10" and build["compiler"].startswith("gcc-10 (Debian 10.")
    assert shutil.which("gcc-10") is not None
    print(f"\ngcc-10 build: {build['seconds']}s")


# The tree's fragment turned into a kernel of the era before virtio and PVH: no PVH note (QEMU boots
# it through the firmware), no virtio at all, and the hardware QEMU emulates for old kernels driven
# by plain .ko modules (e1000; the PIIX IDE controller through libata, scsi_mod and sd_mod; ext2).
# No devtmpfs either (2.6.32 brought it): /init makes the device nodes with busybox's mdev.
LEGACY_OFF = (
    "CONFIG_PVH",
    "CONFIG_VIRTIO_MENU",
    "CONFIG_VIRTIO_PCI",
    "CONFIG_VIRTIO_NET",
    "CONFIG_VIRTIO_BLK",
    "CONFIG_EXT4_FS",
    "CONFIG_DEVTMPFS",
)
LEGACY_MODULES = """CONFIG_MODULES=y
CONFIG_ETHERNET=y
CONFIG_NET_VENDOR_INTEL=y
CONFIG_E1000=m
CONFIG_SCSI=m
CONFIG_BLK_DEV_SD=m
CONFIG_ATA=m
CONFIG_ATA_SFF=y
CONFIG_ATA_BMDMA=y
CONFIG_ATA_PIIX=m
CONFIG_EXT2_FS=m
"""


def test_a_kernel_without_pvh_and_virtio_runs_the_catalogue_on_emulated_hardware(tmp_path: Path) -> None:
    """The tree's good end built twice, as the bisect builds it and as a kernel of the era before
    virtio: the second boots through the firmware, has no devtmpfs, loads its NIC, disk and
    filesystem as plain .ko files, is reached over net through an e1000 and mounts its ext2 data
    disk from IDE. It runs the whole catalogue under every limit and user, and every result is the
    first kernel's."""
    cache = cache_dir()
    repo = make_tree(cache)
    text = (REPO / "images" / "kernel.config").read_text()
    for option in LEGACY_OFF:
        assert text.count(f"{option}=y\n") == 1, option
        text = text.replace(f"{option}=y\n", f"# {option} is not set\n")
    (tmp_path / "legacy.config").write_text(text + LEGACY_MODULES)
    good = git(repo, "rev-parse", "HEAD~4")
    spec = f"{{repo: {repo}, rev: {good}"
    (tmp_path / "m.yaml").write_text(
        f"kernels:\n  - git: {spec}}}\n  - git: {spec}, config: legacy.config}}\n"
        "memlock: [default, 64K, 0, unlimited]\nusers: [root, user]\n"
    )
    run_dir = harness_run(tmp_path, 2, (0, 1))
    modern, legacy = results_doc(run_dir)["boots"]
    assert "+legacy" in legacy["boot_id"] and legacy["error"] == "" and legacy["transport"] == "net"
    argv = " ".join(legacy["qemu_argv"])
    assert "-device e1000,netdev=n0" in argv and "disk-ext2-v1.img,format=raw,if=ide,snapshot=on" in argv
    assert "virtio-net" not in argv and "/bzImage" in argv  # the firmware boots the bzImage: no PVH vmlinux
    manifest = json.loads((run_dir / "manifest.json").read_text())
    entry = {b["id"]: b for b in manifest["boots"]}[legacy["boot_id"]]
    assert entry["devices"] == {"nic": "e1000", "disk": "ide", "fs": "ext2"}
    kernel = {k["spec"]: k for k in manifest["kernels"]}[entry["kernel"]]
    assert kernel["pvh"] is False and kernel["build"]["missing_options"] == [] and kernel["build"]["modules"] >= 6
    assert "# CONFIG_DEVTMPFS is not set" in Path(kernel["build"]["config_file"]).read_text()
    assert {"e1000", "scsi_mod", "libata", "ata_piix", "sd_mod", "ext2"} <= set(kernel["image"]["modules"])
    assert {c["outcome"] for c in legacy["cases"]} <= {"pass", "not_applicable", "deviation"}
    assert len(legacy["cases"]) == len(modern["cases"]) == 4 * 2 * len(probe.build().names)

    def behaviour(boot: dict[str, Any]) -> dict[tuple[str, str, str], tuple[str, str]]:
        return {(c["case"], c["memlock"], c["user"]): (c["outcome"], c["fingerprint"]) for c in boot["cases"]}

    before, after = behaviour(modern), behaviour(legacy)
    differ = {k: (v, after[k]) for k, v in before.items() if after[k] != v}
    assert differ == {}
    disk = [c for c in legacy["cases"] if c["case"].startswith("file_disk_")]
    assert disk and "not_applicable" not in {c["outcome"] for c in disk if c["memlock"] != "0"}
    print(f"\nlegacy build: {kernel['build']['seconds']}s, {kernel['build']['modules']} modules")


def test_bisect_on_the_kernel_s_own_selftest_names_the_same_commit(tmp_path: Path) -> None:
    """`--case kselftest-mm:mlock-random-test`: the kernel's own test of mlock() under RLIMIT_MEMLOCK,
    built from each step's tree (once: the steps differ only in mm/), finds the commit the probe's
    mlock_over finds."""
    cache = cache_dir()
    repo = make_tree(cache)
    culprit = git(repo, "rev-parse", "HEAD~1")
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "bisect",
            "--repo",
            str(repo),
            "--good",
            "HEAD~4",
            "--bad",
            "HEAD",
            "--case",
            "kselftest-mm:mlock-random-test",
            "--user",
            "root",
            "--tries",
            "2",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=5400,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert f"first commit that changed kselftest-mm:mlock-random-test: {culprit}" in proc.stdout
    (record,) = results.glob("bisect-*/bisect.json")
    found = json.loads(record.read_text())
    assert json.loads(found["good"]["fingerprint"])["outcome"] == "pass"
    assert json.loads(found["bad"]["fingerprint"])["outcome"] == "deviation"
