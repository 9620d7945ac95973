"""Kernels ready to boot, and the cache of kernels unpacked from Debian packages.

A kernel is the image file QEMU is given (and the PVH `vmlinux` pulled out of it, when it has the
entry note) with its modules tree and what identifies it. Where it comes from is its source kind's
business (`harness.kernels.sources`); the .debs a Debian kernel is made of are unpacked here, once, into a
content-addressed folder of the cache that a killed run never leaves half-written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zstandard
from debian.debian_support import Version

from harness import versions
from harness.cache.lease import UNLEASED, Leases
from harness.debian import changelog, debfile
from harness.debian.archive import Deb, cached_deb
from harness.errors import InfraError
from harness.files import atomic_write
from harness.kernels import modules
from harness.kernels.bzimage import vmlinux_from_image
from harness.results import KernelInfo

META_FILE = "kernel.json"
META_FORMAT = 1


@dataclass(frozen=True)
class Kernel:
    """A kernel ready to boot."""

    label: str
    release: str  # uname -r (the ABI / modules dir name)
    image: Path  # the bzImage/vmlinuz file
    vmlinux: Path | None  # ELF with a PVH entry note, extracted from `image`; None if it has none
    modules_dir: Path | None  # lib/modules/<release>: kernel/..., modules.builtin
    sha256: str  # of `image`
    package: str | None
    version: str | None
    debs: tuple[Deb, ...]
    source: str  # "debian:bookworm" or "path:/abs/file"
    config: Path | None = None  # the kernel's .config, when known (built from git; given, or found, by path)
    config_from: str = ""  # where `config` came from ("beside the image"), or why there is none

    def info(self) -> KernelInfo:
        return KernelInfo(
            label=self.label,
            release=self.release,
            package=self.package,
            version=self.version,
            sha256=self.sha256,
            source=self.source,
        )


# --- Debian packages unpacked into the cache ---------------------------------------------------

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_MODULE_FILES = ("modules.builtin", "modules.order", "modules.builtin.modinfo")


def kernel_key(debs: Sequence[Deb]) -> str:
    return hashlib.sha256("\n".join(sorted(d.key for d in debs)).encode()).hexdigest()


@dataclass(frozen=True)
class Packaged:
    """A kernel as a package index describes it: the .debs that hold it and what to call it."""

    label: str
    abi: str  # the release: lib/modules/<abi>, boot/vmlinuz-<abi>
    package: str | None  # the concrete linux-image-<abi> package
    version: str
    debs: tuple[Deb, ...]
    source: str  # the spec as given, e.g. "debian:bookworm"


def unpacked(
    kernel: Packaged,
    cache: Path,
    download: Callable[[Deb], Path],
    keep_modules: Sequence[str],
    leases: Leases = UNLEASED,
) -> Kernel:
    """The kernel unpacked in the cache: downloaded (by `download`) and unpacked once, then only read.

    Of its modules the folder keeps `keep_modules` and what they depend on, and the .debs are deleted
    once unpacked: a guest needs a few MB of the 300-500 MB (issue 15: every Debian build in 10 GB).
    kernel.json keeps each .deb's name and digest (so does every run's manifest), so a replay or a
    harness that wants another module fetches them again. A folder unpacked whole (before this) is
    slimmed the first time it is used. The folder is leased (harness.cache.lease) before it is looked at,
    and unpacked or slimmed by one run at a time.
    """
    folder = cache / "kernels" / kernel_key(kernel.debs)

    def make() -> None:
        meta, todo = _todo(folder, keep_modules)
        if todo == _UNPACK:
            _unpack(kernel, [download(d) for d in kernel.debs], folder, keep_modules)
        elif todo == _SLIM:
            assert meta is not None
            _slim(folder, meta, keep_modules)

    leases.ensure(folder, lambda: not _todo(folder, keep_modules)[1], make)
    for deb in kernel.debs:
        leases.discard(cached_deb(cache, deb))  # unless another run is fetching it right now
    with contextlib.suppress(OSError):
        os.utime(folder)  # its last use, which `harness cache prune --older-than` reads
    found = load(folder)
    # The same packages can be reached from several specs: report the one asked for now.
    return Kernel(
        kernel.label,
        found.release,
        found.image,
        found.vmlinux,
        found.modules_dir,
        found.sha256,
        kernel.package or found.package,
        kernel.version,
        kernel.debs,
        kernel.source,
    )


_UNPACK, _SLIM = "unpack", "slim"


def _todo(folder: Path, keep_modules: Sequence[str]) -> tuple[dict[str, Any] | None, str]:
    """The folder's metadata, and what it needs: unpacking (missing, or without a module now wanted),
    slimming (unpacked whole, or its vmlinux without holes), or nothing ("")."""
    meta = _meta(folder)
    kept = meta.get(_KEPT) if meta is not None else None
    if meta is None or not load(folder).image.is_file() or (kept is not None and not set(keep_modules) <= set(kept)):
        return meta, _UNPACK
    if _CHANGELOG not in meta:
        return meta, _UNPACK
    if kept is None or (meta.get("vmlinux") and not meta.get(_SPARSE)):
        return meta, _SLIM
    return meta, ""


# In kernel.json: the module names its folder keeps (with their depends), absent when it keeps all;
# whether its vmlinux was written with holes; its changelog file, null when the package had none
# (absent: unpacked before changelogs were kept, so it is unpacked again).
_KEPT, _SPARSE, _CHANGELOG = "modules_kept", "vmlinux_sparse", "changelog"


def _meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _slim(folder: Path, meta: dict[str, Any], keep_modules: Sequence[str]) -> None:
    if meta.get("modules_dir"):
        modules.slim(folder / meta["modules_dir"], keep_modules)
    vmlinux = folder / str(meta.get("vmlinux") or "")
    if meta.get("vmlinux") and vmlinux.is_file():
        stage = folder / ".vmlinux.sparse"
        write_sparse(stage, vmlinux.read_bytes())
        os.replace(stage, vmlinux)
    atomic_write(folder / META_FILE, json.dumps({**meta, _KEPT: sorted(keep_modules), _SPARSE: True}, indent=2) + "\n")


def _unpack(kernel: Packaged, debs: Sequence[Path], folder: Path, keep_modules: Sequence[str]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        # A tree without its metadata file is not ours to trust; one that lacks a module a newer
        # harness wants is unpacked again (a run of an older harness using it now would lose its
        # boots: rare).
        shutil.rmtree(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name[:16]}-"))
    try:
        abi = kernel.abi
        for deb, path in zip(kernel.debs, debs, strict=True):
            extract_deb(path, abi, tmp, f"{deb.package} {deb.version}")
        image = tmp / "vmlinuz"
        if not image.is_file():
            names = ", ".join(d.package for d in kernel.debs)
            raise InfraError(f"no vmlinuz for {abi} in {names}; the package layout is not one the harness knows")
        data = image.read_bytes()
        vmlinux = vmlinux_from_image(data)
        if vmlinux is not None:
            write_sparse(tmp / "vmlinux", vmlinux)
        kept_changelog = _keep_changelog(tmp, kernel.version)
        modules_dir = tmp / "modules" / abi
        if modules_dir.is_dir():
            modules.slim(modules_dir, keep_modules)
        meta = {
            "format": META_FORMAT,
            "label": kernel.label,
            "release": abi,
            "image": "vmlinuz",
            "vmlinux": "vmlinux" if vmlinux is not None else None,
            "modules_dir": f"modules/{abi}" if modules_dir.is_dir() else None,
            "sha256": hashlib.sha256(data).hexdigest(),
            "package": kernel.package or None,
            "version": kernel.version,
            "debs": [asdict(d) for d in kernel.debs],
            "source": kernel.source,
            _CHANGELOG: kept_changelog,
            _KEPT: sorted(keep_modules),
            _SPARSE: True,
        }
        # Written last, then the whole tree appears at once: a killed run leaves only a .tmp dir behind.
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / META_FILE).is_file():
                raise
            shutil.rmtree(tmp)  # a harness that takes no making lock (an older one) unpacked it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_BLOCK = 4096
_ZEROS = bytes(_BLOCK)


def write_sparse(path: Path, data: bytes) -> None:
    """`data` with its zero blocks left as holes: a PVH vmlinux is a quarter zeros (the padding that
    aligns its segments), which read back as zeros and take no disk."""
    view = memoryview(data)
    with open(path, "wb") as f:
        for start in range(0, len(data), _BLOCK):
            block = view[start : start + _BLOCK]
            if block == _ZEROS[: len(block)]:
                f.seek(len(block), os.SEEK_CUR)
            else:
                f.write(block)
        f.truncate(len(data))


# The image package's changelog.Debian.gz, else its changelog.gz (then Debian's own, as the kernel's is).
_RAW_CHANGELOGS, CHANGELOG_FILE = (".changelog.Debian.gz", ".changelog.gz"), "changelog.json.gz"
_CHANGELOG_LIMIT = 16 << 20  # a bookworm build's is 1.3 MB


def _changelog_name(name: str, abi: str) -> str:
    """Where the image package's own changelog (linux-image-<abi>[-unsigned]) is kept while
    unpacking; "" for any other file."""
    parts = name.split("/")
    own = len(parts) == 5 and parts[:3] == ["usr", "share", "doc"]
    if not own or parts[3] not in (f"linux-image-{abi}", f"linux-image-{abi}-unsigned"):
        return ""
    return {"changelog.Debian.gz": _RAW_CHANGELOGS[0], "changelog.gz": _RAW_CHANGELOGS[1]}.get(parts[4], "")


def _keep_changelog(folder: Path, version: str) -> str | None:
    """The changelog's entries of the build's own upstream line, parsed once into the cache (what a
    change between two builds of the line is explained from); None when the package has none or it
    does not parse: the kernel boots all the same."""
    found = [folder / name for name in _RAW_CHANGELOGS if (folder / name).is_file()]
    if not found:
        return None
    raw = found[0]
    try:
        line = ".".join(map(str, versions.upstream(KernelInfo("", "", None, version, "", ""))[:2]))
        kept = changelog.entries(changelog.read(raw.read_bytes()), line)
        (folder / CHANGELOG_FILE).write_bytes(changelog.dump(kept))
        return CHANGELOG_FILE
    except changelog.Malformed:
        return None
    finally:
        for path in found:
            path.unlink()


def changelog_of(kernel: Kernel) -> list[changelog.Entry] | None:
    """The changelog entries kept with a cached kernel of Debian's; None when none were kept."""
    path = kernel.image.parent / CHANGELOG_FILE
    try:
        return changelog.load(path.read_bytes()) if path.is_file() else None
    except (OSError, changelog.Malformed):
        return None


