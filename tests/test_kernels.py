import gzip
import hashlib
import json
import lzma
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from conftest import http_root

from harness import kernels
from harness.debian.archive import Archive, Deb, gpgv_reason, signature_ok
from harness.errors import InfraError, UserError
from harness.kernels import Kernel, devices, kernel_key, list_cached
from harness.kernels.bzimage import bzimage_version, decompress_payload, has_pvh_note, vmlinux_from_image
from harness.kernels.sources import debian
from harness.kernels.sources.base import Context
from harness.kernels.sources.debian import DebianKernel, fetch, resolve, resolve_in
from harness.kernels.sources.debian_index import Build, list_builds, newest_per_line
from harness.kernels.sources.path import PathKernel, from_path

# --- synthetic stanzas -------------------------------------------------------------------------


def stanza(package: str, version: str, depends: str = "", suite: str = "x") -> dict[str, str]:
    digest = hashlib.sha256(f"{package} {version} {suite}".encode()).hexdigest()
    s = {
        "Package": package,
        "Version": version,
        "Architecture": "amd64",
        "Filename": f"pool/main/l/linux/{package}_{version}_amd64.deb",
        "Size": "1234",
        "SHA256": digest,
    }
    if depends:
        s["Depends"] = depends
    return s


def pre7(abi: str, version: str) -> list[dict[str, str]]:
    """The 5.10-6.12 layout: linux-image-<abi> holds vmlinuz and modules."""
    return [
        stanza("linux-image-amd64", version, f"linux-image-{abi} (= {version})"),
        stanza(
            f"linux-image-{abi}",
            version,
            "kmod, linux-base (>= 4.3~), initramfs-tools | linux-initramfs-tool",
        ),
        stanza(f"linux-image-{abi}-unsigned", version, "kmod, linux-base (>= 4.3~)"),
        stanza(f"linux-image-{abi}-dbg", version),
    ]


def split7(abi: str, version: str, signed: bool = True) -> list[dict[str, str]]:
    """The 7.x layout: linux-image-<abi> is a small meta over binary + modules + base."""
    binary = f"linux-binary-{abi}" if signed else f"linux-binary-unsigned-{abi}"
    pin = f"(= {version})"
    out = [
        stanza(
            "linux-image-amd64",
            version,
            f"linux-base-amd64 {pin}, linux-image-{abi} {pin}, linux-modules-amd64 {pin}",
        ),
        stanza("linux-modules-amd64", version, f"linux-modules-{abi} {pin}"),
        stanza(
            f"linux-image-{abi}",
            version,
            f"dracut | initramfs-tools, linux-base-{abi} {pin}, {binary} {pin}, linux-modules-{abi} {pin}",
        ),
        stanza(f"linux-binary-unsigned-{abi}", version, f"linux-base-{abi} {pin}"),
        stanza(f"linux-modules-{abi}", version, f"kmod, linux-base-{abi} {pin}"),
        stanza(f"linux-base-{abi}", version),
    ]
    if signed:
        out.append(stanza(f"linux-binary-{abi}", version, f"linux-base-{abi} {pin}"))
    return out


BOOKWORM = pre7("6.1.0-47-amd64", "6.1.170-3") + pre7("6.1.0-50-amd64", "6.1.176-1")[1:]
# Two linux-image-amd64 versions in one index: the newer must win.
BOOKWORM.append(stanza("linux-image-amd64", "6.1.176-1", "linux-image-6.1.0-50-amd64 (= 6.1.176-1)"))


def test_pre7_meta_resolves_to_the_image_package() -> None:
    r = resolve_in(DebianKernel(("bookworm",)), {"bookworm": BOOKWORM})
    assert (r.suite, r.abi, r.version) == ("bookworm", "6.1.0-50-amd64", "6.1.176-1")
    assert r.package == "linux-image-6.1.0-50-amd64"
    image = next(s for s in BOOKWORM if s["Package"] == r.package)
    assert r.debs == (
        Deb(
            "linux-image-6.1.0-50-amd64",
            "6.1.176-1",
            "pool/main/l/linux/linux-image-6.1.0-50-amd64_6.1.176-1_amd64.deb",
            image["SHA256"],
            1234,
            "bookworm",
        ),
    )


def test_7x_split_prefers_the_signed_binary_named_in_depends() -> None:
    abi = "7.3.4+deb13-amd64"
    r = resolve_in(DebianKernel(("trixie-backports",)), {"trixie-backports": split7(abi, "7.3.4-1~bpo13+1")})
    assert r.abi == abi and r.version == "7.3.4-1~bpo13+1" and r.package == f"linux-image-{abi}"
    # linux-base-<abi> rides along: it holds modules.builtin, without which built-in drivers look missing
    assert [d.package for d in r.debs] == [f"linux-binary-{abi}", f"linux-modules-{abi}", f"linux-base-{abi}"]


