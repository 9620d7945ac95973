"""What Debian's signed package indexes say about kernels: which builds a suite has, which packages
hold one, and the newest that matches a spec. Pure: parsed index stanzas in, records out.

Meta packages are followed to the concrete `linux-image-<abi>`; from 7.x on the kernel itself is in
`linux-binary-<abi>`, its modules in `linux-modules-<abi>` and `modules.builtin` in `linux-base-<abi>`.
A backports index keeps a line's image packages after its modules packages have gone: such a build
resolves without modules (the signed kernel alone), and its guests are reached over the serial line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from debian.deb822 import PkgRelation
from debian.debian_support import Version

from harness import versions
from harness.debian.archive import Deb, deb_of
from harness.errors import InfraError, UserError
from harness.results import KernelInfo

Stanza = Mapping[str, str]


class Wanted(Protocol):
    """What a spec asks of the indexes (harness.kernels.sources.debian.DebianKernel)."""

    @property
    def suites(self) -> tuple[str, ...]: ...

    @property
    def package(self) -> str: ...

    @property
    def abi(self) -> str | None: ...

    @property
    def version(self) -> str | None: ...  # an upstream line ("6.19") or a range (">=6.12,<7")


@dataclass(frozen=True)
class Resolved:
    """A `debian:` spec resolved against the mirror; nothing downloaded yet."""

    spec: Wanted
    suite: str
    abi: str  # e.g. "6.1.0-50-amd64", "7.3.4+deb13-amd64"
    version: str  # Debian version of the concrete package
    debs: tuple[Deb, ...]  # what holds the image and the modules (and modules.builtin)
    package: str = ""  # the concrete linux-image-<abi> package the spec led to


@dataclass(frozen=True)
class Build:
    """One concrete kernel build an index lists."""

    abi: str
    version: Version
    suite: str


# A concrete image package: linux-image-<abi>, where an ABI starts with the upstream version.
_IMAGE = re.compile(r"^linux-image-(?P<abi>\d[a-z0-9.+~-]*?)(?P<unsigned>-unsigned)?$")


def resolve_in(spec: Wanted, indexes: Mapping[str, Sequence[Stanza]]) -> Resolved:
    """Pick the newest matching kernel across `spec.suites` and the packages that hold it."""
    by_suite: dict[str, dict[str, list[Stanza]]] = {}
    for suite in spec.suites:
        if suite not in indexes:
            raise UserError(f"suite {suite!r} is not on the mirror; use a Debian suite such as bookworm")
        by_suite[suite] = _by_name(indexes[suite])

    if spec.abi:
        wanted = [f"linux-image-{spec.abi}", f"linux-image-{spec.abi}-unsigned"]
    elif spec.version:
        wanted = sorted({f"linux-image-{b.abi}" for b in builds_in(spec, by_suite)})
    else:
        if spec.package.endswith("-dbg"):
            raise UserError(f"package {spec.package}: a debug-symbols package cannot boot; drop '-dbg'")
        wanted = [spec.package]

    candidates: list[tuple[Version, str, Stanza]] = []
    for suite in spec.suites:
        for name in wanted:
            stanza = _newest(by_suite[suite].get(name, []))
            if stanza is not None:
                candidates.append((Version(stanza["Version"]), suite, stanza))
                if spec.abi:
                    break  # the signed linux-image-<abi> wins over -unsigned in the same suite
    if not candidates:
        what = (
            f"ABI {spec.abi}" if spec.abi else f"version {spec.version}" if spec.version else f"package {spec.package}"
        )
        raise UserError(
            f"{what} is not in {'/'.join(spec.suites)}; available ABIs: {', '.join(available_abis(by_suite)) or 'none'}"
        )
    # Newest first; one that cannot be assembled (an index entry incomplete) gives way to an older one.
    candidates.sort(key=lambda c: c[0], reverse=True)
    first_error: InfraError | None = None
    for _, suite, start in candidates:
        index = by_suite[suite]
        try:
            image = _concrete_image(start, index, spec)
            abi = _abi_of(image["Package"])
            debs = _payload(image, abi, index, suite)
        except InfraError as e:
            first_error = first_error or e
            continue
        return Resolved(spec, suite, abi, image["Version"], debs, image["Package"])
    assert first_error is not None
    raise first_error


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


# An ABI is the upstream version with Debian's marks (+deb13, +deb12.1, -50, -0.deb11.52), then the
# flavour, which starts with a letter: 6.1.0-50-amd64, 6.12.117+deb13-cloud-amd64, 6.1.0-0.deb11.52-amd64.
_ABI = re.compile(
    r"^\d+\.\d+(?:\.\d+)*(?:\+deb\d+(?:\.\d+)?)?(?:-\d+(?:\.deb\d+\.\d+)?)?"
    r"-(?P<flavour>[a-z][a-z0-9-]*)$"
)


def flavour_of(abi: str) -> str | None:
    m = _ABI.match(abi)
    return m["flavour"] if m else None


def in_versions(wanted: str | None, abi: str, version: str) -> bool:
    """Is a build of this ABI and Debian version in `wanted`: a line ("6.19") or a range (">=6.12,<7")?
    Components compare as numbers, so 6.1 is not 6.12."""
    if wanted is None:
        return True
    upstream = versions.upstream(KernelInfo("", abi, None, version, "", ""))
    line = versions.line(wanted)
    return versions.in_line_of(upstream, line) if line is not None else versions.in_range(wanted, upstream)


def builds_in(spec: Wanted, by_suite: Mapping[str, Mapping[str, Sequence[Stanza]]]) -> list[Build]:
    """Every concrete build of the spec's flavour (and versions) in its suites, oldest first; an ABI
    in several suites counts once, as its newest version."""
    flavour = spec.package.removeprefix("linux-image-")
    found: dict[str, Build] = {}
    for suite, index in by_suite.items():
        for name, stanzas in index.items():
            m = _IMAGE.match(name)
            newest = _newest(stanzas)
            if not m or m["unsigned"] or newest is None or flavour_of(m["abi"]) != flavour or _is_meta(newest):
                continue
            build = Build(m["abi"], Version(newest["Version"]), suite)
            if in_versions(spec.version, build.abi, newest["Version"]) and (
                build.abi not in found or build.version > found[build.abi].version
            ):
                found[build.abi] = build
    return sorted(found.values(), key=lambda b: (b.version, b.abi))


def _is_meta(stanza: Stanza) -> bool:
    """A line's meta package (linux-image-6.1-amd64 in bullseye-security) looks like a build of ABI
    `6.1-amd64` but only depends on the concrete image of the line's newest build."""
    m = _IMAGE.match(stanza["Package"])
    return any(
        (t := _IMAGE.match(name)) and not t["unsigned"] and m and t["abi"] != m["abi"] for name, _ in _depends(stanza)
    )