def extract_deb(deb: Path, abi: str, dest: Path, what: str) -> None:
    """Copy the kernel image to dest/vmlinuz and the modules tree to dest/modules/<abi>/ from one .deb.
    The tar is streamed: a modules package is ~100 MB compressed and several times that unpacked."""
    image_names = {f"boot/vmlinuz-{abi}", f"usr/lib/modules/{abi}/vmlinuz", f"lib/modules/{abi}/vmlinuz"}
    module_roots = (f"lib/modules/{abi}/", f"usr/lib/modules/{abi}/")
    try:
        with debfile.data_tar(deb) as tar:
            for member in tar:
                name = os.path.normpath(member.name)
                if not member.isfile() or name.startswith("..") or os.path.isabs(name):
                    continue  # links and odd paths: the cache holds plain files inside its own tree only
                if name in image_names:
                    target = dest / "vmlinuz"
                elif _changelog_name(name, abi):
                    if member.size > _CHANGELOG_LIMIT:
                        continue  # not a changelog the harness reads; the kernel is still good
                    target = dest / _changelog_name(name, abi)
                else:
                    root = next((r for r in module_roots if name.startswith(r)), None)
                    if root is None:
                        continue
                    rel = name[len(root) :]
                    if not (rel.endswith(_MODULE_SUFFIXES) or rel in _MODULE_FILES):
                        continue
                    target = dest / "modules" / abi / rel
                source = tar.extractfile(member)
                if source is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (
        tarfile.TarError,
        lzma.LZMAError,
        zlib.error,
        zstandard.ZstdError,
        EOFError,
        OSError,
        ValueError,
    ) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise InfraError(f"no space left unpacking {what} into {dest}") from None
        raise InfraError(f"cannot unpack {what} ({deb}): {e}") from None


def load(folder: Path) -> Kernel:
    try:
        meta = json.loads((folder / META_FILE).read_text())
        return Kernel(
            meta["label"],
            meta["release"],
            folder / meta["image"],
            folder / meta["vmlinux"] if meta["vmlinux"] else None,
            folder / meta["modules_dir"] if meta["modules_dir"] else None,
            meta["sha256"],
            meta["package"],
            meta["version"],
            tuple(Deb(**d) for d in meta["debs"]),
            meta["source"],
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InfraError(f"{folder / META_FILE}: unreadable kernel metadata ({e}); delete {folder}") from None


def list_cached(cache: Path) -> list[Kernel]:
    """Kernels unpacked in the cache, for `harness kernels list`."""
    root = cache / "kernels"
    if not root.is_dir():
        return []
    kernels = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not (folder / META_FILE).is_file():
            continue
        with contextlib.suppress(InfraError):
            kernels.append(load(folder))
    return sorted(kernels, key=lambda k: (k.label, Version(k.version or "0"), k.release))