def test_7x_split_with_only_the_unsigned_binary() -> None:
    abi = "7.2.13+deb14-amd64"
    r = resolve_in(DebianKernel(("sid",)), {"sid": split7(abi, "7.2.13-1", signed=False)})
    assert [d.package for d in r.debs][0] == f"linux-binary-unsigned-{abi}"


def test_newest_across_suites_wins() -> None:
    indexes = {
        "sid": split7("7.2.13+deb14-amd64", "7.2.13-1"),
        "trixie-backports": split7("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"),
    }
    r = resolve_in(DebianKernel(("sid", "trixie-backports")), indexes)
    assert (r.suite, r.abi) == ("trixie-backports", "7.3.4+deb13-amd64")
    assert all(d.suite == "trixie-backports" for d in r.debs)
    older_first = resolve_in(DebianKernel(("trixie-backports", "sid")), indexes)
    assert older_first.abi == r.abi


def test_abi_pinning_picks_the_concrete_package() -> None:
    r = resolve_in(DebianKernel(("bookworm",), abi="6.1.0-47-amd64"), {"bookworm": BOOKWORM})
    assert (r.abi, r.version) == ("6.1.0-47-amd64", "6.1.170-3")
    assert r.debs[0].package == "linux-image-6.1.0-47-amd64"


def test_abi_pinning_accepts_an_unsigned_only_image() -> None:
    index = [stanza("linux-image-6.1.0-9-amd64-unsigned", "6.1.27-1")]
    r = resolve_in(DebianKernel(("bookworm",), abi="6.1.0-9-amd64"), {"bookworm": index})
    assert (r.abi, r.debs[0].package) == ("6.1.0-9-amd64", "linux-image-6.1.0-9-amd64-unsigned")


def test_unknown_abi_lists_available_ones_newest_first() -> None:
    with pytest.raises(UserError, match=r"ABI 5\.10\.0-1-amd64 .*available ABIs: 6\.1\.0-50-amd64, 6\.1\.0-47-amd64$"):
        resolve_in(DebianKernel(("bookworm",), abi="5.10.0-1-amd64"), {"bookworm": BOOKWORM})


def test_unknown_package_and_suite_are_user_errors() -> None:
    with pytest.raises(UserError, match="package linux-image-rt-amd64 is not in bookworm"):
        resolve_in(DebianKernel(("bookworm",), package="linux-image-rt-amd64"), {"bookworm": BOOKWORM})
    with pytest.raises(UserError, match="suite 'bookwrom' is not on the mirror"):
        resolve_in(DebianKernel(("bookwrom",)), {"bookworm": BOOKWORM})
    with pytest.raises(UserError, match="debug-symbols"):
        resolve_in(DebianKernel(("bookworm",), package="linux-image-6.1.0-50-amd64-dbg"), {"bookworm": BOOKWORM})


def test_meta_that_leads_nowhere_is_a_user_error() -> None:
    index = [stanza("linux-headers-amd64", "1", "linux-headers-6.1.0-50-amd64 (= 1)")]
    with pytest.raises(UserError, match="leads to no linux-image-<abi>"):
        resolve_in(DebianKernel(("bookworm",), package="linux-headers-amd64"), {"bookworm": index})


# --- synthetic kernels -------------------------------------------------------------------------


def tiny_elf(xen_note: bool = True, banner: str = "6.1.0-test") -> bytes:
    """An ELF64 executable with one PT_NOTE segment: all QEMU and the harness look at."""
    name = b"Xen\0"
    note = struct.pack("<III", len(name), 4, 18 if xen_note else 5) + name + struct.pack("<I", 0x1000000)
    text = f"Linux version {banner} (test@example) #1 SMP\0".encode()
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 64 + 56, 0x1000000, 0x1000000, len(note), len(note), 4)
    return header + phdr + note + text


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if kind == "zstd":
        return zstandard.ZstdCompressor(write_content_size=False).compress(data)
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    if kind == "bzip2":
        import bz2

        return bz2.compress(data)
    if kind == "lz4":
        return b"\x02\x21\x4c\x18" + data
    raise AssertionError(kind)


def bzimage(payload_elf: bytes, kind: str = "gzip", version: str = "6.1.0-test", setup_sects: int = 1) -> bytes:
    """A bzImage as far as its setup header goes: boot flag, HdrS, version string and payload fields.
    The kernel build appends the decompressed size after the compressed stream; so do we."""
    setup = bytearray((setup_sects or 4) * 512 + 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    struct.pack_into("<H", setup, 0x20E, 0x300 - 0x200)
    banner = f"{version} (test@example) #1 SMP\0".encode()
    setup[0x300 : 0x300 + len(banner)] = banner
    payload = compress(kind, payload_elf) + struct.pack("<I", len(payload_elf))
    stub = b"\x90" * 64  # stands in for the decompressor code before the payload
    struct.pack_into("<II", setup, 0x248, len(stub), len(payload))
    return bytes(setup) + stub + payload + b"\0" * 32


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "lzma", "bzip2"])
def test_vmlinux_from_bzimage(kind: str) -> None:
    elf = tiny_elf()
    assert has_pvh_note(elf)
    assert decompress_payload(compress(kind, elf) + b"\1\2\3\4") == elf
    assert vmlinux_from_image(bzimage(elf, kind)) == elf


