"""Verdicts: compare one probe case record with the cited expectations. Pure.

Expectations are data (guest-tests/expectations.yaml): for each case an ordered list of rules;
the first rule whose `when` matches the run gives the expected observations and their citation.
`invariants` hold for every case whose record has the fields they name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import REPO, versions
from harness.errors import UserError
from harness.results import Outcome
from harness.sizes import parse_size

EXPECTATIONS = REPO / "guest-tests" / "expectations.yaml"


@dataclass(frozen=True)
class Rule:
    when: Mapping[str, Any]
    expect: Mapping[str, Any]
    cite: str
    allow_oom: bool = False  # an OOM kill of the probe child is one of the documented outcomes


@dataclass(frozen=True)
class Expectations:
    cases: Mapping[str, tuple[Rule, ...]]
    invariants: tuple[Rule, ...]
    unjudged: tuple[Rule, ...] = ()  # runs no rule speaks for (an era before the rules' sources)


@dataclass(frozen=True)
class RunContext:
    """What a rule's `when` can test: the kernel and how the run was set up."""

    kernel_version: tuple[int, ...]  # from the release string: 6.1.0-50-amd64 -> (6, 1, 0)
    memlock_requested: bool  # False: the limit the guest gave the login (`default`)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    message: str
    expected: dict[str, Any]
    citation: str


def expectations_sha256(path: Path = EXPECTATIONS) -> str:
    """What a run's manifest records, and a replay checks, of the expectations it judged by."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path = EXPECTATIONS) -> Expectations:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read expectations: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise UserError(f"{path}: expected a mapping with 'cases' (and optional 'invariants')")

    def rules(where: str, items: object) -> tuple[Rule, ...]:
        if not isinstance(items, list):
            raise UserError(f"{path}: {where}: expected a list of rules")
        out = []
        for i, r in enumerate(items):
            if not isinstance(r, dict) or not isinstance(r.get("expect"), dict) or not r.get("cite"):
                raise UserError(f"{path}: {where}[{i}]: a rule needs 'expect' (mapping) and 'cite'")
            unknown = set(r.get("when", {})) - set(_CONDITIONS)
            if unknown:
                raise UserError(f"{path}: {where}[{i}].when: unknown condition {sorted(unknown)[0]!r}")
            unknown_keys = set(r) - {"when", "expect", "cite", "allow_oom"}
            if unknown_keys:
                raise UserError(f"{path}: {where}[{i}]: unknown key {sorted(unknown_keys)[0]!r}")
            out.append(Rule(r.get("when", {}), r["expect"], str(r["cite"]).strip(), r.get("allow_oom") is True))
        return tuple(out)

    unjudged = data.get("unjudged", [])
    if not isinstance(unjudged, list) or not all(isinstance(u, dict) and u.get("when") for u in unjudged):
        raise UserError(f"{path}: unjudged: expected a list of rules with 'when' and 'cite'")
    return Expectations(
        {name: rules(f"cases.{name}", r) for name, r in data["cases"].items()},
        rules("invariants", data.get("invariants", [])),
        rules("unjudged", [{"expect": {}, **u} for u in unjudged]),
    )


def derived(obs: Mapping[str, Any]) -> dict[str, Any]:
    """Normalised observations that expectations can name, next to the raw record's fields."""
    out = dict(obs)
    total, resident = obs.get("total_pages"), obs.get("resident_pages")
    if isinstance(total, int) and isinstance(resident, int) and total > 0:
        out["residency"] = "all" if resident == total else "none" if resident == 0 else "partial"
    size, before, after = obs.get("size"), obs.get("vmlck_before_kb"), obs.get("vmlck_after_kb")
    if isinstance(size, int) and isinstance(before, int) and isinstance(after, int):
        delta = (after - before) * 1024
        out["locked"] = "all" if delta == size else "none" if delta == 0 else "partial"
    end = obs.get("vmlck_end_kb")
    if isinstance(end, int) and isinstance(before, int):
        out["accounting_restored"] = end == before
    soft, cap = obs.get("rlimit_soft"), obs.get("cap_ipc_lock")
    if cap is False and isinstance(soft, int) and isinstance(after, int):
        out["within_limit"] = after * 1024 <= soft
    touch = obs.get("minflt_touch")
    if isinstance(touch, int):
        out["touch_faults"] = "none" if touch == 0 else "some"
    return out


