"""Find where one case's behaviour changed, booting only what the search needs.

Two searches share what a step is: over the commits of a git tree (`commits`: `git bisect run`,
a kernel built per step) and over kernels already built (`builds`: the builds of one Debian line
in version order, or path kernels in the order the user gives; no compiler, no tree).

"Good" means behaves like the good end and "bad" means behaves otherwise, compared by the case's
behaviour fingerprint (for a panic or OOM kill with no record, by the outcome), so a change that
is not a failure can be bisected too. A step boots the kernel and runs the one case under the one
limit and user; `tries` boots may be needed until two agree, for behaviour that is flaky. No
answer (build failure, boot failure, timeout, guests that disagree) skips the point, as git
bisect's 125 does. Everything a step saw stays in the bisect directory: a run directory per boot,
steps.jsonl (read back by a resumed bisect) and bisect.json.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from harness import jsondoc, run
from harness.errors import InfraError, UserError
from harness.kit import verdict
from harness.plan import matrix
from harness.report import rundir
from harness.results import Outcome
from harness.yamlfile import FieldError, Where

STATE_FILE = "state.json"
STEPS_FILE = "steps.jsonl"
RESULT_FILE = "bisect.json"

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128  # the `git bisect run` contract


class Target(Protocol):
    """What a bisect observes: one case, one limit and user, on the kernel of a point."""

    @property
    def case(self) -> str: ...
    @property
    def ram(self) -> str: ...
    @property
    def memlock(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def tries(self) -> int: ...

    def kernel(self, point: str) -> dict[str, Any]:
        """The matrix's kernel entry for `point` (a commit, a build's name, a path)."""
        ...

    @property
    def boot_timeout(self) -> int: ...


def matrix_data(target: Target, point: str) -> dict[str, Any]:
    """The one-boot matrix of a step, as data: each option one value, whatever it contains."""
    return {
        "kernels": [target.kernel(point)],
        "ram": [target.ram],
        "memlock": [target.memlock],
        "users": [target.user],
        "cases": [target.case],
        "timeouts": {"boot": target.boot_timeout, "case": 60},
    }


def step_matrix(target: Target, point: str) -> tuple[matrix.Matrix, str]:
    """The step's matrix, and its text for the run's manifest (what a replay of the step reads)."""
    data = matrix_data(target, point)
    mx = matrix.from_data(data, Where(f"<bisect at {point[:40]}>", None))
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


def check(target: Target, catalogue: Sequence[str], point: str) -> None:
    """The checks a matrix gets, before anything is booted: a bad case, size or limit is bad input
    naming the option that was given."""
    try:
        matrix.expand(matrix.from_data(matrix_data(target, point), Where("harness bisect options", None)), catalogue)
    except FieldError as e:
        # ("memlock", 0) is --memlock, ("kernels", 0, "git", "config") is --config
        options = [_OPTION_OF[str(key)] for key in e.path if str(key) in _OPTION_OF]
        raise UserError(f"{options[-1]}: {e.reason}" if options else str(e)) from None


@dataclass(frozen=True)
class Observation:
    point: str  # the commit, or the build's name
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
    target: Target, point: str, boots: int, options: run.Options, log: Callable[[str], None]
) -> list[Observation]:
    """Run the case on `point`'s kernel (built or fetched once: cached) in `boots` guests, one after
    the other, each a run directory of its own; one observation per guest."""
    mx, text = step_matrix(target, point)
    out = []
    for _ in range(boots):
        run_dir, results = run.execute(mx, options, log, matrix_text=text)
        for boot in results:
            for r in boot.cases:
                out.append(
                    Observation(
                        point,
                        _behaviour(r.outcome, r.fingerprint),
                        r.outcome.value,
                        boot.error or r.message,
                        (str(run_dir),),
                        r.fingerprint,
                    )
                )
    return out


def observe(target: Target, point: str, options: run.Options, log: Callable[[str], None]) -> Observation:
    """The behaviour at `point`, once two guests agree (or the only one, with tries=1).

    No answer (build failure, boot failure, timeout, infrastructure error) gives an observation
    with no behaviour: the point is skipped.
    """
    agree = min(2, target.tries)
    seen = observe_once(target, point, agree, options, log)
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
        if len(seen) >= target.tries or not answered and len(seen) >= agree:
            why = "; ".join(sorted({o.message.splitlines()[0] for o in seen if o.message})) or "no agreement"
            if answered:
                why = f"{len(seen)} guests disagreed ({len(counts)} behaviours)"
            return Observation(point, "", seen[-1].outcome, why, dirs)
        seen += observe_once(target, point, 1, options, log)


def options(results: Path, cache: Path, accel_name: str) -> run.Options:
    # The KVM check takes seconds and cannot change during a bisect: once, at the start, and the
    # steps inherit the answer. Cold: each point's kernel is booted once or a few times, and those
    # tries are meant to be independent guests.
    return run.Options(jobs=1, results=results, cache=cache, accel=accel_name, cold=True)


def folder(point: str) -> str:
    """A point's folder under steps/: a commit's short hash, a build's name, a path's last parts."""
    if re.fullmatch(r"[0-9a-f]{40}", point):
        return point[:12]
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", point).strip("._")[-80:] or "point"


def observe_ends(
    target: Target,
    ends: Mapping[str, str],
    directory: Path,
    cache: Path,
    accel_name: str,
    log: Callable[[str], None],
) -> dict[str, Observation]:
    """The good and the bad end observed (or read back from steps.jsonl when resumed); bad input
    when they behave alike, an infrastructure error when one gives no answer."""
    recorded = read_steps(directory)
    seen = {}
    for name, point in ends.items():
        obs = recorded.get(point)
        if obs is None or not obs.answered:
            log(f"bisect: observing the {name} end {point}")
            obs = observe(target, point, options(directory / "steps" / folder(point), cache, accel_name), log)
            record_step(directory, obs, name if obs.answered else "skip")
        if not obs.answered:
            raise InfraError(f"the {name} end {point} gave no answer ({obs.message}); nothing to compare with")
        seen[name] = obs
    good, bad = seen["good"], seen["bad"]
    if good.behaviour == bad.behaviour:
        raise UserError(
            f"{target.case}: the good end {good.point} and the bad end {bad.point} behave alike "
            f"({good.behaviour}); nothing to bisect: give a bad end that behaves otherwise"
        )
    return seen


def new_directory(results: Path) -> Path:
    rundir.check_writable(results)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = results / f"bisect-{stamp}-{secrets.token_hex(2)}"
    directory.mkdir(parents=True)
    return directory


def record_step(directory: Path, obs: Observation, word: str, **extra: str) -> None:
    """One line of steps.jsonl, written as soon as the step is known (a Ctrl-C keeps it)."""
    with open(directory / STEPS_FILE, "a") as f:
        f.write(json.dumps({**dataclasses.asdict(obs), "verdict": word, **extra}) + "\n")


def read_steps(directory: Path) -> dict[str, Observation]:
    """The steps a bisect recorded, by point (the last one recorded for a point counts)."""
    path = directory / STEPS_FILE
    if not path.is_file():
        return {}
    steps = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines()[:10_000], 1):
        where = f"{path}: line {n}: "
        try:
            doc = jsondoc.Doc(json.loads(line), where, "a steps.jsonl line `harness bisect` wrote")
        except ValueError:
            raise UserError(f"{where}not JSON; remove the line (its step is observed again)") from None
        obs = observation(doc)
        steps[obs.point] = obs
    return steps


def observation(doc: jsondoc.Doc) -> Observation:
    return Observation(
        doc.text("point", True),
        doc.text("behaviour"),
        doc.text("outcome"),
        doc.text("message"),
        tuple(doc.texts("run_dirs")),
        doc.text("fingerprint"),
    )


def changed_fields(good: Observation, bad: Observation) -> tuple[str, ...]:
    if good.fingerprint and bad.fingerprint:
        return verdict.changed_fields(good.fingerprint, bad.fingerprint)
    return ("outcome",)


def write_result(directory: Path, doc: Mapping[str, Any]) -> None:
    (directory / RESULT_FILE).write_text(json.dumps(doc, indent=2) + "\n")