def test_vmlinux_none_without_note_or_for_lz4() -> None:
    assert vmlinux_from_image(bzimage(tiny_elf(xen_note=False))) is None
    assert vmlinux_from_image(bzimage(tiny_elf(), "lz4")) is None
    assert vmlinux_from_image(os.urandom(4096)) is None


def test_setup_sects_zero_means_four_and_version_is_read() -> None:
    image = bzimage(tiny_elf(), setup_sects=0)
    assert vmlinux_from_image(image) == tiny_elf()
    assert bzimage_version(image) == "6.1.0-test"


def test_from_path_bzimage(tmp_path: Path) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(tiny_elf(), "xz", version="6.6.6-custom"))
    k = from_path(PathKernel(path), tmp_path / "cache")
    assert k.release == "6.6.6-custom" and k.image == path and k.modules_dir is None
    assert k.vmlinux is not None and k.vmlinux.read_bytes() == tiny_elf()
    assert k.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert k.source == f"path:{path}" and k.package is None and k.info().label == "6.6.6-custom"
    modules = tmp_path / "lib" / "modules" / "6.6.6-mine"
    modules.mkdir(parents=True)
    assert from_path(PathKernel(path, modules), tmp_path / "cache").release == "6.6.6-mine"


def test_from_path_pvh_elf_is_its_own_vmlinux(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(tiny_elf(banner="7.0.0-elf"))
    k = from_path(PathKernel(path), tmp_path / "cache")
    assert k.vmlinux == path and k.release == "7.0.0-elf"


def test_from_path_rejects_non_kernels(tmp_path: Path) -> None:
    plain_elf = tmp_path / "vmlinux-nopvh"
    plain_elf.write_bytes(tiny_elf(xen_note=False))
    with pytest.raises(UserError, match="without a PVH entry note"):
        from_path(PathKernel(plain_elf), tmp_path)
    junk = tmp_path / "random.bin"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(UserError, match="not a Linux kernel image"):
        from_path(PathKernel(junk), tmp_path)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(bzimage(tiny_elf())[:1100])
    with pytest.raises(UserError, match="a bzImage header, but not a whole kernel .truncated"):
        from_path(PathKernel(truncated), tmp_path)
    with pytest.raises(UserError, match="cannot read"):
        from_path(PathKernel(tmp_path / "missing"), tmp_path)


def test_signature_verdict() -> None:
    good = "[GNUPG:] GOODSIG AAAA k\n[GNUPG:] VALIDSIG FFFF 2026-01-01\n"
    assert signature_ok(good, 0)
    assert not signature_ok(good, 1)
    missing_second_key = good + "[GNUPG:] ERRSIG BBBB 1 8 01 1793347770 9 FPR\n[GNUPG:] NO_PUBKEY BBBB\n"
    assert signature_ok(missing_second_key, 2)
    assert not signature_ok("[GNUPG:] BADSIG AAAA k\n" + good, 1)
    assert not signature_ok("[GNUPG:] ERRSIG BBBB 1 8 01 1793347770 9 FPR\n", 2)


# --- a fake mirror over HTTP --------------------------------------------------------------------


@dataclass
class Signer:
    home: Path
    keyring: Path

    def clearsign(self, text: str, out: Path) -> None:
        src = out.with_name("Release")
        src.write_text(text)
        gpg = ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]
        subprocess.run([*gpg, "--clearsign", "-o", str(out), str(src)], check=True, env=self.env, capture_output=True)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home)}


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    """A throwaway signing key: the fake mirror is signed with it and gpgv checks against it."""
    if not all(shutil.which(t) for t in ("gpg", "gpgv", "dpkg-deb")):
        pytest.skip("needs gpg, gpgv and dpkg-deb")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    s = Signer(home, home / "keyring.gpg")
    gpg = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", "Harness Test <test@example.invalid>", "ed25519", "sign", "never"],
        check=True,
        env=s.env,
        capture_output=True,
    )
    s.keyring.write_bytes(subprocess.run(["gpg", "--export"], check=True, env=s.env, capture_output=True).stdout)
    yield s
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=s.env, capture_output=True)


def build_deb(work: Path, package: str, version: str, files: dict[str, bytes], compression: str = "xz") -> bytes:
    root = work / f"{package}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: Test <test@example.invalid>\nDescription: fake kernel part\n"
    )
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    out = work / f"{package}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


OLD_ABI, NEW_ABI = "6.1.0-9-amd64", "7.3.4+deb13-amd64"


