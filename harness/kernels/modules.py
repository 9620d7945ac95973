"""Kernel modules of a Debian kernel: which files to load, in which order.

Debian's packages ship no modules.dep (depmod runs at install time), so dependencies come from each
module's own `.modinfo` section (PROTOTYPE pitfall 1). Everything here is pure except file reads.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import zstandard
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.errors import InfraError

# ext4 asks the crypto API for "crc32c" when it mounts (a softdep, not a depends=, and 5.10 asks even
# without metadata_csum); the module that provides it is named differently across kernels.
CRC32C_PROVIDERS = ("crc32c_generic", "crc32c_cryptoapi")
# The host's entropy (QEMU's virtio-rng, counted by rng_core.default_quality on the command line):
# kernels before 4.19/5.4 never credit RDRAND, and their getrandom() would keep dropbear waiting.
RNG_MODULES = ("virtio_rng",)
# Loaded first where the kernel has them as modules; a kernel without them goes on without.
OPTIONAL_MODULES = CRC32C_PROVIDERS + RNG_MODULES

SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


def module_name(path: Path | str) -> str:
    """'virtio-pci.ko.xz' -> 'virtio_pci': the kernel treats '-' and '_' in module names alike."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def decompress_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed in memory (busybox insmod may not handle .xz/.zst)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InfraError(f"{path}: cannot read module: {e.strerror}") from None
    try:
        if path.name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if path.name.endswith(".ko.zst"):
            # kmod's zstd files may lack the content size in their frame header: stream it out
            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
        if path.name.endswith(".ko.gz"):
            return zlib.decompress(data, wbits=31)
    except (lzma.LZMAError, zstandard.ZstdError, zlib.error) as e:
        raise InfraError(f"{path}: cannot decompress module: {e}") from None
    return data


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """NUL-separated key=value pairs; keys such as alias repeat, so values are lists."""
    info: dict[str, list[str]] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep and key:
            info.setdefault(key, []).append(value)
    return info


def modinfo(path: Path) -> dict[str, list[str]]:
    data = decompress_module(path)
    try:
        section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
        raw = section.data() if section is not None else b""
    except (ELFError, struct.error, ValueError, EOFError) as e:
        raise InfraError(f"{path}: not a kernel module ELF: {e}") from None
    return parse_modinfo(raw)


def depends(path: Path) -> list[str]:
    values = modinfo(path).get("depends", [])
    return [module_name(d) for v in values for d in v.split(",") if d.strip()]


def read_builtin(modules_dir: Path) -> set[str]:
    """Names listed in modules.builtin (lines like kernel/drivers/virtio/virtio.ko)."""
    try:
        text = (modules_dir / "modules.builtin").read_text()
    except FileNotFoundError:
        return set()
    except OSError as e:
        raise InfraError(f"{modules_dir}/modules.builtin: cannot read: {e.strerror}") from None
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def index_modules(modules_dir: Path) -> dict[str, Path]:
    """Module name -> file. Sorted walk so a duplicate name resolves the same way every time."""
    found: dict[str, Path] = {}
    for path in sorted(modules_dir.rglob("*.ko*")):
        if path.name.endswith(SUFFIXES) and path.is_file():
            found.setdefault(module_name(path), path)
    return found


def load_order(
    wanted: Sequence[str],
    depends: Mapping[str, Sequence[str]],
    builtin: set[str] | frozenset[str],
    release: str = "",
) -> list[str]:
    """Modules to insmod, dependencies first, each once. `depends` maps every loadable module to what
    its depends= names; a name neither there nor built in is an error."""
    order: list[str] = []
    done: set[str] = set()
    active: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin or name in active:
            return  # built in: nothing to load; active: a cycle, which depmod would reject anyway
        if name not in depends:
            where = f" for {release}" if release else ""
            raise InfraError(f"module {name}{where} is neither a module file nor built in")
        active.add(name)
        for dep in depends[name]:
            visit(dep)
        active.discard(name)
        done.add(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def _graph(roots: Sequence[str], files: Mapping[str, Path], builtin: set[str]) -> dict[str, list[str]]:
    """Each module file of the closure of `roots` with what its depends= names. Reads .modinfo only
    for the closure: a kernel has thousands of modules and a guest needs a handful."""
    graph: dict[str, list[str]] = {}
    pending = [m.replace("-", "_") for m in roots]
    while pending:
        name = pending.pop()
        if name in graph or name in builtin or name not in files:
            continue
        graph[name] = depends(files[name])
        pending.extend(graph[name])
    return graph


def closure(roots: Sequence[str], modules_dir: Path) -> set[Path]:
    """The files of `roots` this kernel has as modules, and of everything their depends= names."""
    files = index_modules(modules_dir)
    return {files[name] for name in _graph(roots, files, read_builtin(modules_dir))}


def slim(modules_dir: Path, roots: Sequence[str]) -> int:
    """Delete every module file but the closure of `roots`; the bytes freed.

    A Debian kernel ships thousands of modules (300 MB unpacked) and a guest loads a handful.
    What `resolve` answers for any subset of `roots` is unchanged, since it reads nothing else.
    """
    keep = closure(roots, modules_dir)
    freed = 0
    for path in sorted(modules_dir.rglob("*.ko*")):
        if path.name.endswith(SUFFIXES) and path.is_file() and path not in keep:
            freed += path.stat().st_size
            path.unlink()
    for folder in sorted((p for p in modules_dir.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only the empty ones go
    return freed


def resolve(wanted: Sequence[str], modules_dir: Path, optional: Sequence[str] = ()) -> list[Path]:
    """Files to load for `wanted` (and for those of `optional` this kernel has) in load order."""
    release = modules_dir.name
    builtin = read_builtin(modules_dir)
    files = index_modules(modules_dir)
    wanted = [*(m for m in optional if m.replace("-", "_") in files), *wanted]
    return [files[name] for name in load_order(wanted, _graph(wanted, files, builtin), builtin, release)]
