"""The first build where one case's behaviour changed, among kernels already built.

Debian's builds of one line are ordered by package version and each boots in seconds from the
mirror or the security archive, so a search over them needs about log2(n) boots and no compiler
or tree; path kernels (a CI's bzImage per commit, say) are searched in the order the user gives.
The search is git bisect's: observe a point between the nearest good and the nearest bad, halve;
a point that gives no answer is skipped and its neighbour nearest the middle tried instead. Every
observation goes to steps.jsonl as it is made, so a stopped bisect resumes (`--resume DIR`)
without booting again what it saw.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import bisect, jsondoc, versions
from harness.bisect import STATE_FILE, Observation
from harness.boot import accel
from harness.errors import InfraError, UserError
from harness.jsondoc import Doc
from harness.kernels import sources
from harness.kernels.sources import debian
from harness.report import candidates
from harness.report.candidates import Candidates
from harness.results import KernelInfo


@dataclass(frozen=True)
class Build:
    """One point of the search: a Debian build or a path kernel."""

    name: str  # the ABI ("6.1.0-55-amd64"), or the path as given
    version: str = ""  # the Debian package version ("6.1.192-1"); "" for a path kernel
    package: str = ""  # "linux-image-6.1.0-55-amd64"; "" for a path kernel
    entry: dict[str, Any] = field(default_factory=dict, compare=False)  # the matrix's kernel entry

    def info(self) -> KernelInfo:
        return KernelInfo(self.name, self.name, self.package or None, self.version or None, "", "")

    @property
    def line(self) -> tuple[int, ...]:
        return versions.upstream(self.info())[:2]


@dataclass(frozen=True)
class Settings:
    """What a bisect over builds observes, and the builds it may boot, oldest first."""

    case: str
    builds: tuple[Build, ...]
    ram: str = "256M"
    memlock: str = "default"
    user: str = "root"
    tries: int = 3

    boot_timeout = 180  # a cold Debian kernel under TCG is up in 10-30 s: the default matrix's bound

    def kernel(self, point: str) -> dict[str, Any]:
        return next(b.entry for b in self.builds if b.name == point)


def debian_builds(suites: Sequence[str], package: str, ctx: sources.Context) -> list[Build]:
    """Every build of `package` the suites' indexes list (main and security archive alike), oldest first."""
    out = []
    for found in debian.every_build(suites, package, ctx):
        entry = {"debian": {"suite": list(suites), "package": package, "abi": found.abi}}
        out.append(Build(found.abi, found.version, found.package, entry))
    return out


def path_builds(paths: Sequence[Path]) -> list[Build]:
    """Path kernels in the order given: the user knows which came first."""
    out = []
    for path in paths:
        if not path.is_file():
            raise UserError(f"--kernels {path}: no such file; give kernel images (bzImage) in build order")
        out.append(Build(str(path), entry={"path": str(path.resolve())}))
    if len({b.entry["path"] for b in out}) != len(out):
        raise UserError("--kernels: a kernel is named twice; give each build once, in build order")
    return out


def pick(builds: Sequence[Build], wanted: str, option: str) -> int:
    """The index of the build `wanted` names: its ABI (with or without the flavour), its Debian
    version, its package or its path."""
    flavourless = {b.name.rsplit("-", 1)[0]: i for i, b in enumerate(builds) if b.version}
    for i, b in enumerate(builds):
        if wanted in (b.name, b.version, b.package) or b.entry.get("path") == str(Path(wanted).resolve()):
            return i
    if wanted in flavourless:
        return flavourless[wanted]
    near = ", ".join(b.name for b in builds[-6:])
    raise UserError(
        f"{option} {wanted}: no such build; give an ABI or package version `harness kernels resolve` "
        f"lists (the newest: {near})"
    )


def within_line(builds: Sequence[Build], good: int, bad: int) -> tuple[Build, ...]:
    """The builds from `good` to `bad` of their one upstream line; between two lines there is no
    such path (bad input naming the upstream bisect that does exist)."""
    g, b = builds[good], builds[bad]
    if good >= bad:
        raise UserError(
            f"--good {g.name} is not older than --bad {b.name}; give the older build as --good "
            "('good' means behaves like the older end, so a fix is found the same way)"
        )
    if g.version and g.line != b.line:
        gv, bv = (".".join(map(str, versions.upstream(x.info())[:3])) for x in (g, b))
        raise UserError(
            f"{g.name} ({gv}) and {b.name} ({bv}) are builds of two upstream lines, which Debian's builds "
            f"and changelogs do not connect: bisect the upstream tree instead: harness bisect --repo "
            f"LINUX --good v{gv} --bad v{bv}"
        )
    return tuple(x for x in builds[good : bad + 1] if not g.version or x.line == g.line)


@dataclass(frozen=True)
class Found:
    first: Build  # the first build that behaves like the bad end
    last_good: Build  # the build just before it
    good: Observation
    bad: Observation
    fields: tuple[str, ...]
    directory: Path
    boots: int  # guests booted, the ends' included
    steps: int  # builds observed between the ends
    candidates: Candidates | None = None  # the changelog entries between the two builds that may explain it


