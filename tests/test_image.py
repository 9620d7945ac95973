"""harness/image.py: reproducible newc archives read back by GNU cpio, the base image, host keys."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from harness.kit import image
from harness.kit.image import Entry, directory, file, symlink

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0mW2o0n9bq8P0y3kqXx0CwEw7f6ZJp5ZZl3b9s2h5u harness@test"

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio reads the archives back")


def sample() -> list[Entry]:
    return [
        file("etc/motd", b"hello\n"),
        file("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        symlink("bin/sh", "/bin/busybox"),
        symlink("lib64", "usr/lib"),
        directory("home/user/.ssh", 0o700, 1000),
        file("home/user/.ssh/authorized_keys", PUBKEY.encode() + b"\n", 0o600, 1000),
        directory("tmp", 0o1777),
        file("empty", b""),
        file("odd/size", b"x" * 13),
    ]


EXPECTED_PATHS = {
    "bin",
    "bin/sh",
    "empty",
    "etc",
    "etc/motd",
    "home",
    "home/user",
    "home/user/.ssh",
    "home/user/.ssh/authorized_keys",
    "lib64",
    "odd",
    "odd/size",
    "tmp",
    "usr",
    "usr/bin",
    "usr/bin/tool",
}


def cpio_list(archive: bytes, verbose: bool = False) -> list[str]:
    out = subprocess.run(
        ["cpio", "-t", "--quiet", *(["-vn"] if verbose else [])], input=archive, capture_output=True, check=True
    )
    return out.stdout.decode().splitlines()


# --- cpio() -----------------------------------------------------------------------------------


def test_cpio_is_byte_identical_in_any_input_order() -> None:
    entries = sample()
    first = image.cpio(entries)
    rng = random.Random(1)
    for _ in range(5):
        shuffled = entries[:]
        rng.shuffle(shuffled)
        assert image.cpio(shuffled) == first
    assert image.cpio(reversed(entries)) == first


def test_cpio_content_changes_the_bytes() -> None:
    changed = [file("etc/motd", b"hellO\n") if e.path == "etc/motd" else e for e in sample()]
    assert image.cpio(changed) != image.cpio(sample())


def test_cpio_layout_is_newc_padded_to_512() -> None:
    data = image.cpio(sample())
    assert data.startswith(b"070701")
    assert len(data) % 512 == 0
    assert b"TRAILER!!!\0" in data


@needs_cpio
def test_gnu_cpio_lists_exactly_the_paths_with_parents() -> None:
    listed = cpio_list(image.cpio(sample()))
    assert set(listed) == EXPECTED_PATHS
    assert len(listed) == len(EXPECTED_PATHS)  # each once
    # parents come before their children, so an unpacker never meets a path without its directory
    seen: set[str] = set()
    for path in listed:
        parent = path.rpartition("/")[0]
        assert not parent or parent in seen, path
        seen.add(path)


@needs_cpio
def test_gnu_cpio_sees_mtime_zero_and_owners() -> None:
    lines = cpio_list(image.cpio(sample()), verbose=True)
    keys = next(line for line in lines if line.endswith("home/user/.ssh/authorized_keys"))
    assert keys.split()[:4] == ["-rw-------", "1", "1000", "1000"]
    assert " 1970 " in keys
    motd = next(line for line in lines if line.endswith(" etc/motd"))
    assert motd.split()[:4] == ["-rw-r--r--", "1", "0", "0"]


@needs_cpio
def test_gnu_cpio_extracts_content_links_and_modes(tmp_path: Path) -> None:
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"],
        input=image.cpio(sample()),
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "etc/motd").read_bytes() == b"hello\n"
    assert (tmp_path / "odd/size").read_bytes() == b"x" * 13
    assert (tmp_path / "empty").read_bytes() == b""
    assert os.readlink(tmp_path / "bin/sh") == "/bin/busybox"
    assert os.readlink(tmp_path / "lib64") == "usr/lib"
    assert (tmp_path / "home/user/.ssh/authorized_keys").read_text() == PUBKEY + "\n"

    def mode(p: str) -> int:
        return stat.S_IMODE(os.lstat(tmp_path / p).st_mode)

    assert mode("home/user/.ssh/authorized_keys") == 0o600
    assert mode("home/user/.ssh") == 0o700
    assert mode("usr/bin/tool") == 0o755
    assert mode("etc/motd") == 0o644
    assert mode("tmp") == 0o1777
    assert stat.S_ISDIR(os.lstat(tmp_path / "home").st_mode) and mode("home") == 0o755  # made as a parent
    if os.geteuid() == 0:  # only root can give files away
        st = os.lstat(tmp_path / "home/user/.ssh/authorized_keys")
        assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_explicit_directory_wins_over_implied_parent() -> None:
    data = image.cpio([file("root/.profile", b""), directory("root", 0o700)])
    assert image.cpio([directory("root", 0o700), file("root/.profile", b"")]) == data
    # the first member is "root": 6-byte magic, then 8-hex-digit fields (ino, mode, ...), name at 110
    assert data[110:115] == b"root\0"
    assert int(data[14:22], 16) == stat.S_IFDIR | 0o700


# --- the base image ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(probe: Path) -> list[Entry]:
    return image.base_entries(probe, PUBKEY)


def by_path(entries: list[Entry]) -> dict[str, Entry]:
    return {e.path: e for e in entries}


def test_base_has_init_busybox_and_applets(base: list[Entry]) -> None:
    entries = by_path(base)
    init = entries["init"]
    assert stat.S_ISREG(init.mode) and init.mode & 0o111
    assert init.data == (image.IMAGES_DIR / "init").read_bytes()
    assert entries["bin/busybox"].data == image.BUSYBOX.read_bytes()
    sh = entries["bin/sh"]
    assert stat.S_ISLNK(sh.mode) and sh.data == b"/bin/busybox"
    applets = [e for e in base if stat.S_ISLNK(e.mode) and e.data == b"/bin/busybox"]
    assert len(applets) > 50
    assert "bin/busybox" not in {e.path for e in applets}  # busybox is a file, not a link to itself


def test_base_has_dropbear_and_its_libraries(base: list[Entry]) -> None:
    entries = by_path(base)
    assert entries["usr/sbin/dropbear"].data == image.DROPBEAR.read_bytes()
    libs = image.shared_libraries(image.DROPBEAR)
    assert libs, "dropbear is dynamically linked"
    assert any(lib.name.startswith("libc.so") for lib in libs)
    assert any("ld-linux" in lib.name for lib in libs)  # the interpreter, at its absolute path
    for lib in libs:
        entry = entries[str(lib).lstrip("/")]
        assert stat.S_ISREG(entry.mode)
        assert entry.data == lib.resolve().read_bytes()


def test_base_has_probe_and_devices(base: list[Entry], probe: Path) -> None:
    entries = by_path(base)
    assert entries["harness/probe"].data == probe.read_bytes()
    assert entries["harness/probe"].mode == stat.S_IFREG | 0o755
    console = entries["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    assert entries["tmp"].mode == stat.S_IFDIR | 0o1777
    assert entries["etc/dropbear"].mode == stat.S_IFDIR | 0o700


def test_base_accounts(base: list[Entry]) -> None:
    entries = by_path(base)
    passwd = entries["etc/passwd"].data.decode().splitlines()
    users = {line.split(":")[0]: line.split(":") for line in passwd}
    assert users["root"][2] == "0"
    assert users["user"][2:4] == ["1000", "1000"] and users["user"][5] == "/home/user"
    assert entries["etc/shadow"].mode == stat.S_IFREG | 0o600
    for home, uid, home_perm in (("root", 0, 0o700), ("home/user", 1000, 0o755)):
        assert entries[home].mode == stat.S_IFDIR | home_perm and entries[home].uid == uid
        ssh = entries[f"{home}/.ssh"]
        assert (ssh.mode, ssh.uid, ssh.gid) == (stat.S_IFDIR | 0o700, uid, uid)
        keys = entries[f"{home}/.ssh/authorized_keys"]
        assert (keys.mode, keys.uid, keys.gid) == (stat.S_IFREG | 0o600, uid, uid)
        assert keys.data == (PUBKEY + "\n").encode()


@needs_cpio
def test_base_archive_lists_under_gnu_cpio(base: list[Entry]) -> None:
    archive = image.cpio(base)
    names = set(cpio_list(archive))
    assert {
        "init",
        "bin/busybox",
        "bin/sh",
        "usr/sbin/dropbear",
        "harness/probe",
        "etc/passwd",
        "root/.ssh/authorized_keys",
        "home/user/.ssh/authorized_keys",
        "dev/console",
    } <= names
    console = next(line for line in cpio_list(archive, verbose=True) if line.endswith(" dev/console"))
    assert console.startswith("crw-------") and "5,   1" in console


# --- build() and host keys --------------------------------------------------------------------


def test_build_is_reproducible_and_content_addressed(base: list[Entry], tmp_path: Path) -> None:
    mods = [("virtio_net", b"\x7fELF fake module")]
    one = image.build(base, mods, b"s" * 32, tmp_path / "a")
    two = image.build(base, mods, b"s" * 32, tmp_path / "a")
    elsewhere = image.build(base, mods, b"s" * 32, tmp_path / "b")
    assert one == two
    assert one.sha256 == elsewhere.sha256 and one.host_key == elsewhere.host_key
    assert one.path == tmp_path / "a" / f"{one.sha256}.cpio"
    assert hashlib.sha256(one.path.read_bytes()).hexdigest() == one.sha256
    assert one.modules == ("virtio_net",)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [one.path.name]  # no temp file left


def test_an_image_holds_a_private_key_and_only_its_owner_reads_it(base: list[Entry], tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir(mode=0o755)
    one = image.build(base, [], b"s" * 32, images)
    assert one.path.stat().st_mode & 0o777 == 0o600 and images.stat().st_mode & 0o777 == 0o700
    one.path.chmod(0o644)  # as an older harness wrote it
    images.chmod(0o755)
    again = image.build(base, [], b"s" * 32, images)
    assert again == one and one.path.stat().st_mode & 0o777 == 0o600 and images.stat().st_mode & 0o777 == 0o700


def test_build_different_secret_gives_different_host_key(base: list[Entry], tmp_path: Path) -> None:
    one = image.build(base, [], b"a" * 32, tmp_path)
    two = image.build(base, [], b"b" * 32, tmp_path)
    assert one.host_key != two.host_key
    assert one.sha256 != two.sha256 and one.path != two.path
    assert one.host_key.startswith("ssh-ed25519 ")


def test_build_includes_modules_and_host_key(tmp_path: Path) -> None:
    img = image.build([file("init", b"#!/bin/sh\n", 0o755)], [("b", b"B"), ("a", b"A")], b"k" * 32, tmp_path)
    data = img.path.read_bytes()
    assert b"etc/harness/modules\0" in data and b"b\na\n" in data  # load order kept, not sorted
    key = image.host_key(
        b"k" * 32,
        hashlib.sha256(
            image.cpio([file("init", b"#!/bin/sh\n", 0o755), *image.module_entries([("b", b"B"), ("a", b"A")])])
        ).hexdigest(),
    )
    assert image.dropbear_ed25519(key) in data
    assert img.host_key == image.openssh_public(key)


def test_host_key_depends_on_secret_and_content() -> None:
    base = image.openssh_public(image.host_key(b"s", "digest"))
    assert image.openssh_public(image.host_key(b"s", "digest")) == base
    assert image.openssh_public(image.host_key(b"t", "digest")) != base
    assert image.openssh_public(image.host_key(b"s", "other")) != base


@pytest.mark.skipif(shutil.which("dropbearkey") is None, reason="dropbearkey reads the key file")
def test_dropbear_host_key_file_round_trips(tmp_path: Path) -> None:
    key = image.host_key(os.urandom(32), "some image")
    path = tmp_path / "host_key"
    path.write_bytes(image.dropbear_ed25519(key))
    out = subprocess.run(["dropbearkey", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("ssh-ed25519 "))
    assert line.split()[:2] == image.openssh_public(key).split()[:2]


def test_disk_image_is_reproducible_and_holds_the_data_file(tmp_path: Path) -> None:
    first = image.disk_image(tmp_path / "a")
    time.sleep(1.1)  # mke2fs stamps with the clock's seconds: a build in the same second proves nothing
    second = image.disk_image(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    listing = subprocess.run(["debugfs", "-R", "ls -l", str(first)], capture_output=True, text=True, check=True).stdout
    line = next(entry for entry in listing.splitlines() if entry.rstrip().endswith(image.DISK_FILE))
    assert "100644" in line and str(image.DISK_FILE_SIZE) in line
    features = subprocess.run(["dumpe2fs", "-h", str(first)], capture_output=True, text=True, check=True).stdout
    assert "has_journal" not in features and "metadata_csum" not in features


def test_rng_core_is_loaded_with_a_quality_so_the_host_s_entropy_counts() -> None:
    """/init passes each line's words after the name to insmod; only rng_core gets any."""
    entries = {e.path: e for e in image.module_entries([("rng_core", b"R"), ("virtio_rng", b"V")])}
    assert entries["etc/harness/modules"].data == b"rng_core default_quality=1000\nvirtio_rng\n"
    init = (Path(__file__).resolve().parent.parent / "images" / "init").read_text()
    assert "while read -r mod args; do" in init and '"/lib/modules/harness/$mod.ko" $args' in init
