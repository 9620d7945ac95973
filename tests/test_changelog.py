"""harness.debian.changelog: a real bookworm excerpt read item by item, the cache form, and hostile inputs."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest

from harness import kernels
from harness.debian import changelog
from harness.debian.archive import Deb
from harness.debian.changelog import Entry, Malformed, between, dump, entries, load, read

EXCERPT = Path(__file__).parent / "data" / "changelog" / "bookworm-6.1.192-excerpt.txt"
TRAILER = " -- Someone <someone@example.org>  Mon, 02 Jan 2023 10:00:00 +0100"


@pytest.fixture(scope="module")
def excerpt() -> list[Entry]:
    return entries(EXCERPT.read_text(encoding="utf-8"))


def block(version: str, *items: str, package: str = "linux") -> str:
    body = "".join(f"{item}\n" for item in items)
    return f"{package} ({version}) unstable; urgency=medium\n\n{body}\n{TRAILER}\n\n"


def test_each_upload_lists_its_items_newest_first(excerpt: list[Entry]) -> None:
    assert list(Counter(e.version for e in excerpt).items()) == [
        ("6.1.192-3", 1),
        ("6.1.192-2", 1),
        ("6.1.192-1", 30),
        ("6.1.190-1", 18),
        ("6.1.174-1", 8),
    ]
    by_release = Counter((e.version, e.upstream) for e in excerpt)
    assert by_release[("6.1.192-1", "6.1.191")] == 24
    assert by_release[("6.1.192-1", "6.1.192")] == 3
    assert by_release[("6.1.192-1", "")] == 3
    assert [n for (v, _), n in by_release.items() if v == "6.1.190-1"] == [8, 6, 3, 1]


def test_items_under_a_changelog_url_came_with_that_stable_release(excerpt: list[Entry]) -> None:
    mremap = [e for e in excerpt if e.title.startswith("mm/mremap: fix locked_vm leak")]
    assert mremap == [
        Entry("6.1.192-1", "6.1.191", "mm/mremap: fix locked_vm leak by splitting VMA for MREMAP_DONTUNMAP", ()),
        Entry("6.1.192-1", "6.1.191", "mm/mremap: fix locked_vm leak from MREMAP_DONTUNMAP self-merge", ()),
    ]
    assert excerpt[2] == Entry(
        "6.1.192-1", "6.1.191", "io-wq: order the exit bit against worker creation task work", ()
    )
    xen = next(e for e in excerpt if e.title.startswith("xen-blkback"))
    assert (xen.upstream, xen.cves) == ("6.1.192", ("CVE-2026-100082",))


def test_a_wrapped_item_is_one_line_with_the_cve_of_its_continuation(excerpt: list[Entry]) -> None:
    ice = next(e for e in excerpt if e.title.startswith("ice: "))
    assert ice.title == "ice: fix metadata_dst refcount handling on representor teardown (CVE-2026-99043)"
    assert ice.cves == ("CVE-2026-99043",)
    pinctrl = next(e for e in excerpt if "pinctrl: freescale" in e.title)
    assert pinctrl.title == "[arm*] pinctrl: freescale: Fix a memory out of bounds when num_configs is 1"
    assert pinctrl.cves == ()


def test_debian_own_changes_have_no_upstream_release(excerpt: list[Entry]) -> None:
    own = [e for e in excerpt if e.version == "6.1.192-1" and not e.upstream]
    assert [e.title for e in own] == [
        "xen-netback: Fix XenBus connection failure cleanup (CVE-2026-99286)",
        "xen-netback: Zero out sring pointers on unmap (CVE-2026-99287)",
        "inet: reject unhashed sockets during established lookups (CVE-2026-99288)",
    ]
    assert excerpt[1] == Entry("6.1.192-2", "", "ext4: fix NULL folio dereference in mballoc (Closes: #1154101)", ())
    assert not any(e.title.startswith(("New upstream", "Sign kernel", "https://")) for e in excerpt)


def test_a_signed_block_is_credited_to_the_linux_upload_it_signs(excerpt: list[Entry]) -> None:
    assert excerpt[0] == Entry(
        "6.1.192-3",
        "",
        "nfsd: preflight SEQUENCE replies before accepting a slot (CVE-2026-99362)",
        ("CVE-2026-99362",),
    )
    unsigned = block("6.1.1+2", "  * nfsd: something", package="linux-signed-amd64")
    assert entries(unsigned) == []  # without "Sign kernel from linux ..." the linux version is unknown
    assert entries(block("1.0-1", "  * a change", package="firmware-nonfree")) == []


def test_arch_tags_stay_in_the_title_and_come_off_in_bare_title(excerpt: list[Entry]) -> None:
    edac = next(e for e in excerpt if "EDAC" in e.title)
    assert edac.title == "[amd64] EDAC/amd64: Mask UMC chip select to the four implemented selects"
    assert edac.tags == ("amd64",)
    assert edac.bare_title == "EDAC/amd64: Mask UMC chip select to the four implemented selects"
    two = Entry("1-1", "", "[arm64,armhf] [rt] x: y [z]", ())
    assert (two.tags, two.bare_title) == (("arm64,armhf", "rt"), "x: y [z]")
    assert (excerpt[0].tags, excerpt[0].bare_title) == ((), excerpt[0].title)


def test_between_takes_the_uploads_after_one_version_up_to_another(excerpt: list[Entry]) -> None:
    newer = between(excerpt, "6.1.190-1", "6.1.192-3")
    assert newer == [e for e in excerpt if e.version in ("6.1.192-3", "6.1.192-2", "6.1.192-1")]
    assert len(newer) == 32
    assert {e.version for e in between(excerpt, "6.1.174-1", "6.1.190-1")} == {"6.1.190-1"}
    assert between(excerpt, "6.1.192-3", "6.1.200-1") == []
    assert {e.version for e in between(excerpt, "6.1.192-1", "6.1.192-2")} == {"6.1.192-2"}
    with pytest.raises(ValueError):
        between(excerpt, "not a version!", "6.1.192-3")


def test_line_keeps_only_that_upstream_series() -> None:
    text = (
        block("6.10.3-1", "  * ten")
        + block("6.1.5-1", "  * one")
        + block("6.1~rc7-1~exp1", "  * candidate")
        + block("1:6.1.2-1", "  * epoch")
        + block("5.10.1-1", "  * five")
    )
    assert [e.title for e in entries(text, "6.1")] == ["one", "candidate", "epoch"]
    assert [e.title for e in entries(text, "6.10")] == ["ten"]
    assert entries(text, "6.2") == []
    assert len(entries(EXCERPT.read_text(encoding="utf-8"), "6.1")) == 58


def test_dump_and_load_round_trip(excerpt: list[Entry]) -> None:
    data = dump(excerpt)
    assert data == dump(excerpt)  # no timestamp in the gzip header
    assert data[:2] == b"\x1f\x8b"
    assert load(data) == excerpt
    assert load(dump([])) == []


def cache(doc: object) -> bytes:
    return gzip.compress(json.dumps(doc).encode())


GOOD_ROW = ["6.1.5-1", "6.1.4", "x: fix y", ["CVE-2024-1234"]]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not gzip",
        gzip.compress(b"\xff\xfe not json"),
        gzip.compress(b"[" * 100_000),
        cache([GOOD_ROW]),
        cache({"format": 2, "entries": [GOOD_ROW]}),
        cache({"format": True, "entries": [GOOD_ROW]}),
        cache({"format": 1, "entries": {"0": GOOD_ROW}}),
        cache({"format": 1, "entries": [GOOD_ROW[:3]]}),
        cache({"format": 1, "entries": [[1, "", "t", []]]}),
        cache({"format": 1, "entries": [["6.1.5-1 ; rm", "", "t", []]]}),
        cache({"format": 1, "entries": [["6.1.5-1", "../../x", "t", []]]}),
        cache({"format": 1, "entries": [["6.1.5-1", "", "", []]]}),
        cache({"format": 1, "entries": [["6.1.5-1", "", "x" * 301, []]]}),
        cache({"format": 1, "entries": [["6.1.5-1", "", "red \x1b[31m", []]]}),
        cache({"format": 1, "entries": [["6.1.5-1", "", "t", ["CVE-1"]]]}),
        cache({"format": 1, "entries": [["6.1.5-1", "", "t", "CVE-2024-1234"]]}),
        cache({"format": 1, "entries": [["6.1.5-1", "", "t", [["CVE-2024-1234"]]]]}),
        cache({"format": 1, "entries": [["6.1.5-1", "", "t", ["CVE-2024-1234"] * 65]]}),
    ],
)
def test_load_refuses_anything_but_a_valid_cache(data: bytes) -> None:
    with pytest.raises(Malformed) as caught:
        load(data)
    assert "\n" not in str(caught.value)


def test_load_bounds_the_number_of_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        load(cache({"format": 1, "entries": [GOOD_ROW] * 3}))
        == [Entry("6.1.5-1", "6.1.4", "x: fix y", ("CVE-2024-1234",))] * 3
    )
    monkeypatch.setattr(changelog, "MAX_ENTRIES", 2)
    with pytest.raises(Malformed):
        load(cache({"format": 1, "entries": [GOOD_ROW] * 3}))


def test_read_inflates_every_member_and_replaces_bad_utf8() -> None:
    assert read(gzip.compress(b"linux (1-1)") + gzip.compress(b" \xff") + b"\0" * 512) == "linux (1-1) \ufffd"
    assert read(gzip.compress(b"")) == ""


def bomb(size: int) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    return b"".join(deflate.compress(chunk) for _ in range(size >> 20)) + deflate.flush()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0" * 64,
        b"plain text, not gzip",
        gzip.compress(b"cut short" * 100)[:-12],
        gzip.compress(b"x") + b"trailing garbage",
        gzip.compress(b"x") * 17,
    ],
)
def test_read_refuses_what_is_not_gzip(data: bytes) -> None:
    with pytest.raises(Malformed):
        read(data)


def test_read_refuses_a_gzip_bomb() -> None:
    data = bomb(changelog.MAX_TEXT + (1 << 20))
    assert len(data) < 100_000
    with pytest.raises(Malformed, match="inflates past"):
        read(data)


def test_garbage_and_binary_parse_to_nothing() -> None:
    noise = random.Random(1).randbytes(200_000)
    assert entries(noise.decode("utf-8", errors="replace")) == []
    assert entries("\0\1\2 -- \n  * not in a block\n") == []
    assert entries("") == []


def test_a_block_without_trailer_still_counts() -> None:
    text = (
        "linux (2.0-1) unstable; urgency=low\n\n  * two\n"
        + "linux (1.0-1) unstable; urgency=low\n\n  * one\n    wrapped"
    )
    assert entries(text) == [Entry("2.0-1", "", "two", ()), Entry("1.0-1", "", "one wrapped", ())]


def test_control_characters_and_escape_sequences_leave_titles() -> None:
    text = block(
        "1.0-1", "  * \x1b[1;31mred\x1b[0m fix\x07 for\tbug \x1b]0;title\x07(CVE-2024-12345)", "  * \u202eevil\u200b"
    )
    assert entries(text) == [
        Entry("1.0-1", "", "red fix for bug (CVE-2024-12345)", ("CVE-2024-12345",)),
        Entry("1.0-1", "", "evil", ()),
    ]


def test_huge_lines_are_cut_not_choked_on() -> None:
    megabyte = 1 << 20
    text = (
        block("1.0-1", "  * " + "a" * megabyte, "  * (CVE-2024-11111) " + "b " * megabyte)
        + " -- "
        + "<>  " * (megabyte // 4)  # quadratic for python-debian's trailer regex
        + "\nlinux (0.9-1) unstable; urgency=low "
        + "x" * megabyte
        + "\n  * http://" * 3
        + "http://" * (megabyte // 7)
        + "\n\n"
        + "\n" * megabyte
    )
    found = entries(text)
    assert [len(e.title) for e in found] == [300, 300, 7, 7, 300]
    assert found[0].title.endswith("a…")
    assert found[1].cves == ("CVE-2024-11111",)


def test_entries_lines_and_text_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    text = block("1.0-1", *(f"  * change {n}" for n in range(10)))
    monkeypatch.setattr(changelog, "MAX_ENTRIES", 9)
    with pytest.raises(Malformed, match="more than 9"):
        entries(text)
    monkeypatch.setattr(changelog, "MAX_ENTRIES", 10)
    assert len(entries(text)) == 10
    monkeypatch.setattr(changelog, "MAX_LINES", 5)
    with pytest.raises(Malformed, match="lines"):
        entries(text)
    monkeypatch.setattr(changelog, "MAX_TEXT", 100)
    with pytest.raises(Malformed, match="characters"):
        entries(text)


def build_deb(root: Path, abi: str, files: dict[str, bytes]) -> Path:
    """A .deb of package linux-image-ABI holding a kernel image and `files`, built by dpkg-deb."""
    tree = root / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    control = tree / "DEBIAN" / "control"
    control.parent.mkdir(parents=True)
    control.write_text(
        f"Package: linux-image-{abi}\nVersion: 6.1.192-1\nArchitecture: all\n"
        "Maintainer: Someone <someone@example.org>\nDescription: test package\n"
    )
    for path, data in {f"boot/vmlinuz-{abi}": b"not a real kernel", **files}.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    for directory in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)  # dpkg-deb refuses a group-writable DEBIAN/
    deb = root / f"linux-image-{abi}_6.1.192-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return deb


ABI = "6.1.0-55-amd64"
OWN = f"usr/share/doc/linux-image-{ABI}/changelog.gz"
OTHER = "usr/share/doc/linux-headers-x/changelog.Debian.gz"


def unpacked(tmp_path: Path, files: dict[str, bytes]) -> kernels.Kernel:
    """The kernel cache's own path: the .deb unpacked (a local file stands in for the download)."""
    deb = build_deb(tmp_path, ABI, files)
    listed = Deb(f"linux-image-{ABI}", "6.1.192-1", deb.name, "0" * 64, deb.stat().st_size, "bookworm")
    packaged = kernels.Packaged("k", ABI, f"linux-image-{ABI}", "6.1.192-1", (listed,), "debian:bookworm")
    return kernels.unpacked(packaged, tmp_path / "cache", lambda d: deb, [])


def test_the_kernel_cache_keeps_the_image_package_changelog_of_its_line(tmp_path: Path) -> None:
    text = block("6.1.192-1", "  * New upstream stable update:", "    - mm/mremap: fix it") + block(
        "6.0.12-1", "  * old"
    )
    kernel = unpacked(tmp_path, {OTHER: gzip.compress(b"other"), OWN: gzip.compress(text.encode())})
    assert kernels.changelog_of(kernel) == [Entry("6.1.192-1", "", "mm/mremap: fix it", ())]
    assert not list((tmp_path / "cache" / "kernels").glob("*/.changelog*"))  # the raw file is not kept


def test_a_kernel_without_a_readable_changelog_still_unpacks(tmp_path: Path) -> None:
    assert kernels.changelog_of(unpacked(tmp_path / "a", {})) is None
    assert kernels.changelog_of(unpacked(tmp_path / "b", {OWN: b"not gzip"})) is None
    kernel = unpacked(tmp_path / "c", {OWN: gzip.compress(block("6.1.192-1", "  * x").encode())})
    (kernel.image.parent / kernels.CHANGELOG_FILE).write_bytes(b"tampered")
    assert kernels.changelog_of(kernel) is None
