"""The guest's hardware, chosen from what each kernel can drive (harness.kernels.devices), and how QEMU,
the image and the manifest are told. Modules trees here are made of real ELF objects (gcc -c with
a .modinfo section). The real boots: Debian 12's kernel on an e1000 and an IDE disk below, and a
kernel built without virtio and PVH in the bisect tree's test (`make test-bisect`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import write_module
from test_integration import Prepared, bookworm  # noqa: F401
from test_serial import behaviour, run

from harness import manifest
from harness.boot import vm
from harness.kernels import Kernel, devices, kbuild
from harness.kernels.modules import module_name
from harness.kit import image, probe, transports

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the test modules")
Build = Callable[[str, Sequence[str]], bytes]


def kernel(tmp_path: Path, modules_dir: Path | None, config: str | None = None) -> Kernel:
    cfg = None
    if config is not None:
        cfg = tmp_path / "config"
        cfg.write_text(config)
    return Kernel("k", "6.1.0-test", tmp_path / "bzImage", None, modules_dir, "0" * 64, None, None, (), "path:k", cfg)


def tree(
    root: Path, build_ko: Build, graph: dict[str, list[str]], builtin: Sequence[str] = (), suffix: str = ".ko"
) -> Path:
    for name, deps in graph.items():
        write_module(root / "kernel" / f"{name}{suffix}", build_ko(name, deps))
    (root / "modules.builtin").write_text("".join(f"kernel/{b}.ko\n" for b in builtin))
    return root


VIRTIO = {
    "virtio_pci": ["virtio"],
    "virtio": [],
    "virtio_net": ["virtio"],
    "virtio_blk": ["virtio"],
    "ext4": ["jbd2"],
    "jbd2": [],
    "virtio_rng": ["virtio"],
}
LEGACY = {
    "e1000": [],
    "ata_piix": ["libata"],
    "libata": ["scsi_mod"],
    "sd_mod": ["scsi_mod"],
    "scsi_mod": [],
    "ext2": ["mbcache"],
    "mbcache": [],
}


@needs_gcc
def test_a_kernel_with_virtio_gets_virtio_and_loads_what_it_always_did(tmp_path: Path, build_ko: Build) -> None:
    """The first alternative wins even when the kernel also has the old drivers (every Debian kernel
    does); the load order is the optional modules, then the NIC's, the disk's and ext4's."""
    root = tree(tmp_path / "6.1.0-test", build_ko, {**VIRTIO, **LEGACY})
    hw = devices.choose(kernel(tmp_path, root))
    assert hw.describe() == {"nic": "virtio-net-pci", "disk": "virtio", "fs": "ext4"} == devices.VIRTIO.describe()
    assert [module_name(p) for p in hw.modules] == [
        "virtio",
        "virtio_rng",
        "virtio_pci",
        "virtio_net",
        "virtio_blk",
        "jbd2",
        "ext4",
    ]


@needs_gcc
@pytest.mark.parametrize("suffix", [".ko", ".ko.gz"])
def test_a_kernel_without_virtio_gets_an_e1000_an_ide_disk_and_ext2(
    tmp_path: Path, build_ko: Build, suffix: str
) -> None:
    root = tree(tmp_path / "6.1.0-test", build_ko, LEGACY, suffix=suffix)
    hw = devices.choose(kernel(tmp_path, root))
    assert hw.describe() == {"nic": "e1000", "disk": "ide", "fs": "ext2"}
    assert hw.disk is not None and hw.disk.guest_dev == "sda"
    assert [module_name(p) for p in hw.modules] == [
        "e1000",
        "scsi_mod",
        "libata",
        "ata_piix",
        "sd_mod",
        "mbcache",
        "ext2",
    ]


@needs_gcc
def test_a_disk_without_a_filesystem_to_read_it_is_no_disk(tmp_path: Path, build_ko: Build) -> None:
    """Its controller's modules are not loaded for nothing; the NIC still is."""
    root = tree(tmp_path / "6.1.0-test", build_ko, {"e1000": [], "ata_piix": [], "sd_mod": []})
    hw = devices.choose(kernel(tmp_path, root))
    assert hw.fs is None and hw.describe() == {"nic": "e1000", "disk": "", "fs": ""}
    assert [module_name(p) for p in hw.modules] == ["e1000"]


