"""harness/bisect (commits, and the step both searches share) without building kernels: the `git
bisect run` contract on real git repositories,
the tree left as found (Ctrl-C included), and the agreement rule for flaky behaviour.

The full thing (a kernel tree from Debian's linux-source, built and booted at every step) is
tests/test_bisect_kernel.py, `make test-bisect`: it takes too long for every CI run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import git

from harness import bisect
from harness.bisect import Observation, commits
from harness.bisect.commits import Settings
from harness.errors import InfraError, UserError


@pytest.fixture
def repo(make_repo: Callable[[Sequence[tuple[str, dict[str, str]]]], Path]) -> Path:
    """Eight commits; from the fifth on, `behaviour` says "new"."""
    return make_repo(
        [
            (
                f"commit {i}" + (": the change" if i == 4 else ""),
                {"behaviour": "new\n" if i >= 4 else "old\n", "file": f"{i}\n"},
            )
            for i in range(8)
        ]
    )


def script(tmp_path: Path, body: str) -> list[str]:
    """A bisect step as a small program reading the commit under test (BISECT_HEAD: --no-checkout)."""
    path = tmp_path / "step.py"
    path.write_text(
        "import subprocess, sys, time\n"
        "repo = sys.argv[1]\n"
        "head = subprocess.run(['git', '-C', repo, 'rev-parse', 'BISECT_HEAD'], capture_output=True,"
        " text=True, check=True).stdout.strip()\n"
        "text = subprocess.run(['git', '-C', repo, 'show', head + ':behaviour'], capture_output=True,"
        " text=True, check=True).stdout.strip()\n" + body
    )
    return [sys.executable, str(path)]


def run_bisect(repo: Path, tmp_path: Path, step: list[str]) -> str:
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    return commits._run_bisect(
        repo, first, git(repo, "rev-parse", "HEAD"), [*step, str(repo)], tmp_path, "main", lambda m: None
    )


def test_the_first_commit_that_behaves_otherwise_is_found_and_the_tree_is_untouched(repo: Path, tmp_path: Path) -> None:
    (repo / "file").write_text("the user's uncommitted work\n")
    head = git(repo, "rev-parse", "HEAD")
    found = run_bisect(repo, tmp_path, script(tmp_path, "sys.exit(0 if text == 'old' else 1)"))
    assert git(repo, "log", "-1", "--format=%s", found) == "commit 4: the change"
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert (repo / "file").read_text() == "the user's uncommitted work\n"  # --no-checkout: never touched
    assert not (repo / ".git" / "BISECT_START").exists()
    assert "git bisect start" in (tmp_path / "bisect-log.txt").read_text()


def test_skipped_commits_are_stepped_around_and_too_many_are_named(repo: Path, tmp_path: Path) -> None:
    third = git(repo, "rev-list", "--reverse", "HEAD").split()[2]
    unbuildable = f"sys.exit(125 if head == {third!r} else 0 if text == 'old' else 1)"
    assert git(repo, "log", "-1", "--format=%s", run_bisect(repo, tmp_path, script(tmp_path, unbuildable))) == (
        "commit 4: the change"
    )
    with pytest.raises(InfraError, match="the first change is one of .*could not all be built and booted"):
        run_bisect(repo, tmp_path, script(tmp_path, "sys.exit(1 if text == 'new' and head.startswith('x') else 125)"))
    assert not (repo / ".git" / "BISECT_START").exists()


def test_a_harness_error_aborts_the_bisect_and_resets(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="without a first bad commit"):
        run_bisect(repo, tmp_path, script(tmp_path, "sys.exit(128)"))
    assert not (repo / ".git" / "BISECT_START").exists()
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"


def test_ctrl_c_mid_bisect_still_resets(repo: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal sends it, while a step is running."""
    driver = tmp_path / "driver.py"
    step = script(tmp_path, "open(sys.argv[1] + '/../started', 'w').close()\ntime.sleep(60)\n")
    driver.write_text(
        "import sys\nfrom pathlib import Path\nfrom harness.bisect import commits as bisect\n"
        "from harness.kernels import kbuild\n"
        f"repo = Path({str(repo)!r})\n"
        "first = kbuild.git(repo, 'rev-list', '--max-parents=0', 'HEAD')\n"
        f"bisect._run_bisect(repo, first, kbuild.git(repo, 'rev-parse', 'HEAD'), {[*step, str(repo)]!r}, "
        f"Path({str(tmp_path)!r}), 'main', print)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(driver)], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "started").exists(), proc.communicate()[0]
    assert (repo / ".git" / "BISECT_START").exists()
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert b"KeyboardInterrupt" in out
    assert not (repo / ".git" / "BISECT_START").exists()
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main" and git(repo, "status", "--porcelain") == ""


def test_a_bisect_already_in_progress_or_no_repo_is_bad_input(repo: Path, tmp_path: Path) -> None:
    git(repo, "bisect", "start")
    with pytest.raises(UserError, match="a bisect is already in progress there"):
        commits.check_repo(repo)
    git(repo, "bisect", "reset")
    assert commits.check_repo(repo) == "main"
    with pytest.raises(UserError, match="not a git work tree"):
        commits.check_repo(tmp_path)


# --- agreement -----------------------------------------------------------------------------------


def obs(behaviour: str) -> Observation:
    return Observation(
        "c" * 40, behaviour, "pass" if behaviour else "infra_error", "" if behaviour else "no ssh", ("run",), behaviour
    )


@pytest.mark.parametrize(
    ("tries", "answers", "behaviour", "boots"),
    [
        (3, ["A", "A"], "A", 2),  # two agree at once
        (3, ["A", "B", "B"], "B", 3),  # a flaky first answer is outvoted
        (3, ["A", "B", "C"], "", 3),  # no agreement: skip
        (3, ["", ""], "", 2),  # no answer from either: skip without a third boot
        (1, ["B"], "B", 1),  # --tries 1 trusts one boot
    ],
)
def test_a_step_needs_two_guests_to_agree(
    monkeypatch: pytest.MonkeyPatch, tries: int, answers: list[str], behaviour: str, boots: int
) -> None:
    """observe_once (build and boot) is replaced by canned answers: the rule is what is tested."""
    queue = list(answers)
    booted: list[int] = []

    def fake(settings: Settings, commit: str, n: int, options: object, log: object) -> list[Observation]:
        booted.append(n)
        return [obs(queue.pop(0)) for _ in range(n)]

    monkeypatch.setattr(bisect, "observe_once", fake)
    got = bisect.observe(Settings(Path("/r"), "case", tries=tries), "c" * 40, None, print)  # type: ignore[arg-type]
    assert got.behaviour == behaviour and sum(booted) == boots
    assert got.run_dirs == ("run",) * boots


def test_step_verdicts(monkeypatch: pytest.MonkeyPatch, repo: Path, tmp_path: Path) -> None:
    """A step compares with the good end only: anything else is bad, no answer is skip."""
    state = tmp_path / "bisect" / bisect.STATE_FILE
    state.parent.mkdir()
    settings = {
        "repo": str(repo),
        "case": "c",
        "ram": "256M",
        "memlock": "default",
        "user": "root",
        "config": None,
        "base": "tinyconfig",
        "tries": 3,
    }
    state.write_text(json.dumps({"settings": settings, "good": {"behaviour": "A"}, "bad": {"behaviour": "B"}}))
    for answer, code in (("A", 0), ("B", 1), ("C", 1), ("", 125)):
        monkeypatch.setattr(bisect, "observe", lambda *a, answer=answer, **k: obs(answer))
        assert commits.step(state, tmp_path / "cache", lambda m: None) == code
    lines = [json.loads(x) for x in (state.parent / bisect.STEPS_FILE).read_text().splitlines()]
    assert [x["verdict"] for x in lines] == ["good", "bad", "bad", "skip"]
    assert lines[0]["title"] == "commit 7" and lines[0]["point"] == "c" * 40
