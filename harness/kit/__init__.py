"""The guest kit: what every guest image and boot of a command shares, assembled in one place.

The probe (built by `harness.kit.probe`, with its catalogue and digest), the harness's SSH client key,
the image base (busybox, dropbear, accounts, the probe), the per-cache secret the guests' host keys
derive from, and the read-only data disk. `run`, the CLI, the benchmarks and the tests all take it from here,
and ask it for each kernel's image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from harness.cache import secret
from harness.cache.lease import Leases
from harness.kernels import devices, modules
from harness.kit import guest, image, probe, suites, userland
from harness.kit.image import Entry
from harness.kit.probe import Probe
from harness.kit.suites import Built


@dataclass(frozen=True)
class Kit:
    probe: Probe
    key: paramiko.PKey  # the harness's SSH client key; its public half is in every image
    base: tuple[Entry, ...]  # what every image holds
    secret: bytes  # the guests' host keys derive from it and the image content
    disk: Path  # the read-only ext4 data disk every guest gets
    images: Path  # where images are written (content-addressed)
    cache: Path | None = None  # where the musl userland is built, when a kernel needs it
    leases: Leases = field(default_factory=Leases, compare=False, repr=False)  # on what it makes (harness.cache.lease)
    _bases: dict[str, tuple[Entry, ...]] = field(default_factory=dict, compare=False, repr=False)

    def image(
        self,
        hardware: devices.Devices,
        base: tuple[Entry, ...] | None = None,
        programs: Mapping[str, Built | str] | None = None,
    ) -> image.Image:
        """The guest image: the base (glibc's unless given), the modules of `hardware` (the devices
        `devices.choose` found for the kernel), where its data disk is, and the guest suites'
        `programs` built for the kernel (built once, then reused)."""
        disk = (hardware.disk.guest_dev, hardware.fs.name) if hardware.disk and hardware.fs else None
        entries = (self.base if base is None else base) + suite_entries(programs or {})
        return image.build(entries, guest_modules(hardware), self.secret, self.images, disk, self.leases)

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
    return Kit(
        built,
        key,
        base,
        secret(cache, "guest-host-key"),
        image.disk_image(images, "ext4", leases),
        images,
        cache,
        leases,
    )


def guest_modules(hardware: devices.Devices) -> list[tuple[str, bytes]]:
    """The modules a guest loads (its NIC, data disk and filesystem, and what they need),
    decompressed, in load order; fewer or none when its kernel lacks them (the guest goes without)."""
    return [(modules.module_name(p), modules.decompress_module(p)) for p in hardware.modules]


def suite_entries(programs: Mapping[str, Built | str]) -> tuple[Entry, ...]:
    """The image files of each guest suite's programs: /opt/suites/SUITE/PROGRAM."""
    return tuple(
        image.file(f"{suites.GUEST_DIR}/{name}/{p}", path.read_bytes(), 0o755)
        for name, built in sorted(programs.items())
        if isinstance(built, Built)
        for p, path in sorted(built.programs.items())
    )
