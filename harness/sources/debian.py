"""Kernels from Debian's archive: `debian: SUITE` or `{suite, package, abi | version}` in a matrix.

A spec is resolved against the suites' signed package indexes (meta packages followed to the
concrete `linux-image-<abi>`, and from 7.x on to the `linux-binary-*`/`linux-modules-*` packages
that hold the kernel), then its .debs are downloaded, checked and unpacked into the cache. The
choice among the indexes (`resolve_in`) is pure; `harness.archive` is the only network access.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian.deb822 import PkgRelation
from debian.debian_support import Version

from harness import kernels, manifest
from harness.aptsources import mirror_from
from harness.archive import Archive, Deb
from harness.errors import InfraError, UserError
from harness.kernels import Kernel
from harness.sources.base import Context
from harness.yamlfile import KeyPath, Where

Stanza = Mapping[str, str]


@dataclass(frozen=True)
class DebianKernel:
    """A kernel from Debian's archive: the newest `package` across `suites`, or the concrete `abi`."""

    suites: tuple[str, ...]
    package: str = "linux-image-amd64"
    abi: str | None = None
    version: str | None = None  # an upstream line such as "6.19": the newest kernel of that line
    origin: str = field(default="", compare=False)  # "file:line: kernels.N", for messages

    kind = "debian"

    @property
    def label(self) -> str:
        base = "+".join(self.suites)
        pinned = self.abi or self.version
        return f"{base}-{pinned}" if pinned else base


@dataclass(frozen=True)
class Resolved:
    """A `debian:` spec resolved against the mirror; nothing downloaded yet."""

    spec: DebianKernel
    suite: str
    abi: str  # e.g. "6.1.0-50-amd64", "7.3.4+deb13-amd64"
    version: str  # Debian version of the concrete package
    debs: tuple[Deb, ...]  # what holds the image and the modules (and modules.builtin)
    package: str = ""  # the concrete linux-image-<abi> package the spec led to


