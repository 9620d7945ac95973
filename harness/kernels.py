"""Kernel acquisition: resolve a `debian:` spec against a mirror, download and verify its packages, unpack
the kernel image and modules into a content-addressed cache, and extract a PVH-bootable vmlinux.

Layers, from pure to effectful:
- `resolve_in` picks packages from parsed Packages stanzas (pure);
- `harness.bzimage` turns image bytes into vmlinux bytes (pure);
- `harness.archive.Archive` is the only place that talks to the network (and to gpgv);
- `fetch`, `from_path` and `list_cached` read and write the cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard
from debian.deb822 import PkgRelation
from debian.debfile import DebFile
from debian.debian_support import Version

from harness.archive import Archive, Deb
from harness.bzimage import (
    bzimage_payload,
    bzimage_version,
    elf_release,
    has_pvh_note,
    is_bzimage,
    is_elf,
    parses_as_elf,
    vmlinux_from_image,
)
from harness.cache import atomic_write
from harness.errors import InfraError, UserError
from harness.matrix import DebianKernel, PathKernel
from harness.results import KernelInfo

META_FILE = "kernel.json"
META_FORMAT = 1

Stanza = Mapping[str, str]


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A `debian:` spec resolved against the mirror; nothing downloaded yet."""

    spec: DebianKernel
    suite: str
    abi: str  # e.g. "6.1.0-50-amd64", "7.3.4+deb13-amd64"
    version: str  # Debian version of the concrete package
    debs: tuple[Deb, ...]  # what holds the image and the modules (and modules.builtin)
    package: str = ""  # the concrete linux-image-<abi> package the spec led to


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

    def info(self) -> KernelInfo:
        return KernelInfo(self.label, self.release, self.package, self.version, self.sha256, self.source)


# --- resolution (pure) -------------------------------------------------------------------------

# A concrete image package: linux-image-<abi>, where an ABI starts with the upstream version.
_IMAGE = re.compile(r"^linux-image-(?P<abi>\d[a-z0-9.+~-]*?)(?P<unsigned>-unsigned)?$")


def debian_source(spec: DebianKernel) -> str:
    text = "debian:" + "+".join(spec.suites)
    if spec.package != "linux-image-amd64":
        text += f"/{spec.package}"
    if spec.abi:
        text += f"@{spec.abi}"
    if spec.version:
        text += f"@{spec.version}.*"
    return text


def resolve(spec: DebianKernel, archive: Archive) -> Resolved:
    """Resolve against the mirror: reads the suites' indexes (downloading them if needed)."""
    # Kernel packages all start with "linux-"; parsing only those is 100x faster than a whole index.
    prefix = "linux-" if spec.package.startswith("linux-") else ""
    return resolve_in(spec, {suite: archive.packages(suite, prefix) for suite in spec.suites})


def resolve_in(spec: DebianKernel, indexes: Mapping[str, Sequence[Stanza]]) -> Resolved:
    """Pick the newest matching kernel across `spec.suites` and the packages that hold it."""
    by_suite: dict[str, dict[str, list[Stanza]]] = {}
    for suite in spec.suites:
        if suite not in indexes:
            raise UserError(f"suite {suite!r} is not on the mirror; use a Debian suite such as bookworm")
        by_suite[suite] = _by_name(indexes[suite])

    if spec.abi:
        wanted = [f"linux-image-{spec.abi}", f"linux-image-{spec.abi}-unsigned"]
    elif spec.version:
        flavour = spec.package.removeprefix("linux-image-")
        wanted = sorted({name for index in by_suite.values() for name in index
                         if _abi_in_line(name, spec.version, flavour)})  # fmt: skip
    else:
        if spec.package.endswith("-dbg"):
            raise UserError(f"package {spec.package}: a debug-symbols package cannot boot; drop '-dbg'")
        wanted = [spec.package]

    candidates: list[tuple[Version, str, Stanza]] = []
    for suite in spec.suites:
        for name in wanted:
            stanza = _newest(by_suite[suite].get(name, []))
            if stanza is not None:
                candidates.append((Version(stanza["Version"]), suite, stanza))
                if spec.abi:
                    break  # the signed linux-image-<abi> wins over -unsigned in the same suite
    if not candidates:
        what = (f"ABI {spec.abi}" if spec.abi else f"version {spec.version}" if spec.version
                else f"package {spec.package}")  # fmt: skip
        raise UserError(
            f"{what} is not in {'/'.join(spec.suites)}; available ABIs: "
            f"{', '.join(available_abis(by_suite)) or 'none'}"
        )
    # Newest first; a backports index keeps old kernels' image packages after their modules are
    # gone, so a line's newest kernel that cannot be assembled gives way to an older one.
    candidates.sort(key=lambda c: c[0], reverse=True)
    first_error: InfraError | None = None
    for _, suite, start in candidates:
        index = by_suite[suite]
        try:
            image = _concrete_image(start, index, spec)
            abi = _abi_of(image["Package"])
            debs = _payload(image, abi, index, suite)
        except InfraError as e:
            first_error = first_error or e
            continue
        return Resolved(spec, suite, abi, image["Version"], debs, image["Package"])
    assert first_error is not None
    raise first_error


