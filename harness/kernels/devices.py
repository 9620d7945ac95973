"""The guest's emulated hardware, chosen per kernel from what the kernel can drive.

A guest gets a NIC, a disk controller and a filesystem on its data disk, each the first of its
alternatives the kernel has (built in, or as modules the guest can load): virtio where the kernel
has it (every Debian kernel since 2.6.25 has it as modules), else hardware QEMU emulates and old
kernels drive (an e1000 NIC, the PIIX IDE controller through libata, ext2). Without a NIC driver
the serial transport is the way in; without a disk driver or a filesystem the guest has no data
disk and the cases that need it are not applicable. Pure except for reading the kernel's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError
from harness.kernels import Kernel, modules


@dataclass(frozen=True)
class Choice:
    """One way to provide a device: what QEMU is told, and what the kernel needs to drive it."""

    name: str  # QEMU's device model (NIC), drive interface (disk) or the filesystem's type
    driver: str  # what the kernel calls its driver, for messages
    modules: tuple[str, ...]  # loaded in this order (each brings its depends=)
    options: tuple[str, ...]  # the same, built in: Kconfig options that must be =y
    guest_dev: str = ""  # disks: the device node the guest finds it at


NICS = (
    # The PCI transport is loaded explicitly (no udev in the guest); depends= pulls in virtio,
    # virtio_ring, virtio_pci_*_dev, failover, net_failover as each kernel needs (PROTOTYPE pitfall 2).
    Choice("virtio-net-pci", "virtio-net", ("virtio_pci", "virtio_net"), ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_NET")),
    Choice("e1000", "e1000", ("e1000",), ("CONFIG_E1000",)),
)
DISKS = (
    Choice("virtio", "virtio-blk", ("virtio_blk",), ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_BLK"), "vda"),
    # `-machine pc`'s own PIIX3 IDE controller, through libata (2.6.19 on); sd_mod makes it a disk.
    Choice("ide", "ata_piix", ("ata_piix", "sd_mod"), ("CONFIG_ATA_PIIX", "CONFIG_BLK_DEV_SD"), "sda"),
)
FILESYSTEMS = (
    # ext4's depends= brings jbd2, mbcache, crc16; it reads the ext4 disk without journal or csum.
    Choice("ext4", "ext4", ("ext4",), ("CONFIG_EXT4_FS",)),
    # Every kernel since 0.99 reads ext2: the disk for kernels without ext4 (before 2.6.28).
    Choice("ext2", "ext2", ("ext2",), ("CONFIG_EXT2_FS",)),
)


# Every module a guest could load, whichever alternatives a kernel drives: what a kernel unpacked
# into the cache keeps (with what these depend on) of its thousands.
MODULE_ROOTS = (
    *dict.fromkeys(m for group in (NICS, DISKS, FILESYSTEMS) for c in group for m in c.modules),
    *modules.OPTIONAL_MODULES,
)


@dataclass(frozen=True)
class Devices:
    """What one kernel's guest gets; None where the kernel has no driver for any alternative."""

    nic: Choice | None
    disk: Choice | None
    fs: Choice | None
    modules: tuple[Path, ...] = ()  # files the guest loads, in load order (none when all are built in)

    def describe(self) -> dict[str, str]:
        """For the manifest: the device each part of the guest is, "" where it has none."""
        disk = self.disk is not None and self.fs is not None
        return {
            "nic": self.nic.name if self.nic else "",
            "disk": self.disk.name if disk and self.disk else "",
            "fs": self.fs.name if disk and self.fs else "",
        }

    def summary(self) -> str:
        """What the guest gets, for the run's log: "NIC e1000, data disk on ide (ext2)"."""
        got = self.describe()
        nic = f"NIC {got['nic']}" if got["nic"] else "no NIC driver (over serial)"
        disk = f"data disk on {got['disk']} ({got['fs']})" if got["disk"] else "no data disk (no driver for one)"
        return f"{nic}, {disk}"


VIRTIO = Devices(NICS[0], DISKS[0], FILESYSTEMS[0])  # what a guest had before there was a choice


def choose(kernel: Kernel) -> Devices:
    """The first NIC, disk and filesystem of their alternatives that `kernel` can drive."""
    groups = (NICS, DISKS, FILESYSTEMS)
    modules_dir = kernel.modules_dir
    if modules_dir is None:
        # A self-built kernel without modules has its drivers built in, or not at all: its .config
        # tells, when known.
        config = _config_lines(kernel.config)
        nic, disk, fs = (next((c for c in g if all(f"{o}=y" in config for o in c.options)), None) for g in groups)
        return Devices(nic, disk, fs)
    nic, disk, fs = (next((c for c in g if _drivable(c, modules_dir)), None) for g in groups)
    wanted = [*(nic.modules if nic else ()), *(disk.modules + fs.modules if disk and fs else ())]
    return Devices(nic, disk, fs, tuple(modules.resolve(wanted, modules_dir, modules.OPTIONAL_MODULES)))


def _drivable(choice: Choice, modules_dir: Path) -> bool:
    try:
        modules.resolve(choice.modules, modules_dir)
    except InfraError:
        return False
    return True


def _config_lines(config: Path | None) -> set[str]:
    if config is None:
        return set()
    try:
        return set(config.read_text(errors="replace").splitlines())
    except OSError:
        return set()
