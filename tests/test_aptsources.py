from pathlib import Path

import pytest

from harness.debian.aptsources import (
    ENV_MIRROR,
    ENV_SECURITY_MIRROR,
    SourceEntry,
    find_debian_mirror,
    is_debian_suite,
    mirror_from,
    parse_deb822,
    parse_one_line,
    pick_mirror,
    security_mirror_from,
)
from harness.errors import UserError

DEB822 = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def write(root: Path, name: str, text: str) -> None:
    path = root / "etc" / "apt" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_one_line_with_options_and_comments() -> None:
    text = """
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian/ trixie main contrib # tail
deb [ trusted=yes ] http://other.example/debian sid main
"""
    entries = parse_one_line(text, "sources.list")
    assert entries[0] == SourceEntry("deb-src", "http://src.example/debian", "bookworm", ("main",), (), "sources.list")
    assert entries[1] == SourceEntry(
        "deb",
        "http://mirror.example/debian",
        "trixie",
        ("main", "contrib"),
        (("arch", "amd64"), ("signed-by", "/usr/share/keyrings/x.gpg")),
        "sources.list",
    )
    assert entries[2].options == (("trusted", "yes"),)
    assert entries[2].suite == "sid"
    assert len(entries) == 3


def test_one_line_rejects_broken_lines() -> None:
    assert parse_one_line("deb [arch=amd64 http://x.example/debian bookworm main\ndeb http://x.example\n") == []


def test_deb822_expands_suites_and_skips_disabled() -> None:
    text = DEB822 + "\nTypes: deb deb-src\nURIs: http://off.example/debian\nSuites: sid\nEnabled: no\n"
    entries = parse_deb822(text)
    assert [(e.type, e.uri, e.suite) for e in entries] == [
        ("deb", "http://mirror.example/debian", "bookworm"),
        ("deb", "http://mirror.example/debian", "bookworm-updates"),
        ("deb", "http://mirror.example/debian-security", "bookworm-security"),
    ]
    assert ("signed-by", "/usr/share/keyrings/debian-archive-keyring.gpg") in entries[0].options


@pytest.mark.parametrize(
    ("suite", "ok"),
    [
        ("bookworm", True),
        ("trixie-backports", True),
        ("sid", True),
        ("stable-updates", True),
        ("bookworm-security", True),
        ("nodistro", False),
        ("cloud-sdk-bookworm", False),
        ("jammy", False),
    ],
)
def test_is_debian_suite(suite: str, ok: bool) -> None:
    assert is_debian_suite(suite) is ok


def test_security_archive_is_skipped() -> None:
    entries = parse_deb822(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert pick_mirror(entries) == "http://mirror.example/debian"


def test_find_in_deb822_ignoring_disabled_suffix(tmp_path: Path) -> None:
    # Sorted first, but its suffix means apt ignores it; and its suite is not Debian's anyway.
    write(
        tmp_path,
        "sources.list.d/aaa.list.disabled-by-farm",
        "deb http://disabled.example/debian bookworm main\n",
    )
    write(tmp_path, "sources.list.d/debian.sources", DEB822)
    assert find_debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_sources_list_comes_first_and_third_party_is_skipped(tmp_path: Path) -> None:
    write(tmp_path, "sources.list", "deb https://vendor.example/apt nodistro main\n")
    write(tmp_path, "sources.list.d/b.list", "deb http://second.example/debian trixie main\n")
    write(tmp_path, "sources.list.d/a.sources", "Types: deb\nURIs: http://first.example/debian\nSuites: sid\n")
    assert find_debian_mirror(tmp_path) == "http://first.example/debian"


def test_no_mirror_is_a_user_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        "sources.list.d/debian.sources",
        "Types: deb\nURIs: http://x.example/debian\nSuites: sid\nEnabled: no\n",
    )
    with pytest.raises(UserError, match=ENV_MIRROR):
        find_debian_mirror(tmp_path)
    with pytest.raises(UserError, match="--mirror"):
        find_debian_mirror(tmp_path / "nowhere")


def test_an_ubuntu_host_is_told_where_debian_kernels_come_from(tmp_path: Path) -> None:
    """A GitHub runner's apt sources: Ubuntu suites only, none of which carries a Debian kernel."""
    write(
        tmp_path,
        "sources.list.d/ubuntu.sources",
        "Types: deb\nURIs: http://archive.example/ubuntu/\nSuites: noble noble-updates noble-security\n"
        "Components: main universe\n",
    )
    with pytest.raises(UserError) as err:
        find_debian_mirror(tmp_path)
    (line,) = str(err.value).splitlines()
    assert "Ubuntu" in line and f"{ENV_MIRROR}=http://HOST/debian" in line and "Debian container" in line


def test_mirror_from_precedence(tmp_path: Path) -> None:
    write(tmp_path, "sources.list", "deb http://apt.example/debian bookworm main\n")
    env = {ENV_MIRROR: "http://env.example/debian/"}
    assert mirror_from("http://flag.example/debian/", env, tmp_path) == "http://flag.example/debian"
    assert mirror_from(None, env, tmp_path) == "http://env.example/debian"
    assert mirror_from(None, {}, tmp_path) == "http://apt.example/debian"
    with pytest.raises(UserError, match="not a mirror URL"):
        mirror_from("mirror.example", {}, tmp_path)


def test_the_security_archive_beside_the_mirror(tmp_path: Path) -> None:
    """From apt's sources when they name it; else by Debian's layout beside the main mirror; a
    setting beats both."""
    write(tmp_path, "sources.list.d/debian.sources", DEB822.replace("example/debian-security", "example/sec"))
    assert security_mirror_from(None, {}, tmp_path) == "http://mirror.example/sec"
    assert security_mirror_from("http://flag.example/debian", {}, tmp_path) == "http://flag.example/debian-security"
    assert security_mirror_from(None, {ENV_SECURITY_MIRROR: "http://s.example/x/"}, tmp_path) == "http://s.example/x"
    write(tmp_path, "sources.list.d/debian.sources", "Types: deb\nURIs: http://only.example/debian\nSuites: sid\n")
    assert security_mirror_from(None, {}, tmp_path) == "http://only.example/debian-security"
    write(tmp_path, "sources.list.d/debian.sources", "Types: deb\nURIs: http://only.example/mirror\nSuites: sid\n")
    assert security_mirror_from(None, {}, tmp_path) is None  # no layout to go by: said when a -security suite is asked
