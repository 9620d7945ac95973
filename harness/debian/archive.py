"""The Debian mirror behind a verifying cache: kernel code only ever sees indexes and .debs that match a
gpgv-checked InRelease (hashes are checked even with --insecure). Kept apart as the one place that opens
connections, retries them and runs gpgv, so every trust decision can be reviewed in one file.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import hashlib
import http.client
import lzma
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from debian.deb822 import Packages, Release

from harness.cache.lease import Leases
from harness.debian import signatures
from harness.errors import InfraError, UserError
from harness.files import atomic_write

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Keys Debian signed its old releases with, expired since; only old releases and snapshots use it.
REMOVED_KEYRING = Path("/usr/share/keyrings/debian-archive-removed-keys.gpg")
# The digests a Release or Packages file may list, strongest first (Release field, Packages field,
# hashlib name): SHA256 since lenny; etch's indexes have SHA1 and MD5 only.
DIGESTS = (("SHA256", "SHA256", "sha256"), ("SHA1", "SHA1", "sha1"), ("MD5Sum", "MD5sum", "md5"))
COMPRESSIONS = (".xz", ".bz2", ".gz", "")  # of Packages, preferred first; old releases lack .xz
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
    sha256: str  # "" when the index lists no SHA256 (then `digest` holds the strongest it does)
    size: int
    suite: str
    digest: str = ""  # "SHA1:hex" or "MD5Sum:hex": an old index's strongest digest, when it has no SHA256
    signature: str = ""  # set when the index was signed by a key that has expired since (Signer.note)

    @property
    def key(self) -> str:
        """What names the .deb in the cache: its SHA256, else the digest the signed index gives."""
        return self.sha256 or self.digest.replace(":", "-")


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
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
        keyring: Path | Sequence[Path] = DEFAULT_KEYRING,
        *,
        accept_expired: bool = False,  # old releases, snapshots: keys that expired after signing
        indexes: Path | None = None,  # where its Release and Packages are kept (default: cache/indexes)
        max_age: float = 0.0,  # seconds a fetched InRelease is reused without asking the mirror again
        warn: Callable[[str], None] | None = None,
        retry_delay: float = 1.0,
        leases: Leases | None = None,  # the run's, on the .debs it fetches (harness.cache.lease); None: its own
    ) -> None:
        self.mirror = mirror.rstrip("/")
        self.cache = cache
        self.insecure = insecure
        self.keyrings = (keyring,) if isinstance(keyring, Path) else tuple(keyring)
        self.accept_expired = accept_expired
        self.indexes = indexes or cache / "indexes"
        self.signers: dict[str, signatures.Signer] = {}  # suite -> who signed its Release
        self.max_age = max_age
        self.retry_delay = retry_delay
        self.leases = leases or Leases()
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

    def _download(self, url: str, dest: IO[bytes], algorithm: str = "sha256") -> tuple[int, str]:
        """Stream url into dest (truncated first on every try); returns (size, digest)."""

        def stream(response: Any) -> tuple[int, str]:
            dest.seek(0)
            dest.truncate()
            h, size = hashlib.new(algorithm), 0
            for block in iter(lambda: response.read(1 << 20), b""):
                h.update(block)
                dest.write(block)
                size += len(block)
            return size, h.hexdigest()

        return self._fetch(url, stream)

    # -- Release

    def release(self, suite: str) -> Release:
        """The verified Release of `suite`: InRelease, or for old releases Release with its detached
        Release.gpg (fetched afresh unless younger than max_age)."""
        if suite in self._releases:
            return self._releases[suite]
        folder = self.indexes / suite
        fetched: dict[str, bytes] = {}
        for files in (("InRelease",), ("Release", "Release.gpg")):
            cached = [folder / n for n in files]
            if all(c.is_file() and time.time() - c.stat().st_mtime < self.max_age for c in cached):
                fetched = {n: c.read_bytes() for n, c in zip(files, cached, strict=True)}
                break
        if not fetched:
            fetched = self._signed_release(suite)
        body = self._verify(suite, fetched)
        release = Release(body)
        names = {release.get("Suite", ""), release.get("Codename", "")}
        if suite not in names:
            raise InfraError(f"mirror {self.mirror} answered dists/{suite} with the Release of {'/'.join(names)}")
        for name, data in fetched.items():
            path = folder / name
            if not (path.is_file() and path.read_bytes() == data):
                atomic_write(path, data)
        self._releases[suite] = release
        return release

    def _signed_release(self, suite: str) -> dict[str, bytes]:
        base = f"{self.mirror}/dists/{suite}"
        with contextlib.suppress(_NotFound):
            return {"InRelease": self._get(f"{base}/InRelease")}
        try:
            release = self._get(f"{base}/Release")
        except _NotFound:
            raise UserError(
                f"suite {suite} is not on mirror {self.mirror}; use a Debian suite such as bookworm"
            ) from None
        try:
            return {"Release": release, "Release.gpg": self._get(f"{base}/Release.gpg")}
        except _NotFound:
            if self.insecure:
                return {"Release": release}
            raise InfraError(
                f"{base}/Release has no Release.gpg beside it (and there is no InRelease): "
                "unsigned; pass --insecure to use it anyway"
            ) from None

    def _verify(self, suite: str, fetched: dict[str, bytes]) -> str:
        """The signed text of the Release; gpgv writes exactly what it checked, so nothing outside the
        signature can slip into the parsed Release."""
        clearsigned = "InRelease" in fetched
        data = fetched["InRelease"] if clearsigned else fetched["Release"]
        if self.insecure:
            if not self._warned:
                self._warn(f"--insecure: not checking the signature of {self.mirror} indexes")
                self._warned = True
            text = data.decode("utf-8", "replace")
            return _clearsigned_body(text) if clearsigned else text
        what = f"{'InRelease' if clearsigned else 'Release'} of suite {suite} from {self.mirror}"
        body, signer = signatures.verify(
            data, self.keyrings, what, detached=fetched.get("Release.gpg"), accept_expired=self.accept_expired
        )
        self.signers[suite] = signer
        return body.decode("utf-8", "replace")

    # -- Packages

    def packages(self, suite: str, prefix: str = "") -> list[Packages]:
        """main/binary-amd64 stanzas of `suite`, verified against the signed Release. With `prefix`, only
        packages whose name starts with it (parsing a whole index takes ~30 s; kernels need 'linux-')."""
        key = (suite, prefix)
        if key not in self._packages:
            text = self._packages_text(suite, prefix)
            self._packages[key] = list(Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False))
        return self._packages[key]

    def _packages_text(self, suite: str, prefix: str) -> str:
        release = self.release(suite)
        field, _, algorithm = next((d for d in DIGESTS if release.get(d[0])), DIGESTS[0])
        listed = {e["name"]: e for e in release.get(field, [])}
        base = f"{COMPONENT}/binary-{ARCH}/Packages"
        candidates = [base + ext for ext in COMPRESSIONS if base + ext in listed]
        if not candidates:
            raise InfraError(f"Release of {suite} lists no {base}[.xz|.bz2|.gz]; is {ARCH}/{COMPONENT} on the mirror?")
        folder = self.indexes / suite
        for name in candidates:
            digest, size = listed[name][field.lower()].lower(), int(listed[name]["size"])
            ext = name[len(base) :]
            tag = re.sub(r"[^A-Za-z0-9._-]", "_", prefix) or "all"
            filtered = folder / f"{digest}.{tag}.txt"
            if filtered.is_file():
                return filtered.read_text("utf-8", "replace")
            raw = folder / f"{digest}{ext or '.plain'}"
            if not (raw.is_file() and raw.stat().st_size == size and _file_digest(raw, algorithm) == digest):
                data = self._fetch_index(suite, name, digest if field == "SHA256" else "", release)
                if data is None:
                    continue
                got = hashlib.new(algorithm, data).hexdigest()
                if len(data) != size or got != digest:
                    raise InfraError(
                        f"hash mismatch for {name} of {suite}: the signed Release says {field} {digest} "
                        f"({size} bytes), got {got} ({len(data)} bytes)"
                    )
                atomic_write(raw, data)
                # An index is replaced several times a day; drop the ones this Release no longer lists.
                for old in folder.iterdir():
                    if old.name not in ("InRelease", "Release", "Release.gpg") and not old.name.startswith(
                        (digest, ".")
                    ):
                        with contextlib.suppress(OSError):
                            old.unlink()
            text = _decompress_index(raw.read_bytes(), ext, f"{name} of {suite}")
            if prefix:
                # the kernel subset is ~1% of an index: keep it so the next run skips decompression
                text = filter_stanzas(text, prefix)
                atomic_write(filtered, text.encode())
            return text
        raise InfraError(f"{self.mirror}/dists/{suite}/{base}[.xz|.bz2|.gz] listed in Release but not served")

    def _fetch_index(self, suite: str, name: str, sha: str, release: Release) -> bytes | None:
        urls = [f"{self.mirror}/dists/{suite}/{name}"]
        if sha and release.get("Acquire-By-Hash", "").lower() == "yes":
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
        """The .deb in the cache (content-addressed by its signed digest), downloading it if needed:
        leased, and downloaded by one run at a time."""
        path = cached_deb(self.cache, deb)
        field, want = ("SHA256", deb.sha256) if deb.sha256 else deb.digest.split(":", 1)
        algorithm = next(a for f, _, a in DIGESTS if f == field)

        def ready() -> bool:
            return path.is_file() and path.stat().st_size == deb.size and _file_digest(path, algorithm) == want

        return self.leases.ensure(path, ready, lambda: self._download_deb(deb, path, field, want, algorithm))

    def _download_deb(self, deb: Deb, path: Path, field: str, want: str, algorithm: str) -> None:
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        url = f"{self.mirror}/{deb.filename}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-")
        try:
            with os.fdopen(fd, "w+b") as f:
                try:
                    size, got = self._download(url, f, algorithm)
                except _NotFound:
                    raise InfraError(
                        f"{deb.package} {deb.version}: {url} not found (mirror changed since the index?)"
                    ) from None
            # Hashes are checked even with --insecure: they cost nothing and keep the cache honest.
            if got != want or size != deb.size:
                raise InfraError(
                    f"hash mismatch for {deb.package} {deb.version} from {url}: the index says {field} {want} "
                    f"({deb.size} bytes), got {got} ({size} bytes)"
                )
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def cached_deb(cache: Path, deb: Deb) -> Path:
    """Where `fetch_deb` keeps a .deb in the cache."""
    return cache / "debs" / f"{deb.key}.deb"


# What signatures are worth (and why gpgv refused one) is decided in harness.debian.signatures.
signature_ok = signatures.accepted
gpgv_reason = signatures.gpgv_reason


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
        elif ext == ".bz2":
            data = bz2.decompress(data)
        elif ext == ".gz":
            data = zlib.decompress(data, wbits=31)
    except (lzma.LZMAError, zlib.error, OSError, ValueError) as e:
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


def deb_of(stanza: Mapping[str, str], suite: str) -> Deb:
    """The .deb a stanza lists, with its SHA256, or where an old index has none, its strongest digest."""
    try:
        sha256 = stanza.get("SHA256", "").lower()
        digest = (
            ""
            if sha256
            else next(f"{release}:{stanza[field].lower()}" for release, field, _ in DIGESTS if stanza.get(field))
        )
        return Deb(stanza["Package"], stanza["Version"], stanza["Filename"], sha256, int(stanza["Size"]), suite, digest)
    except (KeyError, ValueError, StopIteration) as e:
        raise InfraError(
            f"index entry for {stanza.get('Package', '?')} in {suite} is incomplete: {e or 'no digest'}"
        ) from None
