"""Find the Debian mirror this host already uses, from its apt configuration.

The harness downloads kernels from the same archive apt uses, so a developer or CI machine needs no extra
setting. Parsing is pure (strings in, records out); only `read_sources` and `find_debian_mirror` touch
files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Deb822

from harness.errors import UserError

ENV_MIRROR = "HARNESS_DEBIAN_MIRROR"

# Every release name Debian has used, plus the aliases apt accepts; a suite such as "nodistro" or
# "cloud-sdk-bookworm" belongs to a third-party archive that has no Debian kernels.
CODENAMES = frozenset(
    ("buzz", "rex", "bo", "hamm", "slink", "potato", "woody", "sarge", "etch", "lenny", "squeeze")
    + ("wheezy", "jessie", "stretch", "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid")
)
ALIASES = frozenset(("stable", "testing", "unstable", "oldstable", "oldoldstable", "experimental"))
SUITE_SUFFIXES = ("", "-updates", "-backports", "-backports-sloppy", "-proposed-updates", "-security")
_SCHEMES = ("http://", "https://", "file:")


@dataclass(frozen=True)
class SourceEntry:
    """One (type, URI, suite) triple from apt's configuration; deb822 stanzas expand to several."""

    type: str  # "deb" or "deb-src"
    uri: str  # without trailing slash
    suite: str
    components: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()
    origin: str = ""  # file name, for messages


def is_debian_suite(suite: str) -> bool:
    """True for names like bookworm, trixie-backports, sid, stable-updates."""
    for suffix in SUITE_SUFFIXES:
        if suffix and not suite.endswith(suffix):
            continue
        base = suite[: len(suite) - len(suffix)] if suffix else suite
        if base in CODENAMES or base in ALIASES:
            return True
    return False