def list_builds(spec: Wanted, indexes: Mapping[str, Sequence[Stanza]]) -> list[Build]:
    """builds_in over the suites' parsed indexes, as the archive gives them."""
    return builds_in(spec, {suite: _by_name(index) for suite, index in indexes.items()})


def newest_per_line(builds: Sequence[Build]) -> list[Build]:
    """The newest build of each upstream line (major.minor), oldest line first."""
    lines: dict[tuple[int, ...], Build] = {}
    for b in builds:  # oldest first: a later build of a line replaces an earlier one
        lines[versions.upstream(KernelInfo("", b.abi, None, str(b.version), "", ""))[:2]] = b
    return sorted(lines.values(), key=lambda b: (b.version, b.abi))


def _concrete_image(start: Stanza, index: Mapping[str, Sequence[Stanza]], spec: Wanted) -> Stanza:
    """Follow meta packages (linux-image-amd64 -> linux-image-<abi>) to the concrete image package."""
    stanza = start
    for _ in range(4):  # metas nest at most once or twice; bound it against odd indexes
        m = _IMAGE.match(stanza["Package"])
        if m and not m["abi"].endswith("-dbg") and not _is_meta(stanza):
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
    in linux-base-<abi> (without it built-in drivers look like missing modules). Whatever of these the
    index still has: only the kernel is needed."""
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
        return (deb_of(image, suite),)
    # Without its modules (a backports index drops them before the kernel), the signed kernel still
    # boots: its guest goes without (and is reached over the serial line).
    parts = [binary] + [p for p in (modules, base) if p is not None]
    return tuple(deb_of(s, suite) for s in parts)
