"""Guest images: a reproducible initramfs (newc cpio) = shared base + one kernel's NIC modules.

The base holds busybox-static (applet links made here, since `busybox --install` needs /proc),
dropbear with its shared libraries at their ldd paths, the probe, the accounts, and images/init.
Same inputs give byte-identical archives: sorted entries, mtime 0, owner set per entry, no
host data. The guest's host key is derived from a per-cache secret and the image's own content,
so it is stable for an image yet unknown to anyone without the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from harness import REPO
from harness.cache.lease import UNLEASED, Leases
from harness.errors import InfraError
from harness.files import atomic_write

IMAGES_DIR = REPO / "images"
BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
USER_UID = 1000
PROBE_PATH = "harness/probe"  # where the probe lives in the guest (as /harness/probe)


@dataclass(frozen=True)
class Entry:
    """One cpio member. `data` is file content, a symlink target, or empty for dirs and nodes."""

    path: str  # relative, no leading slash
    mode: int  # including the file type bits
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] = (0, 0)


def directory(path: str, perm: int = 0o755, uid: int = 0) -> Entry:
    return Entry(path, stat.S_IFDIR | perm, uid=uid, gid=uid)


def file(path: str, data: bytes, perm: int = 0o644, uid: int = 0) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data, uid=uid, gid=uid)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def cpio(entries: Iterable[Entry]) -> bytes:
    """A newc archive of the entries, sorted, with every parent directory present."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        by_path[e.path.strip("/")] = e
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            by_path.setdefault("/".join(parts[:i]), directory("/".join(parts[:i])))
    out = bytearray()
    for ino, path in enumerate(sorted(by_path, key=lambda p: p.split("/")), start=1):
        e = by_path[path]
        _member(out, ino, path, e.mode, e.uid, e.gid, e.data, e.rdev)
    _member(out, 0, "TRAILER!!!", 0, 0, 0, b"", (0, 0))
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


def _member(
    out: bytearray, ino: int, name: str, mode: int, uid: int, gid: int, data: bytes, rdev: tuple[int, int]
) -> None:
    raw_name = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, uid, gid, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw_name), 0)
    out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw_name
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)


# --- the base ---------------------------------------------------------------------------------


