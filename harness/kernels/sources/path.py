"""Kernels on disk: `{path: FILE, modules: DIR, config: FILE}` in a matrix, a bzImage, vmlinuz or
PVH vmlinux of your own.

Read when resolved (cheap, and a file that is no kernel is bad input found before any boot); a
bzImage's PVH vmlinux is extracted into the cache. Its .config says which drivers it has built in,
and so which NIC, disk and filesystem its guest gets (harness.kernels.devices): given, or found
beside the image or in it. A boot of it is named by its release. A replay boots the file only
while it is the very file the run booted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import manifest
from harness.cache.lease import UNLEASED, Leases
from harness.errors import UserError
from harness.files import atomic_write
from harness.kernels import Kernel
from harness.kernels.bzimage import (
    bzimage_version,
    check_bzimage,
    elf_release,
    embedded_config,
    has_pvh_note,
    is_bzimage,
    is_elf,
    kernel_elf,
    parses_as_elf,
    vmlinux_from_image,
)
from harness.kernels.sources.base import Context, KernelSpec
from harness.yamlfile import KeyPath, Where


@dataclass(frozen=True)
class PathKernel:
    """A kernel image on disk (bzImage, vmlinuz or vmlinux), with an optional modules tree and .config."""

    path: Path
    modules: Path | None = None
    config: Path | None = None
    origin: str = field(default="", compare=False)

    kind = "path"

    @property
    def label(self) -> str:
        """Its release as the bzImage's header says it ("3.16.0"), else the file's name: two trees'
        arch/x86/boot/bzImage are two kernels, not bzImage and bzImage.2."""
        return _header_release(self.path) or self.path.name


@functools.cache
def _header_release(path: Path) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(64 << 10)  # the version string is in the setup sectors, 32 KiB at most
    except OSError:
        return ""
    release = bzimage_version(head) or ""
    return release if re.fullmatch(r"[\w.+~-]{1,64}", release) else ""


class PathSource:
    kind = "path"
    keys = frozenset({"path", "modules", "config"})
    syntax = "{path: FILE}"
    local = True

    def parse(self, item: dict[str, Any], where: Where, path: KeyPath) -> PathKernel:
        file = item.get("path")
        if not isinstance(file, str) or not file:
            raise where.error((*path, "path"), "give the file name of a bzImage, vmlinuz or vmlinux")
        kernel = where.base_dir / Path(file).expanduser()
        if not kernel.is_file():
            raise where.error((*path, "path"), f"{kernel} is not a file; give an existing kernel image")
        modules = item.get("modules")
        mod_path = None
        if modules is not None:
            if not isinstance(modules, str):
                raise where.error((*path, "modules"), "give a directory such as /lib/modules/6.1.0-50-amd64")
            mod_path = where.base_dir / Path(modules).expanduser()
            if not mod_path.is_dir():
                raise where.error((*path, "modules"), f"{mod_path} is not a directory")
        config = where.optional_file(item.get("config"), (*path, "config"), "the kernel's .config")
        return PathKernel(kernel, mod_path, config, where.origin(path))

    def expand(self, spec: PathKernel, ctx: Context) -> Sequence[KernelSpec]:
        return [spec]

    def resolve(self, spec: PathKernel, ctx: Context) -> Kernel:
        return from_path(spec, ctx.cache, ctx.leases)

    def describe(self, resolved: Kernel) -> list[str]:
        return ["path", str(resolved.image), resolved.release, resolved.sha256[:16]]

    def cached(self, resolved: Kernel, ctx: Context) -> Path | None:
        return None  # the user's own file (its vmlinux/ copy is kept by age only)

    def fetch(self, resolved: Kernel, ctx: Context) -> Kernel:
        return resolved  # read when resolved

    def record(self, kernel: Kernel) -> dict[str, Any]:
        return {"config": {"file": str(kernel.config or ""), "from": kernel.config_from}}

    def pin(self, spec: PathKernel, entry: manifest.Kernel, ctx: Context) -> Kernel:
        assert entry.booted is not None
        kernel = from_path(spec, ctx.cache, ctx.leases)
        if kernel.sha256 != entry.booted.sha256:
            raise UserError(
                f"{spec.path}: changed since the run (sha256 {kernel.sha256[:12]}, the run booted "
                f"{entry.booted.sha256[:12]}); put the original file back to replay it"
            )
        return kernel


SOURCE = PathSource()


def from_path(spec: PathKernel, cache: Path, leases: Leases = UNLEASED) -> Kernel:
    """A kernel file given by path: bzImage/vmlinuz, or an ELF vmlinux (bootable only with a PVH note).
    A bzImage's vmlinux is kept in the cache, leased (harness.cache.lease)."""
    path = spec.path.resolve()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"path {path}: cannot read ({e.strerror}); give an existing kernel image") from None
    not_kernel = UserError(f"path {path}: not a Linux kernel image (no bzImage header or ELF)")
    sha = hashlib.sha256(data).hexdigest()
    vmlinux: Path | None = None
    if is_elf(data):
        found = elf_release(data) if parses_as_elf(data) else None
        if found is None and not has_pvh_note(data):
            raise not_kernel
        if not has_pvh_note(data):
            # QEMU loads an ELF kernel only through its PVH entry point
            raise UserError(f"path {path}: ELF kernel without a PVH entry note (CONFIG_PVH); give its bzImage")
        vmlinux = path
    elif is_bzimage(data):
        try:
            check_bzimage(data)
        except ValueError as e:
            raise UserError(f"path {path}: a bzImage header, but not a whole kernel ({e})") from None
        found = bzimage_version(data)
        elf = vmlinux_from_image(data)
        if elf is not None:
            vmlinux = _kept(cache / "vmlinux" / f"{sha}.elf", elf, leases)
    else:
        raise not_kernel
    modules = spec.modules.resolve() if spec.modules else None
    release = modules.name if modules else found
    if not release:
        raise UserError(f"path {path}: kernel version not found; give 'modules: /lib/modules/<release>'")
    config, config_from = _config(spec, path, release, data, cache / "vmlinux" / f"{sha}.config", leases)
    return Kernel(spec.label, release, path, vmlinux, modules, sha, None, None, (), f"path:{path}", config, config_from)