def _limit_class(obs: Mapping[str, Any]) -> str | None:
    soft = obs.get("rlimit_soft", 0)
    if soft is None:
        return "unlimited"
    return "zero" if soft == 0 else "finite" if isinstance(soft, int) else None


_CONDITIONS: dict[str, Callable[[object, Mapping[str, Any], RunContext], bool]] = {
    "privileged": lambda v, obs, ctx: obs.get("cap_ipc_lock") is v,
    "limit": lambda v, obs, ctx: _limit_class(obs) == v,
    "memlock": lambda v, obs, ctx: ("set" if ctx.memlock_requested else "default") == v,
    "kernel": lambda v, obs, ctx: _kernel_cond(v, ctx.kernel_version),
    "limit_at_least": lambda v, obs, ctx: _at_least(obs.get("rlimit_soft", 0), v),
}


def _kernel_cond(spec: object, version: tuple[int, ...]) -> bool:
    try:
        return versions.in_range(spec, version)
    except ValueError as e:
        raise UserError(f"expectations: {e}") from None


def _at_least(soft: object, size: object) -> bool:
    """The soft limit (None: unlimited) is at least `size` (e.g. "4M")."""
    try:
        want = parse_size(size)
    except ValueError as e:
        raise UserError(f"expectations: limit_at_least: {e}") from None
    return soft is None or (isinstance(soft, int) and soft >= want)


def _matches(rule: Rule, obs: Mapping[str, Any], ctx: RunContext) -> bool:
    return all(_CONDITIONS[k](v, obs, ctx) for k, v in rule.when.items())


def _differences(expect: Mapping[str, Any], seen: Mapping[str, Any]) -> list[str]:
    return [
        f"{key}: expected {want!r}, observed {seen.get(key)!r}" for key, want in expect.items() if seen.get(key) != want
    ]


def judge(obs: Mapping[str, Any], ctx: RunContext, expectations: Expectations) -> Verdict:
    status = obs.get("status", "ok")
    if status == "timeout":
        return Verdict(Outcome.TIMEOUT, f"case ran past its deadline ({obs.get('duration_ms')} ms)", {}, "")
    if status == "killed":
        return _killed(obs, _rule(obs, ctx, expectations))
    if status != "ok":
        return Verdict(Outcome.INFRA_ERROR, f"probe child {status}: {obs.get('error', 'no record')}", {}, "")
    if obs.get("applicable") is False:
        return Verdict(Outcome.NOT_APPLICABLE, str(obs.get("reason", "not applicable here")), {}, "")
    era = next((u for u in expectations.unjudged if _matches(u, obs, ctx)), None)
    if era is not None:  # recorded and fingerprinted as ever; judged by no rule written for later kernels
        return Verdict(Outcome.NOT_APPLICABLE, "no expectations for this kernel's era", {}, era.cite)

    seen = derived(obs)
    rule = _rule(obs, ctx, expectations)
    expected: dict[str, Any] = dict(rule.expect) if rule else {}
    cites = [rule.cite] if rule else []
    # A field this kernel cannot show (smaps has no VmFlags before 3.8) is null with the probe's
    # reason: unknown, neither held against the kernel nor counted as seen.
    why = obs.get("unknown")
    blind = sorted(k for k in expected if isinstance(why, str) and k in obs and obs[k] is None)
    for key in blind:
        expected.pop(key)
    problems = _differences(expected, seen)
    for inv in expectations.invariants:
        if _matches(inv, obs, ctx) and all(k in seen for k in inv.expect):
            expected.update(inv.expect)
            bad = _differences(inv.expect, seen)
            problems += bad
            if bad:
                cites.append(inv.cite)
    if rule is None:
        problems.append("no expectation matches this case and run (add a rule to expectations.yaml)")
    citation = " | ".join(cites)
    unknown = f"; unknown: {', '.join(blind)} ({why})" if blind else ""
    if problems:
        return Verdict(Outcome.DEVIATION, "; ".join(problems) + unknown, expected, citation)
    return Verdict(Outcome.PASS, "as expected: " + _describe(expected, seen) + unknown, expected, citation)


