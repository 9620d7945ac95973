"""Kernels given by path (harness.kernels.sources.path): which .config says what the guest gets, the
oldest bzImages QEMU loads, and boots named by release. Synthetic images; the real old kernels of
../shared/kernels are booted in tests/test_old_kernels.py."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from test_kernels import bzimage, tiny_elf

from harness.errors import UserError
from harness.kernels import bzimage as bz
from harness.kernels import devices
from harness.kernels.sources.path import PathKernel, from_path
from harness.plan import matrix

OLD_KERNELS = Path(__file__).resolve().parents[2] / "shared" / "kernels"

E1000_EXT2 = "# Linux/x86 6.6.6 Kernel Configuration\nCONFIG_E1000=y\nCONFIG_EXT2_FS=y\n"
VIRTIO = "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_NET=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_EXT4_FS=y\n"


def image(at: Path, version: str = "6.6.6", embedded: str | None = None) -> Path:
    """A bzImage of release `version` at `at`, its kernel carrying `embedded` as CONFIG_IKCONFIG does."""
    kernel = tiny_elf(banner=version)
    if embedded is not None:
        kernel += b"\0IKCFG_ST" + gzip.compress(embedded.encode()) + b"IKCFG_ED\0"
    at.parent.mkdir(parents=True, exist_ok=True)
    at.write_bytes(bzimage(kernel, version=version))
    return at


def old_image(protocol: int, kernel: bytes) -> bytes:
    """A bzImage from before payload fields (boot protocol < 2.08): setup, then the decompressor and
    the gzip stream, syssize in 16-byte units rounded up."""
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    struct.pack_into("<H", setup, 0x20E, 0x300 - 0x200)
    setup[0x300:0x310] = b"2.6.20 (old@x) \0"
    body = b"\x1f\x8b\x08 not a stream" + b"\x90" * 50 + gzip.compress(kernel)
    struct.pack_into("<I", setup, 0x1F4, (len(body) + 15) // 16)
    return bytes(setup) + body


def test_a_config_beside_the_image_gives_the_guest_its_built_in_drivers(tmp_path: Path) -> None:
    path = image(tmp_path / "k" / "bzImage")
    (path.parent / "config").write_text(E1000_EXT2)
    kernel = from_path(PathKernel(path), tmp_path / "cache")
    assert (kernel.config, kernel.config_from) == (path.parent / "config", "beside the image")
    got = devices.choose(kernel)
    assert got.describe() == {"nic": "e1000", "disk": "", "fs": ""}  # ext2 but no disk driver: no data disk
    assert got.summary() == "NIC e1000, no data disk (no driver for one)"


@pytest.mark.parametrize("name", [".config", "config-6.6.6"])
def test_the_other_names_beside_the_image(tmp_path: Path, name: str) -> None:
    path = image(tmp_path / "bzImage")
    (tmp_path / name).write_text(VIRTIO)
    kernel = from_path(PathKernel(path), tmp_path / "cache")
    assert kernel.config == tmp_path / name
    assert devices.choose(kernel).describe() == {"nic": "virtio-net-pci", "disk": "virtio", "fs": "ext4"}


def test_a_trees_own_bzimage_takes_the_trees_config(tmp_path: Path) -> None:
    path = image(tmp_path / "linux" / "arch" / "x86" / "boot" / "bzImage")
    (tmp_path / "linux" / ".config").write_text(VIRTIO)
    assert from_path(PathKernel(path), tmp_path / "cache").config == tmp_path / "linux" / ".config"


def test_a_config_for_another_release_is_passed_over_and_said(tmp_path: Path) -> None:
    path = image(tmp_path / "bzImage", version="6.6.6")
    (tmp_path / "config").write_text("#\n# Linux kernel version: 2.6.20\n#\nCONFIG_E1000=y\n")
    kernel = from_path(PathKernel(path), tmp_path / "cache")
    assert kernel.config is None
    assert kernel.config_from == f"{tmp_path / 'config'} is 2.6.20's and no CONFIG_IKCONFIG in it; give config: FILE"
    assert devices.choose(kernel).summary() == "no NIC driver (over serial), no data disk (no driver for one)"


def test_the_images_own_config_when_none_is_beside_it(tmp_path: Path) -> None:
    path = image(tmp_path / "bzImage", embedded=VIRTIO)
    kernel = from_path(PathKernel(path), tmp_path / "cache")
    assert kernel.config_from == "in the image" and kernel.config is not None
    assert kernel.config.read_text() == VIRTIO and kernel.config.is_relative_to(tmp_path / "cache")
    assert devices.choose(kernel).describe()["nic"] == "virtio-net-pci"


def test_a_given_config_wins_and_a_missing_one_is_bad_input(tmp_path: Path) -> None:
    image(tmp_path / "bzImage", embedded=VIRTIO)
    (tmp_path / "config").write_text(VIRTIO)
    given = tmp_path / "mine.config"
    given.write_text(E1000_EXT2)
    (tmp_path / "m.yaml").write_text("kernels:\n  - {path: bzImage, config: mine.config}\n")
    (spec,) = matrix.load(tmp_path / "m.yaml").kernels
    kernel = from_path(spec, tmp_path / "cache")  # type: ignore[arg-type]
    assert (kernel.config, kernel.config_from) == (given, "given")
    (tmp_path / "m.yaml").write_text("kernels:\n  - {path: bzImage, config: nowhere}\n")
    with pytest.raises(UserError, match=r"m.yaml:2: kernels.0.config: .*nowhere is not a file; give the kernel"):
        matrix.load(tmp_path / "m.yaml")


def test_boots_of_path_kernels_are_named_by_release(tmp_path: Path) -> None:
    one = image(tmp_path / "a" / "arch" / "x86" / "boot" / "bzImage", version="6.13.0-rc1+")
    two = image(tmp_path / "b" / "arch" / "x86" / "boot" / "bzImage", version="6.12.9")
    (tmp_path / "m.yaml").write_text(f"kernels:\n  - path: {one}\n  - path: {two}\n")
    plans = matrix.expand(matrix.load(tmp_path / "m.yaml"), ["limits"])
    assert [p.id for p in plans] == ["6.13.0-rc1+-256M", "6.12.9-256M"]
    junk = tmp_path / "vmlinux"
    junk.write_bytes(tiny_elf(banner="7.0.0"))  # not a bzImage: its header says nothing, the name does
    assert PathKernel(junk).label == "vmlinux"


@pytest.mark.parametrize("protocol", [0x200, 0x204, 0x207])
def test_images_before_payload_fields_are_booted_as_they_are(tmp_path: Path, protocol: int) -> None:
    """QEMU loads them (2.6.20's is 2.04); there is no PVH vmlinux to take out of them."""
    data = old_image(protocol, tiny_elf(banner="2.6.20") + b"IKCFG_ST" + gzip.compress(E1000_EXT2.encode()))
    path = tmp_path / "bzImage"
    path.write_bytes(data)
    kernel = from_path(PathKernel(path), tmp_path / "cache")
    assert (kernel.release, kernel.vmlinux, kernel.config_from) == ("2.6.20", None, "in the image")
    assert bz.kernel_elf(data) is not None and bz.embedded_config(bz.kernel_elf(data) or b"") == E1000_EXT2
    path.write_bytes(data[:-40])
    with pytest.raises(UserError, match="a bzImage header, but not a whole kernel .truncated"):
        from_path(PathKernel(path), tmp_path / "cache")


def test_the_old_kernels_beside_the_project_have_their_configs_found(tmp_path: Path) -> None:
    """../shared/kernels: each folder's `config` is the one its bzImage was built with."""
    if not OLD_KERNELS.is_dir():
        pytest.skip(f"{OLD_KERNELS}: no old kernels here")
    got = {}
    for folder in sorted(OLD_KERNELS.glob("linux-*")):
        kernel = from_path(PathKernel(folder / "bzImage"), tmp_path / "cache")
        assert kernel.config == folder / "config", folder
        got[kernel.release] = devices.choose(kernel).describe()
    assert got == {
        "2.6.20": {"nic": "e1000", "disk": "", "fs": ""},
        "2.6.32": {"nic": "virtio-net-pci", "disk": "virtio", "fs": "ext4"},
        "3.16.0": {"nic": "virtio-net-pci", "disk": "virtio", "fs": "ext4"},
        "4.4.178+": {"nic": "virtio-net-pci", "disk": "virtio", "fs": "ext4"},
    }
