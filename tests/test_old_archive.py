"""Debian's archive of old releases and its snapshot service, simulated.

Neither service is reachable from this machine, so a local HTTP server stands in for both, serving
trees in their old layouts (Release + detached Release.gpg, no InRelease; Packages.bz2/.gz with only
SHA1 and MD5 digests; gzip-compressed .debs; etch's package names), signed at test time with
throwaway keys made with a faked clock: one that expired after signing (as Debian's etch and lenny
keys did) and one whose signature was made after it expired. The main mirror is the same server,
holding none of those suites.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import hashlib
import http.server
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_kernels import build_deb, bzimage, tiny_elf

from harness.debian import signatures
from harness.errors import InfraError, UserError
from harness.kernels.sources import Context, Kernels, debian
from harness.kernels.sources.debian import DebianKernel
from harness.yamlfile import Where

ABI = "2.6.18-6-amd64"  # etch's last kernel ABI
VERSION = "2.6.18.dfsg.1-26etch2"
STAMP = "20150428T160000Z"  # the snapshot the test's service holds


@dataclass
class Keys:
    home: Path
    keyring: Path  # the "removed keys" keyring: both throwaway keys, expired now

    def gpg(self, *args: str, at: str) -> None:
        subprocess.run(
            [
                "gpg",
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--faked-system-time",
                at,
                *args,
            ],
            check=True,
            capture_output=True,
            env={"GNUPGHOME": str(self.home), "PATH": "/usr/bin:/bin"},
        )

    def sign(self, user: str, data: Path, at: str) -> bytes:
        sig = data.with_name(data.name + ".gpg")
        self.gpg("-u", user, "--armor", "--detach-sign", "-o", str(sig), str(data), at=at)
        return sig.read_bytes()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """'etch' expires 2012-01-01 and signed in 2011; 'late' signed in 2013, then was given a 2012 expiry."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    k = Keys(home, home / "removed-keys.gpg")
    for user, expiry in (("Etch Archive <etch", "2011-12-31"), ("Late Signer <late", "never")):
        k.gpg("--quick-gen-key", f"{user}@example.invalid>", "ed25519", "sign", expiry, at="20100101T000000")
    k.keyring.write_bytes(
        subprocess.run(
            ["gpg", "--export"], check=True, capture_output=True, env={"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
        ).stdout
    )
    yield k
    subprocess.run(
        ["gpgconf", "--kill", "gpg-agent"], env={"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True
    )  # the agent gpg started for this home goes with it


@pytest.fixture(scope="module")
def etch_deb(tmp_path_factory: pytest.TempPathFactory, build_ko: Callable[[str, Sequence[str]], bytes]) -> bytes:
    """etch's kernel package: boot/vmlinuz, plain .ko modules, data.tar.gz."""
    mods = f"lib/modules/{ABI}"
    return build_deb(
        tmp_path_factory.mktemp("deb"),
        f"linux-image-{ABI}",
        VERSION,
        {
            f"boot/vmlinuz-{ABI}": bzimage(tiny_elf(xen_note=False, banner=ABI), "gzip", ABI),
            f"{mods}/kernel/drivers/net/e1000/e1000.ko": build_ko("e1000", []),
            f"{mods}/modules.dep": b"kernel/drivers/net/e1000/e1000.ko:\n",
        },
        compression="gzip",
    )


@dataclass
class Services:
    root: Path
    url: str
    keys: Keys

    @property
    def old(self) -> Path:
        return self.root / "debian-archive" / "debian"

    def snapshot(self, stamp: str = STAMP) -> Path:
        return self.root / "archive" / "debian" / stamp


@pytest.fixture
def services(tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """One local HTTP server: /debian (the main mirror, without old suites), /debian-archive/debian,
    and /archive/debian/<timestamp>, which, as Debian's snapshot service does, redirects a moment to
    the last snapshot taken at or before it."""
    root = tmp_path / "www"
    (root / "debian").mkdir(parents=True)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            parts = self.path.split("/")
            if (
                self.path.startswith("/archive/debian/")
                and len(parts) > 4
                and not (root / "archive" / "debian" / parts[3]).is_dir()
            ):
                taken = sorted(p.name for p in (root / "archive" / "debian").iterdir() if p.name <= parts[3])
                if taken:
                    self.send_response(302)
                    self.send_header("Location", "/".join([*parts[:3], taken[-1], *parts[4:]]))
                    self.end_headers()
                    return
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HARNESS_DEBIAN_MIRROR", f"{url}/debian")
    monkeypatch.setenv("HARNESS_DEBIAN_ARCHIVE", f"{url}/debian-archive/debian")
    monkeypatch.setenv("HARNESS_DEBIAN_SNAPSHOT", url)
    monkeypatch.setenv("HARNESS_DEBIAN_SECURITY_MIRROR", f"{url}/debian-security")
    monkeypatch.setattr(debian, "DEFAULT_KEYRING", keys.keyring)
    monkeypatch.setattr(debian, "REMOVED_KEYRING", keys.keyring)
    try:
        yield Services(root, url, keys)
    finally:
        server.shutdown()
        server.server_close()


def publish_old(
    base: Path,
    suite: str,
    deb: bytes,
    keys: Keys,
    *,
    signer: str = "etch",
    signed_at: str = "20110601T000000",
    codename: str | None = None,
) -> None:
    """dists/<suite> as etch had it: Release + Release.gpg, Packages.bz2/.gz, SHA1 and MD5 only."""
    filename = f"pool/main/l/linux-2.6/linux-image-{ABI}_{VERSION}_amd64.deb"
    (base / filename).parent.mkdir(parents=True, exist_ok=True)
    (base / filename).write_bytes(deb)
    packages = (
        f"Package: linux-image-2.6-amd64\nVersion: 2.6.18+6etch3\nDepends: linux-image-{ABI}\n"
        "Filename: pool/main/l/linux-latest-2.6/meta.deb\nSize: 10\nMD5sum: " + "0" * 32 + "\n\n"
        "Package: linux-image-amd64\nVersion: 2.6.18+6etch3\nDepends: linux-image-2.6-amd64\n"
        "Filename: pool/main/l/linux-latest-2.6/meta2.deb\nSize: 10\nMD5sum: " + "1" * 32 + "\n\n"
        f"Package: linux-image-{ABI}\nVersion: {VERSION}\nDepends: module-init-tools\nFilename: {filename}\n"
        f"Size: {len(deb)}\nMD5sum: {hashlib.md5(deb).hexdigest()}\nSHA1: {hashlib.sha1(deb).hexdigest()}\n"
    ).encode()
    dists = base / "dists" / suite
    files = {
        "main/binary-amd64/Packages.bz2": bz2.compress(packages),
        "main/binary-amd64/Packages.gz": gzip.compress(packages),
    }
    for name, data in files.items():
        (dists / name).parent.mkdir(parents=True, exist_ok=True)
        (dists / name).write_bytes(data)
    release = dists / "Release"
    release.write_text(
        f"Origin: Debian\nSuite: oldstable\nCodename: {codename or suite}\nArchitectures: amd64\nComponents: main\n"
        "MD5Sum:\n"
        + "".join(f" {hashlib.md5(d).hexdigest()} {len(d)} {n}\n" for n, d in files.items())
        + "SHA1:\n"
        + "".join(f" {hashlib.sha1(d).hexdigest()} {len(d)} {n}\n" for n, d in files.items())
    )
    keys.sign(f"{signer}@example.invalid", release, signed_at)


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def kernels_of(tmp_path: Path) -> Kernels:
    return Kernels(Context(tmp_path / "cache", log=lambda _: None))


def test_a_suite_the_mirror_lacks_comes_from_the_archive_of_old_releases(
    services: Services, etch_deb: bytes, tmp_path: Path
) -> None:
    """etch, as the archive keeps it: signed by a key that has expired since, SHA1 and MD5 digests
    only, bzip2 indexes, a gzip .deb, a meta chain (linux-image-amd64 -> 2.6 -> 2.6.18-6)."""
    publish_old(services.old, "etch", etch_deb, services.keys)
    kernel = kernels_of(tmp_path).fetch(DebianKernel(("etch",)))
    assert kernel.release == ABI
    (deb,) = kernel.debs
    assert (deb.sha256, deb.digest) == ("", f"SHA1:{hashlib.sha1(etch_deb).hexdigest()}")
    assert "a key that expired 2011-12-31" in deb.signature and "signed 2011-06-01" in deb.signature
    assert (kernel.image.parent / f"vmlinuz-{ABI}").is_file() or kernel.image.is_file()


def test_without_the_archive_setting_an_old_suite_says_where_it_lives(
    services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HARNESS_DEBIAN_ARCHIVE")
    with pytest.raises(UserError, match="suite etch is not on mirror .*; an old release .* HARNESS_DEBIAN_ARCHIVE="):
        kernels_of(tmp_path).resolve(DebianKernel(("etch",)))


@pytest.mark.parametrize("tamper", ["Release", "Packages", "deb"])
def test_a_tampered_file_of_an_old_release_is_refused_with_one_line(
    services: Services, etch_deb: bytes, tmp_path: Path, tamper: str
) -> None:
    publish_old(services.old, "etch", etch_deb, services.keys)
    dists = services.old / "dists" / "etch"
    if tamper == "Release":
        release = dists / "Release"
        release.write_text(release.read_text().replace("Origin: Debian", "Origin: Evil"))
        match = "Release of suite etch .* failed signature check .*BAD signature"
    elif tamper == "Packages":
        for name in ("Packages.bz2", "Packages.gz"):
            path = dists / "main" / "binary-amd64" / name
            path.write_bytes(flip_last_byte(path.read_bytes()))
        match = "hash mismatch for main/binary-amd64/Packages.bz2 of etch: the signed Release says SHA1"
    else:
        (deb,) = (services.old / "pool").rglob("*.deb")
        deb.write_bytes(flip_last_byte(deb.read_bytes()))
        match = f"hash mismatch for linux-image-{ABI} {VERSION} .* the index says SHA1"
    with pytest.raises(InfraError, match=match) as refused:
        kernels_of(tmp_path).fetch(DebianKernel(("etch",)))
    assert "\n" not in str(refused.value)


def test_a_signature_made_after_its_key_expired_is_refused(services: Services, etch_deb: bytes, tmp_path: Path) -> None:
    """'late' signed in 2013 with no expiry, then was given a 2012 one: gpgv calls the signature good."""
    publish_old(services.old, "etch", etch_deb, services.keys, signer="late", signed_at="20130601T000000")
    services.keys.gpg("--quick-set-expire", _fingerprint(services.keys, "late"), "2012-01-01", at="20110101T000000")
    services.keys.keyring.write_bytes(
        subprocess.run(
            ["gpg", "--export"],
            check=True,
            capture_output=True,
            env={"GNUPGHOME": str(services.keys.home), "PATH": "/usr/bin:/bin"},
        ).stdout
    )
    try:
        with pytest.raises(InfraError, match="signed by a key after it had expired"):
            kernels_of(tmp_path).resolve(DebianKernel(("etch",)))
    finally:  # the module's other tests use the keyring without that expiry
        services.keys.gpg("--quick-set-expire", _fingerprint(services.keys, "late"), "0", at="20110101T000000")
        services.keys.keyring.write_bytes(
            subprocess.run(
                ["gpg", "--export"],
                check=True,
                capture_output=True,
                env={"GNUPGHOME": str(services.keys.home), "PATH": "/usr/bin:/bin"},
            ).stdout
        )


def _fingerprint(keys: Keys, user: str) -> str:
    out = subprocess.run(
        ["gpg", "--with-colons", "--list-keys", f"{user}@example.invalid"],
        check=True,
        capture_output=True,
        text=True,
        env={"GNUPGHOME": str(keys.home), "PATH": "/usr/bin:/bin"},
    )
    return next(line.split(":")[9] for line in out.stdout.splitlines() if line.startswith("fpr:"))


def test_the_main_mirror_never_takes_a_signature_by_an_expired_key(
    services: Services, etch_deb: bytes, tmp_path: Path
) -> None:
    """Today's suites are held to apt's rule: a key that has expired is no key."""
    publish_old(services.root / "debian", "bookworm", etch_deb, services.keys)
    with pytest.raises(InfraError, match="signed by an expired key"):
        kernels_of(tmp_path).resolve(DebianKernel(("bookworm",)))


def test_a_snapshot_date_resolves_the_suite_as_it_was_that_day(
    services: Services, etch_deb: bytes, tmp_path: Path
) -> None:
    """{snapshot: 2015-04-29, suite: sid}: the end of that day, redirected to the last snapshot before it."""
    publish_old(services.snapshot(), "sid", etch_deb, services.keys, codename="sid")
    spec = debian.SOURCE.parse(
        {"debian": {"snapshot": dt.date(2015, 4, 29), "suite": "sid"}}, Where("m.yaml", None), ("kernels", 0)
    )
    assert spec.snapshot == "20150429T235959Z" and spec.label == "sid-snapshot-20150429"
    kernel = kernels_of(tmp_path).fetch(spec)
    assert kernel.release == ABI and kernel.source == "debian:sid@snapshot=20150429T235959Z"
    with pytest.raises(UserError, match="no snapshot service is known"):
        debian.Mirrors(debian.Archive("http://127.0.0.1:9/debian", tmp_path))("sid", spec.snapshot)


# gpgv 2.2's status lines for one signature by a key that expired on 2012-01-01, made on 2010-06-01
# (then made on 2013-06-01, after the expiry): gpgv says "Good signature" and exits 0 for both.
EXPIRED_KEY = """[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED BBDF71F363D67A6BAA73FA2CA3E4C6C32BEA2B97 0
[GNUPG:] KEYEXPIRED 1325376000
[GNUPG:] SIG_ID i+eU5Dmq0FlLgX/e86mk7RtmoYE {day} {made}
[GNUPG:] KEY_CONSIDERED BBDF71F363D67A6BAA73FA2CA3E4C6C32BEA2B97 0
[GNUPG:] EXPKEYSIG A3E4C6C32BEA2B97 Old Archive <old@example.invalid>
[GNUPG:] VALIDSIG BBDF71F363D67A6BAA73FA2CA3E4C6C32BEA2B97 {day} {made} 0 4 0 1 10 00 {fpr}
""".replace("{fpr}", "BBDF71F363D67A6BAA73FA2CA3E4C6C32BEA2B97")


def test_a_signature_by_an_expired_key_counts_only_where_allowed_and_only_if_made_before_the_expiry() -> None:
    before = EXPIRED_KEY.format(day="2010-06-01", made=1275350400)
    after = EXPIRED_KEY.format(day="2013-06-01", made=1370044800)
    signer = signatures.accepted(before, 0, accept_expired=True)
    assert signer is not None and signer.expired == 1325376000
    assert signer.note().startswith("signed 2010-06-01 by BBDF71F3") and "expired 2012-01-01" in signer.note()
    assert signatures.accepted(before, 0) is None  # today's suites: apt's rule
    assert signatures.accepted(after, 0, accept_expired=True) is None
    assert signatures.refusal(after, accept_expired=True) == "signed by a key after it had expired"
    assert signatures.accepted("[GNUPG:] BADSIG A3E4 k\n" + before, 1, accept_expired=True) is None
    good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG AAAA k\n[GNUPG:] VALIDSIG FFFF 2026-01-01 1790000000\n"
    assert signatures.accepted(good + before, 0, accept_expired=True) == signatures.Signer("FFFF", 1790000000)
