"""Every Debian build, against the real mirror and its security archive (indexes only: nothing is
downloaded beyond the signed package lists, which the harness cache keeps)."""

from __future__ import annotations

from pathlib import Path

import pytest
from debian.debian_support import Version

from harness.cache import cache_dir
from harness.kernels import sources
from harness.kernels.sources import debian
from harness.kernels.sources.debian import DebianKernel
from harness.plan import matrix

pytestmark = pytest.mark.integration
EVERY = Path(__file__).resolve().parent.parent / "guest-tests" / "matrices" / "debian-every-build.yaml"


@pytest.fixture(scope="module")
def ctx() -> sources.Context:
    return sources.Context(cache_dir(), log=lambda _: None)


def resolved(spec: DebianKernel, ctx: sources.Context) -> debian.Resolved:
    return debian.resolve(spec, debian.mirrors(ctx))


def test_builds_all_lists_every_build_in_version_order(ctx: sources.Context) -> None:
    entries = matrix.load(EVERY).kernels
    seen: set[str] = set()
    suites: set[str] = set()
    for entry in entries:
        assert isinstance(entry, DebianKernel) and entry.builds == "all"
        builds = sources.expand([entry], ctx)
        assert builds, entry.label
        found = [resolved(b, ctx) for b in builds if isinstance(b, DebianKernel)]
        assert len(found) == len(builds)
        # each build is a concrete kernel: linux-image-<abi> itself, never a line's meta package
        assert all(r.package == f"linux-image-{r.abi}" for r in found), [r.package for r in found]
        versions = [Version(r.version) for r in found]
        assert versions == sorted(versions), entry.label
        abis = [r.abi for r in found]
        assert not seen & set(abis), "a build two entries name boots once"
        seen |= set(abis)
        suites |= {r.suite for r in found}
        # the newest build (what `builds: newest` boots) and the newest of each line are among them
        newest = resolved(DebianKernel(entry.suites, entry.package), ctx)
        assert newest.abi in abis, (entry.label, newest.abi)
        lines = sources.expand([DebianKernel(entry.suites, entry.package, builds="lines")], ctx)
        assert {b.abi for b in lines if isinstance(b, DebianKernel)} <= set(abis)
    assert {"bullseye-security", "bookworm-security", "trixie-security"} <= suites  # the security archive
    assert len(seen) >= 20