def busybox_entries(busybox: Path = BUSYBOX) -> list[Entry]:
    try:
        applets = subprocess.run(
            [str(busybox), "--list-full"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        raise InfraError(f"{busybox}: cannot list applets ({e}); install busybox-static") from e
    entries = [file("bin/busybox", busybox.read_bytes(), 0o755)]
    for applet in applets:
        if applet != "bin/busybox":
            entries.append(symlink(applet, "/bin/busybox"))
    return entries


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries ldd names for a binary, at the paths the dynamic linker will look for them."""
    try:
        proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    except OSError as e:
        raise InfraError(f"ldd {binary}: {e}; install dropbear-bin") from e
    if "not a dynamic executable" in proc.stdout + proc.stderr:
        return []  # static (the musl userland): nothing to bring along
    if proc.returncode != 0:
        raise InfraError(f"ldd {binary}: exit {proc.returncode}; install dropbear-bin")
    return sorted({Path(m) for m in re.findall(r"(/\S+)\s+\(0x", proc.stdout)})


def dropbear_entries(dropbear: Path = DROPBEAR) -> list[Entry]:
    if not dropbear.exists():
        raise InfraError(f"{dropbear} is missing; install dropbear-bin")
    entries = [file("usr/sbin/dropbear", dropbear.read_bytes(), 0o755)]
    for lib in shared_libraries(dropbear):
        entries.append(file(str(lib).lstrip("/"), lib.resolve().read_bytes(), 0o755))
    return entries


def account_entries(client_public_key: str) -> list[Entry]:
    """root and the unprivileged user, each able to log in with the harness's client key.

    dropbear refuses a login whose shell is not in /etc/shells or whose home, .ssh or
    authorized_keys is group- or world-writable (pitfall 5), hence the explicit modes.
    """
    keys = (client_public_key.strip() + "\n").encode()
    entries = [
        file(f"etc/{p.name}", p.read_bytes(), 0o600 if p.name == "shadow" else 0o644)
        for p in sorted((IMAGES_DIR / "rootfs" / "etc").iterdir())
    ]
    for home, uid in (("root", 0), ("home/user", USER_UID)):
        entries += [
            directory(home, 0o700 if uid == 0 else 0o755, uid),
            directory(f"{home}/.ssh", 0o700, uid),
            file(f"{home}/.ssh/authorized_keys", keys, 0o600, uid),
        ]
    return entries


def base_entries(
    probe: Path, client_public_key: str, busybox: Path = BUSYBOX, dropbear: Path = DROPBEAR
) -> list[Entry]:
    entries = [
        file("init", (IMAGES_DIR / "init").read_bytes(), 0o755),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),  # init's stdio before devtmpfs
        Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        directory("proc"),
        directory("sys"),
        directory("dev"),
        directory("tmp", 0o1777),
        directory("etc/dropbear", 0o700),
        file(PROBE_PATH, probe.read_bytes(), 0o755),
    ]
    return entries + busybox_entries(busybox) + dropbear_entries(dropbear) + account_entries(client_public_key)


# Parameters a module gets from insmod (busybox's insmod does not read them from /proc/cmdline, as
# modprobe would): rng_core credits the host's virtio-rng as entropy only with a quality.
MODULE_ARGS = {"rng_core": "default_quality=1000"}


def module_entries(modules: Sequence[tuple[str, bytes]]) -> list[Entry]:
    """Decompressed modules plus the load order /init follows (a line: name, then its parameters)."""
    order = "".join(
        f"{name} {MODULE_ARGS[name]}\n" if name in MODULE_ARGS else f"{name}\n" for name, _ in modules
    ).encode()
    return [file("etc/harness/modules", order)] + [
        file(f"lib/modules/harness/{name}.ko", data) for name, data in modules
    ]


# --- the data disk ----------------------------------------------------------------------------

DISK_FILE = "data.bin"  # what the probe maps from the disk: /mnt/disk/data.bin in the guest
DISK_FILE_SIZE = 4 << 20
DISK_SIZE = "16M"
_DISK_UUID = "6861726e-6573-4d41-5000-4c4f434b4544"  # fixed: the image must not vary between builds


# mkfs options per filesystem: ext4 without journal, metadata_csum or 64bit, so the guest needs only
# ext4's hard dependencies; ext2 as mke2fs makes it, which every 2.6 kernel reads.
_DISK_FORMATS = {
    "ext4": ("disk-ext4-v2.img", ["-O", "^metadata_csum,^has_journal,^64bit"]),
    "ext2": ("disk-ext2-v1.img", []),
}


def disk_image(out_dir: Path, fs: str = "ext4", leases: Leases = UNLEASED) -> Path:
    """A small read-only disk holding one file, for cases that need major faults (made once, and
    leased: harness.cache.lease).

    An initramfs is tmpfs, where nothing is ever read from a device. Fixed UUID, hash seed and
    timestamps make the image byte-identical on every build.
    """
    path = out_dir / _DISK_FORMATS[fs][0]
    leases.ensure(path, path.exists, lambda: _make_disk(path, fs))
    with contextlib.suppress(OSError):
        os.utime(path)  # its last use, which `harness cache prune --older-than` reads
    return path


def _make_disk(path: Path, fs: str) -> None:
    out_dir, features = path.parent, _DISK_FORMATS[fs][1]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="harness-disk-", dir=out_dir) as tmp:
        root = Path(tmp, "root")
        root.mkdir(mode=0o755)
        data = Path(root, DISK_FILE)
        data.write_bytes(bytes(i % 251 for i in range(256)) * (DISK_FILE_SIZE // 256))
        data.chmod(0o644)
        for made in (data, root):
            os.utime(made, (1, 1))  # mkfs copies the source's times into the image
        img = Path(tmp, "disk.img")
        argv = [
            f"mkfs.{fs}",
            "-q",
            "-F",
            "-L",
            "harness",
            "-U",
            _DISK_UUID,
            "-b",
            "4096",
            "-N",
            "32",
            *features,
            "-E",
            f"hash_seed={_DISK_UUID},root_owner=0:0",
            "-d",
            str(root),
            str(img),
            DISK_SIZE,
        ]
        env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1", "SOURCE_DATE_EPOCH": "1"}
        # mke2fs 1.47.0 copies each source file's ctime (which utime cannot set) and stamps new
        # inodes with the clock, so every time field is pinned afterwards with debugfs.
        pin = "".join(
            f"set_inode_field {inode} {field} 1\n"
            for inode in ("/", "/lost+found", f"/{DISK_FILE}")
            for field in ("atime", "ctime", "mtime", "crtime")
        )
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
            subprocess.run(
                ["debugfs", "-w", "-f", "-", str(img)], input=pin, check=True, capture_output=True, text=True, env=env
            )
        except FileNotFoundError as e:
            raise InfraError(f"{e.filename} is missing; install e2fsprogs") from e
        except subprocess.CalledProcessError as e:
            raise InfraError(f"{e.cmd[0]} failed: {e.stderr.strip()}") from e
        os.replace(img, path)


# --- host key ---------------------------------------------------------------------------------


def host_key(secret: bytes, content_digest: str) -> Ed25519PrivateKey:
    seed = hmac.new(secret, f"guest host key {content_digest}".encode(), hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def dropbear_ed25519(key: Ed25519PrivateKey) -> bytes:
    """dropbear's own key file format: string "ssh-ed25519", then string(private || public)."""
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    priv = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _ssh_string(b"ssh-ed25519") + _ssh_string(priv + pub)


def openssh_public(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def _ssh_string(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


# --- building ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    path: Path  # the initramfs (uncompressed cpio: fastest to /init under TCG)
    sha256: str
    host_key: str  # OpenSSH public key line the harness pins
    modules: tuple[str, ...]  # load order


def build(
    base: Sequence[Entry],
    modules: Sequence[tuple[str, bytes]],
    secret: bytes,
    out_dir: Path,
    disk: tuple[str, str] | None = None,
    leases: Leases = UNLEASED,
) -> Image:
    """Write the image for one kernel into out_dir (content-addressed; reused if present; leased:
    harness.cache.lease). `disk`: the data disk's device node and filesystem in the guest, None when it
    has none."""
    entries = list(base) + module_entries(modules)
    if disk is not None:
        entries.append(file("etc/harness/disk", f"{disk[0]} {disk[1]}\n".encode()))
    content = hashlib.sha256(cpio(entries)).hexdigest()
    key = host_key(secret, content)
    data = cpio([*entries, file("etc/dropbear/host_key", dropbear_ed25519(key), 0o600)])
    digest = hashlib.sha256(data).hexdigest()
    path = out_dir / f"{digest}.cpio"
    # The image holds the guest's private host key: whoever can read it can pose as the guest to
    # the harness. Only the cache's owner may (images written 0644 before are closed up too).
    private(out_dir)
    leases.ensure(path, path.exists, lambda: atomic_write(path, data, 0o600))
    path.chmod(0o600)
    os.utime(path)  # its last use, which `harness cache prune --older-than` reads
    return Image(path, digest, openssh_public(key), tuple(n for n, _ in modules))


def private(folder: Path) -> None:
    """`folder`, made if missing, readable by its owner only."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
    except OSError as e:
        raise InfraError(f"{folder}: cannot make it private to its owner: {e.strerror}") from e
