"""harness/compare.py: pairing results, classifying differences, known deviations and the exit code."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from harness.errors import UserError
from harness.history import compare
from harness.history.compare import Change, Known, exit_code, kernel_side, load_known, run_side
from harness.history.compare import compare as diff
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord

K616 = KernelInfo(
    "trixie-backports",
    "6.16.12+deb13-amd64",
    "linux-image-6.16.12+deb13-amd64",
    "6.16.12-1~bpo13+1",
    "16" * 32,
    "trixie-backports",
)
K72 = KernelInfo("sid", "7.2.13+deb14-amd64", "linux-image-7.2.13+deb14-amd64", "7.2.13-1", "72" * 32, "sid")

LOCKED = '{"locked":"all","result":"ok"}'
DOUBLE = '{"locked":"all","result":"ok","accounting_restored":false}'


def res(case: str, outcome: Outcome, fp: str = LOCKED, memlock: str = "64K", user: str = "user") -> CaseResult:
    return CaseResult("b", case, memlock, user, outcome, f"{case} said so", {"case": case}, fingerprint=fp)


def run(kernel: KernelInfo, *cases: CaseResult, boot: str = "nightly-256M") -> RunRecord:
    boots = [BootResult(boot, kernel, 256, cases=list(cases))]
    return RunRecord("r-" + kernel.sha256[:4], "", "2026-11-26T00:00:00Z", False, boots)


def changes(base: RunRecord, new: RunRecord, known: list[Known] | None = None) -> dict[str, Change]:
    return {d.case: d.change for d in diff(run_side(base), run_side(new), known or [])}


def test_same_behaviour_is_no_difference_even_when_both_deviate() -> None:
    a = run(K616, res("same", Outcome.PASS), res("old_finding", Outcome.DEVIATION, DOUBLE))
    b = run(K72, res("same", Outcome.PASS), res("old_finding", Outcome.DEVIATION, DOUBLE))
    assert changes(a, b) == {}
    assert exit_code(diff(run_side(a), run_side(b))) == 0


def test_classification() -> None:
    base = run(
        K616,
        res("regressed", Outcome.PASS),
        res("fixed", Outcome.DEVIATION, DOUBLE),
        res("drifted", Outcome.PASS, '{"result":"ok"}'),
        res("lost", Outcome.PASS),
        res("gone", Outcome.PASS),
        res("worse_finding", Outcome.DEVIATION, DOUBLE),
    )
    new = run(
        K72,
        res("regressed", Outcome.DEVIATION, DOUBLE),
        res("fixed", Outcome.PASS),
        res("drifted", Outcome.PASS, '{"result":"EAGAIN"}'),
        res("lost", Outcome.TIMEOUT, ""),
        res("added", Outcome.NOT_APPLICABLE, ""),
        res("worse_finding", Outcome.DEVIATION, '{"locked":"none"}'),
        res("new_case_fails", Outcome.OOM_KILLED, ""),
    )
    assert changes(base, new) == {
        "regressed": Change.NEW_DEVIATION,
        "fixed": Change.FIXED,
        "drifted": Change.CHANGED,
        "lost": Change.NO_ANSWER,
        "added": Change.ONLY_NEW,
        "worse_finding": Change.NEW_DEVIATION,
        "new_case_fails": Change.NEW_DEVIATION,
        "gone": Change.ONLY_BASELINE,
    }
    drifted = next(d for d in diff(run_side(base), run_side(new)) if d.case == "drifted")
    assert drifted.fields == ("result",)
    assert exit_code(diff(run_side(base), run_side(new))) == 1


def test_a_baseline_without_fingerprints_is_compared_by_outcome() -> None:
    """Runs from before fingerprints existed must not make every case look changed."""
    old = run(K616, res("a", Outcome.PASS, ""), res("b", Outcome.DEVIATION, ""))
    new = run(K616, res("a", Outcome.PASS), res("b", Outcome.DEVIATION, DOUBLE))
    assert changes(old, new) == {}


def test_known_deviation_is_expected_only_in_its_kernel_range_and_scope() -> None:
    known = [Known("mremap_dontunmap_*", "counted twice", "https://example.org/x", ">=6.16,<7.2", user="user")]
    base = run(K616, res("mremap_dontunmap_whole", Outcome.PASS))
    hit = run(K616, res("mremap_dontunmap_whole", Outcome.DEVIATION, DOUBLE))
    assert changes(base, hit, known) == {"mremap_dontunmap_whole": Change.KNOWN}
    (d,) = diff(run_side(base), run_side(hit), known)
    assert d.known is known[0] and exit_code([d]) == 0
    out_of_range = run(K72, res("mremap_dontunmap_whole", Outcome.DEVIATION, DOUBLE))
    assert changes(base, out_of_range, known) == {"mremap_dontunmap_whole": Change.NEW_DEVIATION}
    as_root = run(K616, res("mremap_dontunmap_whole", Outcome.DEVIATION, DOUBLE, user="root"))
    assert [d.change for d in diff(run_side(base), run_side(as_root), known)] == [
        Change.NEW_DEVIATION,
        Change.ONLY_BASELINE,
    ]


def test_two_kernels_pair_by_ram_and_runs_do_not_mix_with_kernels() -> None:
    a = kernel_side(K616, [(256, res("x", Outcome.PASS))])
    b = kernel_side(K72, [(256, res("x", Outcome.DEVIATION, DOUBLE)), (512, res("x", Outcome.PASS))])
    assert [(d.key, d.change) for d in diff(a, b)] == [
        (("256M", "x", "64K", "user"), Change.NEW_DEVIATION),
        (("512M", "x", "64K", "user"), Change.ONLY_NEW),
    ]
    with pytest.raises(UserError, match="two runs or two kernels"):
        diff(run_side(run(K616)), b)


def test_render_groups_by_case_and_counts() -> None:
    base = run(K616, res("x", Outcome.PASS), res("y", Outcome.PASS))
    new = run(K72, res("x", Outcome.DEVIATION, DOUBLE), res("y", Outcome.PASS, '{"result":"EAGAIN"}'))
    console = Console(file=io.StringIO(), width=200)
    compare.render(diff(run_side(base), run_side(new)), run_side(base), run_side(new), console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\nx\n  new deviation" in out and "pass -> deviation  changed: accounting_restored" in out
    assert "x said so" in out
    assert out.rstrip().endswith("1 new deviation, 1 behaviour changed")


def test_the_shipped_known_deviations_file_loads() -> None:
    known = load_known(compare.KNOWN_FILE)
    assert {k.case for k in known} >= {"protnone_mlock", "mremap_dontunmap_*", "droppable_mcl_future"}
    assert all(k.reason for k in known)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("known: [\n", ":2: invalid YAML"),
        ("other: []\n", ":1: known: missing"),
        ("known:\n  - case: x\n", ":2: known[0].reason: missing"),
        (
            "known:\n  - case: x\n    reason: y\n  - case: z\n    reason: w\n    kernels: '>=6'\n",
            ":4: known[1].kernels: unknown key",
        ),
        ("known:\n  - {case: x, reason: y, kernel: 'about 6'}\n", ":2: known[0].kernel: bad kernel range 'about 6'"),
        ("known:\n  - just a string\n", ":2: known[0]: an entry is a mapping"),
    ],
)
def test_bad_known_file_is_one_line_naming_file_line_and_field(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "known.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_known(path)
    assert str(e.value).startswith(str(path)) and says in str(e.value) and "\n" not in str(e.value)
