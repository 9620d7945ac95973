"""Kernels from Debian's archive: `debian: SUITE` or `{suite, package, abi | version, builds}` in a matrix.

A spec is resolved against the suites' signed package indexes (`debian_index`, pure), then its
.debs are downloaded, checked and unpacked into the cache. A spec may stand for many builds
(`builds: all`, or the newest of each upstream line): it is expanded into one spec per build
before the run is planned. Suites named `*-security` come from Debian's security archive, which
the host's apt sources name beside the main mirror. `harness.archive` is the only network access.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import kernels, manifest, versions
from harness.aptsources import mirror_from, security_mirror_from
from harness.archive import Archive, Deb
from harness.errors import UserError
from harness.kernels import Kernel
from harness.sources.base import Context, KernelSpec
from harness.sources.debian_index import Build, Resolved, list_builds, newest_per_line, resolve_in
from harness.yamlfile import KeyPath, Where

BUILDS = ("newest", "lines", "all")  # what a spec stands for: its newest build, each line's newest, every build

__all__ = ["BUILDS", "DebianKernel", "Mirrors", "Resolved", "SOURCE", "fetch", "resolve", "resolve_in"]


@dataclass(frozen=True)
class DebianKernel:
    """A kernel from Debian's archive: the newest `package` across `suites`, or the concrete `abi`;
    with `builds` other than newest, a set of builds that expands to one spec each."""

    suites: tuple[str, ...]
    package: str = "linux-image-amd64"
    abi: str | None = None
    version: str | None = None  # an upstream line ("6.19") or a range (">=6.12,<7") the build is in
    origin: str = field(default="", compare=False)  # "file:line: kernels.N", for messages
    builds: str = "newest"

    kind = "debian"

    @property
    def label(self) -> str:
        base = "+".join(self.suites)
        pinned = self.abi or self.version
        name = f"{base}-{pinned}" if pinned else base
        return name if self.builds == "newest" else f"{name}-{self.builds}"


@dataclass
class Mirrors:
    """Debian's main archive and, for `*-security` suites, its security archive (when one is known)."""

    main: Archive
    security: Archive | None = None

    def __call__(self, suite: str) -> Archive:
        if not suite.endswith("-security"):
            return self.main
        if self.security is None:
            raise UserError(f"suite {suite} is in Debian's security archive, and no mirror of it is known: name it "
                            "in apt's sources, or set HARNESS_DEBIAN_SECURITY_MIRROR")  # fmt: skip
        return self.security


