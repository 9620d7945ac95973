"""Known deviations: findings someone has looked at, expected to fail (as pytest's xfail and
kselftest's XFAIL), each with the reason and where it is discussed (guest-tests/known-deviations.yaml).

The judging stage marks a deviation an entry covers as known: reported with the entry's reason, it
does not fail the run; a new deviation does. An entry whose cases no longer deviate is *fixed*: a
notice (`--strict` makes it fail). A stable fix lands in several upstream lines at once (6.1.192,
6.12.115, 7.2.11): an entry's `fixed_in` lists those points, and a build of such a line at or
after its point is no longer covered.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import REPO, versions, yamlfile
from harness.errors import UserError
from harness.files import read_text
from harness.results import BootResult, CaseResult, KernelInfo, Outcome

KNOWN_FILE = REPO / "guest-tests" / "known-deviations.yaml"


@dataclass(frozen=True)
class Known:
    """A deviation someone has looked at: expected to fail, with the reason and where it is discussed."""

    case: str  # a case name or a glob (mremap_dontunmap_*)
    reason: str
    link: str = ""
    kernel: str = ""  # a range as in expectations.yaml ('>=6.16,<6.19'); "" for every kernel
    memlock: str = ""  # "" for every limit
    user: str = ""  # "" for every user
    origin: str = ""  # file:line, for messages
    fixed_in: tuple[tuple[int, ...], ...] = ()  # (6, 1, 192): from there on, the 6.1 line has the fix

    def applies(self, result: CaseResult, kernel: KernelInfo | None) -> bool:
        """Whether `result` is one of the entry's: its case, limit, user and kernel (not a fixed build)."""
        if not fnmatch.fnmatchcase(result.case, self.case):
            return False
        if (self.memlock and self.memlock != result.memlock) or (self.user and self.user != result.user):
            return False
        if not (self.kernel or self.fixed_in):
            return True
        if kernel is None:
            return False
        version = versions.upstream(kernel)
        if any(version[:2] == fix[:2] and version >= fix for fix in self.fixed_in):
            return False
        return not self.kernel or versions.in_range(self.kernel, version)

    def covers(self, result: CaseResult, kernel: KernelInfo | None) -> bool:
        """Whether the entry expects `result`: a deviation (or an OOM kill) of its own."""
        return result.outcome in (Outcome.DEVIATION, Outcome.OOM_KILLED) and self.applies(result, kernel)

    @property
    def says(self) -> str:
        """What a known result's message carries: the reason, and where it is discussed."""
        return f"{' '.join(self.reason.split())}" + (f" ({self.link})" if self.link else "")


_KNOWN_KEYS = {"case", "reason", "link", "kernel", "memlock", "user", "fixed_in"}


def load_known(path: Path) -> list[Known]:
    """Read a known-deviations file; every mistake is one line naming the file, line and field."""
    root, doc = yamlfile.read(read_text(path, 1 << 20, "known-deviations file"), str(path))
    lines = _entry_lines(root)
    if doc is None:
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("known"), list):
        raise UserError(f"{path}:1: known: missing; the file holds `known:` followed by a list of entries")
    out = []
    for i, entry in enumerate(doc["known"]):
        where = f"{path}:{lines.get(i, 1)}: known[{i}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: an entry is a mapping: case, reason, and optionally kernel, memlock, user, link")
        extra = sorted(set(map(str, entry)) - _KNOWN_KEYS)
        if extra:
            raise UserError(f"{where}.{extra[0]}: unknown key; use {', '.join(sorted(_KNOWN_KEYS))}")
        for key in ("case", "reason"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise UserError(f"{where}.{key}: missing; every entry names the case and why it is known")
        known = Known(
            case=entry["case"],
            reason=entry["reason"],
            link=str(entry.get("link") or ""),
            kernel=str(entry.get("kernel") or ""),
            memlock=str(entry.get("memlock") or ""),
            user=str(entry.get("user") or ""),
            origin=where,
            fixed_in=_fix_points(entry.get("fixed_in"), f"{where}.fixed_in"),
        )
        if known.kernel:
            try:
                versions.in_range(known.kernel, (0,))
            except ValueError as e:
                raise UserError(f"{where}.kernel: {e}") from None
        out.append(known)
    return out


def _fix_points(value: object, where: str) -> tuple[tuple[int, ...], ...]:
    """`fixed_in: [6.1.192, 6.12.115]`: the first build of each line that has the fix."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    points = []
    for item in items:
        version = versions.line(str(item))
        if version is None or len(version) < 3:
            raise UserError(f"{where}: {item!r} is not a version such as 6.1.192 (the first fixed build of a line)")
        points.append(version)
    return tuple(points)


def covering(known: Sequence[Known], result: CaseResult, kernel: KernelInfo | None) -> Known | None:
    """The first entry that expects `result`, if any."""
    return next((k for k in known if k.covers(result, kernel)), None)


def marked(known: Sequence[Known], boots: Sequence[BootResult]) -> list[BootResult]:
    """`boots` with every finding marked by the entry that expects it now (shards judged apart, a
    known-deviations file edited since): the file given is the one that counts."""
    out = []
    for boot in boots:
        cases = []
        for r in boot.cases:
            entry = covering(known, r, boot.kernel)
            cases.append(dataclasses.replace(r, known=entry.says if entry else ""))
        out.append(dataclasses.replace(boot, cases=cases))
    return out


def fixed(known: Sequence[Known], boots: Sequence[BootResult]) -> list[tuple[Known, list[str]]]:
    """Entries whose results in `boots` were all observed and none deviates any more: each with the
    boots where its cases now behave as documented (a notice; `--strict` fails the run on it)."""
    out = []
    for entry in known:
        answered = [(b, r) for b in boots for r in _answered(entry, b)]
        if answered and all(r.outcome is Outcome.PASS for _, r in answered):
            out.append((entry, list(dict.fromkeys(b.boot_id for b, _ in answered))))
    return out


def settled(known: Sequence[Known], boot: BootResult) -> dict[tuple[str, str, str], str]:
    """The boot's results of entries that no longer show in it (every one answered and passed), by
    (case, limit, user), each with its entry's reason: what junit.xml shows a person in full."""
    out: dict[tuple[str, str, str], str] = {}
    for entry in known:
        answered = _answered(entry, boot)
        if answered and all(r.outcome is Outcome.PASS for r in answered):
            for r in answered:
                out.setdefault((r.case, r.memlock, r.user), entry.says)
    return out


def _answered(entry: Known, boot: BootResult) -> list[CaseResult]:
    """The entry's results in the boot that the guest answered (a pass, or what it may expect)."""
    answers = (Outcome.PASS, Outcome.DEVIATION, Outcome.OOM_KILLED)
    return [r for r in boot.cases if r.outcome in answers and entry.applies(r, boot.kernel)]


def _entry_lines(root: yaml.Node | None) -> dict[int, int]:
    if not isinstance(root, yaml.MappingNode):
        return {}
    for k, v in root.value:
        if getattr(k, "value", None) == "known" and isinstance(v, yaml.SequenceNode):
            return {i: item.start_mark.line + 1 for i, item in enumerate(v.value)}
    return {}
