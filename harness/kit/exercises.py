"""What each case exercises in the kernel, and which changelog entries may explain a change.

When a case behaves differently under two Debian kernel builds, the question is which of the
hundreds of upstream stable patches between them did it. guest-tests/exercises.yaml declares, per
case (or glob of cases), the kernel source paths and the identifiers its behaviour depends on;
`rank` scores each changelog entry by how many of them its title matches, so the few patches worth
reading come first. Titles are matched as kernel patch titles are written: "[x86] " tags, "mm:
mremap:", "mm, mremap:" and "mm/mremap.c:" prefixes, identifiers as whole words.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from harness import REPO, yamlfile
from harness.debian.changelog import Entry
from harness.files import read_text

EXERCISES = REPO / "guest-tests" / "exercises.yaml"
_FIELDS = ("paths", "keywords")
# A kernel source path as a changelog prefix names it: no .c/.h (the prefix drops it), no spaces.
_PATH = re.compile(r"[A-Za-z0-9_][\w.+-]*(?:/[A-Za-z0-9_][\w.+-]*)*")


@dataclass(frozen=True)
class Exercises:
    """What one case's behaviour depends on: source paths (mm/mremap) and identifiers (locked_vm)."""

    paths: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A changelog entry that may explain a change, with the declared items its title matched."""

    entry: Entry
    score: int
    matched: tuple[str, ...]  # declared paths, then keywords, in declaration order


def load(path: Path = EXERCISES) -> dict[str, Exercises]:
    """The declarations by case name or glob, in file order (the order globs are tried in)."""
    root, doc = yamlfile.read(read_text(path, 1 << 20, "exercises file"), str(path))
    where = yamlfile.Where(str(path), root)
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), dict):
        raise where.error(("cases",), "missing; the file holds `cases:`, a mapping of case names or globs")
    extra = sorted(str(k) for k in doc if k != "cases")
    if extra:
        raise where.error((extra[0],), "unknown key; the file holds only `cases:`")
    _no_twice(where, root)
    out: dict[str, Exercises] = {}
    for case, value in doc["cases"].items():
        at = ("cases", case)
        if not isinstance(case, str) or not case.strip() or case != case.strip():
            raise where.error(at, "not a case name; write the case's name or a glob such as mremap_*")
        if not isinstance(value, dict):
            raise where.error(at, "a declaration is a mapping: `paths: [mm/mremap]` and `keywords: [locked_vm]`")
        unknown = sorted(str(k) for k in value if k not in _FIELDS)
        if unknown:
            raise where.error((*at, unknown[0]), "unknown key; a declaration has `paths` and `keywords`")
        paths = _items(where, (*at, "paths"), value.get("paths"))
        keywords = _items(where, (*at, "keywords"), value.get("keywords"))
        for i, p in enumerate(paths):
            if not _PATH.fullmatch(p) or p.endswith((".c", ".h")):
                raise where.error(
                    (*at, "paths", i),
                    f"{p!r} is not a kernel source path; write a file without .c or a directory, such as mm/mremap",
                )
        for i, k in enumerate(keywords):
            if not re.search(r"\w", k) or k != k.strip():
                raise where.error((*at, "keywords", i), f"{k!r} is not an identifier; write one such as locked_vm")
        if not paths and not keywords:
            raise where.error(at, "declares nothing; list the `paths` or `keywords` the case depends on")
        out[case] = Exercises(paths, keywords)
    return out


def _items(where: yamlfile.Where, at: yamlfile.KeyPath, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise where.error(at, f"not a list of names; write a list such as [{_EXAMPLE[str(at[-1])]}]")
    seen = set()
    for i, v in enumerate(value):
        if v in seen:
            raise where.error((*at, i), f"{v!r} listed twice; keep one")
        seen.add(v)
    return tuple(value)


_EXAMPLE = {"paths": "mm/mremap, mm/mlock", "keywords": "locked_vm, MREMAP_DONTUNMAP"}


def _no_twice(where: yamlfile.Where, root: yaml.Node | None) -> None:
    """YAML keeps the last of two equal keys without a word; a case declared twice is a mistake."""
    if not isinstance(root, yaml.MappingNode):
        return
    for key, value in root.value:
        if getattr(key, "value", None) == "cases" and isinstance(value, yaml.MappingNode):
            first: dict[object, int] = {}
            for k, _ in value.value:
                name = getattr(k, "value", None)
                if name in first:
                    raise where.error(
                        ("cases", str(name)),
                        f"declared twice (lines {first[name]} and {k.start_mark.line + 1}); keep one",
                    )
                first[name] = k.start_mark.line + 1


def of(case: str, table: Mapping[str, Exercises]) -> Exercises:
    """What `case` exercises: its exact key, else the first glob (in file order) that matches it, else
    nothing. A suite's subtest (kselftest-mm:mlock2-tests/name) exercises what its program does."""
    names = [case]
    if "/" in case:
        names.append(case.split("/", 1)[0])
    for name in names:
        if name in table:
            return table[name]
    for name in names:
        for key, exercises in table.items():
            if fnmatch.fnmatchcase(name, key):
                return exercises
    return Exercises()