def available_abis(by_suite: Mapping[str, Mapping[str, Sequence[Stanza]]], limit: int = 6) -> list[str]:
    """The newest concrete kernel ABIs across the suites, newest first, for error messages."""
    found: dict[str, Version] = {}
    for index in by_suite.values():
        for name, stanzas in index.items():
            m = _IMAGE.match(name)
            if not m or m["abi"].endswith("-dbg"):
                continue
            newest = _newest(stanzas)
            if newest is not None:
                v = Version(newest["Version"])
                if m["abi"] not in found or v > found[m["abi"]]:
                    found[m["abi"]] = v
    ordered = sorted(found, key=lambda abi: (found[abi], abi), reverse=True)
    return ordered[:limit]


def _by_name(stanzas: Sequence[Stanza]) -> dict[str, list[Stanza]]:
    index: dict[str, list[Stanza]] = {}
    for s in stanzas:
        if "Package" in s and "Version" in s:
            index.setdefault(s["Package"], []).append(s)
    return index


def _newest(stanzas: Sequence[Stanza], exact: str | None = None) -> Stanza | None:
    if exact is not None:
        stanzas = [s for s in stanzas if s["Version"] == exact]
    best: Stanza | None = None
    for s in stanzas:
        if best is None or Version(s["Version"]) > Version(best["Version"]):
            best = s
    return best


def _depends(stanza: Stanza) -> list[tuple[str, str | None]]:
    """(name, exact version or None) for every alternative of Depends, in order."""
    out: list[tuple[str, str | None]] = []
    for group in PkgRelation.parse_relations(stanza.get("Depends", "")):
        for rel in group:
            version = rel.get("version")
            exact = version[1] if version and version[0] == "=" else None
            out.append((rel["name"], exact))
    return out


def _abi_of(name: str) -> str:
    m = _IMAGE.match(name)
    assert m is not None  # callers only pass names that matched
    return m["abi"]


_ABI_TAIL = re.compile(r"^(?:\.\d+)*(?:\+deb\d+(?:\.\d+)?)?(?:-\d+)?-(?P<flavour>[a-z0-9-]+?)$")


def _abi_in_line(package: str, line: str, flavour: str) -> bool:
    """linux-image-6.19.14+deb13-amd64 is in line "6.19" for flavour "amd64" (not cloud-amd64, not 6.1)."""
    m = _IMAGE.match(package)
    if not m or m["unsigned"] or not m["abi"].startswith(line):
        return False
    tail = _ABI_TAIL.match(m["abi"][len(line):])
    return tail is not None and tail["flavour"] == flavour