@needs_gcc
def test_built_in_drivers_count_and_need_no_module(tmp_path: Path, build_ko: Build) -> None:
    root = tree(tmp_path / "6.1.0-test", build_ko, {"ext2": []}, builtin=["e1000", "ata_piix", "sd_mod"])
    hw = devices.choose(kernel(tmp_path, root))
    assert hw.describe() == {"nic": "e1000", "disk": "ide", "fs": "ext2"}
    assert [module_name(p) for p in hw.modules] == ["ext2"]


def test_a_kernel_without_modules_is_judged_by_its_config(tmp_path: Path) -> None:
    built = "CONFIG_E1000=y\nCONFIG_ATA_PIIX=y\nCONFIG_BLK_DEV_SD=y\nCONFIG_EXT2_FS=y\nCONFIG_VIRTIO_NET=y\n"
    hw = devices.choose(kernel(tmp_path, None, built))  # VIRTIO_NET without VIRTIO_PCI drives nothing
    assert hw.describe() == {"nic": "e1000", "disk": "ide", "fs": "ext2"} and hw.modules == ()
    assert devices.choose(kernel(tmp_path, None)).describe() == {"nic": "", "disk": "", "fs": ""}


def test_qemu_gets_the_nic_and_the_drive_the_kernel_drives(tmp_path: Path) -> None:
    cfg = vm.VMConfig(tmp_path / "bzImage", tmp_path / "initrd", 256, "tcg", 2222, tmp_path / "disk.img")
    assert cfg.argv()[-2:] == ["-drive", f"file={tmp_path}/disk.img,format=raw,if=virtio,readonly=on"]
    assert "virtio-net-pci,netdev=n0,romfile=" in cfg.argv()
    old = dataclasses.replace(cfg, nic="e1000", disk_bus="ide")
    argv = old.argv()
    # QEMU refuses a read-only IDE disk: the guest's writes (it makes none) go to a throwaway overlay.
    assert argv[-2:] == ["-drive", f"file={tmp_path}/disk.img,format=raw,if=ide,snapshot=on"]
    assert "e1000,netdev=n0,romfile=" in argv and not any("virtio-net" in a for a in argv)
    assert dataclasses.replace(old, disk=None).argv()[-1] != "-drive" and "-drive" not in old.argv()[:-2]


def test_auto_reaches_a_guest_over_whichever_nic_it_drives() -> None:
    assert transports.choose("auto", "virtio-net") == ("net", "the kernel has its virtio-net driver")
    assert transports.choose("auto", "e1000") == ("net", "the kernel has its e1000 driver")
    assert transports.choose("auto", None) == ("serial", "the kernel has no NIC driver the guest can load")
    assert transports.choose("serial", "e1000") == ("serial", "asked for by the matrix")


def test_image_build_writes_the_disk_line_only_when_there_is_a_disk(tmp_path: Path) -> None:
    base = [image.file("bin/x", b"x", 0o755)]
    with_disk = image.build(base, [], b"s" * 32, tmp_path, ("sda", "ext2"))
    without = image.build(base, [], b"s" * 32, tmp_path)
    assert with_disk.sha256 != without.sha256
    listing = subprocess.run(["cpio", "-t"], input=with_disk.path.read_bytes(), capture_output=True, check=True)
    assert b"etc/harness/disk" in listing.stdout
    listing = subprocess.run(["cpio", "-t"], input=without.path.read_bytes(), capture_output=True, check=True)
    assert b"etc/harness/disk" not in listing.stdout
    init = (Path(__file__).resolve().parent.parent / "images" / "init").read_text()
    assert "read -r dev fs < /etc/harness/disk" in init and 'mount -t "$fs" -o ro "/dev/$dev" /mnt/disk' in init