@pytest.fixture(scope="module")
def debs(
    tmp_path_factory: pytest.TempPathFactory, build_ko: Callable[[str, Sequence[str]], bytes]
) -> dict[str, tuple[str, bytes]]:
    """package -> (version, .deb bytes): one pre-7.x image package and the three 7.x parts. Their
    modules are real ELF objects: virtio_net with what it depends on, and a sound driver no guest
    loads (the unpacked kernel keeps the first and not the second)."""
    work = tmp_path_factory.mktemp("debs")
    old_mods = f"lib/modules/{OLD_ABI}"
    new_mods = f"usr/lib/modules/{NEW_ABI}"
    return {
        f"linux-image-{OLD_ABI}": (
            "6.1.27-1",
            build_deb(
                work,
                f"linux-image-{OLD_ABI}",
                "6.1.27-1",
                {
                    f"boot/vmlinuz-{OLD_ABI}": bzimage(tiny_elf(), "xz", OLD_ABI),
                    f"boot/System.map-{OLD_ABI}": b"not needed\n",
                    f"{old_mods}/kernel/drivers/net/virtio_net.ko": build_ko("virtio_net", ["failover"]),
                    f"{old_mods}/kernel/net/core/failover.ko": build_ko("failover", []),
                    f"{old_mods}/kernel/sound/pci/snd-hda-intel.ko": build_ko("snd_hda_intel", []),
                    f"{old_mods}/modules.builtin": b"kernel/drivers/block/loop.ko\n",
                    f"{old_mods}/modules.order": b"kernel/drivers/net/virtio_net.ko\n",
                    "usr/share/doc/x/changelog": b"not needed\n",
                },
            ),
        ),
        f"linux-binary-{NEW_ABI}": (
            "7.3.4-1",
            build_deb(
                work,
                f"linux-binary-{NEW_ABI}",
                "7.3.4-1",
                {f"{new_mods}/vmlinuz": bzimage(tiny_elf(), "zstd", NEW_ABI)},
                compression="zstd",
            ),
        ),
        f"linux-modules-{NEW_ABI}": (
            "7.3.4-1",
            build_deb(
                work,
                f"linux-modules-{NEW_ABI}",
                "7.3.4-1",
                {
                    f"{new_mods}/kernel/drivers/net/virtio_net.ko.xz": lzma.compress(build_ko("virtio_net", [])),
                    f"{new_mods}/kernel/sound/pci/snd-hda-intel.ko.xz": lzma.compress(build_ko("snd_hda_intel", [])),
                },
                compression="zstd",
            ),
        ),
        f"linux-base-{NEW_ABI}": (
            "7.3.4-1",
            build_deb(
                work,
                f"linux-base-{NEW_ABI}",
                "7.3.4-1",
                {
                    f"{new_mods}/modules.builtin": b"kernel/drivers/virtio/virtio_pci.ko\n",
                    f"{new_mods}/config": b"CONFIG_PVH=y\n",
                },
            ),
        ),
    }


