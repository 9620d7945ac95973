"""Judging as a stage of its own (harness/judge.py, harness/rejudge.py, `harness judge`): a finished
run judged again from its stored observations, without booting. The run judged here is a real
one (Debian 12's kernel in QEMU, the real probe); the program suite's observations are made here."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import results_doc
from test_integration import REPO

from harness import judge
from harness.history import History
from harness.kit import suites, verdict
from harness.kit.suites import Observed, Where, programs
from harness.report import rundir
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord

KERNEL = KernelInfo("bookworm", "6.1.0-50-amd64", "linux-image-6.1.0-50-amd64", "6.1.176-1", "ab" * 32, "bookworm")
KTAP = "TAP version 13\n1..2\nok 1 first\nnot ok 2 second\n"


def program_observation(output: str = KTAP, status: int = 1) -> dict[str, object]:
    return {
        "exit_status": status,
        "oom_kills": 0,
        "seconds": 1.5,
        "timed_out": False,
        "output": output,
        "stderr": "",
        "source": {"what": "a tree"},
    }


def test_a_program_s_stored_result_is_judged_as_its_observation_was() -> None:
    """A program's result as results.json stores it reads back into the same results: the program's
    and its subtests', which are made again, not kept."""
    judging = judge.Judge(verdict.load())
    where = Where("b-256M", KERNEL.release, "64K", "root")
    live = judging.results(Observed("kselftest-mm:map_populate", program_observation()), where)
    assert [(r.case, r.outcome) for r in live] == [
        ("kselftest-mm:map_populate", Outcome.DEVIATION),
        ("kselftest-mm:map_populate/first", Outcome.PASS),
        ("kselftest-mm:map_populate/second", Outcome.DEVIATION),
    ]
    assert live[0].observation is not None and live[0].observation["source"] == {"what": "a tree"}
    boot = BootResult("b-256M", KERNEL, 256, cases=live)
    again, kept = judging.boot(boot)
    assert (again.cases, kept) == (live, 0)


def test_an_observation_cut_for_storing_is_kept_as_it_was_judged() -> None:
    """An output longer than what a result stores might read otherwise once cut: that result and
    its subtests stay as they were judged, and the count says so."""
    judging = judge.Judge(verdict.load())
    where = Where("b-256M", KERNEL.release, "64K", "root")
    long = KTAP + "# " + "x" * programs.KEPT + "\n"
    live = judging.results(Observed("kselftest-mm:map_populate", program_observation(long)), where)
    assert live[0].observation is not None and live[0].observation["cut"] is True
    stored = [live[0], *[CaseResult(**{**r.__dict__, "message": "as stored"}) for r in live[1:]]]
    again, kept = judging.boot(BootResult("b-256M", KERNEL, 256, cases=stored))
    assert (again.cases, kept) == (stored, 1)


def test_results_without_an_observation_are_kept() -> None:
    lost = CaseResult("b-256M", "mlock_over", "0", "user", Outcome.TIMEOUT, "the guest stopped answering", None)
    again, kept = judge.Judge(verdict.load()).boot(BootResult("b-256M", KERNEL, 256, cases=[lost]))
    assert (again.cases, kept) == ([lost], 0)


def digests(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.suffix != ".log"
    }


def outcomes(run_dir: Path) -> dict[tuple[str, str], str]:
    data = results_doc(run_dir)
    return {(c["case"], c["memlock"]): c["outcome"] for c in data["boots"][0]["cases"]}


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO, timeout=900
    )


