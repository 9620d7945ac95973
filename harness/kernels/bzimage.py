"""Turning a kernel image file into something QEMU can boot directly: the PVH-noted ELF vmlinux
inside a bzImage, and the release the image carries. Pure functions on bytes, so they serve both
Debian packages and kernels given by path, and test without a mirror.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import lzma
import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import zstandard
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection
from elftools.elf.segments import NoteSegment

XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note QEMU looks for in an ELF kernel


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x250 and data[0x1FE:0x200] == b"\x55\xaa" and data[0x202:0x206] == b"HdrS"


def boot_protocol(data: bytes) -> int:
    """The bzImage's boot protocol version (0x20f for 2.15); 0 when not a bzImage."""
    return struct.unpack_from("<H", data, 0x206)[0] if is_bzimage(data) else 0


def _setup_end(data: bytes) -> int:
    return ((data[0x1F1] or 4) + 1) * 512  # setup_sects 0 means 4, for compatibility with ancient loaders


def bzimage_payload(data: bytes) -> bytes:
    """The compressed kernel inside a bzImage. ValueError if not a bzImage or truncated."""
    if not is_bzimage(data):
        raise ValueError("no bzImage header")
    if boot_protocol(data) < 0x208:
        raise ValueError(f"boot protocol {boot_protocol(data):#x} predates payload fields")
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = _setup_end(data) + offset
    if length == 0 or start + length > len(data):
        raise ValueError("truncated bzImage (payload runs past the end of the file)")
    return data[start : start + length]


def check_bzimage(data: bytes) -> None:
    """ValueError unless `data` is a whole bzImage QEMU can load: the payload all there (protocol
    2.08, 2.6.26, on), or before payload fields (QEMU loads those too: 2.6.20 is 2.04) the protected-
    mode part as long as the header's syssize says."""
    if boot_protocol(data) >= 0x208:
        bzimage_payload(data)
        return
    if not is_bzimage(data):
        raise ValueError("no bzImage header")
    # syssize: 16-byte units rounded up, 32 bits wide from protocol 2.04 on, 16 bits before.
    syssize = struct.unpack_from("<I" if boot_protocol(data) >= 0x204 else "<H", data, 0x1F4)[0]
    if syssize == 0 or _setup_end(data) + (syssize - 1) * 16 >= len(data):
        raise ValueError("truncated bzImage (the kernel runs past the end of the file)")


def kernel_elf(data: bytes) -> bytes | None:
    """The uncompressed kernel inside a bzImage: its payload decompressed, or before payload fields
    the first gzip stream after the setup (the only compression those kernels had); None if neither."""
    if boot_protocol(data) >= 0x208:
        with contextlib.suppress(ValueError):
            return decompress_payload(bzimage_payload(data))
        return None
    start = _setup_end(data) if is_bzimage(data) else len(data)
    for _ in range(16):  # the decompressor's code before the stream may hold the magic bytes too
        start = data.find(b"\x1f\x8b\x08", start)
        if start < 0:
            return None
        found = decompress_payload(data[start:])
        if found:
            return found
        start += 1
    return None


def embedded_config(kernel: bytes) -> str | None:
    """The .config a kernel built with CONFIG_IKCONFIG carries (kernel/configs.c: gzip between
    "IKCFG_ST" and "IKCFG_ED"), given the uncompressed kernel; None when it has none."""
    start = kernel.find(b"IKCFG_ST")
    if start < 0:
        return None
    end = kernel.find(b"IKCFG_ED", start)
    text = decompress_payload(kernel[start + 8 : end if end > 0 else len(kernel)])
    return None if text is None else text.decode("utf-8", "replace")


def bzimage_version(data: bytes) -> str | None:
    """The release (first word of the kernel_version string), e.g. '6.1.0-50-amd64'."""
    if not is_bzimage(data):
        return None
    (pointer,) = struct.unpack_from("<H", data, 0x20E)
    start = pointer + 0x200
    if pointer == 0 or start >= len(data):
        return None
    end = data.find(b"\0", start, start + 512)
    words = data[start : end if end >= 0 else start + 512].decode("ascii", "replace").split()
    return words[0] if words else None


def decompress_payload(payload: bytes) -> bytes | None:
    """Decompress by magic; None for formats Python cannot do (lz4, lzo). The kernel build appends the
    decompressed size after the stream, so trailing bytes are expected and ignored."""
    try:
        if payload[:2] == b"\x1f\x8b":
            return zlib.decompressobj(wbits=31).decompress(payload)
        if payload[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        if payload[:4] == b"\x28\xb5\x2f\xfd":
            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(payload))
        if payload[:3] == b"\x5d\x00\x00":
            return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
        if payload[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(payload)
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError, ValueError, EOFError):
        return None
    return None


def has_pvh_note(elf: bytes) -> bool:
    """True if the ELF carries XEN_ELFNOTE_PHYS32_ENTRY, which QEMU needs to boot it directly."""
    try:
        f = ELFFile(io.BytesIO(elf))
        # A linked kernel has PT_NOTE segments; a relocatable object only note sections.
        for seg in f.iter_segments():
            if isinstance(seg, NoteSegment) and _xen_entry(seg.iter_notes()):
                return True
        for sec in f.iter_sections():
            if isinstance(sec, NoteSection) and _xen_entry(sec.iter_notes()):
                return True
    except (ELFError, struct.error, ValueError, EOFError):
        return False
    return False


def _xen_entry(notes: Iterator[Any]) -> bool:
    return any(n["n_name"] == "Xen" and n["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY for n in notes)


def vmlinux_from_image(data: bytes) -> bytes | None:
    """The PVH-bootable ELF inside a bzImage (or the image itself if it is one), else None."""
    if is_elf(data):
        return data if has_pvh_note(data) else None
    try:
        payload = bzimage_payload(data)
    except ValueError:
        return None
    elf = decompress_payload(payload)
    if elf is None or not is_elf(elf):
        return None
    return elf if has_pvh_note(elf) else None


def elf_release(elf: bytes) -> str | None:
    """The release from the `Linux version X ...` banner an uncompressed kernel carries."""
    m = re.search(rb"Linux version (\S+) ", elf)
    return m.group(1).decode("ascii", "replace") if m else None


def parses_as_elf(data: bytes) -> bool:
    try:
        ELFFile(io.BytesIO(data)).num_segments()
        return True
    except (ELFError, struct.error, ValueError, EOFError):
        return False
