"""Shared fixtures: the real probe, built once per session, and its catalogue; small git repositories."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
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


def git(repo: Path, *args: str) -> str:
    """git -C repo ..., its output; fails the test on a git error."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[[Sequence[tuple[str, dict[str, str]]]], Path]:
    """A git repository tmp_path/linux on branch main, one commit per (title, {file: text})."""

    def make(commits: Sequence[tuple[str, dict[str, str]]]) -> Path:
        repo = tmp_path / "linux"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.email", "t@example.org")
        git(repo, "config", "user.name", "t")
        for title, files in commits:
            for name, text in files.items():
                (repo / name).write_text(text)
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", title)
        return repo

    return make