def _concrete_image(start: Stanza, index: Mapping[str, Sequence[Stanza]], spec: DebianKernel) -> Stanza:
    """Follow meta packages (linux-image-amd64 -> linux-image-<abi>) to the concrete image package."""
    stanza = start
    for _ in range(4):  # metas nest at most once or twice; bound it against odd indexes
        m = _IMAGE.match(stanza["Package"])
        if m and not m["abi"].endswith("-dbg"):
            return stanza
        step = None
        for name, exact in _depends(stanza):
            target = _IMAGE.match(name)
            if target and not target["abi"].endswith("-dbg"):
                step = _newest(index.get(name, []), exact) or _newest(index.get(name, []))
            elif name.startswith("linux-image-") and index.get(name):
                step = _newest(index[name], exact)  # a flavour meta pointing at another meta
            if step is not None:
                break
        if step is None:
            break
        stanza = step
    raise UserError(
        f"package {spec.package} in {'/'.join(spec.suites)} leads to no linux-image-<abi> package; "
        "give a kernel image package such as linux-image-amd64"
    )


def _payload(image: Stanza, abi: str, index: Mapping[str, Sequence[Stanza]], suite: str) -> tuple[Deb, ...]:
    """The packages holding the kernel itself: the image package before 7.x; from 7.x on, the image is
    a small meta and the kernel lives in linux-binary-<abi> + linux-modules-<abi>, with modules.builtin
    in linux-base-<abi> (without it built-in drivers look like missing modules)."""
    binary = modules = base = None
    for name, exact in _depends(image):
        stanza = _newest(index.get(name, []), exact) or _newest(index.get(name, []))
        if stanza is None:
            continue
        if binary is None and name in (f"linux-binary-{abi}", f"linux-binary-unsigned-{abi}"):
            binary = stanza  # the first alternative present: the signed one when Depends names it
        elif name == f"linux-modules-{abi}":
            modules = stanza
        elif name == f"linux-base-{abi}":
            base = stanza
    if binary is None:
        return (_deb(image, suite),)
    if modules is None:
        raise InfraError(
            f"{image['Package']} in {suite}: linux-modules-{abi} is not on the mirror (backports drop old "
            "kernels' modules); choose a newer kernel"
        )
    parts = [binary, modules] + ([base] if base is not None else [])
    return tuple(_deb(s, suite) for s in parts)


def _deb(stanza: Stanza, suite: str) -> Deb:
    try:
        return Deb(
            stanza["Package"],
            stanza["Version"],
            stanza["Filename"],
            stanza["SHA256"].lower(),
            int(stanza["Size"]),
            suite,
        )
    except (KeyError, ValueError) as e:
        raise InfraError(
            f"index entry for {stanza.get('Package', '?')} in {suite} is incomplete: {e}"
        ) from None


# --- fetching and extraction ---------------------------------------------------------------------

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_MODULE_FILES = ("modules.builtin", "modules.order", "modules.builtin.modinfo")


def kernel_key(debs: Sequence[Deb]) -> str:
    return hashlib.sha256("\n".join(sorted(d.sha256 for d in debs)).encode()).hexdigest()


def fetch(resolved: Resolved, archive: Archive, cache: Path) -> Kernel:
    """Download, verify and unpack the kernel once; later calls only read the cache."""
    folder = cache / "kernels" / kernel_key(resolved.debs)
    if not ((folder / META_FILE).is_file() and _load(folder).image.is_file()):
        paths = [archive.fetch_deb(d) for d in resolved.debs]
        _unpack(resolved, paths, folder)
    kernel = _load(folder)
    # The same packages can be reached from several specs: report the one asked for now.
    return Kernel(
        resolved.spec.label,
        kernel.release,
        kernel.image,
        kernel.vmlinux,
        kernel.modules_dir,
        kernel.sha256,
        resolved.package or kernel.package,
        resolved.version,
        resolved.debs,
        debian_source(resolved.spec),
    )


