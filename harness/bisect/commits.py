"""The first commit where one case's behaviour changed, with `git bisect run`, no human in the loop.

Each step builds the commit (kbuild: cached, incremental) and observes it (harness.bisect). The
bisect runs with `git bisect start --no-checkout`: git only moves BISECT_HEAD, so the user's work
tree and HEAD are never touched, and `git bisect reset` runs on every way out (Ctrl-C too). A
resumed bisect (`--resume DIR`) observes again only the commits steps.jsonl does not hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import bisect, jsondoc
from harness.bisect import ABORT, BAD, GOOD, SKIP, STATE_FILE, Observation
from harness.boot import accel
from harness.errors import InfraError, UserError
from harness.jsondoc import Doc
from harness.kernels.kbuild import git

__all__ = ["ABORT", "BAD", "GOOD", "SKIP", "Found", "Settings", "bisect_commits", "check_repo", "step"]


@dataclass(frozen=True)
class Settings:
    """What a bisect over commits observes; written to state.json so every `bisect-step` sees the same."""

    repo: Path
    case: str
    ram: str = "256M"
    memlock: str = "default"
    user: str = "root"
    config: Path | None = None
    base: str = "tinyconfig"
    tries: int = 3
    compiler: str = "gcc"

    # A tinyconfig kernel is at /init in about 2 s under TCG; a commit whose guest is not up in
    # 90 s will not come up, and its retries should not cost the bisect 9 minutes.
    boot_timeout = 90

    def kernel(self, point: str) -> dict[str, Any]:
        kernel: dict[str, str] = {"repo": str(self.repo), "rev": point, "base": self.base}
        if self.config is not None:
            kernel["config"] = str(self.config)
        if self.compiler != "gcc":
            kernel["compiler"] = self.compiler
        return {"git": kernel}


# --- the step `git bisect run` calls ------------------------------------------------------------


def read_state(path: Path) -> tuple[Settings, dict[str, Any]]:
    what = "bisect state file `harness bisect` wrote"
    top = Doc(jsondoc.load(path, 1 << 20, "bisect state file"), f"{path}: ", f"the {what}")
    s = top.each("settings", lambda d: d, None)
    if s is None:
        raise UserError(f"{path}: settings: missing; give the {what}")
    config = s.text("config")
    settings = Settings(
        Path(s.text("repo", True)),
        s.text("case", True),
        s.text("ram", True),
        s.text("memlock", True),
        s.text("user", True),
        Path(config) if config else None,
        s.text("base", True),
        s.integer("tries", True),
        s.text("compiler") or "gcc",
    )
    for end in ("good", "bad"):
        top.each(end, lambda d: d.text("behaviour", True), "")
    return settings, top.doc


def step(state_path: Path, cache: Path, log: Callable[[str], None]) -> int:
    """One bisect step: 0 behaves like the good end, 1 otherwise, 125 no answer (skip).

    A commit a resumed bisect observed before is not booted again.
    """
    settings, doc = read_state(state_path)
    head = git(settings.repo, "rev-parse", "--verify", "--quiet", "BISECT_HEAD", check=False) or git(
        settings.repo, "rev-parse", "HEAD"
    )
    directory = state_path.parent
    obs = bisect.read_steps(directory).get(head)
    if obs is None or not obs.answered:
        options = bisect.options(directory / "steps" / head[:12], cache, accel.mode(None))
        obs = bisect.observe(settings, head, options, log)
        verdict = SKIP if not obs.answered else GOOD if obs.behaviour == doc["good"]["behaviour"] else BAD
        word = {GOOD: "good", BAD: "bad", SKIP: "skip"}[verdict]
        bisect.record_step(directory, obs, word, title=git(settings.repo, "log", "-1", "--format=%s", head))
    else:
        verdict = GOOD if obs.behaviour == doc["good"]["behaviour"] else BAD
        word = {GOOD: "good", BAD: "bad"}[verdict] + ", observed before"
    log(f"bisect step {head[:12]}: {word}" + ("" if obs.answered else f" ({obs.message})"))
    return verdict


# --- the whole bisect ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    commit: str
    title: str
    good: Observation  # the nearest observation behaving like the good end (the parent if it was built)
    bad: Observation  # the first commit's own
    fields: tuple[str, ...]  # fingerprint fields that differ
    directory: Path


def check_repo(repo: Path) -> str:
    """The branch (or commit) HEAD is on; bad input if `repo` is no work tree or is mid-bisect."""
    if not (repo / ".git").exists():
        raise UserError(f"--repo {repo}: not a git work tree; give a kernel git checkout")
    git_dir = Path(git(repo, "rev-parse", "--absolute-git-dir"))
    if (git_dir / "BISECT_START").exists():
        raise UserError(f"--repo {repo}: a bisect is already in progress there; run `git bisect reset` first")
    return git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False) or git(repo, "rev-parse", "HEAD")


def bisect_commits(
    settings: Settings,
    good_rev: str,
    bad_rev: str,
    results: Path,
    cache: Path,
    log: Callable[[str], None],
    accel_mode: str = accel.AUTO,
    resume: Path | None = None,
) -> Found:
    """The first commit between `good_rev` and `bad_rev` that behaves otherwise than `good_rev`.

    `resume`: the directory of a bisect that stopped (Ctrl-C, a lost host), whose recorded steps
    are taken as they are.
    """
    repo = settings.repo
    original = check_repo(repo)
    good = git(repo, "rev-parse", "--verify", f"{good_rev}^{{commit}}")
    bad = git(repo, "rev-parse", "--verify", f"{bad_rev}^{{commit}}")
    if subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", good, bad]).returncode != 0:
        raise UserError(f"--good {good_rev} is not an ancestor of --bad {bad_rev}; give an older good revision")
    directory = resume or bisect.new_directory(results)
    chosen = accel.choose(accel_mode)
    log(f"bisect: accelerator {chosen.name} ({chosen.reason})")
    state = directory / STATE_FILE
    _write_state(state, settings, good_rev, bad_rev, {})
    ends = bisect.observe_ends(settings, {"good": good, "bad": bad}, directory, cache, chosen.name, log)
    _write_state(state, settings, good_rev, bad_rev, ends)
    step_cmd = [sys.executable, "-m", "harness", "bisect-step", "--state", str(state), "--cache", str(cache)]
    env = {**os.environ, accel.ENV: chosen.name}  # every step uses the same
    first = _run_bisect(repo, good, bad, step_cmd, directory, original, log, env)
    return _found(settings, first, ends, directory)


def _write_state(state: Path, settings: Settings, good_rev: str, bad_rev: str, ends: dict[str, Observation]) -> None:
    doc: dict[str, Any] = {"kind": "commits", "settings": _settings_json(settings), "revs": [good_rev, bad_rev]}
    doc.update({name: dataclasses.asdict(obs) for name, obs in ends.items()})
    state.write_text(json.dumps(doc, indent=2) + "\n")


def _settings_json(settings: Settings) -> dict[str, Any]:
    doc = dataclasses.asdict(settings)
    doc["repo"] = str(settings.repo)
    doc["config"] = None if settings.config is None else str(settings.config)
    return doc


def _run_bisect(
    repo: Path,
    good: str,
    bad: str,
    step_cmd: list[str],
    directory: Path,
    original: str,
    log: Callable[[str], None],
    env: dict[str, str] | None = None,
) -> str:
    """`git bisect start --no-checkout` + `run step_cmd` + `reset` on every way out; the first bad commit."""
    output: list[str] = []
    try:
        git(repo, "bisect", "start", "--no-checkout", bad, good)
        proc = subprocess.Popen(
            ["git", "-C", str(repo), "bisect", "run", *step_cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                log(line.rstrip("\n"))
            code = proc.wait()
        except BaseException:
            # Ctrl-C reached git and the step too; let them finish their own clean-up first.
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        (directory / "bisect-log.txt").write_text(git(repo, "bisect", "log", check=False) + "\n")
    finally:
        # Every way out, Ctrl-C included: git's bisect state goes, HEAD is what it was.
        subprocess.run(["git", "-C", str(repo), "bisect", "reset", original], capture_output=True)
    text = "".join(output)
    m = re.search(r"^([0-9a-f]{40}) is the first bad commit", text, re.M)
    if code != 0 or m is None:
        m2 = re.search(
            r"There are only 'skip'ped commits left to test\.\n"
            r"The first bad commit could be any of:\n((?:[0-9a-f]{40}\n)+)",
            text,
        )
        if m2:
            raise InfraError(
                f"bisect: the first change is one of {', '.join(c[:12] for c in m2.group(1).split())}, "
                "which could not all be built and booted"
            )
        raise InfraError(f"git bisect run ended without a first bad commit (exit {code}); see {directory}")
    return m.group(1)


def _found(settings: Settings, first: str, ends: dict[str, Observation], directory: Path) -> Found:
    steps = bisect.read_steps(directory)
    steps.setdefault(ends["bad"].point, ends["bad"])
    parent = git(settings.repo, "rev-parse", f"{first}^", check=False)
    good = steps.get(parent) or ends["good"]
    bad = steps.get(first, ends["bad"])
    fields = bisect.changed_fields(good, bad)
    title = git(settings.repo, "log", "-1", "--format=%s", first)
    found = Found(first, title, good, bad, fields, directory)
    bisect.write_result(
        directory,
        {
            "kind": "commits",
            "first_commit": first,
            "title": title,
            "changed_fields": list(fields),
            "good": dataclasses.asdict(good),
            "bad": dataclasses.asdict(bad),
            "settings": _settings_json(settings),
        },
    )
    return found
