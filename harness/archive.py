"""The Debian mirror behind a verifying cache: kernel code only ever sees indexes and .debs that match a
gpgv-checked InRelease (hashes are checked even with --insecure). Kept apart as the one place that opens
connections, retries them and runs gpgv, so every trust decision can be reviewed in one file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import lzma
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from debian.deb822 import Packages, Release

from harness.errors import InfraError, UserError
from harness.files import atomic_write

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
ARCH = "amd64"
COMPONENT = "main"
TIMEOUT_S = 60.0
RETRIES = 3  # after the first attempt, for transient network errors only

T = TypeVar("T")


@dataclass(frozen=True)
class Deb:
    """One .deb used for a kernel, as listed in a signed Packages index."""

    package: str
    version: str
    filename: str  # pool path relative to the mirror
    sha256: str
    size: int
    suite: str


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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

    def _fetch(self, url: str, read: Callable[[Any], T]) -> T:
        """GET `url` and hand the response to `read`, trying again with exponential backoff when opening
        or reading fails transiently; 404/410 (or a missing file: URL) is _NotFound, the rest InfraError."""
        for attempt in range(RETRIES + 1):
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    return read(response)
            except urllib.error.HTTPError as e:
                if e.code in (404, 410):
                    raise _NotFound(url) from None
                if not _transient(e) or attempt == RETRIES:
                    raise InfraError(f"GET {url}: HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                if isinstance(e.reason, FileNotFoundError) or getattr(e.reason, "errno", None) == errno.ENOENT:
                    raise _NotFound(url) from None
                if attempt == RETRIES:
                    raise InfraError(f"GET {url}: {e.reason}") from None
            except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                if attempt == RETRIES:
                    raise InfraError(f"GET {url}: {e}") from None
            time.sleep(self.retry_delay * (2**attempt))
        raise AssertionError("unreachable")

    def _get(self, url: str) -> bytes:
        return self._fetch(url, lambda response: bytes(response.read()))

    def _download(self, url: str, dest: IO[bytes]) -> tuple[int, str]:
        """Stream url into dest (truncated first on every try); returns (size, sha256)."""

        def stream(response: Any) -> tuple[int, str]:
            dest.seek(0)
            dest.truncate()
            h, size = hashlib.sha256(), 0
            for block in iter(lambda: response.read(1 << 20), b""):
                h.update(block)
                dest.write(block)
                size += len(block)
            return size, h.hexdigest()

        return self._fetch(url, stream)

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
            atomic_write(cached, data)
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
                detail = gpgv_reason(proc.stderr) or f"gpgv exit {proc.returncode}"
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
                atomic_write(raw, data)
                # An index is replaced several times a day; drop the ones this Release no longer lists.
                for old in folder.iterdir():
                    if old.name != "InRelease" and not old.name.startswith((sha, ".")):
                        with contextlib.suppress(OSError):
                            old.unlink()
            text = _decompress_index(raw.read_bytes(), ext, f"{name} of {suite}")
            if prefix:
                # the kernel subset is ~1% of an index: keep it so the next run skips decompression
                text = filter_stanzas(text, prefix)
                atomic_write(filtered, text.encode())
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


# gpgv's stderr says first when and with which key a signature was made, then what it thinks of it;
# the verdict is the line worth showing, the most telling first.
_GPGV_VERDICTS = ("BAD signature", "no signature found", "not a detached signature", "Can't check signature",
                  "verify signatures failed", "signature could not be verified")  # fmt: skip
_GPGV_PREAMBLE = re.compile(r"gpgv:\s+(Signature made|using \S+ key|issuer|aka )")


def gpgv_reason(stderr: str) -> str:
    """The line of gpgv's stderr that says why it refused, without its "gpgv: " prefix."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for verdict in _GPGV_VERDICTS:
        found = next((ln for ln in lines if verdict.lower() in ln.lower()), None)
        if found is not None:
            return found.removeprefix("gpgv: ")
    rest = [ln for ln in lines if not _GPGV_PREAMBLE.match(ln)]
    return (rest or lines or [""])[-1].removeprefix("gpgv: ")


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
