"""Kernel version order: what "adjacent kernel versions" and "the first version that changed" mean.

Kernels are ordered by upstream version (2.5.37 < 2.6.32 < 5.10.223 < 6.1.176 < 6.12.95), then by
Debian package version (so 6.12.95-1~bpo12+1 < 6.12.117-1 and ~rc sorts first), then by release.
Path kernels have no package version; their `uname -r` gives the upstream version.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from debian.debian_support import version_compare

from harness.results import KernelInfo

_UPSTREAM = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_RC = re.compile(r"[~-]rc(\d+)")


def upstream(kernel: KernelInfo) -> tuple[int, ...]:
    """(major, minor, patch, sub) from the package version if there is one, else from the release.

    A release candidate counts as before its release: 6.19-rc3 is (6, 19, -1, 3), below 6.19.0
    and above every 6.18.x.
    """
    for text in (_strip_epoch(kernel.version or ""), kernel.release):
        m = _UPSTREAM.search(text)
        if m:
            nums = [int(x) for x in m.groups(default="0")]
            rc = _RC.search(text[m.end() : m.end() + 8])
            if rc:
                return (nums[0], nums[1], -1, int(rc.group(1)))
            return tuple(nums)
    return (0, 0, 0, 0)


def _strip_epoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version else version


def compare(a: KernelInfo, b: KernelInfo) -> int:
    ua, ub = upstream(a), upstream(b)
    if ua != ub:
        return -1 if ua < ub else 1
    if a.version and b.version and a.version != b.version:
        return version_compare(a.version, b.version)
    if bool(a.version) != bool(b.version):
        return -1 if a.version else 1  # a packaged kernel before a self-built one of the same version
    return (a.release > b.release) - (a.release < b.release)


def ordered(kernels: Iterable[KernelInfo]) -> list[KernelInfo]:
    """Kernels oldest first; equal kernels keep their order."""
    return sorted(kernels, key=functools.cmp_to_key(compare))


def name(kernel: KernelInfo) -> str:
    """How a kernel is named in tables: the package version if it has one, else the release."""
    return kernel.version or kernel.release
