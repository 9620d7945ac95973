"""Kernel version order, as history and report.html use it for "adjacent versions"."""

from __future__ import annotations

import pytest

from harness import versions
from harness.results import KernelInfo
from harness.versions import name, ordered, upstream


def k(version: str | None, release: str = "x", label: str = "k") -> KernelInfo:
    return KernelInfo(label, release, "linux-image-x" if version else None, version, "00" * 32, "s")


def test_upstream_from_package_version_then_release() -> None:
    assert upstream(k("6.1.176-1", "6.1.0-50-amd64")) == (6, 1, 176, 0)
    assert upstream(k("7.3.4-1~bpo13+1")) == (7, 3, 4, 0)
    assert upstream(k(None, "2.5.37")) == (2, 5, 37, 0)
    assert upstream(k(None, "6.8.0-rc3+")) == (6, 8, -1, 3)
    assert upstream(k(None, "weird")) == (0, 0, 0, 0)


def test_order_is_by_version_not_by_text_or_date() -> None:
    kernels = [
        k("6.12.117-1"),
        k("7.3.4-1~bpo13+1"),
        k("5.10.223-1"),
        k("6.12.95-1~bpo12+1"),
        k("6.1.176-1"),
        k(None, "2.6.32"),
        k(None, "6.12.0-rc7"),
        k("6.12.117-1~bpo12+1"),
    ]
    assert [name(x) for x in ordered(kernels)] == [
        "2.6.32",
        "5.10.223-1",
        "6.1.176-1",
        "6.12.0-rc7",
        "6.12.95-1~bpo12+1",
        "6.12.117-1~bpo12+1",
        "6.12.117-1",
        "7.3.4-1~bpo13+1",
    ]


def test_packaged_before_self_built_of_the_same_version_and_stable() -> None:
    a, b, c = k(None, "6.1.176", "a"), k("6.1.176-1", "6.1.0-50-amd64"), k(None, "6.1.176", "c")
    assert ordered([a, b, c]) == [b, a, c]


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.12.117+deb13-amd64", (6, 12, 117)),
        ("7.3.4+deb13-amd64", (7, 3, 4)),
        ("6.1.0-50-amd64", (6, 1, 0)),
        ("5.10", (5, 10, 0)),
        ("garbage", (0,)),
    ],
)
def test_kernel_version(release: str, version: tuple[int, ...]) -> None:
    assert versions.release_version(release) == version