@dataclass
class Mirror:
    root: Path
    url: str
    requests: list[str] = field(default_factory=list)

    def count(self, fragment: str) -> int:
        return sum(fragment in r for r in self.requests)


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    """A plain HTTP server on 127.0.0.1 over tmp_path/mirror, recording request paths."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "mirror"
    root.mkdir()
    seen: list[str] = []
    with http_root(root, seen.append) as url:
        yield Mirror(root, f"{url}/debian", seen)


def publish(
    mirror: Mirror,
    debs: dict[str, tuple[str, bytes]],
    signer: Signer | None,
    suite: str = "bookworm",
    *,
    wrong_packages_hash: bool = False,
    by_hash: bool = False,
) -> None:
    """Lay out dists/<suite> and pool/ like a Debian mirror, signing InRelease unless signer is None."""
    base = mirror.root / "debian"
    paragraphs = []
    for package, (version, data) in debs.items():
        filename = f"pool/main/l/linux/{package}_{version}_amd64.deb"
        (base / filename).parent.mkdir(parents=True, exist_ok=True)
        (base / filename).write_bytes(data)
        deps = ""
        if package == f"linux-image-{OLD_ABI}":
            deps = "kmod"
        paragraphs.append(
            f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
            + (f"Depends: {deps}\n" if deps else "")
            + f"Filename: {filename}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    pin = "(= 7.3.4-1)"
    paragraphs += [
        f"Package: linux-image-amd64\nVersion: 7.3.4-1\nDepends: linux-image-{NEW_ABI} {pin}\n"
        "Filename: pool/main/l/linux-signed-amd64/meta.deb\nSize: 10\nSHA256: " + "0" * 64 + "\n",
        f"Package: linux-image-{NEW_ABI}\nVersion: 7.3.4-1\nDepends: linux-base-{NEW_ABI} {pin}, "
        f"linux-binary-{NEW_ABI} {pin}, linux-modules-{NEW_ABI} {pin}\n"
        "Filename: pool/main/l/linux-signed-amd64/image.deb\nSize: 10\nSHA256: " + "1" * 64 + "\n",
        "Package: zsh\nVersion: 5.9-4\nFilename: pool/main/z/zsh/zsh_5.9-4_amd64.deb\nSize: 1\nSHA256: "
        + "2" * 64
        + "\n",
    ]
    packages = "\n".join(paragraphs).encode()
    binary = base / "dists" / suite / "main" / "binary-amd64"
    binary.mkdir(parents=True, exist_ok=True)
    files = {
        "main/binary-amd64/Packages.xz": lzma.compress(packages),
        "main/binary-amd64/Packages.gz": gzip.compress(packages),
    }
    lines = []
    for name, data in files.items():
        path = base / "dists" / suite / name
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        if by_hash:
            (binary / "by-hash" / "SHA256").mkdir(parents=True, exist_ok=True)
            (binary / "by-hash" / "SHA256" / digest).write_bytes(data)
        if wrong_packages_hash:
            digest = hashlib.sha256(b"something else").hexdigest()
        lines.append(f" {digest} {len(data)} {name}")
    release = (
        f"Origin: Debian\nSuite: oldstable\nCodename: {suite}\nArchitectures: amd64\nComponents: main\n"
        + ("Acquire-By-Hash: yes\n" if by_hash else "")
        + "SHA256:\n"
        + "\n".join(lines)
        + "\n"
    )
    inrelease = base / "dists" / suite / "InRelease"
    if signer is None:
        inrelease.write_text(release)
    else:
        signer.clearsign(release, inrelease)


def archive(mirror: Mirror, signer: Signer, cache: Path, **kwargs: object) -> Archive:
    return Archive(mirror.url, cache, keyring=signer.keyring, retry_delay=0, **kwargs)  # type: ignore[arg-type]


def test_signed_index_is_accepted_and_parsed(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer, by_hash=True)
    a = archive(mirror, signer, tmp_path / "cache")
    kernels = a.packages("bookworm", "linux-")
    assert {p["Package"] for p in kernels} == set(debs) | {"linux-image-amd64", f"linux-image-{NEW_ABI}"}
    assert len(a.packages("bookworm")) == len(kernels) + 1  # zsh too without the prefix
    assert mirror.count("/by-hash/SHA256/") == 1  # the xz index, fetched once, by its hash
    r = resolve(DebianKernel(("bookworm",)), a)
    assert (r.abi, r.version) == (NEW_ABI, "7.3.4-1")
    with pytest.raises(UserError, match=f"suite trixie is not on mirror {mirror.url}"):
        a.packages("trixie")


def test_index_cache_and_max_age(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer)
    cache = tmp_path / "cache"
    archive(mirror, signer, cache).packages("bookworm", "linux-")
    assert (mirror.count("InRelease"), mirror.count("Packages")) == (1, 1)
    archive(mirror, signer, cache).packages("bookworm", "linux-")  # InRelease again: new kernels show up
    assert (mirror.count("InRelease"), mirror.count("Packages")) == (2, 1)
    archive(mirror, signer, cache, max_age=3600).packages("bookworm", "linux-")
    assert (mirror.count("InRelease"), mirror.count("Packages")) == (2, 1)


def test_tampered_inrelease_is_rejected(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer)
    inrelease = mirror.root / "debian" / "dists" / "bookworm" / "InRelease"
    inrelease.write_text(inrelease.read_text().replace("Codename: bookworm", "Codename: bookworm\nX-Evil: 1"))
    with pytest.raises(InfraError, match="InRelease of suite bookworm .* failed signature check") as refused:
        archive(mirror, signer, tmp_path / "cache").packages("bookworm")
    assert "BAD signature" in str(refused.value)  # gpgv's verdict, not its "Signature made ..." preamble


def test_unsigned_inrelease_needs_insecure(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, None)
    with pytest.raises(InfraError, match="failed signature check"):
        archive(mirror, signer, tmp_path / "cache").packages("bookworm")
    warned: list[str] = []
    a = archive(mirror, signer, tmp_path / "cache", insecure=True, warn=warned.append)
    assert any(p["Package"] == "zsh" for p in a.packages("bookworm"))
    assert len(warned) == 1 and "--insecure" in warned[0]


def test_packages_hash_mismatch_is_rejected(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer, wrong_packages_hash=True)
    with pytest.raises(InfraError, match="hash mismatch for main/binary-amd64/Packages.xz of bookworm"):
        archive(mirror, signer, tmp_path / "cache").packages("bookworm")


def test_deb_with_wrong_content_is_rejected(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer)
    a = archive(mirror, signer, tmp_path / "cache")
    r = resolve(DebianKernel(("bookworm",), abi=OLD_ABI), a)
    (mirror.root / "debian" / r.debs[0].filename).write_bytes(b"!<arch>\nsomething else")
    with pytest.raises(InfraError, match=f"hash mismatch for linux-image-{OLD_ABI} 6.1.27-1"):
        a.fetch_deb(r.debs[0])
    assert list((tmp_path / "cache" / "debs").iterdir()) == []  # nothing half-written left behind


def check_kernel(k: Kernel, abi: str, image: bytes) -> None:
    assert k.release == abi
    assert k.image.read_bytes() == image
    assert k.sha256 == hashlib.sha256(image).hexdigest()
    assert k.vmlinux is not None and k.vmlinux.read_bytes() == tiny_elf()
    assert k.modules_dir is not None and k.modules_dir.name == abi
    assert (k.modules_dir / "modules.builtin").is_file()


def test_fetch_pre7_extracts_once(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer)
    cache = tmp_path / "cache"
    spec = DebianKernel(("bookworm",), abi=OLD_ABI)
    r = resolve(spec, archive(mirror, signer, cache))
    k = fetch(r, archive(mirror, signer, cache), cache)
    check_kernel(k, OLD_ABI, bzimage(tiny_elf(), "xz", OLD_ABI))
    assert k.modules_dir is not None
    files = sorted(str(p.relative_to(k.modules_dir)) for p in k.modules_dir.rglob("*") if p.is_file())
    # What a guest could load and what it depends on; the sound driver is gone, and so are the .debs.
    assert files == [
        "kernel/drivers/net/virtio_net.ko",
        "kernel/net/core/failover.ko",
        "modules.builtin",
        "modules.order",
    ]
    assert not list((cache / "debs").iterdir())
    assert json.loads((cache / "kernels" / kernel_key(k.debs) / "kernel.json").read_text())["debs"][0]["sha256"]
    assert not list(k.image.parent.rglob("System.map*")) and not list(k.image.parent.rglob("changelog"))
    assert k.info().package == f"linux-image-{OLD_ABI}" and k.info().version == "6.1.27-1"
    assert k.source == f"debian:bookworm@{OLD_ABI}"
    assert mirror.count("/pool/") == 1
    assert debian.DebianSource().cached(r, Context(cache)) == k.image.parent  # what `cache prune` keeps

    again = fetch(r, archive(mirror, signer, cache), cache)
    assert again == k and mirror.count("/pool/") == 1  # unpacked tree reused, nothing downloaded
    assert [c.release for c in list_cached(cache)] == [OLD_ABI]
    assert not [p for p in (cache / "kernels").iterdir() if p.name.startswith(".")]


def test_fetch_7x_split_with_zstd_debs(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer)
    cache = tmp_path / "cache"
    a = archive(mirror, signer, cache)
    r = resolve(DebianKernel(("bookworm",)), a)
    assert [d.package for d in r.debs] == [
        f"linux-binary-{NEW_ABI}",
        f"linux-modules-{NEW_ABI}",
        f"linux-base-{NEW_ABI}",
    ]
    k = fetch(r, a, cache)
    check_kernel(k, NEW_ABI, bzimage(tiny_elf(), "zstd", NEW_ABI))
    assert k.modules_dir is not None
    assert (k.modules_dir / "kernel/drivers/net/virtio_net.ko.xz").is_file()
    assert not (k.modules_dir / "kernel/sound").exists()
    assert not (k.modules_dir / "vmlinuz").exists() and not (k.modules_dir / "config").exists()
    assert k.package == f"linux-image-{NEW_ABI}" and k.label == "bookworm"
    assert mirror.count("/pool/") == 3
    # a different spec that leads to the same packages reuses the same tree
    k2 = fetch(resolve(DebianKernel(("bookworm",), abi=NEW_ABI), a), a, cache)
    assert k2.image == k.image and k2.label == f"bookworm-{NEW_ABI}" and mirror.count("/pool/") == 3


def test_fetch_redoes_a_tree_without_metadata(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer)
    cache = tmp_path / "cache"
    a = archive(mirror, signer, cache)
    r = resolve(DebianKernel(("bookworm",)), a)
    k = fetch(r, a, cache)
    (k.image.parent / "kernel.json").unlink()  # as if someone had meddled with the tree
    k.image.write_bytes(b"half")
    again = fetch(r, a, cache)
    assert again == k and again.image.read_bytes() == bzimage(tiny_elf(), "zstd", NEW_ABI)
    assert mirror.count("/pool/") == 6  # the .debs went after the first unpack: fetched (and checked) again


def test_a_tree_unpacked_whole_is_slimmed_in_place_and_one_that_lacks_a_module_is_unpacked_again(
    mirror: Mirror, signer: Signer, debs: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    publish(mirror, debs, signer)
    cache = tmp_path / "cache"
    a = archive(mirror, signer, cache)
    r = resolve(DebianKernel(("bookworm",), abi=OLD_ABI), a)
    sound = "kernel/sound/pci/snd-hda-intel.ko"
    # As a harness from before slimming left it: every module, and no modules_kept in kernel.json.
    k = kernels.unpacked(
        kernels.Packaged("bookworm", OLD_ABI, None, "6.1.27-1", r.debs, "debian:bookworm"),
        cache,
        a.fetch_deb,
        ["snd_hda_intel", "virtio_net"],
    )
    assert k.modules_dir is not None and (k.modules_dir / sound).is_file()
    meta_file = k.image.parent / "kernel.json"
    meta = json.loads(meta_file.read_text())
    assert meta["modules_kept"] == ["snd_hda_intel", "virtio_net"]
    del meta["modules_kept"]
    meta_file.write_text(json.dumps(meta))

    again = fetch(r, a, cache)
    assert again.modules_dir == k.modules_dir and not (k.modules_dir / sound).exists()
    assert (k.modules_dir / "kernel/drivers/net/virtio_net.ko").is_file()
    assert json.loads(meta_file.read_text())["modules_kept"] == sorted(devices.MODULE_ROOTS)
    assert json.loads(meta_file.read_text())["vmlinux_sparse"] is True
    assert again.vmlinux is not None and again.vmlinux.read_bytes() == tiny_elf()
    assert mirror.count("/pool/") == 1  # slimmed where it was, nothing fetched

    # A harness that wants a module the folder did not keep unpacks the kernel again.
    k = kernels.unpacked(
        kernels.Packaged("bookworm", OLD_ABI, None, "6.1.27-1", r.debs, "debian:bookworm"),
        cache,
        a.fetch_deb,
        [*devices.MODULE_ROOTS, "snd_hda_intel"],
    )
    assert k.modules_dir is not None and (k.modules_dir / sound).is_file() and mirror.count("/pool/") == 2


def test_list_cached_of_empty_cache(tmp_path: Path) -> None:
    assert list_cached(tmp_path) == []


# --- `version:` lines --------------------------------------------------------------------------

BACKPORTS = (
    pre7("6.16.12+deb13-amd64", "6.16.12-1~bpo13+1")[1:]
    + pre7("6.16.9+deb13-amd64", "6.16.9-1~bpo13+1")[1:]
    + pre7("6.16.12+deb13-cloud-amd64", "6.16.12-1~bpo13+1")[1:]
    + pre7("6.1.0-50-amd64", "6.1.176-1")[1:]
    + split7("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1")
    # 7.0: the index still lists the image meta and binary, but its modules are gone
    + [s for s in split7("7.0.13+deb13-amd64", "7.0.13-1~bpo13+1") if "modules" not in s["Package"]]
    + [s for s in split7("7.0.12+deb13-amd64", "7.0.12-2~bpo13+1") if "modules" not in s["Package"]]
)


def test_version_picks_the_newest_kernel_of_that_line_and_flavour() -> None:
    r = resolve_in(DebianKernel(("tb",), version="6.16"), {"tb": BACKPORTS})
    assert r.abi == "6.16.12+deb13-amd64"  # not 6.16.9, not the cloud flavour
    r = resolve_in(DebianKernel(("tb",), package="linux-image-cloud-amd64", version="6.16"), {"tb": BACKPORTS})
    assert r.abi == "6.16.12+deb13-cloud-amd64"
    r = resolve_in(DebianKernel(("tb",), version="6.1"), {"tb": BACKPORTS})
    assert r.abi == "6.1.0-50-amd64"  # "6.1" is not a prefix match of 6.16
    r = resolve_in(DebianKernel(("tb",), version="7.3"), {"tb": BACKPORTS})
    assert [d.package for d in r.debs][:2] == ["linux-binary-7.3.4+deb13-amd64", "linux-modules-7.3.4+deb13-amd64"]


def test_a_build_whose_modules_left_the_index_resolves_to_the_signed_kernel_alone() -> None:
    """Its guest goes without modules, over the serial line: never an unverified module, never --insecure."""
    r = resolve_in(DebianKernel(("tb",), version="7.0"), {"tb": BACKPORTS})
    assert r.abi == "7.0.13+deb13-amd64"
    assert [d.package for d in r.debs] == ["linux-binary-7.0.13+deb13-amd64", "linux-base-7.0.13+deb13-amd64"]
    with pytest.raises(UserError, match="version 6.19 is not in tb"):
        resolve_in(DebianKernel(("tb",), version="6.19"), {"tb": BACKPORTS})


SECURITY = [
    *pre7("6.1.0-48-amd64", "6.1.180-1")[1:],
    *pre7("6.1.0-0.deb11.52-amd64", "6.1.158-1~deb11u1")[1:],
    *pre7("6.12.117+deb12-amd64", "6.12.117-1~deb12u1")[1:],
    *pre7("6.12.117+deb12-rt-amd64", "6.12.117-1~deb12u1")[1:],
    stanza("linux-image-6.12-amd64", "6.12.117-1~deb12u1", "linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1)"),
]


def abis(builds: list[Build]) -> list[str]:
    return [b.abi for b in builds]


def test_a_line_meta_package_is_followed_to_its_build() -> None:
    """linux-image-6.12-amd64 has an ABI-like name but is a meta over the line's newest build."""
    r = resolve_in(DebianKernel(("sec",), package="linux-image-6.12-amd64"), {"sec": SECURITY})
    assert (r.abi, r.package) == ("6.12.117+deb12-amd64", "linux-image-6.12.117+deb12-amd64")


