"""Kernel versions: parsing them, and their order ("adjacent kernel versions", "the first version that changed").

Kernels are ordered by upstream version (2.5.37 < 2.6.32 < 5.10.223 < 6.1.176 < 6.12.95), then by
Debian package version (so 6.12.95-1~bpo12+1 < 6.12.117-1 and ~rc sorts first), then by release.
Path kernels have no package version; their `uname -r` gives the upstream version. Every other
module asks this one what version a kernel is and where it sorts.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from debian.debian_support import version_compare

from harness.results import KernelInfo

_UPSTREAM = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_RC = re.compile(r"[~-]rc(\d+)")
# How a user names a kernel line on the command line: "6", "6.1", "6.1.176"; never an all-digit
# sha256 prefix, which is longer.
_LINE = re.compile(r"\d{1,3}(?:\.\d+){0,3}")

_RANGE = re.compile(r"\s*(>=|<=|>|<|==)\s*(\d+(?:\.\d+)*)\s*")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}

T = TypeVar("T")


def release_version(release: str) -> tuple[int, ...]:
    """(major, minor, patch) at the start of a `uname -r`: 6.1.0-50-amd64 -> (6, 1, 0); (0,) if none.

    What expectations' kernel ranges compare: the release the guest runs, not the package version.
    """
    m = _UPSTREAM.match(release)
    return tuple(int(x) for x in m.groups(default="0")[:3]) if m else (0,)


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


def line(text: str) -> tuple[int, ...] | None:
    """A version line as a user writes one ("6.1" means any 6.1.x), or None when `text` is not one."""
    return tuple(int(x) for x in text.split(".")) if _LINE.fullmatch(text) else None


def in_line(kernel: KernelInfo, wanted: tuple[int, ...]) -> bool:
    """Is the kernel of this line? Components compare as numbers, so 6.1 is not 6.12."""
    return in_line_of(upstream(kernel), wanted)


def in_line_of(version: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    return version[: len(wanted)] == wanted


def in_range(spec: object, version: tuple[int, ...]) -> bool:
    """`version` is in the range `spec` ('>=5.16', '>=4.4,<5.16'); ValueError on a malformed range.

    Only as many components as the range gives are compared (at least two): 6.1.176 is '==6.1'.
    """
    for part in str(spec).split(","):
        m = _RANGE.fullmatch(part)
        if not m:
            raise ValueError(f"bad kernel range {spec!r}; use e.g. '>=5.16' or '>=4.4,<5.16'")
        want = tuple(int(x) for x in m.group(2).split("."))
        width = max(len(want), 2)
        if not _OPS[m.group(1)](version[:width], want):
            return False
    return True


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


def ordered_by(items: Iterable[T], kernel: Callable[[T], KernelInfo | None]) -> list[T]:
    """Items oldest kernel first; equal kernels keep their order, items without a kernel go last."""

    def cmp(a: T, b: T) -> int:
        ka, kb = kernel(a), kernel(b)
        if ka is None or kb is None:
            return (ka is None) - (kb is None)
        return compare(ka, kb)

    return sorted(items, key=functools.cmp_to_key(cmp))


def ordered(kernels: Iterable[KernelInfo]) -> list[KernelInfo]:
    """Kernels oldest first; equal kernels keep their order."""
    return ordered_by(kernels, lambda k: k)


def name(kernel: KernelInfo) -> str:
    """How a kernel is named in tables: the package version if it has one, else the release."""
    return kernel.version or kernel.release