@pytest.mark.integration
def test_a_real_run_judged_again_changes_only_what_the_expectations_changed(tmp_path: Path) -> None:
    """A real run, judged again: with the same expectations every report is byte for byte what the
    run wrote; with one rule changed (mlock at limit 0: EAGAIN instead of mlock(2)'s EPERM), exactly
    the results it covers change, in every report and in the history; with the first again, the
    files are the run's own once more. A known-deviations entry for a case that passes is said to
    be fixed, and junit.xml shows its results in full."""
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "kernels: [{debian: bookworm}]\nmemlock: [0, 64K]\nusers: [user]\n"
        "cases: [limits, mlock_over, mlock_under, map_locked_over]\n"
    )
    results = tmp_path / "results"
    ran = harness("run", "--matrix", str(matrix), "--results", str(results))
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    run_dir = (results / "latest").resolve()
    original, judged = digests(run_dir), outcomes(run_dir)
    history = results / "history.sqlite"

    same = harness("judge", str(run_dir), "--history", str(history))
    assert same.returncode == 0, same.stderr
    assert f"every result of run {run_dir.name} is judged as before" in same.stdout
    assert digests(run_dir) == original

    # A known deviation that no longer shows is news: said in the terminal, failing under --strict,
    # and its results' observations in junit.xml.
    known = tmp_path / "known.yaml"
    known.write_text("known:\n  - case: mlock_under\n    reason: seen once, long ago\n")
    fixed = harness("judge", str(run_dir), "--known", str(known), "--strict")
    assert fixed.returncode == 1 and "fixed: mlock_under" in fixed.stdout, fixed.stdout[-2000:]
    passes = sum(1 for (case, _), outcome in judged.items() if case == "mlock_under" and outcome == "pass")
    said = "fixed: no longer deviates as known-deviations.yaml expects (seen once, long ago)"
    assert passes and (run_dir / "junit.xml").read_text().count(said) == passes

    changed = tmp_path / "expectations.yaml"
    text = verdict.EXPECTATIONS.read_text()
    rule = (
        "  mlock_over:\n    - when: {privileged: true}\n      expect: {result: ok, locked: all, residency: all}\n"
        "      cite: >-\n        getrlimit(2) RLIMIT_MEMLOCK: since 2.6.9 a process with CAP_IPC_LOCK is not"
        " limited\n    - when: {limit: zero}\n      expect: {result: EPERM, locked: none}\n"
    )
    assert rule in text
    changed.write_text(text.replace(rule, rule.replace("{result: EPERM,", "{result: EAGAIN,")))
    other = harness("judge", "latest", "--results", str(results), "--expectations", str(changed))
    assert other.returncode == 1, other.stdout[-2000:] + other.stderr
    assert "new deviation" in other.stdout and "result: expected 'EAGAIN', observed 'EPERM'" in other.stdout
    now = outcomes(run_dir)
    assert {k for k in now if now[k] != judged[k]} == {("mlock_over", "0")}
    assert (judged[("mlock_over", "0")], now[("mlock_over", "0")]) == ("pass", "deviation")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["expectations_sha256"] == verdict.expectations_sha256(changed)
    assert "mlock\\_over" in (run_dir / "summary.md").read_text()  # Markdown-escaped
    with History(history) as db:
        (timeline,) = [t for t in db.timelines("mlock_over") if t.memlock == "0"]
        assert [p.outcome for p in timeline.points] == [Outcome.DEVIATION]

    back = harness("judge", str(run_dir), "--history", str(history))
    assert back.returncode == 0 and "fixed" in back.stdout
    assert digests(run_dir) == original


def test_judging_a_run_that_is_not_there_or_by_bad_expectations_is_bad_input(tmp_path: Path) -> None:
    assert harness("judge", str(tmp_path / "nope")).returncode == 2
    run_dir = tmp_path / "r1"
    writer = rundir.RunWriter(run_dir, "r1", "2026-12-06T00:00:00Z", ["b-256M"])
    writer.add_boot(BootResult("b-256M", KERNEL, 256, cases=[]))
    writer.finish("2026-12-06T00:01:00Z")
    (tmp_path / "bad.yaml").write_text("cases: [not, a, mapping]\n")
    bad = harness("judge", str(run_dir), "--expectations", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "bad.yaml" in bad.stderr
    shutil.rmtree(run_dir)


def test_the_suite_of_a_case_is_found_by_its_name() -> None:
    assert suites.of("mlock_over").name == "probe"
    assert suites.of("kselftest-mm:mlock2-tests/subtest").name == "kselftest-mm"
    grouped = suites.grouped(["a", "kselftest-mm:x", "b", "kselftest-mm:y"])
    assert [(s.name, cases) for s, cases in grouped] == [
        ("probe", ["a", "b"]),
        ("kselftest-mm", ["kselftest-mm:x", "kselftest-mm:y"]),
    ]
    unused = RunRecord("r", "", None, False, [])
    assert judge.run(unused, judge.Judge(verdict.load())) == (unused, 0)