def test_every_build_of_the_flavour_oldest_first_across_suites() -> None:
    indexes = {"tb": BACKPORTS, "sec": SECURITY}
    every = list_builds(DebianKernel(("tb", "sec"), builds="all"), indexes)
    assert abis(every) == [
        "6.1.0-0.deb11.52-amd64",
        "6.1.0-50-amd64",
        "6.1.0-48-amd64",
        "6.12.117+deb12-amd64",
        "6.16.9+deb13-amd64",
        "6.16.12+deb13-amd64",
        "7.0.12+deb13-amd64",
        "7.0.13+deb13-amd64",
        "7.3.4+deb13-amd64",
    ]
    assert [b.suite for b in every][:3] == ["sec", "tb", "sec"]  # by Debian version: 6.1.158, 6.1.176, 6.1.180
    cloud = list_builds(DebianKernel(("tb",), package="linux-image-cloud-amd64", builds="all"), indexes)
    assert abis(cloud) == ["6.16.12+deb13-cloud-amd64"]
    assert abis(newest_per_line(every)) == [
        "6.1.0-48-amd64",
        "6.12.117+deb12-amd64",
        "6.16.12+deb13-amd64",
        "7.0.13+deb13-amd64",
        "7.3.4+deb13-amd64",
    ]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("6.1", ["6.1.0-0.deb11.52-amd64", "6.1.0-50-amd64", "6.1.0-48-amd64"]),
        (">=6.12,<7", ["6.12.117+deb12-amd64", "6.16.9+deb13-amd64", "6.16.12+deb13-amd64"]),
        ("==7.0", ["7.0.12+deb13-amd64", "7.0.13+deb13-amd64"]),
        (">=7.3.5", []),
    ],
)
def test_builds_in_a_line_or_a_range(version: str, expected: list[str]) -> None:
    assert (
        abis(
            list_builds(DebianKernel(("tb", "sec"), version=version, builds="all"), {"tb": BACKPORTS, "sec": SECURITY})
        )
        == expected
    )


