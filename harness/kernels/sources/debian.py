"""Kernels from Debian's archive: `debian: SUITE` or `{suite, package, abi | version, builds}` in a matrix.

A spec is resolved against the suites' signed package indexes (`debian_index`, pure), then its
.debs are downloaded, checked and unpacked into the cache. A spec may stand for many builds
(`builds: all`, or the newest of each upstream line): it is expanded into one spec per build
before the run is planned. Suites named `*-security` come from Debian's security archive, which
the host's apt sources name beside the main mirror; a suite the mirror no longer has (etch ...
buster) from Debian's archive of old releases; `{snapshot: DATE, suite: SUITE}` from Debian's
snapshot service as the suite was that day. Both are signed with keys that have expired since:
accepted only for signatures made before the expiry (`harness.debian.signatures`). `harness.debian.archive` is
the only network access.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import kernels, manifest, versions
from harness.cache.lease import UNLEASED, Leases
from harness.debian import aptsources
from harness.debian.archive import DEFAULT_KEYRING, REMOVED_KEYRING, Archive, Deb
from harness.errors import UserError
from harness.kernels import Kernel, devices
from harness.kernels.sources.base import Context, KernelSpec
from harness.kernels.sources.debian_index import Build, Resolved, list_builds, newest_per_line, resolve_in
from harness.yamlfile import KeyPath, Where

BUILDS = ("newest", "lines", "all")  # what a spec stands for: its newest build, each line's newest, every build

__all__ = ["BUILDS", "DebianKernel", "Mirrors", "Resolved", "SOURCE", "every_build", "fetch", "resolve", "resolve_in"]


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
    snapshot: str | None = None  # "20150429T235959Z": the suites as Debian's snapshot service kept them then

    kind = "debian"

    @property
    def label(self) -> str:
        base = "+".join(self.suites) + (f"-snapshot-{self.snapshot[:8]}" if self.snapshot else "")
        pinned = self.abi or self.version
        name = f"{base}-{pinned}" if pinned else base
        return name if self.builds == "newest" else f"{name}-{self.builds}"


@dataclass
class Mirrors:
    """Where each suite's indexes and .debs come from: Debian's main mirror; its security archive for
    `*-security` suites; its archive of old releases for a suite the mirror lacks; its snapshot
    service for a spec with a snapshot date. Each is known only when configured."""

    main: Archive
    security: Archive | None = None
    old: Archive | None = None
    snapshots: Callable[[str], Archive] | None = None  # timestamp -> the snapshot of that moment
    _found: dict[str, Archive] = field(default_factory=dict)

    def __call__(self, suite: str, snapshot: str | None = None) -> Archive:
        if snapshot is not None:
            if self.snapshots is None:
                raise UserError(
                    f"suite {suite} as of {snapshot}: no snapshot service is known; set "
                    f"{aptsources.ENV_SNAPSHOT}=http://HOST, the URL before /archive/debian/"
                )
            return self.snapshots(snapshot)
        if suite.endswith("-security"):
            if self.security is None:
                raise UserError(
                    f"suite {suite} is in Debian's security archive, and no mirror of it is known: "
                    "name it in apt's sources, or set HARNESS_DEBIAN_SECURITY_MIRROR"
                )
            return self.security
        if suite not in self._found:
            self._found[suite] = self._locate(suite)
        return self._found[suite]

    def _locate(self, suite: str) -> Archive:
        if self.old is None:
            return self.main  # nowhere else to look: the mirror's own answer stands
        try:
            self.main.release(suite)
            return self.main
        except UserError:
            self.old.release(suite)
            return self.old


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
            if key not in ("suite", "package", "abi", "version", "builds", "snapshot"):
                raise where.error((*at, key), "unknown key; allowed: suite, package, abi, version, builds, snapshot")
        suites = value.get("suite")
        if isinstance(suites, str):
            suites = [suites]
        if (
            not isinstance(suites, list)
            or not suites
            or not all(isinstance(s, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", s) for s in suites)
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
        snapshot = _snapshot(where, (*at, "snapshot"), value["snapshot"]) if "snapshot" in value else None
        return DebianKernel(tuple(suites), package, abi, version, where.origin(path), builds, snapshot)

    def expand(self, spec: DebianKernel, ctx: Context) -> Sequence[KernelSpec]:
        """One spec per build the spec stands for, oldest first (itself, for the newest build)."""
        if spec.builds == "newest":
            return [spec]
        listed = list_builds(spec, _indexes(spec, mirrors(ctx)))
        chosen = listed if spec.builds == "all" else newest_per_line(listed)
        if not chosen:
            raise UserError(
                f"no {spec.package.removeprefix('linux-image-')} kernel build in "
                f"{'/'.join(spec.suites)}" + (f" for version {spec.version}" if spec.version else "")
            )
        return [_pinned(spec, b) for b in chosen]

    def resolve(self, spec: DebianKernel, ctx: Context) -> Resolved:
        return resolve(spec, mirrors(ctx))

    def describe(self, resolved: Resolved) -> list[str]:
        return [resolved.suite, resolved.abi, ", ".join(f"{d.package}={d.version}" for d in resolved.debs)]

    def fetch(self, resolved: Resolved, ctx: Context) -> Kernel:
        return fetch(resolved, mirrors(ctx), ctx.cache, ctx.leases)

    def cached(self, resolved: Resolved, ctx: Context) -> Path | None:
        return ctx.cache / "kernels" / kernels.kernel_key(resolved.debs)

    def record(self, kernel: Kernel) -> dict[str, Any]:
        return {}  # the .debs, which every kernel entry lists, say everything

    def pin(self, spec: DebianKernel, entry: manifest.Kernel, ctx: Context) -> Kernel:
        """From the cache by SHA-256, else from the exact .debs the run used, checked again."""
        assert entry.booted is not None
        booted = entry.booted
        cached = ctx.shared("debian:cached", lambda: {k.sha256: k for k in kernels.list_cached(ctx.cache)})
        found = cached.get(booted.sha256)
        if found is not None:
            ctx.leases.use(found.image.parent)  # then looked at again: prune may have taken it since the listing
            if (found.image.parent / kernels.META_FILE).is_file():
                return found
        if not booted.debs:
            raise UserError(f"kernel {spec.label}: the manifest lists no .debs and it is not in the cache")
        resolved = Resolved(
            spec, booted.debs[0].suite, booted.release, booted.version or "", booted.debs, booted.package or ""
        )
        kernel = self.fetch(resolved, ctx)
        if kernel.sha256 != booted.sha256:
            raise UserError(
                f"kernel {spec.label}: the .debs now give sha256 {kernel.sha256[:12]}, the run "
                f"booted {booted.sha256[:12]}"
            )
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
        raise where.error(
            at, f"{version!r}: give an upstream line such as 6.19, or a range such as '>=6.12,<7'"
        ) from None


def _snapshot(where: Where, at: KeyPath, value: object) -> str:
    """A snapshot moment as the service names it: a day (its end) or a timestamp, never in the future."""
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    elif isinstance(value, dt.date):  # YAML reads 2015-04-29 as a date
        moment = dt.datetime.combine(value, dt.time(23, 59, 59), dt.UTC)
    elif isinstance(value, str) and re.fullmatch(r"\d{8}T\d{6}Z", value):
        moment = dt.datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    else:
        raise where.error(at, f"{value!r}: give a date such as 2015-04-29, or a timestamp such as 20150429T120000Z")
    if moment > dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
        raise where.error(at, f"{moment:%Y-%m-%d} is in the future; give a past date")
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def every_build(suites: Sequence[str], package: str, ctx: Context) -> list[Resolved]:
    """Every build of `package` the suites' indexes list, resolved (main and security archive alike),
    oldest first: what a bisect over builds searches."""
    spec = DebianKernel(tuple(suites), package, builds="all", origin="--debian")
    return [SOURCE.resolve(pinned, ctx) for pinned in SOURCE.expand(spec, ctx) if isinstance(pinned, DebianKernel)]


def _pinned(spec: DebianKernel, build: Build) -> DebianKernel:
    return DebianKernel(spec.suites, spec.package, build.abi, None, spec.origin, snapshot=spec.snapshot)


def mirrors(ctx: Context) -> Mirrors:
    """The run's one verifying view of each archive (their indexes are read once per run)."""

    def make() -> Mirrors:
        main = aptsources.mirror_from(ctx.mirror, os.environ, Path("/"))
        security = aptsources.security_mirror_from(ctx.mirror, os.environ, Path("/"))
        old, snapshots = aptsources.old_archive_from(os.environ), aptsources.snapshot_from(os.environ)
        # Old releases and snapshots: signed by keys that have expired since, some now only in the
        # removed-keys keyring.
        keys = (DEFAULT_KEYRING, REMOVED_KEYRING)

        def snapshot(stamp: str) -> Archive:
            return ctx.shared(
                f"debian:snapshot:{stamp}",
                lambda: Archive(
                    f"{snapshots}/archive/debian/{stamp}",
                    ctx.cache,
                    insecure=ctx.insecure,
                    keyring=keys,
                    accept_expired=True,
                    warn=ctx.log,
                    indexes=ctx.cache / "indexes" / "snapshot" / stamp,
                    leases=ctx.leases,
                ),
            )

        return Mirrors(
            Archive(main, ctx.cache, insecure=ctx.insecure, keyring=DEFAULT_KEYRING, warn=ctx.log, leases=ctx.leases),
            Archive(
                security, ctx.cache, insecure=ctx.insecure, keyring=DEFAULT_KEYRING, warn=ctx.log, leases=ctx.leases
            )
            if security
            else None,
            Archive(
                old,
                ctx.cache,
                insecure=ctx.insecure,
                keyring=keys,
                accept_expired=True,
                warn=ctx.log,
                indexes=ctx.cache / "indexes" / "old",
                leases=ctx.leases,
            )
            if old
            else None,
            snapshot if snapshots else None,
        )

    return ctx.shared("debian:mirrors", make)


