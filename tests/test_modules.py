import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import write_module

from harness.errors import InfraError
from harness.kernels.devices import NICS
from harness.kernels.modules import (
    CRC32C_PROVIDERS,
    decompress_module,
    load_order,
    modinfo,
    module_name,
    parse_modinfo,
    resolve,
)

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the test modules")


# --- load_order (pure) -------------------------------------------------------------------------


def test_diamond_loads_shared_dependency_once_and_first() -> None:
    deps = {"top": ["left", "right"], "left": ["base"], "right": ["base"], "base": []}
    assert load_order(["top"], deps, set()) == ["base", "left", "right", "top"]


def test_order_is_deterministic_and_each_module_once() -> None:
    deps = {"a": ["c"], "b": ["c"], "c": []}
    assert load_order(["a", "b", "a"], deps, set()) == ["c", "a", "b"]


def test_builtin_modules_are_skipped_with_their_dependencies() -> None:
    # 6.16+: virtio_pci is built in, so only the net stack is loaded (PROTOTYPE pitfall 2)
    deps = {"virtio_net": ["net_failover"], "net_failover": ["failover"], "failover": []}
    builtin = {"virtio_pci", "virtio", "virtio_ring"}
    assert load_order(NICS[0].modules, deps, builtin) == ["failover", "net_failover", "virtio_net"]


def test_dashes_and_underscores_are_the_same_module() -> None:
    assert load_order(["virtio-net"], {"virtio_net": []}, set()) == ["virtio_net"]


def test_missing_module_names_module_and_release() -> None:
    with pytest.raises(InfraError, match=r"module virtio_mmio for 6\.1\.0-50-amd64 is neither"):
        load_order(["virtio_mmio"], {}, set(), "6.1.0-50-amd64")
    with pytest.raises(InfraError, match="module gone"):
        load_order(["a"], {"a": ["gone"]}, set())


def test_cycle_does_not_recurse_forever() -> None:
    assert load_order(["a"], {"a": ["b"], "b": ["a"]}, set()) == ["b", "a"]


def test_module_name_and_parse_modinfo() -> None:
    assert module_name("kernel/drivers/net/virtio-net.ko.zst") == "virtio_net"
    assert module_name("x/failover.ko") == "failover"
    info = parse_modinfo(b"alias=a\0alias=b\0depends=\0license=GPL\0\0junk\0")
    assert info == {"alias": ["a", "b"], "depends": [""], "license": ["GPL"]}


# --- real ELF objects --------------------------------------------------------------------------


@needs_gcc
@pytest.mark.parametrize("suffix", [".ko", ".ko.gz", ".ko.xz", ".ko.zst"])
def test_modinfo_reads_section_of_compressed_modules(
    tmp_path: Path, build_ko: Callable[[str, Sequence[str]], bytes], suffix: str
) -> None:
    elf = build_ko("virtio_net", ["virtio", "failover"])
    path = write_module(tmp_path / f"virtio_net{suffix}", elf)
    assert decompress_module(path) == elf
    info = modinfo(path)
    assert info["depends"] == ["virtio,failover"]
    assert info["name"] == ["virtio_net"]


def test_modinfo_of_garbage_is_infra_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ko.xz"
    bad.write_bytes(b"not xz")
    with pytest.raises(InfraError, match="cannot decompress"):
        modinfo(bad)
    plain = tmp_path / "plain.ko"
    plain.write_bytes(b"\x7fELF but not really")
    with pytest.raises(InfraError, match="not a kernel module"):
        modinfo(plain)


@needs_gcc
def test_resolve_follows_depends_in_a_tree_without_modules_dep(
    tmp_path: Path, build_ko: Callable[[str, Sequence[str]], bytes]
) -> None:
    # the 6.1 layout: the PCI transport is a module with two helper modules
    root = tmp_path / "6.1.0-50-amd64"
    drivers = root / "kernel" / "drivers"
    graph = {
        "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
        "virtio_net": ["net_failover", "virtio", "virtio_ring"],
        "net_failover": ["failover"],
        "failover": [],
        "virtio": ["virtio_ring"],
        "virtio_ring": [],
        "virtio_pci_modern_dev": [],
        "virtio_pci_legacy_dev": [],
    }
    suffixes = [".ko", ".ko.xz", ".ko.zst"]
    for i, (name, deps) in enumerate(graph.items()):
        write_module(drivers / f"{name}{suffixes[i % 3]}", build_ko(name, deps))
    write_module(drivers / "unrelated.ko", build_ko("unrelated", ["missing_elsewhere"]))
    (root / "modules.builtin").write_text("kernel/drivers/block/loop.ko\n")
    order = [module_name(p) for p in resolve(NICS[0].modules, root)]
    assert order == [
        "virtio_ring",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio",
        "virtio_pci",
        "failover",
        "net_failover",
        "virtio_net",
    ]
    assert resolve(["loop"], root) == []
    with pytest.raises(InfraError, match="module virtio_mmio for 6.1.0-50-amd64"):
        resolve(["virtio_mmio"], root)


@needs_gcc
def test_resolve_skips_builtin_transport(tmp_path: Path, build_ko: Callable[[str, Sequence[str]], bytes]) -> None:
    # the 6.16+ layout: virtio_pci is built in
    root = tmp_path / "7.3.4+deb13-amd64"
    net = root / "kernel" / "drivers" / "net"
    write_module(net / "virtio_net.ko.xz", build_ko("virtio_net", ["net_failover"]))
    write_module(net / "net_failover.ko.xz", build_ko("net_failover", ["failover"]))
    write_module(root / "kernel" / "net" / "core" / "failover.ko.xz", build_ko("failover", []))
    (root / "modules.builtin").write_text(
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_pci.ko\n"
    )
    assert [p.name for p in resolve(NICS[0].modules, root)] == [
        "failover.ko.xz",
        "net_failover.ko.xz",
        "virtio_net.ko.xz",
    ]


@needs_gcc
def test_optional_modules_load_first_when_the_kernel_has_them(
    tmp_path: Path, build_ko: Callable[[str, Sequence[str]], bytes]
) -> None:
    """ext4's crc32c provider has a different name per kernel: whichever exists is loaded, none is an error."""
    root = tmp_path / "6.1.0-50-amd64"
    write_module(root / "kernel" / "fs" / "ext4" / "ext4.ko", build_ko("ext4", ["jbd2"]))
    write_module(root / "kernel" / "fs" / "jbd2" / "jbd2.ko", build_ko("jbd2", []))
    write_module(root / "kernel" / "crypto" / "crc32c_generic.ko", build_ko("crc32c_generic", []))
    (root / "modules.builtin").write_text("")
    names = [module_name(p) for p in resolve(["ext4"], root, CRC32C_PROVIDERS)]
    assert names == ["crc32c_generic", "jbd2", "ext4"]
    (root / "kernel" / "crypto" / "crc32c_generic.ko").unlink()
    assert [module_name(p) for p in resolve(["ext4"], root, CRC32C_PROVIDERS)] == ["jbd2", "ext4"]
