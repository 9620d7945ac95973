"""Shared fixtures: the real probe, built once per session, and its catalogue."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

GUEST_TESTS = Path(__file__).resolve().parent.parent / "guest-tests"


@pytest.fixture(scope="session")
def probe() -> Path:
    """guest-tests/probe, built with the same `make -s -C guest-tests` the harness runs."""
    subprocess.run(["make", "-s", "-C", str(GUEST_TESTS)], check=True)
    return GUEST_TESTS / "probe"


@pytest.fixture(scope="session")
def catalogue(probe: Path) -> list[str]:
    """Case names from `probe --list`, in catalogue order."""
    out = subprocess.run([str(probe), "--list"], check=True, capture_output=True, text=True).stdout
    names = [line.split("\t", 1)[0] for line in out.splitlines() if line]
    assert names, "probe --list printed no cases"
    return names