def parse_one_line(text: str, origin: str = "") -> list[SourceEntry]:
    """Parse the classic `deb [opts] URI SUITE COMPONENT...` format (sources.list, *.list)."""
    entries: list[SourceEntry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            continue
        options: list[tuple[str, str]] = []
        rest = rest.strip()
        if rest.startswith("["):
            inner, sep, rest = rest[1:].partition("]")
            if not sep:
                continue  # unterminated option list: apt rejects the line too
            for opt in inner.split():
                key, _, value = opt.partition("=")
                options.append((key, value))
        words = rest.split()
        if len(words) < 2:
            continue
        uri, suite, *components = words
        entries.append(SourceEntry(kind, uri.rstrip("/"), suite, tuple(components), tuple(options), origin))
    return entries


def parse_deb822(text: str, origin: str = "") -> list[SourceEntry]:
    """Parse the deb822 `.sources` format; `Enabled: no` stanzas are left out."""
    entries: list[SourceEntry] = []
    for para in Deb822.iter_paragraphs(text.splitlines(keepends=True)):
        if para.get("Enabled", "yes").strip().lower() == "no":
            continue
        known = {"types", "uris", "suites", "components", "enabled"}
        options = tuple((k.lower(), v.strip()) for k, v in para.items() if k.lower() not in known)
        components = tuple(para.get("Components", "").split())
        for kind in para.get("Types", "").split():
            for uri in para.get("URIs", "").split():
                for suite in para.get("Suites", "").split():
                    entries.append(SourceEntry(kind, uri.rstrip("/"), suite, components, options, origin))
    return entries


def source_files(root: Path) -> list[Path]:
    """The files apt reads, in apt's order: sources.list, then sources.list.d/ sorted by name."""
    etc = root / "etc" / "apt"
    files = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    parts = etc / "sources.list.d"
    if parts.is_dir():
        # apt ignores other suffixes, which is how a machine disables a source (e.g. `.disabled-by-farm`)
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    return files


def read_sources(root: Path) -> list[SourceEntry]:
    entries: list[SourceEntry] = []
    for path in source_files(root):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue  # apt would complain; for finding a mirror an unreadable file is just absent
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        entries += parse(text, str(path))
    return entries


def pick_mirror(entries: Iterable[SourceEntry]) -> str | None:
    """The first binary Debian archive that is not the security archive: that one only serves
    `dists/<release>-security`, never `dists/<release>/main`."""
    for e in entries:
        if e.type != "deb" or not is_debian_suite(e.suite) or e.suite.endswith("-security"):
            continue
        if e.uri.endswith("-security") or not e.uri.startswith(_SCHEMES):
            continue
        return e.uri
    return None


def find_debian_mirror(root: Path = Path("/")) -> str:
    mirror = pick_mirror(read_sources(root))
    if mirror is None:
        where = root / "etc" / "apt"
        raise UserError(
            f"no Debian mirror in {where}/sources.list or {where}/sources.list.d/ (another "
            f"distribution's archive, e.g. Ubuntu's, has no Debian kernels); set {ENV_MIRROR}=http://HOST/debian "
            f"or --mirror, or run in a Debian container"
        )
    return mirror


def check_mirror_url(url: str, what: str) -> str:
    url = url.strip().rstrip("/")
    if not re.match(r"^(https?://[^/\s]+|file:/)\S*$", url):
        raise UserError(f"{what}: {url!r} is not a mirror URL; give one such as http://HOST/debian")
    return url


def mirror_from(setting: str | None, env: Mapping[str, str], root: Path = Path("/")) -> str:
    """The --mirror flag, else $HARNESS_DEBIAN_MIRROR, else the host's apt configuration."""
    if setting:
        return check_mirror_url(setting, "--mirror")
    if env.get(ENV_MIRROR):
        return check_mirror_url(env[ENV_MIRROR], ENV_MIRROR)
    return find_debian_mirror(root)


ENV_SECURITY_MIRROR = "HARNESS_DEBIAN_SECURITY_MIRROR"


def pick_security_mirror(entries: Iterable[SourceEntry]) -> str | None:
    """The first binary Debian security archive: what serves `dists/<release>-security`."""
    for e in entries:
        if (
            e.type == "deb"
            and e.suite.endswith("-security")
            and is_debian_suite(e.suite)
            and e.uri.startswith(_SCHEMES)
        ):
            return e.uri
    return None


def security_mirror_from(setting: str | None, env: Mapping[str, str], root: Path = Path("/")) -> str | None:
    """$HARNESS_DEBIAN_SECURITY_MIRROR, else the host's apt configuration, else the main mirror's
    sibling by Debian's layout (http://HOST/debian -> http://HOST/debian-security); None if none."""
    if env.get(ENV_SECURITY_MIRROR):
        return check_mirror_url(env[ENV_SECURITY_MIRROR], ENV_SECURITY_MIRROR)
    if not setting and not env.get(ENV_MIRROR):
        found = pick_security_mirror(read_sources(root))
        if found is not None:
            return found
    try:
        main = mirror_from(setting, env, root)
    except UserError:
        return None
    return main + "-security" if main.endswith("/debian") else None


ENV_OLD_ARCHIVE = "HARNESS_DEBIAN_ARCHIVE"
ENV_SNAPSHOT = "HARNESS_DEBIAN_SNAPSHOT"


def old_archive_from(env: Mapping[str, str], root: Path = Path("/")) -> str | None:
    """Debian's archive of old releases (etch ... buster): $HARNESS_DEBIAN_ARCHIVE, else a source in
    the host's apt configuration whose path is its layout's (.../debian-archive/debian); None if none."""
    if env.get(ENV_OLD_ARCHIVE):
        return check_mirror_url(env[ENV_OLD_ARCHIVE], ENV_OLD_ARCHIVE)
    return next(
        (e.uri for e in read_sources(root) if e.type == "deb" and e.uri.endswith("/debian-archive/debian")), None
    )


def snapshot_from(env: Mapping[str, str], root: Path = Path("/")) -> str | None:
    """Debian's snapshot service, the part before /archive/debian/<timestamp>: $HARNESS_DEBIAN_SNAPSHOT,
    else taken from a snapshot source in the host's apt configuration; None if none."""
    if env.get(ENV_SNAPSHOT):
        return check_mirror_url(env[ENV_SNAPSHOT], ENV_SNAPSHOT)
    for e in read_sources(root):
        m = re.match(r"^(?P<base>.+)/archive/debian/\d{8}T\d{6}Z$", e.uri)
        if e.type == "deb" and m:
            return m["base"]
    return None
