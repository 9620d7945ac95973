"""Kernel acquisition: resolve a `debian:` spec against a mirror, download and verify its packages, unpack
the kernel image and modules into a content-addressed cache, and extract a PVH-bootable vmlinux.

Layers, from pure to effectful:
- `resolve_in` picks packages from parsed Packages stanzas (pure);
- the bzImage/ELF helpers turn image bytes into vmlinux bytes (pure);
- `Archive` is the only place that talks to the network (and to gpgv);
- `fetch`, `from_path` and `list_cached` read and write the cache.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import hashlib
import http.client
import io
import json
import lzma
import os
import re
import shutil
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard
from debian.deb822 import Packages, PkgRelation, Release
from debian.debfile import DebFile
from debian.debian_support import Version
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection
from elftools.elf.segments import NoteSegment

from harness.errors import InfraError, UserError
from harness.matrix import DebianKernel, PathKernel
from harness.results import KernelInfo

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
ARCH = "amd64"
COMPONENT = "main"
TIMEOUT_S = 60.0
RETRIES = 3  # after the first attempt, for transient network errors only
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note QEMU looks for in an ELF kernel
META_FILE = "kernel.json"
META_FORMAT = 1

Stanza = Mapping[str, str]


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deb:
    """One .deb used for a kernel, as listed in a signed Packages index."""

    package: str
    version: str
    filename: str  # pool path relative to the mirror
    sha256: str
    size: int
    suite: str


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
    else:
        if spec.package.endswith("-dbg"):
            raise UserError(f"package {spec.package}: a debug-symbols package cannot boot; drop '-dbg'")
        wanted = [spec.package]

    best: tuple[Version, str, Stanza] | None = None
    for suite in spec.suites:
        for name in wanted:
            stanza = _newest(by_suite[suite].get(name, []))
            if stanza is not None and (best is None or Version(stanza["Version"]) > best[0]):
                best = (Version(stanza["Version"]), suite, stanza)
            if stanza is not None:
                break  # the signed linux-image-<abi> wins over -unsigned in the same suite
    if best is None:
        what = f"ABI {spec.abi}" if spec.abi else f"package {spec.package}"
        raise UserError(
            f"{what} is not in {'/'.join(spec.suites)}; available ABIs: "
            f"{', '.join(available_abis(by_suite)) or 'none'}"
        )
    _, suite, start = best
    index = by_suite[suite]
    image = _concrete_image(start, index, spec)
    abi = _abi_of(image["Package"])
    debs = _payload(image, abi, index, suite)
    return Resolved(spec, suite, abi, image["Version"], debs, image["Package"])


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
        raise InfraError(f"{image['Package']} in {suite} depends on no linux-modules-{abi}; index is odd")
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


# --- bzImage and ELF (pure) --------------------------------------------------------------------


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x250 and data[0x1FE:0x200] == b"\x55\xaa" and data[0x202:0x206] == b"HdrS"


def bzimage_payload(data: bytes) -> bytes:
    """The compressed kernel inside a bzImage. ValueError if not a bzImage or truncated."""
    if not is_bzimage(data):
        raise ValueError("no bzImage header")
    (protocol,) = struct.unpack_from("<H", data, 0x206)
    if protocol < 0x208:
        raise ValueError(f"boot protocol {protocol:#x} predates payload fields")
    setup_sects = data[0x1F1] or 4  # 0 means 4, for compatibility with ancient loaders
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(data):
        raise ValueError("truncated bzImage (payload runs past the end of the file)")
    return data[start : start + length]


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


# --- the mirror --------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _NotFound(Exception):
    """HTTP 404/410 (or a missing file: URL): the mirror does not have it."""


def _transient(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code in (408, 425, 429, 500, 502, 503, 504)
    return isinstance(
        e, urllib.error.URLError | TimeoutError | socket.timeout | ConnectionError | http.client.HTTPException
    )


class Archive:
    """A Debian mirror seen through a verifying cache. The only code here that opens connections."""

    def __init__(
        self,
        mirror: str,
        cache: Path,
        insecure: bool = False,
        keyring: Path = DEFAULT_KEYRING,
        *,
        max_age: float = 0.0,  # seconds a fetched InRelease is reused without asking the mirror again
        warn: Callable[[str], None] | None = None,
        retry_delay: float = 1.0,
    ) -> None:
        self.mirror = mirror.rstrip("/")
        self.cache = cache
        self.insecure = insecure
        self.keyring = keyring
        self.max_age = max_age
        self.retry_delay = retry_delay
        self._warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
        self._releases: dict[str, Release] = {}
        self._packages: dict[tuple[str, str], list[Packages]] = {}
        self._warned = False

    # -- network

    def _open(self, url: str) -> Any:
        """urlopen with retries on transient errors; 404 -> _NotFound; else InfraError."""
        for attempt in range(RETRIES + 1):
            try:
                return urllib.request.urlopen(url, timeout=TIMEOUT_S)
            except urllib.error.HTTPError as e:
                if e.code in (404, 410):
                    raise _NotFound(url) from None
                if not _transient(e) or attempt == RETRIES:
                    raise InfraError(f"GET {url}: HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                if (
                    isinstance(e.reason, FileNotFoundError)
                    or getattr(e.reason, "errno", None) == errno.ENOENT
                ):
                    raise _NotFound(url) from None
                if attempt == RETRIES:
                    raise InfraError(f"GET {url}: {e.reason}") from None
            except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                if attempt == RETRIES:
                    raise InfraError(f"GET {url}: {e}") from None
            time.sleep(self.retry_delay * (2**attempt))
        raise AssertionError("unreachable")

    def _get(self, url: str) -> bytes:
        for attempt in range(RETRIES + 1):
            with self._open(url) as r:
                try:
                    return bytes(r.read())
                except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                    if attempt == RETRIES:
                        raise InfraError(f"GET {url}: {e}") from None
            time.sleep(self.retry_delay * (2**attempt))
        raise AssertionError("unreachable")

    def _download(self, url: str, dest: IO[bytes]) -> tuple[int, str]:
        """Stream url into dest (truncated first on retry); returns (size, sha256)."""
        for attempt in range(RETRIES + 1):
            dest.seek(0)
            dest.truncate()
            h, size = hashlib.sha256(), 0
            with self._open(url) as r:
                try:
                    for block in iter(lambda: r.read(1 << 20), b""):
                        h.update(block)
                        dest.write(block)
                        size += len(block)
                    return size, h.hexdigest()
                except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                    if attempt == RETRIES:
                        raise InfraError(f"GET {url}: {e}") from None
            time.sleep(self.retry_delay * (2**attempt))
        raise AssertionError("unreachable")

    # -- Release

    def release(self, suite: str) -> Release:
        """The verified Release of `suite` (InRelease fetched afresh unless younger than max_age)."""
        if suite in self._releases:
            return self._releases[suite]
        cached = self.cache / "indexes" / suite / "InRelease"
        fresh = cached.is_file() and time.time() - cached.stat().st_mtime < self.max_age
        if fresh:
            data = cached.read_bytes()
        else:
            try:
                data = self._get(f"{self.mirror}/dists/{suite}/InRelease")
            except _NotFound:
                raise UserError(
                    f"suite {suite} is not on mirror {self.mirror}; use a Debian suite such as bookworm"
                ) from None
        body = self._verify(suite, data)
        release = Release(body)
        names = {release.get("Suite", ""), release.get("Codename", "")}
        if suite not in names:
            raise InfraError(
                f"mirror {self.mirror} answered dists/{suite} with the Release of {'/'.join(names)}"
            )
        if not fresh:
            _atomic_write(cached, data)
        self._releases[suite] = release
        return release

    def _verify(self, suite: str, data: bytes) -> str:
        """The signed text of an InRelease; gpgv writes exactly what it checked, so nothing outside the
        signature can slip into the parsed Release."""
        if self.insecure:
            if not self._warned:
                self._warn(f"--insecure: not checking the signature of {self.mirror} indexes")
                self._warned = True
            return _clearsigned_body(data.decode("utf-8", "replace"))
        if not self.keyring.is_file():
            raise UserError(
                f"keyring {self.keyring} not found; install debian-archive-keyring or pass --insecure"
            )
        with tempfile.TemporaryDirectory(prefix="harness-gpgv-") as tmp:
            signed, out = Path(tmp) / "InRelease", Path(tmp) / "body"
            signed.write_bytes(data)
            try:
                proc = subprocess.run(
                    [
                        "gpgv",
                        "--keyring",
                        str(self.keyring),
                        "--status-fd",
                        "1",
                        "--output",
                        str(out),
                        str(signed),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT_S,
                    env={**os.environ, "LC_ALL": "C"},
                )
            except FileNotFoundError:
                raise InfraError("gpgv not found: install gpgv (or pass --insecure)") from None
            except subprocess.TimeoutExpired:
                raise InfraError(f"gpgv timed out checking InRelease of {suite}") from None
            if not signature_ok(proc.stdout, proc.returncode):
                lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                detail = lines[-1].strip() if lines else f"gpgv exit {proc.returncode}"
                raise InfraError(
                    f"InRelease of suite {suite} from {self.mirror} failed signature check against "
                    f"{self.keyring}: {detail}"
                )
            return out.read_text("utf-8", "replace")

    # -- Packages

    def packages(self, suite: str, prefix: str = "") -> list[Packages]:
        """main/binary-amd64 stanzas of `suite`, verified against the signed Release. With `prefix`, only
        packages whose name starts with it (parsing a whole index takes ~30 s; kernels need 'linux-')."""
        key = (suite, prefix)
        if key not in self._packages:
            text = self._packages_text(suite, prefix)
            self._packages[key] = list(
                Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False)
            )
        return self._packages[key]

    def _packages_text(self, suite: str, prefix: str) -> str:
        release = self.release(suite)
        listed = {e["name"]: e for e in release.get("SHA256", [])}
        base = f"{COMPONENT}/binary-{ARCH}/Packages"
        candidates = [base + ext for ext in (".xz", ".gz", "") if base + ext in listed]
        if not candidates:
            raise InfraError(
                f"Release of {suite} lists no {base}[.xz|.gz]; is {ARCH}/{COMPONENT} on the mirror?"
            )
        folder = self.cache / "indexes" / suite
        for name in candidates:
            sha, size = listed[name]["sha256"].lower(), int(listed[name]["size"])
            ext = name[len(base) :]
            tag = re.sub(r"[^A-Za-z0-9._-]", "_", prefix) or "all"
            filtered = folder / f"{sha}.{tag}.txt"
            if filtered.is_file():
                return filtered.read_text("utf-8", "replace")
            raw = folder / f"{sha}{ext or '.plain'}"
            if not (raw.is_file() and raw.stat().st_size == size and _sha256_file(raw) == sha):
                data = self._fetch_index(suite, name, sha, release)
                if data is None:
                    continue
                if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                    raise InfraError(
                        f"hash mismatch for {name} of {suite}: the signed Release says {sha} ({size} bytes), "
                        f"got {hashlib.sha256(data).hexdigest()} ({len(data)} bytes)"
                    )
                _atomic_write(raw, data)
                # An index is replaced several times a day; drop the ones this Release no longer lists.
                for old in folder.iterdir():
                    if old.name != "InRelease" and not old.name.startswith((sha, ".")):
                        with contextlib.suppress(OSError):
                            old.unlink()
            text = _decompress_index(raw.read_bytes(), ext, f"{name} of {suite}")
            if prefix:
                # the kernel subset is ~1% of an index: keep it so the next run skips decompression
                text = filter_stanzas(text, prefix)
                _atomic_write(filtered, text.encode())
            return text
        raise InfraError(f"{self.mirror}/dists/{suite}/{base}[.xz|.gz] listed in Release but not served")

    def _fetch_index(self, suite: str, name: str, sha: str, release: Release) -> bytes | None:
        urls = [f"{self.mirror}/dists/{suite}/{name}"]
        if release.get("Acquire-By-Hash", "").lower() == "yes":
            # by-hash names stay valid while the mirror swaps in a newer index mid-download
            urls.insert(0, f"{self.mirror}/dists/{suite}/{name.rsplit('/', 1)[0]}/by-hash/SHA256/{sha}")
        for url in urls:
            try:
                return self._get(url)
            except _NotFound:
                continue
        return None

    # -- pool

    def fetch_deb(self, deb: Deb) -> Path:
        """The .deb in the cache (content-addressed by its signed SHA256), downloading it if needed."""
        folder = self.cache / "debs"
        path = folder / f"{deb.sha256}.deb"
        if path.is_file() and path.stat().st_size == deb.size and _sha256_file(path) == deb.sha256:
            return path
        folder.mkdir(parents=True, exist_ok=True)
        url = f"{self.mirror}/{deb.filename}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-")
        try:
            with os.fdopen(fd, "w+b") as f:
                try:
                    size, sha = self._download(url, f)
                except _NotFound:
                    raise InfraError(
                        f"{deb.package} {deb.version}: {url} not found (mirror changed since the index?)"
                    ) from None
            # Hashes are checked even with --insecure: they cost nothing and keep the cache honest.
            if sha != deb.sha256 or size != deb.size:
                raise InfraError(
                    f"hash mismatch for {deb.package} {deb.version} from {url}: the index says {deb.sha256} "
                    f"({deb.size} bytes), got {sha} ({size} bytes)"
                )
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path


def signature_ok(status: str, returncode: int) -> bool:
    """gpgv's verdict as apt reads it: at least one good, valid signature and no bad one. Extra signatures
    from keys the keyring lacks (NO_PUBKEY, exit 2) are tolerated, as Debian signs with the keys of two
    releases and an older keyring may know only one."""
    words = [ln.split() for ln in status.splitlines() if ln.startswith("[GNUPG:] ")]
    kinds = [w[1] for w in words if len(w) > 1]
    if "GOODSIG" not in kinds or "VALIDSIG" not in kinds or "BADSIG" in kinds:
        return False
    if returncode == 0:
        return True
    errsigs = [w for w in words if len(w) > 7 and w[1] == "ERRSIG"]
    return bool(errsigs) and all(w[7] == "9" for w in errsigs) and returncode in (1, 2)


def _clearsigned_body(text: str) -> str:
    """The message of a clearsigned text (for --insecure, where gpgv is not asked), or the text itself."""
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        return text
    i = 1
    while i < len(lines) and lines[i].strip():
        i += 1  # armor headers (Hash: ...) up to the blank line
    body: list[str] = []
    for line in lines[i + 1 :]:
        if line.startswith("-----BEGIN PGP SIGNATURE-----"):
            break
        body.append(line[2:] if line.startswith("- ") else line)
    return "".join(body)


def _decompress_index(data: bytes, ext: str, what: str) -> str:
    try:
        if ext == ".xz":
            data = lzma.decompress(data)
        elif ext == ".gz":
            data = zlib.decompress(data, wbits=31)
    except (lzma.LZMAError, zlib.error) as e:
        raise InfraError(f"{what}: cannot decompress: {e}") from None
    return data.decode("utf-8", "replace")


def filter_stanzas(text: str, prefix: str) -> str:
    """Only the stanzas whose Package starts with prefix; textual, so it costs a split, not a parse."""
    keep = [
        p
        for p in re.split(r"\n\s*\n", text)
        if (m := re.search(r"^Package: *(\S+)", p, re.M)) and m[1].startswith(prefix)
    ]
    return "\n\n".join(keep) + "\n"


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
        found = elf_release(data) if _parses_as_elf(data) else None
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
        except ValueError:
            raise not_kernel from None
        found = bzimage_version(data)
        elf = vmlinux_from_image(data)
        if elf is not None:
            vmlinux = cache / "vmlinux" / f"{sha}.elf"
            if not vmlinux.is_file():
                _atomic_write(vmlinux, elf)
    else:
        raise not_kernel
    modules = spec.modules.resolve() if spec.modules else None
    release = modules.name if modules else found
    if not release:
        raise UserError(f"path {path}: kernel version not found; give 'modules: /lib/modules/<release>'")
    return Kernel(spec.label, release, path, vmlinux, modules, sha, None, None, (), f"path:{path}")


def _parses_as_elf(data: bytes) -> bool:
    try:
        ELFFile(io.BytesIO(data)).num_segments()
        return True
    except (ELFError, struct.error, ValueError, EOFError):
        return False