def test_security_suites_come_from_the_security_archive(tmp_path: Path) -> None:
    main, security = Archive("http://mirror/debian", tmp_path), Archive("http://mirror/debian-security", tmp_path)
    of = debian.Mirrors(main, security)
    assert of("bookworm") is main and of("bookworm-backports") is main and of("bookworm-security") is security
    with pytest.raises(UserError, match="bookworm-security is in Debian's security archive, and no mirror of it"):
        debian.Mirrors(main)("bookworm-security")


def test_unreachable_mirror_is_an_infrastructure_error_after_bounded_retries(tmp_path: Path) -> None:
    """Nothing listens on the port: a few quick retries, then one InfraError naming the URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    a = Archive(f"http://127.0.0.1:{port}/debian", tmp_path / "cache", retry_delay=0.01)
    start = time.monotonic()
    with pytest.raises(InfraError, match=rf"127\.0\.0\.1:{port}/debian/dists/bookworm/InRelease"):
        a.packages("bookworm")
    assert time.monotonic() - start < 10


def test_a_refused_signature_says_why_in_gpgv_s_own_words() -> None:
    assert (
        gpgv_reason(
            "gpgv: Signature made Fri\ngpgv:                using RSA key ABCD\n"
            "gpgv: Can't check signature: No public key\n"
        )
        == "Can't check signature: No public key"
    )
    assert gpgv_reason("gpgv: no signature found\ngpgv: the signature could not be verified.\n") == "no signature found"
    assert gpgv_reason("gpgv: something new\n") == "something new"


def test_insecure_says_so_in_the_log_not_as_a_python_warning(
    mirror: Mirror,
    signer: Signer,
    debs: dict[str, tuple[str, bytes]],
    tmp_path: Path,
    recwarn: pytest.WarningsRecorder,
) -> None:
    from harness.kernels.sources import Context, debian

    publish(mirror, debs, None)
    said: list[str] = []
    ctx = Context(tmp_path / "cache", said.append, mirror.url, insecure=True)
    resolved = debian.SOURCE.resolve(DebianKernel(("bookworm",)), ctx)
    assert resolved.suite == "bookworm"
    assert len(said) == 1 and "--insecure" in said[0] and not recwarn.list


def test_write_sparse_reads_back_the_same_and_leaves_zero_blocks_as_holes(tmp_path: Path) -> None:
    data = os.urandom(4096) + bytes(1 << 20) + os.urandom(100) + bytes(5000) + b"end" + bytes(7)
    path = tmp_path / "vmlinux"
    kernels.write_sparse(path, data)
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 < 64 << 10  # the MiB of zeros takes no disk
    kernels.write_sparse(path, bytes(10000))  # only zeros, and a partial last block
    assert path.read_bytes() == bytes(10000)