class DebianSource:
    kind = "debian"
    keys = frozenset({"debian"})
    syntax = "{debian: SUITE or {suite, package, abi}}"
    local = False

    def parse(self, item: dict[str, Any], where: Where, path: KeyPath) -> DebianKernel:
        value = item["debian"]
        if isinstance(value, str):
            value = {"suite": value}
        if not isinstance(value, dict):
            raise where.error((*path, "debian"), "expected a suite name or a mapping {suite, package, abi}")
        for key in value:
            if key not in ("suite", "package", "abi", "version"):
                raise where.error((*path, "debian", key), "unknown key; allowed: suite, package, abi, version")
        suites = value.get("suite")
        if isinstance(suites, str):
            suites = [suites]
        if not isinstance(suites, list) or not suites or not all(
            isinstance(s, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", s) for s in suites
        ):
            raise where.error((*path, "debian", "suite"), "give a Debian suite name such as bookworm, or a list")
        package = value.get("package", "linux-image-amd64")
        if not isinstance(package, str):
            raise where.error((*path, "debian", "package"), f"{package!r}: give a package name such as "
                                                              "linux-image-amd64")  # fmt: skip
        abi = value.get("abi")
        version = value.get("version")
        if version is not None:
            if not isinstance(version, str):  # YAML reads 6.10 as the number 6.1: only text is exact
                raise where.error((*path, "debian", "version"),
                                  'quote it, e.g. version: "6.19" (YAML reads 6.10 as 6.1)')  # fmt: skip
            if not re.fullmatch(r"\d+\.\d+", version):
                raise where.error((*path, "debian", "version"), f"{version!r}: give an upstream line such as 6.19")
            if abi is not None:
                raise where.error((*path, "debian", "version"), "give either abi or version, not both")
        for key, v in (("package", package), ("abi", abi)):
            if v is not None and not (isinstance(v, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+~-]*", v)):
                raise where.error((*path, "debian", key), f"{v!r} is not a Debian package or ABI name")
        return DebianKernel(tuple(suites), package, abi, version, where.origin(path))

    def resolve(self, spec: DebianKernel, ctx: Context) -> Resolved:
        return resolve(spec, mirror(ctx))

    def describe(self, resolved: Resolved) -> list[str]:
        return [resolved.suite, resolved.abi, ", ".join(f"{d.package}={d.version}" for d in resolved.debs)]

    def fetch(self, resolved: Resolved, ctx: Context) -> Kernel:
        return fetch(resolved, mirror(ctx), ctx.cache)

    def record(self, kernel: Kernel) -> dict[str, Any]:
        return {}  # the .debs, which every kernel entry lists, say everything

    def pin(self, spec: DebianKernel, entry: manifest.Kernel, ctx: Context) -> Kernel:
        """From the cache by SHA-256, else from the exact .debs the run used, checked again."""
        assert entry.booted is not None
        booted = entry.booted
        cached = ctx.shared("debian:cached", lambda: {k.sha256: k for k in kernels.list_cached(ctx.cache)})
        if booted.sha256 in cached:
            return cached[booted.sha256]
        if not booted.debs:
            raise UserError(f"kernel {spec.label}: the manifest lists no .debs and it is not in the cache")
        resolved = Resolved(spec, booted.debs[0].suite, booted.release, booted.version or "", booted.debs,
                            booted.package or "")  # fmt: skip
        kernel = self.fetch(resolved, ctx)
        if kernel.sha256 != booted.sha256:
            raise UserError(f"kernel {spec.label}: the .debs now give sha256 {kernel.sha256[:12]}, the run "
                            f"booted {booted.sha256[:12]}")  # fmt: skip
        return kernel


SOURCE = DebianSource()


def fetch(resolved: Resolved, archive: Archive, cache: Path) -> Kernel:
    """Download, verify and unpack the kernel once; later calls only read the cache."""
    packaged = kernels.Packaged(resolved.spec.label, resolved.abi, resolved.package or None, resolved.version,
                                resolved.debs, debian_source(resolved.spec))  # fmt: skip
    return kernels.unpacked(packaged, cache, archive.fetch_deb)


def mirror(ctx: Context) -> Archive:
    """The run's one verifying view of the mirror (its indexes are read once per run)."""

    def make() -> Archive:
        return Archive(mirror_from(ctx.mirror, os.environ, Path("/")), ctx.cache, insecure=ctx.insecure,
                       warn=ctx.log)  # fmt: skip

    return ctx.shared("debian:archive", make)


# --- resolution (pure) -------------------------------------------------------------------------

# A concrete image package: linux-image-<abi>, where an ABI starts with the upstream version.
_IMAGE = re.compile(r"^linux-image-(?P<abi>\d[a-z0-9.+~-]*?)(?P<unsigned>-unsigned)?$")


def debian_source(spec: DebianKernel) -> str:
    text = "debian:" + "+".join(spec.suites)
    if spec.package != "linux-image-amd64":
        text += f"/{spec.package}"
    if spec.abi:
        text += f"@{spec.abi}"
    if spec.version:
        text += f"@{spec.version}.*"
    return text


def resolve(spec: DebianKernel, archive: Archive) -> Resolved:
    """Resolve against the mirror: reads the suites' indexes (downloading them if needed)."""
    # Kernel packages all start with "linux-"; parsing only those is 100x faster than a whole index.
    prefix = "linux-" if spec.package.startswith("linux-") else ""
    return resolve_in(spec, {suite: archive.packages(suite, prefix) for suite in spec.suites})


def resolve_in(spec: DebianKernel, indexes: Mapping[str, Sequence[Stanza]]) -> Resolved:
    """Pick the newest matching kernel across `spec.suites` and the packages that hold it."""
    by_suite: dict[str, dict[str, list[Stanza]]] = {}
    for suite in spec.suites:
        if suite not in indexes:
            raise UserError(f"suite {suite!r} is not on the mirror; use a Debian suite such as bookworm")
        by_suite[suite] = _by_name(indexes[suite])

    if spec.abi:
        wanted = [f"linux-image-{spec.abi}", f"linux-image-{spec.abi}-unsigned"]
    elif spec.version:
        flavour = spec.package.removeprefix("linux-image-")
        wanted = sorted({name for index in by_suite.values() for name in index
                         if _abi_in_line(name, spec.version, flavour)})  # fmt: skip
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
        what = (f"ABI {spec.abi}" if spec.abi else f"version {spec.version}" if spec.version
                else f"package {spec.package}")  # fmt: skip
        raise UserError(
            f"{what} is not in {'/'.join(spec.suites)}; available ABIs: "
            f"{', '.join(available_abis(by_suite)) or 'none'}"
        )
    # Newest first; a backports index keeps old kernels' image packages after their modules are
    # gone, so a line's newest kernel that cannot be assembled gives way to an older one.
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


_ABI_TAIL = re.compile(r"^(?:\.\d+)*(?:\+deb\d+(?:\.\d+)?)?(?:-\d+)?-(?P<flavour>[a-z0-9-]+?)$")


def _abi_in_line(package: str, line: str, flavour: str) -> bool:
    """linux-image-6.19.14+deb13-amd64 is in line "6.19" for flavour "amd64" (not cloud-amd64, not 6.1)."""
    m = _IMAGE.match(package)
    if not m or m["unsigned"] or not m["abi"].startswith(line):
        return False
    tail = _ABI_TAIL.match(m["abi"][len(line):])
    return tail is not None and tail["flavour"] == flavour


def _concrete_image(start: Stanza, index: Mapping[str, Sequence[Stanza]], spec: DebianKernel) -> Stanza:
    """Follow meta packages (linux-image-amd64 -> linux-image-<abi>) to the concrete image package."""
    stanza = start
    for _ in range(4):  # metas nest at most once or twice; bound it against odd indexes
        m = _IMAGE.match(stanza["Package"])
        if m and not m["abi"].endswith("-dbg"):
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
    in linux-base-<abi> (without it built-in drivers look like missing modules)."""
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
        return (_deb(image, suite),)
    if modules is None:
        raise InfraError(
            f"{image['Package']} in {suite}: linux-modules-{abi} is not on the mirror (backports drop old "
            "kernels' modules); choose a newer kernel"
        )
    parts = [binary, modules] + ([base] if base is not None else [])
    return tuple(_deb(s, suite) for s in parts)


def _deb(stanza: Stanza, suite: str) -> Deb:
    try:
        return Deb(
            stanza["Package"],
            stanza["Version"],
            stanza["Filename"],
            stanza["SHA256"].lower(),
            int(stanza["Size"]),
            suite,
        )
    except (KeyError, ValueError) as e:
        raise InfraError(
            f"index entry for {stanza.get('Package', '?')} in {suite} is incomplete: {e}"
        ) from None