def _rule(obs: Mapping[str, Any], ctx: RunContext, expectations: Expectations) -> Rule | None:
    rules = expectations.cases.get(str(obs.get("case")), ())
    return next((r for r in rules if _matches(r, obs, ctx)), None)


def _killed(obs: Mapping[str, Any], rule: Rule | None) -> Verdict:
    name = obs.get("signal_name") or f"signal {obs.get('signal')}"
    oom = obs.get("oom_killed")
    lines = [line for line in obs.get("kernel_log") or [] if "Killed process" in line or "oom-kill" in line]
    evidence = ("; kernel: " + " | ".join(lines[-2:])) if lines else ""
    # The probe reads the guest's kernel log after each case: trust it when it is there. Without it
    # (no /dev/kmsg), a SIGKILL that the probe did not send can only have come from the OOM killer.
    if oom is True or (oom is None and name == "SIGKILL"):
        message = f"probe child killed by {name} from the OOM killer{evidence}"
        if rule is not None and rule.allow_oom:
            return Verdict(Outcome.PASS, "as expected (allowed): " + message, {"oom_killed": True}, rule.cite)
        return Verdict(Outcome.OOM_KILLED, message, {}, "")
    return Verdict(Outcome.DEVIATION, f"probe child died by {name}{evidence}", {}, "")


# Normalised observations that say what a kernel did, without noise (timings, fault counts,
# Mlocked batching): two kernels behave alike in a case exactly when these are equal.
# Fault counts on touch are only in where a case's expectations name them: touching a hugetlb
# mapping beyond the pool faults in as many pages as happen to be free (three identical runs of
# every Debian kernel differed there and nowhere else).
FINGERPRINT_FIELDS = (
    "status",
    "signal_name",
    "oom_killed",
    "applicable",
    "result",
    "signals",
    "residency",
    "locked",
    "accounting_restored",
    "within_limit",
)


def fingerprint(obs: Mapping[str, Any], expectations: Expectations) -> str:
    """A stable, canonical summary of a case record: the generic fields above, every field the
    case's expectations name, and each call's outcome in order."""
    seen = derived(obs)
    named = {k for rule in expectations.cases.get(str(obs.get("case")), ()) for k in rule.expect}
    doc: dict[str, Any] = {k: seen[k] for k in sorted(set(FINGERPRINT_FIELDS) | named) if k in seen}
    calls = obs.get("calls")
    if isinstance(calls, list):
        doc["calls"] = [f"{c.get('call')}:{c.get('errno') or 'ok'}" for c in calls if isinstance(c, dict)]
    return _canonical(doc)


def changed_fields(before: str, after: str) -> tuple[str, ...]:
    """Top-level fields of two fingerprints that differ, sorted; ("fingerprint",) when either is not
    a fingerprint document and they differ. Canonical text is compared, not Python values: true == 1
    in Python, not in a fingerprint."""
    a, b = _document(before), _document(after)
    if a is None or b is None:
        return () if before == after else ("fingerprint",)
    return tuple(
        sorted(k for k in a.keys() | b.keys() if (k in a) != (k in b) or _canonical(a.get(k)) != _canonical(b.get(k)))
    )


def _document(fingerprint: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(fingerprint)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _describe(expected: Mapping[str, Any], seen: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={seen.get(k)!r}" for k in expected) or "no expectation"