def bisect_builds(
    settings: Settings,
    results: Path,
    cache: Path,
    log: Callable[[str], None],
    accel_mode: str = accel.AUTO,
    resume: Path | None = None,
) -> Found:
    """Search `settings.builds` (the first good, the last bad) for the first build that behaves
    otherwise than the first."""
    directory = resume or bisect.new_directory(results)
    chosen = accel.choose(accel_mode)
    log(f"bisect: accelerator {chosen.name} ({chosen.reason})")
    builds = settings.builds
    ends = {"good": builds[0].name, "bad": builds[-1].name}
    _write_state(directory, settings, {})
    seen = bisect.observe_ends(settings, ends, directory, cache, chosen.name, log)
    _write_state(directory, settings, seen)
    good_behaviour = seen["good"].behaviour
    recorded = bisect.read_steps(directory)
    lo, hi, skipped = 0, len(builds) - 1, set()
    log(f"bisect: {len(builds) - 2} builds between {builds[0].name} and {builds[-1].name}")
    while True:
        inner = [i for i in range(lo + 1, hi) if i not in skipped]
        if not inner:
            break
        middle = (lo + hi) / 2
        i = min(inner, key=lambda n: (abs(n - middle), n))
        build = builds[i]
        obs = recorded.get(build.name)
        if obs is None or not obs.answered:
            folder = directory / "steps" / bisect.folder(build.name)
            obs = bisect.observe(settings, build.name, bisect.options(folder, cache, chosen.name), log)
            word = "skip" if not obs.answered else "good" if obs.behaviour == good_behaviour else "bad"
            bisect.record_step(directory, obs, word, version=build.version)
            recorded[build.name] = obs
        if not obs.answered:
            skipped.add(i)
            log(f"bisect step {build.name}: skip ({obs.message})")
            continue
        is_good = obs.behaviour == good_behaviour
        log(f"bisect step {build.name}: {'good' if is_good else 'bad'} ({hi - lo - 1} builds left)")
        if is_good:
            lo = i
        else:
            hi = i
    if any(lo < i < hi for i in skipped):
        names = ", ".join(b.name for b in builds[lo + 1 : hi + 1])
        raise InfraError(f"bisect: the first change is one of {names}, which could not all be booted; see {directory}")
    good, bad = recorded.get(builds[lo].name, seen["good"]), recorded.get(builds[hi].name, seen["bad"])
    observed = [o for o in recorded.values() if o.point in {b.name for b in builds}]
    found = Found(
        builds[hi],
        builds[lo],
        good,
        bad,
        bisect.changed_fields(good, bad),
        directory,
        sum(len(o.run_dirs) for o in observed),
        len(observed) - 2,
        candidates.Finder(cache)(settings.case, builds[lo].info(), builds[hi].info()),
    )
    bisect.write_result(directory, _result(settings, found))
    return found


def _result(settings: Settings, found: Found) -> dict[str, Any]:
    return {
        "kind": "builds",
        "first_build": _build_json(found.first),
        "last_good_build": _build_json(found.last_good),
        "changed_fields": list(found.fields),
        "good": dataclasses.asdict(found.good),
        "bad": dataclasses.asdict(found.bad),
        "boots": found.boots,
        "steps": found.steps,
        "candidates": _candidates_json(found.candidates),
        "settings": _settings_json(settings),
    }


def _candidates_json(found: Candidates | None) -> dict[str, Any] | None:
    if found is None:
        return None
    ranked = [
        {
            "title": c.entry.title,
            "version": c.entry.version,
            "upstream": c.entry.upstream,
            "cves": list(c.entry.cves),
            "matched": list(c.matched),
            "score": c.score,
        }
        for c in found.ranked
    ]
    return {"entries": found.entries, "note": found.note, "ranked": ranked}


def _build_json(build: Build) -> dict[str, Any]:
    return {"name": build.name, "version": build.version, "package": build.package, "entry": build.entry}


def _settings_json(settings: Settings) -> dict[str, Any]:
    doc = dataclasses.asdict(settings)
    doc["builds"] = [_build_json(b) for b in settings.builds]
    return doc


def _write_state(directory: Path, settings: Settings, ends: dict[str, Observation]) -> None:
    doc: dict[str, Any] = {"kind": "builds", "settings": _settings_json(settings)}
    doc.update({name: dataclasses.asdict(obs) for name, obs in ends.items()})
    (directory / STATE_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def read_state(directory: Path) -> Settings:
    """The settings of a bisect over builds that stopped, to resume it."""
    path = directory / STATE_FILE
    what = "bisect state file `harness bisect` wrote"
    top = Doc(jsondoc.load(path, 16 << 20, "bisect state file"), f"{path}: ", f"the {what}")
    s = top.each("settings", lambda d: d, None)
    if s is None:
        raise UserError(f"{path}: settings: missing; give the {what}")
    builds = tuple(
        Build(b.text("name", True), b.text("version"), b.text("package"), b.mapping("entry"))
        for b in s.items("builds", lambda d: d, True)
    )
    if len(builds) < 2:
        raise UserError(f"{path}: settings.builds: fewer than two builds; give the {what}")
    return Settings(
        s.text("case", True),
        builds,
        s.text("ram", True),
        s.text("memlock", True),
        s.text("user", True),
        s.integer("tries", True),
    )


def kind(directory: Path) -> str:
    """ "commits" or "builds": what the bisect in `directory` searched."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise UserError(f"--resume {directory}: no {STATE_FILE}; give the directory of a bisect (results/bisect-*)")
    top = Doc(jsondoc.load(path, 16 << 20, "bisect state file"), f"{path}: ", "the bisect state file")
    found = top.text("kind") or "commits"
    if found not in ("commits", "builds"):
        raise UserError(f"{path}: kind: {found!r} is not commits or builds; give the state file harness bisect wrote")
    return found