class DebianSource:
    kind = "debian"
    keys = frozenset({"debian"})
    syntax = "{debian: SUITE or {suite, package, abi}}"
    local = False

    def parse(self, item: dict[str, Any], where: Where, path: KeyPath) -> DebianKernel:
        value, at = item["debian"], (*path, "debian")
        if isinstance(value, str):
            value = {"suite": value}
        if not isinstance(value, dict):
            raise where.error(at, "expected a suite name or a mapping {suite, package, abi}")
        for key in value:
            if key not in ("suite", "package", "abi", "version", "builds"):
                raise where.error((*at, key), "unknown key; allowed: suite, package, abi, version, builds")
        suites = value.get("suite")
        if isinstance(suites, str):
            suites = [suites]
        if not isinstance(suites, list) or not suites or not all(
            isinstance(s, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", s) for s in suites
        ):
            raise where.error((*at, "suite"), "give a Debian suite name such as bookworm, or a list")
        package = value.get("package", "linux-image-amd64")
        if not isinstance(package, str):
            raise where.error((*at, "package"), f"{package!r}: give a package name such as linux-image-amd64")
        abi, version, builds = value.get("abi"), value.get("version"), value.get("builds", "newest")
        if version is not None:
            _check_version(where, (*at, "version"), version)
            if abi is not None:
                raise where.error((*at, "version"), "give either abi or version, not both")
        if builds not in BUILDS:
            raise where.error((*at, "builds"), f"{builds!r}: give one of {', '.join(BUILDS)}")
        if builds != "newest" and abi is not None:
            raise where.error((*at, "builds"), "an abi is one build; give either abi or builds")
        for key, v in (("package", package), ("abi", abi)):
            if v is not None and not (isinstance(v, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+~-]*", v)):
                raise where.error((*at, key), f"{v!r} is not a Debian package or ABI name")
        return DebianKernel(tuple(suites), package, abi, version, where.origin(path), builds)

    def expand(self, spec: DebianKernel, ctx: Context) -> Sequence[KernelSpec]:
        """One spec per build the spec stands for, oldest first (itself, for the newest build)."""
        if spec.builds == "newest":
            return [spec]
        listed = list_builds(spec, _indexes(spec, mirrors(ctx)))
        chosen = listed if spec.builds == "all" else newest_per_line(listed)
        if not chosen:
            raise UserError(f"no {spec.package.removeprefix('linux-image-')} kernel build in "
                            f"{'/'.join(spec.suites)}" + (f" for version {spec.version}" if spec.version else ""))
        return [_pinned(spec, b) for b in chosen]

    def resolve(self, spec: DebianKernel, ctx: Context) -> Resolved:
        return resolve(spec, mirrors(ctx))

    def describe(self, resolved: Resolved) -> list[str]:
        return [resolved.suite, resolved.abi, ", ".join(f"{d.package}={d.version}" for d in resolved.debs)]

    def fetch(self, resolved: Resolved, ctx: Context) -> Kernel:
        return fetch(resolved, mirrors(ctx), ctx.cache)

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


def _check_version(where: Where, at: KeyPath, version: object) -> None:
    if not isinstance(version, str):  # YAML reads 6.10 as the number 6.1: only text is exact
        raise where.error(at, 'quote it, e.g. version: "6.19" (YAML reads 6.10 as 6.1)')
    if re.fullmatch(r"\d+\.\d+", version):
        return
    try:
        versions.in_range(version, (0,))
    except ValueError:
        raise where.error(at, f"{version!r}: give an upstream line such as 6.19, or a range such as "
                              "'>=6.12,<7'") from None  # fmt: skip


def _pinned(spec: DebianKernel, build: Build) -> DebianKernel:
    return DebianKernel(spec.suites, spec.package, build.abi, None, spec.origin)


def mirrors(ctx: Context) -> Mirrors:
    """The run's one verifying view of each archive (their indexes are read once per run)."""

    def make() -> Mirrors:
        main = mirror_from(ctx.mirror, os.environ, Path("/"))
        security = security_mirror_from(ctx.mirror, os.environ, Path("/"))
        archive = Archive(main, ctx.cache, insecure=ctx.insecure, warn=ctx.log)
        return Mirrors(archive, Archive(security, ctx.cache, insecure=ctx.insecure, warn=ctx.log) if security else None)

    return ctx.shared("debian:mirrors", make)


def _indexes(spec: DebianKernel, archives: Mirrors | Archive) -> dict[str, Any]:
    # Kernel packages all start with "linux-"; parsing only those is 100x faster than a whole index.
    prefix = "linux-" if spec.package.startswith("linux-") else ""
    of = archives if isinstance(archives, Mirrors) else Mirrors(archives)
    return {suite: of(suite).packages(suite, prefix) for suite in spec.suites}


def resolve(spec: DebianKernel, archives: Mirrors | Archive) -> Resolved:
    """Resolve against the mirrors: reads the suites' indexes (downloading them if needed)."""
    return resolve_in(spec, _indexes(spec, archives))


def fetch(resolved: Resolved, archives: Mirrors | Archive, cache: Path) -> Kernel:
    """Download, verify and unpack the kernel once; later calls only read the cache."""
    of = archives if isinstance(archives, Mirrors) else Mirrors(archives)
    spec = resolved.spec
    assert isinstance(spec, DebianKernel)
    packaged = kernels.Packaged(spec.label, resolved.abi, resolved.package or None, resolved.version,
                                resolved.debs, debian_source(spec))  # fmt: skip
    download: Callable[[Deb], Path] = lambda deb: of(deb.suite).fetch_deb(deb)  # noqa: E731
    return kernels.unpacked(packaged, cache, download)


def debian_source(spec: DebianKernel) -> str:
    text = "debian:" + "+".join(spec.suites)
    if spec.package != "linux-image-amd64":
        text += f"/{spec.package}"
    if spec.abi:
        text += f"@{spec.abi}"
    if spec.version:
        text += f"@{spec.version}" if spec.version[0] in "<>=" else f"@{spec.version}.*"
    return text