def rank(entries: Sequence[Entry], exercises: Exercises) -> list[Candidate]:
    """The entries whose titles match any declared path or keyword, most matches first; entries with
    as many keep the changelog's order."""
    out = []
    for entry in entries:
        title = _plain(entry.title)
        prefix = subsystem(title)
        matched = tuple(p for p in exercises.paths if _path_matches(p, prefix, title)) + tuple(
            k for k in exercises.keywords if _word(k).search(title)
        )
        if matched:
            out.append(Candidate(entry, len(matched), matched))
    return sorted(out, key=lambda c: -c.score)


_TAGS = re.compile(r"^(?:\s*\[[^\]]*\])+\s*")  # "[x86] ", "[arm64,armhf] ", "[rt] "
_REVERT = re.compile(r'^revert\s+"(.*)"\s*$', re.IGNORECASE)
_SEGMENT = re.compile(r"[A-Za-z0-9_][\w.+/-]*")  # one subsystem name: mm, mremap, x86/mm, mremap.c


def _plain(title: str) -> str:
    """The title without its arch tags, and a revert as the title it reverts (equally relevant)."""
    text = _TAGS.sub("", title.strip())
    revert = _REVERT.match(text)
    return _TAGS.sub("", revert.group(1).strip()) if revert else text


def subsystem(title: str) -> str:
    """A patch title's subsystem prefix as a path, lower case: "mm: mremap: fix", "mm, mremap: fix" and
    "mm/mremap.c: fix" are all mm/mremap; "" when the title has no prefix."""
    parts = _plain(title).split(": ")
    names: list[str] = []
    for part in parts[:-1]:
        name = re.sub(r"\s*,\s*", "/", part.strip())
        if not _SEGMENT.fullmatch(name):
            break
        names.append(re.sub(r"\.[ch]$", "", name))
    return "/".join(names).lower()


def _path_matches(path: str, prefix: str, title: str) -> bool:
    want = path.lower()
    if prefix == want or prefix.startswith((want + "/", want + ".")):
        return True
    return _mention(path).search(title) is not None


@lru_cache(maxsize=1024)
def _word(keyword: str) -> re.Pattern[str]:
    # \w on both sides: locked_vm is not in "nr_locked_vm", mlock is not in "mlockall" nor "munlock".
    return re.compile(rf"(?<!\w){re.escape(keyword)}(?!\w)", re.IGNORECASE)


@lru_cache(maxsize=1024)
def _mention(path: str) -> re.Pattern[str]:
    # "in mm/mlock.c" names mm/mlock; "arch/x86/mm/mmap.c" does not name mm/mmap, nor "mm/mlock_x" mm/mlock.
    return re.compile(rf"(?<![\w/.-]){re.escape(path)}(?![\w-])", re.IGNORECASE)
