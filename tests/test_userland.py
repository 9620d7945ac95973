"""The guest's userland: which one a kernel gets, and how a matrix asks for one. Pure; the musl
build and a boot with it are in test_old_kernels.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.kit import userland
from harness.plan import matrix


@pytest.mark.parametrize(
    ("requested", "version", "chosen"),
    [
        ("auto", (6, 1, 0), "glibc"),
        ("auto", (3, 2, 0), "glibc"),  # glibc's minimum itself
        ("auto", (3, 1, 10), "musl"),
        ("auto", (2, 6, 32), "musl"),
        ("auto", (), "glibc"),  # a release the harness cannot read: the default
        ("musl", (7, 3, 4), "musl"),
        ("glibc", (2, 6, 18), "glibc"),  # asked for: the boot will say what the kernel thinks of it
    ],
)
def test_auto_takes_musl_below_glibc_s_minimum_kernel(requested: str, version: tuple[int, ...], chosen: str) -> None:
    way, why = userland.choose(requested, version)
    assert way == chosen and why


def test_a_matrix_asks_for_a_userland_by_name(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(b"")
    text = f"kernels:\n  - path: {tmp_path / 'bzImage'}\n"
    assert matrix.parse(text, "m.yaml").userland == "auto"
    assert matrix.parse(text + "userland: musl\n", "m.yaml").userland == "musl"
    with pytest.raises(UserError, match=r"m.yaml:3: userland: 'uclibc': give one of auto, glibc, musl"):
        matrix.parse(text + "userland: uclibc\n", "m.yaml")