def _unpack(resolved: Resolved, debs: Sequence[Path], folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        shutil.rmtree(folder)  # a tree without its metadata file is not ours to trust
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name[:16]}-"))
    try:
        abi = resolved.abi
        for deb, path in zip(resolved.debs, debs, strict=True):
            extract_deb(path, abi, tmp, f"{deb.package} {deb.version}")
        image = tmp / "vmlinuz"
        if not image.is_file():
            names = ", ".join(d.package for d in resolved.debs)
            raise InfraError(
                f"no vmlinuz for {abi} in {names}; the package layout is not one the harness knows"
            )
        data = image.read_bytes()
        vmlinux = vmlinux_from_image(data)
        if vmlinux is not None:
            (tmp / "vmlinux").write_bytes(vmlinux)
        modules = tmp / "modules" / abi
        meta = {
            "format": META_FORMAT,
            "label": resolved.spec.label,
            "release": abi,
            "image": "vmlinuz",
            "vmlinux": "vmlinux" if vmlinux is not None else None,
            "modules_dir": f"modules/{abi}" if modules.is_dir() else None,
            "sha256": hashlib.sha256(data).hexdigest(),
            "package": resolved.package or None,
            "version": resolved.version,
            "debs": [d.__dict__ for d in resolved.debs],
            "source": debian_source(resolved.spec),
        }
        # Written last, then the whole tree appears at once: a killed run leaves only a .tmp dir behind.
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / META_FILE).is_file():
                raise
            shutil.rmtree(tmp)  # another run unpacked the same kernel first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def extract_deb(deb: Path, abi: str, dest: Path, what: str) -> None:
    """Copy the kernel image to dest/vmlinuz and the modules tree to dest/modules/<abi>/ from one .deb.
    The tar is streamed: a modules package is ~100 MB compressed and several times that unpacked."""
    image_names = {f"boot/vmlinuz-{abi}", f"usr/lib/modules/{abi}/vmlinuz", f"lib/modules/{abi}/vmlinuz"}
    module_roots = (f"lib/modules/{abi}/", f"usr/lib/modules/{abi}/")
    try:
        with _data_tar(deb) as tar:
            for member in tar:
                name = os.path.normpath(member.name)
                if not member.isfile() or name.startswith("..") or os.path.isabs(name):
                    continue  # links and odd paths: the cache holds plain files inside its own tree only
                if name in image_names:
                    target = dest / "vmlinuz"
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


@contextlib.contextmanager
def _data_tar(deb: Path) -> Iterator[tarfile.TarFile]:
    """Stream-open a .deb's data.tar.* (python-debian would shell out to unzstd and buffer it all)."""
    try:
        ar = DebFile(str(deb))
    except Exception as e:  # python-debian raises several unrelated types for a bad archive
        raise InfraError(f"{deb}: not a Debian package: {e}") from None
    name = next((n for n in ar.getnames() if n.startswith("data.tar")), None)
    if name is None:
        raise InfraError(f"{deb}: no data.tar member")
    member = ar.getmember(name)
    try:
        if name.endswith(".zst"):
            stream: Any = zstandard.ZstdDecompressor().stream_reader(
                cast(IO[bytes], member), read_across_frames=True
            )
            compression = ""
        else:
            stream, compression = member, name[len("data.tar.") :]
        if compression not in ("", "xz", "gz", "bz2"):
            raise InfraError(f"{deb}: {name} uses a compression the harness cannot read")
        with tarfile.open(fileobj=stream, mode=f"r|{compression}") as tar:  # type: ignore[call-overload]
            yield tar
    finally:
        member.close()


def _load(folder: Path) -> Kernel:
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
            kernels.append(_load(folder))
    return sorted(kernels, key=lambda k: (k.label, Version(k.version or "0"), k.release))


# --- path kernels ------------------------------------------------------------------------------


def from_path(spec: PathKernel, cache: Path) -> Kernel:
    """A kernel file given by path: bzImage/vmlinuz, or an ELF vmlinux (bootable only with a PVH note)."""
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
            raise UserError(
                f"path {path}: ELF kernel without a PVH entry note (CONFIG_PVH); give its bzImage"
            )
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
            if not vmlinux.is_file():
                atomic_write(vmlinux, elf)
    else:
        raise not_kernel
    modules = spec.modules.resolve() if spec.modules else None
    release = modules.name if modules else found
    if not release:
        raise UserError(f"path {path}: kernel version not found; give 'modules: /lib/modules/<release>'")
    return Kernel(spec.label, release, path, vmlinux, modules, sha, None, None, (), f"path:{path}")
