"""The guest kit: what every guest image and boot of a command shares, assembled in one place.

The probe (built by `harness.probe`, with its catalogue and digest), the harness's SSH client key,
the image base (busybox, dropbear, accounts, the probe), the per-cache secret the guests' host keys
derive from, and the read-only data disk. `run`, the CLI, the benchmarks and the tests all take it from here,
and ask it for each kernel's image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from harness import devices, guest, image, modules, probe, userland
from harness.cache import secret
from harness.image import Entry
from harness.kernels import Kernel
from harness.lease import Leases
from harness.probe import Probe


@dataclass(frozen=True)
class Kit:
    probe: Probe
    key: paramiko.PKey  # the harness's SSH client key; its public half is in every image
    base: tuple[Entry, ...]  # what every image holds
    secret: bytes  # the guests' host keys derive from it and the image content
    disk: Path  # the read-only ext4 data disk every guest gets
    images: Path  # where images are written (content-addressed)
    cache: Path | None = None  # where the musl userland is built, when a kernel needs it
    leases: Leases = field(default_factory=Leases, compare=False, repr=False)  # on what it makes (harness.lease)
    _bases: dict[str, tuple[Entry, ...]] = field(default_factory=dict, compare=False, repr=False)

    def image(self, kernel: Kernel, base: tuple[Entry, ...] | None = None) -> image.Image:
        """The guest image for `kernel`: the base (glibc's unless given), the modules of the devices
        its guest gets, and where its data disk is (built once, then reused)."""
        hardware = devices.choose(kernel)
        files = [(modules.module_name(p), modules.decompress_module(p)) for p in hardware.modules]
        disk = (hardware.disk.guest_dev, hardware.fs.name) if hardware.disk and hardware.fs else None
        return image.build(self.base if base is None else base, files, self.secret, self.images, disk, self.leases)

    def disk_for(self, hardware: devices.Devices) -> Path | None:
        """The data disk a guest with `hardware` gets: the ext4 disk, the same file on ext2 for a
        kernel without ext4, or none when the kernel cannot read a disk."""
        if hardware.disk is None or hardware.fs is None:
            return None
        if hardware.fs.name == "ext4":
            return self.disk
        return image.disk_image(self.images, hardware.fs.name, self.leases)

    def base_of(self, name: str, mirror: Callable[[], str], log: Callable[[str], None]) -> tuple[Entry, ...]:
        """The image base with userland `name` (glibc or musl: built the first time it is asked for)."""
        if name == userland.GLIBC:
            return self.base
        if name not in self._bases:
            assert self.cache is not None, "a kit without a cache has only the glibc userland"
            built = userland.musl(self.cache, mirror, log, self.leases)
            self._bases[name] = tuple(built.entries(guest.public_line(self.key)))
        return self._bases[name]


def assemble(cache: Path, built: Probe | None = None, leases: Leases | None = None) -> Kit:
    """The kit of this cache: the probe built (unless given), keys made once, the disk made once;
    what it makes of the cache leased by `leases` (the run's), else by its own."""
    built = built or probe.build()
    leases = leases or Leases()
    key = guest.client_key(cache)
    base = tuple(image.base_entries(built.path, guest.public_line(key)))
    images = cache / "images"
    return Kit(built, key, base, secret(cache, "guest-host-key"), image.disk_image(images, "ext4", leases), images,
               cache, leases)  # fmt: skip


def guest_modules(kernel: Kernel) -> list[tuple[str, bytes]]:
    """The modules a kernel's guest loads (its NIC, data disk and filesystem, and what they need),
    decompressed, in load order; fewer or none when the kernel lacks them (the guest goes without)."""
    return [(modules.module_name(p), modules.decompress_module(p)) for p in devices.choose(kernel).modules]
