"""Kernels on disk: `{path: FILE, modules: DIR}` in a matrix, a bzImage, vmlinuz or PVH vmlinux of your own.

Read when resolved (cheap, and a file that is no kernel is bad input found before any boot); a
bzImage's PVH vmlinux is extracted into the cache. A replay boots the file only while it is the
very file the run booted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
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
    bzimage_payload,
    bzimage_version,
    elf_release,
    has_pvh_note,
    is_bzimage,
    is_elf,
    parses_as_elf,
    vmlinux_from_image,
)
from harness.kernels.sources.base import Context, KernelSpec
from harness.yamlfile import KeyPath, Where


@dataclass(frozen=True)
class PathKernel:
    """A kernel image on disk (bzImage, vmlinuz or vmlinux), with an optional modules tree."""

    path: Path
    modules: Path | None = None
    origin: str = field(default="", compare=False)

    kind = "path"

    @property
    def label(self) -> str:
        return self.path.name


class PathSource:
    kind = "path"
    keys = frozenset({"path", "modules"})
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
        return PathKernel(kernel, mod_path, where.origin(path))

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
        return {}

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
            bzimage_payload(data)
        except ValueError as e:
            raise UserError(f"path {path}: a bzImage header, but not a whole kernel ({e})") from None
        found = bzimage_version(data)
        elf = vmlinux_from_image(data)
        if elf is not None:
            vmlinux = cache / "vmlinux" / f"{sha}.elf"
            leases.ensure(vmlinux, vmlinux.is_file, functools.partial(atomic_write, vmlinux, elf))
            with contextlib.suppress(OSError):
                os.utime(vmlinux)  # its last use, which `harness cache prune --older-than` reads
    else:
        raise not_kernel
    modules = spec.modules.resolve() if spec.modules else None
    release = modules.name if modules else found
    if not release:
        raise UserError(f"path {path}: kernel version not found; give 'modules: /lib/modules/<release>'")
    return Kernel(spec.label, release, path, vmlinux, modules, sha, None, None, (), f"path:{path}")