def test_the_ext2_disk_is_reproducible_and_holds_the_ext4_disk_s_file(tmp_path: Path) -> None:
    first = image.disk_image(tmp_path / "a", "ext2")
    time.sleep(1.1)  # mke2fs stamps with the clock's seconds: a build in the same second proves nothing
    assert first.read_bytes() == image.disk_image(tmp_path / "b", "ext2").read_bytes()
    features = subprocess.run(["dumpe2fs", "-h", str(first)], capture_output=True, text=True, check=True).stdout
    assert "extent" not in features and "has_journal" not in features  # nothing ext2 cannot read
    for disk in (first, image.disk_image(tmp_path / "a")):
        data = subprocess.run(
            ["debugfs", "-R", f"cat /{image.DISK_FILE}", str(disk)], capture_output=True, check=True
        ).stdout
        assert data == bytes(i % 251 for i in range(256)) * (image.DISK_FILE_SIZE // 256)


def test_the_manifest_names_devices_other_than_virtio_and_reads_them_back() -> None:
    old = manifest.Boot("b", devices=(("nic", "e1000"), ("disk", "ide"), ("fs", "ext2")))
    doc = manifest._boot_json(old)
    assert doc["devices"] == {"nic": "e1000", "disk": "ide", "fs": "ext2"}
    assert manifest._boot(manifest.Doc(doc, "m.")) == dataclasses.replace(old, userland="glibc")
    assert "devices" not in manifest._boot_json(manifest.Boot("b"))


def test_a_build_has_modules_only_when_its_config_asks_for_one() -> None:
    assert kbuild.has_modules("CONFIG_MODULES=y\nCONFIG_E1000=m\n")
    assert not kbuild.has_modules("CONFIG_MODULES=y\nCONFIG_E1000=y\n")
    assert not kbuild.has_modules("# CONFIG_MODULES is not set\nCONFIG_E1000=m\n")


@pytest.mark.integration
def test_debian_s_kernel_on_an_e1000_and_an_ide_disk_behaves_as_on_virtio(
    bookworm: Prepared,  # noqa: F811
    tmp_path: Path,  # noqa: F811
) -> None:
    """Debian 12's kernel, once as Debian ships it and once with its virtio-net and virtio-blk
    modules taken away: the second guest gets QEMU's e1000 and the ATA disk through ata_piix (the
    hardware of kernels before virtio), is reached over net all the same, mounts its data disk, and
    gives every case, the disk's included, the same verdict and fingerprint."""
    kernel, _, _ = bookworm
    assert kernel.modules_dir is not None
    legacy = tmp_path / "modules" / kernel.release
    shutil.copytree(
        kernel.modules_dir,
        legacy,
        copy_function=os.link,
        ignore=shutil.ignore_patterns("virtio_net.ko*", "virtio_blk.ko*"),
    )
    limits = "memlock: [64K, unlimited]\nusers: [root, user]\n"
    data = run(tmp_path, f"kernels:\n  - debian: bookworm\n  - {{path: {kernel.image}, modules: {legacy}}}\n{limits}")
    virtio, old = data["boots"]
    assert (virtio["transport"], old["transport"], old["error"]) == ("net", "net", "")
    argv = " ".join(old["qemu_argv"])
    assert "e1000,netdev=n0" in argv and "if=ide,snapshot=on" in argv and "virtio-net" not in argv
    manifest_doc = json.loads(next((tmp_path / "results").glob("2*/manifest.json")).read_text())
    entries = {b["id"]: b for b in manifest_doc["boots"]}
    assert entries[old["boot_id"]]["devices"] == {"nic": "e1000", "disk": "ide", "fs": "ext4"}
    assert entries[old["boot_id"]]["transport_reason"] == "the kernel has its e1000 driver"
    assert "devices" not in entries[virtio["boot_id"]]
    assert len(behaviour(old)) == 4 * len(probe.build().names)
    assert "not_applicable" not in {c["outcome"] for c in old["cases"] if c["case"].startswith("file_disk_")}
    assert behaviour(old) == behaviour(virtio)