def _indexes(spec: DebianKernel, archives: Mirrors | Archive) -> dict[str, Any]:
    # Kernel packages all start with "linux-"; parsing only those is 100x faster than a whole index.
    prefix = "linux-" if spec.package.startswith("linux-") else ""
    of = archives if isinstance(archives, Mirrors) else Mirrors(archives)
    try:
        return {suite: of(suite, spec.snapshot).packages(suite, prefix) for suite in spec.suites}
    except UserError as e:
        if of.old is not None or spec.snapshot or "is not on mirror" not in str(e):
            raise
        raise UserError(
            f"{e}; an old release (etch ... buster) is in Debian's archive of old releases: set "
            f"{aptsources.ENV_OLD_ARCHIVE}=http://HOST/debian-archive/debian"
        ) from None


def resolve(spec: DebianKernel, archives: Mirrors | Archive) -> Resolved:
    """Resolve against the mirrors: reads the suites' indexes (downloading them if needed)."""
    return resolve_in(spec, _indexes(spec, archives))


def fetch(resolved: Resolved, archives: Mirrors | Archive, cache: Path, leases: Leases = UNLEASED) -> Kernel:
    """Download, verify and unpack the kernel once; later calls only read the cache. `leases`: the
    run's, on the kernel's folder (harness.cache.lease)."""
    of = archives if isinstance(archives, Mirrors) else Mirrors(archives)
    spec = resolved.spec
    assert isinstance(spec, DebianKernel)
    # An index signed by a key that has expired since: each of its .debs says so in the manifest.
    debs = tuple(replace(d, signature=_signer_note(of(d.suite, spec.snapshot), d.suite)) for d in resolved.debs)
    packaged = kernels.Packaged(
        spec.label, resolved.abi, resolved.package or None, resolved.version, debs, debian_source(spec)
    )
    download: Callable[[Deb], Path] = lambda deb: of(deb.suite, spec.snapshot).fetch_deb(deb)  # noqa: E731
    return kernels.unpacked(packaged, cache, download, devices.MODULE_ROOTS, leases)


def _signer_note(archive: Archive, suite: str) -> str:
    archive.release(suite)  # read (and verified) once per run; a replay may not have read it yet
    signer = archive.signers.get(suite)
    return signer.note() if signer is not None else ""


def debian_source(spec: DebianKernel) -> str:
    text = "debian:" + "+".join(spec.suites)
    if spec.snapshot:
        text += f"@snapshot={spec.snapshot}"
    if spec.package != "linux-image-amd64":
        text += f"/{spec.package}"
    if spec.abi:
        text += f"@{spec.abi}"
    if spec.version:
        text += f"@{spec.version}" if spec.version[0] in "<>=" else f"@{spec.version}.*"
    return text