def _kept(file: Path, data: bytes | str, leases: Leases) -> Path:
    """`data` kept in the cache as `file`, made once however many runs ask, its use recorded."""
    leases.ensure(file, file.is_file, functools.partial(atomic_write, file, data))
    with contextlib.suppress(OSError):
        os.utime(file)  # its last use, which `harness cache prune --older-than` reads
    return file


def _config(
    spec: PathKernel, image: Path, release: str, data: bytes, kept: Path, leases: Leases
) -> tuple[Path | None, str]:
    """The kernel's .config and where it was found: given (`config:`), beside the image (`config`,
    `.config`, `config-RELEASE`; the tree's .config for arch/x86/boot/bzImage) when it is for this
    release, or the image's own (CONFIG_IKCONFIG), taken out once into `kept`. (None, why) when there
    is none."""
    if spec.config is not None:
        return spec.config.resolve(), "given"
    beside = [image.parent / name for name in ("config", ".config", f"config-{release}")]
    if image.parent.parts[-3:] in (("arch", "x86", "boot"), ("arch", "x86_64", "boot")):
        beside.append(image.parents[3] / ".config")
    others = []
    for candidate in beside:
        if candidate.is_file():
            made_for = _config_version(candidate)
            if made_for is None or release.startswith(made_for):
                return candidate, "beside the image"
            others.append(f"{candidate} is {made_for}'s")
    if kept.is_file():
        return _kept(kept, "", leases), "in the image"  # taken out of this very image before
    kernel = kernel_elf(data) if is_bzimage(data) else data
    text = embedded_config(kernel) if kernel else None
    if text is not None:
        return _kept(kept, text, leases), "in the image"
    looked = "; ".join(others) or "none beside the image"
    return None, f"{looked} and no CONFIG_IKCONFIG in it; give config: FILE"


_CONFIG_VERSION = re.compile(rb"^# Linux(?:/\S+)? (?:kernel version: )?(\d+\.\d+[^\s]*)", re.M)


def _config_version(config: Path) -> str | None:
    """The release a .config was made for, as its header says ("# Linux/x86 3.16.0 Kernel
    Configuration"; before 2.6.23 "# Linux kernel version: 2.6.20"); None when it does not say."""
    try:
        with config.open("rb") as f:
            found = _CONFIG_VERSION.search(f.read(4096))
    except OSError:
        return None
    return found.group(1).decode("ascii", "replace") if found else None
