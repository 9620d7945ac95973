"""What each case exercises (guest-tests/exercises.yaml, harness/kit/exercises.py): every case of
the probe's catalogue and every kselftest program declares something, and no key is stale; a bad
file is one line naming file and key; changelog titles are matched as kernel patch titles are
written, so the patch that explains a change ranks first and unrelated ones not at all."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from harness.debian.changelog import Entry
from harness.errors import UserError
from harness.kit import exercises
from harness.kit.exercises import Exercises
from harness.kit.suites.kselftest import MM, PROGRAMS

SUITE_CASES = [f"{MM.name}:{p}" for p in PROGRAMS]


@pytest.fixture(scope="module")
def table() -> dict[str, Exercises]:
    return exercises.load()


def test_every_case_and_suite_program_declares_what_it_exercises(
    table: dict[str, Exercises], catalogue: list[str]
) -> None:
    empty = [
        c for c in [*catalogue, *SUITE_CASES] if not (exercises.of(c, table).paths or exercises.of(c, table).keywords)
    ]
    assert empty == []
    # a subtest exercises what its program does
    assert (
        exercises.of(f"{MM.name}:mlock2-tests/mlock2() with MLOCK_ONFAULT", table) == table[f"{MM.name}:mlock2-tests"]
    )


def test_every_key_is_some_case_s_declaration(table: dict[str, Exercises], catalogue: list[str]) -> None:
    """A key no case takes (a renamed case, a glob shadowed by an earlier one) is a stale declaration."""
    cases = [*catalogue, *SUITE_CASES]
    taken = {key for c in cases for key in table if table[key] is exercises.of(c, table)}
    assert [key for key in table if key not in taken] == []
    globs = [k for k in table if any(ch in k for ch in "*?[")]
    assert all(any(fnmatch.fnmatchcase(c, g) for c in cases) for g in globs)


def test_exact_key_first_then_the_first_glob_then_nothing() -> None:
    table = {
        "mlock2_*": Exercises(keywords=("mlock2",)),
        "mlock2_onfault_over": Exercises(keywords=("MLOCK_ONFAULT",)),
        "mlock*": Exercises(keywords=("mlock",)),
    }
    assert exercises.of("mlock2_onfault_over", table).keywords == ("MLOCK_ONFAULT",)
    assert exercises.of("mlock2_under", table).keywords == ("mlock2",)
    assert exercises.of("mlock_under", table).keywords == ("mlock",)
    assert exercises.of("limits", table) == Exercises()


BAD = [
    ("", r"cases: missing"),
    ("cases: [a]\n", r"cases: missing"),
    ("cases: {}\nother: 1\n", r"other: unknown key"),
    ("cases:\n  a: [mm/mlock]\n", r"cases\.a: a declaration is a mapping"),
    ("cases:\n  a:\n    path: [mm/mlock]\n", r"cases\.a\.path: unknown key; a declaration has `paths` and `keywords`"),
    ("cases:\n  a:\n    paths: mm/mlock\n", r"cases\.a\.paths: not a list of names; write a list such as \[mm/mremap"),
    ("cases:\n  a:\n    paths: [mm/mlock.c]\n", r"cases\.a\.paths\.0: 'mm/mlock\.c' is not a kernel source path"),
    ("cases:\n  a:\n    paths: [mm mlock]\n", r"cases\.a\.paths\.0: 'mm mlock' is not a kernel source path"),
    ("cases:\n  a:\n    keywords: [locked_vm, locked_vm]\n", r"cases\.a\.keywords\.1: 'locked_vm' listed twice"),
    ("cases:\n  a:\n    keywords: [1, 2]\n", r"cases\.a\.keywords: not a list of names"),
    ("cases:\n  a: {}\n", r"cases\.a: declares nothing"),
    ("cases:\n  a:\n    paths: []\n", r"cases\.a: declares nothing"),
    ("cases:\n  a: {keywords: [x]}\n  a: {keywords: [y]}\n", r"cases\.a: declared twice \(lines 2 and 3\); keep one"),
    ("cases:\n  a: &s {keywords: [x]}\n  b: *s\n", r"anchors and aliases .* are not supported"),
    ("cases:\n  a: {keywords: [x]\n", r"invalid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "exercises.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        exercises.load(path)
    said = str(caught.value)
    assert said.startswith(f"{path}:") and "\n" not in said
    assert caught.match(message)


def test_a_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read exercises file"):
        exercises.load(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    ("title", "prefix"),
    [
        ("mm/mremap: fix locked_vm leak", "mm/mremap"),
        ("mm, mremap: fix mremap() expanding for vma's with vm_ops->close()", "mm/mremap"),
        ("mm: mremap: fix sign for EFAULT error return value", "mm/mremap"),
        ("mm/mremap.c: use pmd_addr_end to calculate next in move_page_tables()", "mm/mremap"),
        ("[arm64] mm/memremap: fix memunmap_pages() race", "mm/memremap"),
        ('Revert "mm, mremap: fix mremap() expanding"', "mm/mremap"),
        ("[x86] KVM: x86: fix shadow paging", "kvm/x86"),
        ("Update to 6.1.191", ""),
        ("Bump ABI to 42: the reason", ""),
    ],
)
def test_the_subsystem_prefix_reads_as_a_path(title: str, prefix: str) -> None:
    assert exercises.subsystem(title) == prefix


def entry(title: str, upstream: str = "6.1.191") -> Entry:
    return Entry(version="6.1.192-1", upstream=upstream, title=title, cves=())


CHANGELOG = [
    "net: usb: qmi_wwan: add Telit FN920C04 compositions",
    "mm: mremap: fix sign for EFAULT error return value",
    "[arm64] mm/memremap: fix the memremap_pages() error path",
    "mm/memremap: fix memunmap_pages() race with get_dev_pagemap()",
    "drm/amdgpu: fix locking in amdgpu_vm_update_range()",
    "mm/vma: fix incorrectly disallowed anonymous VMA merges",
    "ext4: fix slab-use-after-free in ext4_split_extent_at()",
    "mm, mremap: fix mremap() expanding for vma's with vm_ops->close()",
    "[x86] KVM: x86: fix shadow paging with huge pages",
    "mm/mlock: fix potential imbalanced rlimit ucounts adjustment",
    "[x86] mm: mremap: correctly account old mapping after MREMAP_DONTUNMAP remap",
    "mm/mremap: fix locked_vm leak by splitting VMA for MREMAP_DONTUNMAP",
    "mm/hugetlb: fix hugetlb_vmemmap to free the vmemmap pages",
    "arch/x86/mm/mmap.c: fix mmap randomisation",
    "[rt] Update to 6.1.191-rt70",
]


def test_the_patch_that_explains_a_change_ranks_first(table: dict[str, Exercises]) -> None:
    ranked = exercises.rank([entry(t) for t in CHANGELOG], exercises.of("mremap_dontunmap_partial", table))
    assert [c.entry.title for c in ranked] == [
        "mm/mremap: fix locked_vm leak by splitting VMA for MREMAP_DONTUNMAP",
        "[x86] mm: mremap: correctly account old mapping after MREMAP_DONTUNMAP remap",
        "mm: mremap: fix sign for EFAULT error return value",  # ties keep the changelog's order
        "mm, mremap: fix mremap() expanding for vma's with vm_ops->close()",
        "mm/vma: fix incorrectly disallowed anonymous VMA merges",
    ]
    assert ranked[0].matched == ("mm/mremap", "mremap", "MREMAP_DONTUNMAP", "locked_vm")
    assert [c.score for c in ranked] == [4, 3, 2, 2, 1]


def test_paths_and_keywords_match_as_kernel_titles_name_them() -> None:
    def titles(ex: Exercises, *candidates: str) -> list[str]:
        return [c.entry.title for c in exercises.rank([entry(t) for t in candidates], ex)]

    mlock = Exercises(keywords=("mlock",))
    assert titles(mlock, "mm: fix mlockall() error", "mm: fix munlock race", "MLOCK: fix accounting") == [
        "MLOCK: fix accounting"
    ]
    gup = Exercises(paths=("mm/gup",))
    assert titles(gup, "mm/gup_test: fix build", "mm/gup.c: fix FOLL_LONGTERM", "mm: gup: fix", "mm/gup/x: y") == [
        "mm/gup.c: fix FOLL_LONGTERM",
        "mm: gup: fix",
        "mm/gup/x: y",
    ]
    mmap = Exercises(paths=("mm/mmap", "mm/mlock"))
    assert titles(mmap, "arch/x86/mm/mmap.c: fix randomisation", "mm: fix a race in mm/mlock.c") == [
        "mm: fix a race in mm/mlock.c"
    ]
    assert exercises.rank([entry("mm/mremap: fix")], Exercises()) == []
