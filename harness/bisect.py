"""Find the first commit where one case's behaviour changed, with `git bisect run`, no human in the loop.

"Good" means behaves like the good end and "bad" means behaves otherwise, compared by the case's
behaviour fingerprint (for a panic or OOM kill with no record, by the outcome), so a change that
is not a failure can be bisected too. Each step builds the commit (kbuild: cached, incremental),
boots it and runs the one case under the one limit and user; `tries` boots may be needed until
two agree, for behaviour that is flaky.

The bisect runs with `git bisect start --no-checkout`: git only moves BISECT_HEAD, so the user's
work tree and HEAD are never touched, and `git bisect reset` runs on every way out (Ctrl-C too).
Everything a step saw stays in the bisect directory: a run directory per boot, steps.jsonl,
bisect.json and git's own bisect log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import jsondoc, run
from harness.boot import accel
from harness.errors import InfraError, UserError
from harness.jsondoc import Doc
from harness.kernels.kbuild import git
from harness.kit import verdict
from harness.plan import matrix
from harness.report import rundir
from harness.results import Outcome
from harness.yamlfile import FieldError, Where

STATE_FILE = "state.json"
STEPS_FILE = "steps.jsonl"
RESULT_FILE = "bisect.json"

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128  # the `git bisect run` contract


@dataclass(frozen=True)
class Settings:
    """What a bisect observes; written to state.json so every `bisect-step` sees the same."""

    repo: Path
    case: str
    ram: str = "256M"
    memlock: str = "default"
    user: str = "root"
    config: Path | None = None
    base: str = "tinyconfig"
    tries: int = 3
    compiler: str = "gcc"

    def matrix_data(self, commit: str) -> dict[str, Any]:
        """The one-boot matrix of a step, as data: each option one value, whatever it contains."""
        kernel: dict[str, str] = {"repo": str(self.repo), "rev": commit, "base": self.base}
        if self.config is not None:
            kernel["config"] = str(self.config)
        if self.compiler != "gcc":
            kernel["compiler"] = self.compiler
        # A tinyconfig kernel is at /init in about 2 s under TCG; a commit whose guest is not up in
        # 90 s will not come up, and its retries should not cost the bisect 9 minutes.
        return {
            "kernels": [{"git": kernel}],
            "ram": [self.ram],
            "memlock": [self.memlock],
            "users": [self.user],
            "cases": [self.case],
            "timeouts": {"boot": 90, "case": 60},
        }

    def matrix(self, commit: str) -> tuple[matrix.Matrix, str]:
        """The step's matrix, and its text for the run's manifest (what a replay of the step reads)."""
        data = self.matrix_data(commit)
        mx = matrix.from_data(data, Where(f"<bisect of {self.repo} at {commit[:12]}>", None))
        return mx, yaml.safe_dump(data, sort_keys=False)


# Where each option of `harness bisect` lands in the step's matrix, to name the option in errors.
_OPTION_OF = {
    "ram": "--ram",
    "memlock": "--memlock",
    "users": "--user",
    "cases": "--case",
    "repo": "--repo",
    "config": "--config",
    "base": "--base",
    "compiler": "--compiler",
}


def check(settings: Settings, catalogue: Sequence[str]) -> None:
    """The checks a matrix gets, before anything is built: a bad case, size or limit is bad input
    naming the option that was given."""
    try:
        matrix.expand(matrix.from_data(settings.matrix_data("HEAD"), Where("harness bisect options", None)), catalogue)
    except FieldError as e:
        # ("memlock", 0) is --memlock, ("kernels", 0, "git", "config") is --config
        options = [_OPTION_OF[str(key)] for key in e.path if str(key) in _OPTION_OF]
        raise UserError(f"{options[-1]}: {e.reason}" if options else str(e)) from None


@dataclass(frozen=True)
class Observation:
    commit: str
    behaviour: str  # the fingerprint, "outcome:panic" for a finding without a record; "" for no answer
    outcome: str
    message: str
    run_dirs: tuple[str, ...]
    fingerprint: str = ""

    @property
    def answered(self) -> bool:
        return bool(self.behaviour)


def _behaviour(outcome: Outcome, fingerprint: str) -> str:
    if fingerprint:
        return fingerprint
    if outcome in (Outcome.PANIC, Outcome.OOM_KILLED):
        return f"outcome:{outcome.value}"  # a finding with no record is still a behaviour
    return ""


def observe_once(
    settings: Settings, commit: str, boots: int, options: run.Options, log: Callable[[str], None]
) -> list[Observation]:
    """Build `commit` (once: the build is cached) and run the case in `boots` guests, one after the
    other, each a run directory of its own; one observation per guest."""
    mx, text = settings.matrix(commit)
    out = []
    for _ in range(boots):
        run_dir, results = run.execute(mx, options, log, matrix_text=text)
        for boot in results:
            for r in boot.cases:
                out.append(
                    Observation(
                        commit,
                        _behaviour(r.outcome, r.fingerprint),
                        r.outcome.value,
                        boot.error or r.message,
                        (str(run_dir),),
                        r.fingerprint,
                    )
                )
    return out


def observe(settings: Settings, commit: str, options: run.Options, log: Callable[[str], None]) -> Observation:
    """The behaviour at `commit`, once two guests agree (or the only one, with tries=1).

    No answer (build failure, boot failure, timeout, infrastructure error) gives an observation
    with no behaviour: the commit is skipped.
    """
    agree = min(2, settings.tries)
    seen = observe_once(settings, commit, agree, options, log)
    while True:
        answered = [o for o in seen if o.answered]
        counts: dict[str, int] = {}
        for o in answered:
            counts[o.behaviour] = counts.get(o.behaviour, 0) + 1
        agreed = next((b for b, n in counts.items() if n >= agree), None)
        dirs = tuple(d for o in seen for d in o.run_dirs)
        if agreed is not None:
            first = next(o for o in answered if o.behaviour == agreed)
            return dataclasses.replace(first, run_dirs=dirs)
        if len(seen) >= settings.tries or not answered and len(seen) >= agree:
            why = "; ".join(sorted({o.message.splitlines()[0] for o in seen if o.message})) or "no agreement"
            if answered:
                why = f"{len(seen)} guests disagreed ({len(counts)} behaviours)"
            return Observation(commit, "", seen[-1].outcome, why, dirs)
        seen += observe_once(settings, commit, 1, options, log)


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
    """One bisect step: 0 behaves like the good end, 1 otherwise, 125 no answer (skip)."""
    settings, doc = read_state(state_path)
    head = git(settings.repo, "rev-parse", "--verify", "--quiet", "BISECT_HEAD", check=False) or git(
        settings.repo, "rev-parse", "HEAD"
    )
    options = _options(state_path.parent / "steps" / head[:12], cache, accel.mode(None))
    obs = observe(settings, head, options, log)
    verdict = SKIP if not obs.answered else GOOD if obs.behaviour == doc["good"]["behaviour"] else BAD
    word = {GOOD: "good", BAD: "bad", SKIP: "skip"}[verdict]
    title = git(settings.repo, "log", "-1", "--format=%s", head)
    record = {**dataclasses.asdict(obs), "verdict": word, "title": title}
    with open(state_path.parent / STEPS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    log(f"bisect step {head[:12]}: {word}" + ("" if obs.answered else f" ({obs.message})"))
    return verdict


def _options(results: Path, cache: Path, accel_name: str) -> run.Options:
    # The KVM check takes seconds and cannot change during a bisect: once, by bisect(), and the
    # steps inherit the answer (HARNESS_ACCEL). Cold: each commit's kernel is booted once or a
    # few times, and those tries are meant to be independent guests.
    return run.Options(jobs=1, results=results, cache=cache, accel=accel_name, cold=True)


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


def bisect(
    settings: Settings,
    good_rev: str,
    bad_rev: str,
    results: Path,
    cache: Path,
    log: Callable[[str], None],
    accel_mode: str = accel.AUTO,
) -> Found:
    repo = settings.repo
    original = check_repo(repo)
    good = git(repo, "rev-parse", "--verify", f"{good_rev}^{{commit}}")
    bad = git(repo, "rev-parse", "--verify", f"{bad_rev}^{{commit}}")
    if subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", good, bad]).returncode != 0:
        raise UserError(f"--good {good_rev} is not an ancestor of --bad {bad_rev}; give an older good revision")
    rundir.check_writable(results)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = results / f"bisect-{stamp}-{secrets.token_hex(2)}"
    directory.mkdir(parents=True)
    chosen = accel.choose(accel_mode)
    log(f"bisect: accelerator {chosen.name} ({chosen.reason})")
    ends = {}
    for name, commit in (("good", good), ("bad", bad)):
        log(f"bisect: observing the {name} end {commit[:12]}")
        obs = observe(settings, commit, _options(directory / "steps" / commit[:12], cache, chosen.name), log)
        if not obs.answered:
            raise InfraError(f"the {name} end {commit[:12]} gave no answer ({obs.message}); nothing to compare with")
        ends[name] = obs
    if ends["good"].behaviour == ends["bad"].behaviour:
        raise UserError(
            f"{settings.case}: {good_rev} and {bad_rev} behave alike ({ends['good'].behaviour}); "
            "nothing to bisect: give a bad revision that behaves otherwise"
        )
    state = directory / STATE_FILE
    state.write_text(
        json.dumps(
            {
                "settings": _settings_json(settings),
                "good": dataclasses.asdict(ends["good"]),
                "bad": dataclasses.asdict(ends["bad"]),
            },
            indent=2,
        )
        + "\n"
    )
    step_cmd = [sys.executable, "-m", "harness", "bisect-step", "--state", str(state), "--cache", str(cache)]
    env = {**os.environ, accel.ENV: chosen.name}  # every step uses the same
    first = _run_bisect(repo, good, bad, step_cmd, directory, original, log, env)
    return _found(settings, first, ends, directory)


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
    steps = {}
    with open(directory / STEPS_FILE) as f:
        for line in f:
            doc = json.loads(line)
            doc.pop("verdict", None)
            doc.pop("title", None)
            doc["run_dirs"] = tuple(doc["run_dirs"])
            steps[doc["commit"]] = Observation(**doc)
    steps.setdefault(ends["bad"].commit, ends["bad"])
    parent = git(settings.repo, "rev-parse", f"{first}^", check=False)
    good = steps.get(parent) or ends["good"]
    bad = steps.get(first, ends["bad"])
    fields = (
        verdict.changed_fields(good.fingerprint, bad.fingerprint)
        if good.fingerprint and bad.fingerprint
        else ("outcome",)
    )
    title = git(settings.repo, "log", "-1", "--format=%s", first)
    found = Found(first, title, good, bad, fields, directory)
    (directory / RESULT_FILE).write_text(
        json.dumps(
            {
                "first_commit": first,
                "title": title,
                "changed_fields": list(fields),
                "good": dataclasses.asdict(good),
                "bad": dataclasses.asdict(bad),
                "settings": _settings_json(settings),
            },
            indent=2,
        )
        + "\n"
    )
    return found
