"""A nightly re-runs only what is new (harness/reuse.py): what a boot's inputs are, when a stored
boot is taken and judged afresh, and a real second run that boots nothing."""

from __future__ import annotations

import io
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from junitparser import JUnitXml
from rich.console import Console

from harness import cli, judge, reuse
from harness.boot import vm
from harness.history import History
from harness.kernels.sources.debian import DebianKernel
from harness.kit import verdict
from harness.kit.verdict import Expectations, Rule
from harness.manifest import Manifest
from harness.plan.matrix import BootPlan, Memlock, RunPlan, Timeouts
from harness.report import resultsfile, rundir
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord

KERNEL = KernelInfo(
    "bookworm", "6.1.0-50-amd64", "linux-image-6.1.0-50-amd64", "6.1.176-1", "ab" * 32, "debian:bookworm"
)
PLAN = BootPlan(
    "bookworm-256M",
    DebianKernel(("bookworm",)),
    256,
    (RunPlan(None, "root", ("a", "b")), RunPlan(Memlock(65536, 65536), "user", ("a",))),
    Timeouts(boot=10, case=5),
)
OK = Expectations({c: (Rule({}, {"result": "ok"}, "cite"),) for c in ("a", "b")}, ())


def files(tmp_path: Path) -> vm.VMConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "image.cpio", "disk.img"):
        (tmp_path / name).write_bytes(name.encode())
    return vm.VMConfig(tmp_path / "vmlinuz", tmp_path / "image.cpio", 256, "tcg", 0, tmp_path / "disk.img")


def test_inputs_are_the_files_contents_qemu_s_command_line_the_probe_and_the_case_timeout(tmp_path: Path) -> None:
    config = files(tmp_path / "a")
    key = reuse.inputs(config, "probe1", PLAN)
    moved = files(tmp_path / "elsewhere")  # the same files in another cache
    assert reuse.inputs(moved, "probe1", PLAN) == key
    assert reuse.inputs(replace(config, port=2222), "probe1", PLAN) == key  # the port is not an input
    assert reuse.inputs(config, "probe2", PLAN) != key
    assert reuse.inputs(replace(config, ram_mb=512), "probe1", PLAN) != key
    assert reuse.inputs(replace(config, accel="kvm"), "probe1", PLAN) != key
    assert reuse.inputs(config, "probe1", replace(PLAN, timeouts=Timeouts(boot=10, case=60))) != key
    (tmp_path / "a" / "vmlinuz").write_bytes(b"another kernel")
    assert reuse.inputs(config, "probe1", PLAN) != key


def result(case: str, memlock: str, user: str, outcome: Outcome = Outcome.PASS) -> CaseResult:
    observation = {"case": case, "status": "ok", "result": "ok"}
    return CaseResult("bookworm-256M", case, memlock, user, outcome, "as expected", observation, {"result": "ok"}, "c")


def store(path: Path, run_id: str, inputs: str, cases: list[CaseResult], error: str = "") -> None:
    boot = BootResult("bookworm-256M", KERNEL, 256, uname="6.1.0-50-amd64", inputs=inputs, cases=cases, error=error)
    with History(path) as db:
        db.record(RunRecord(run_id, f"2026-12-0{run_id[-1]}T00:00:00Z", "x", False, [boot]), Manifest())


EVERY = [result("a", "default", "root"), result("b", "default", "root"), result("a", "64K", "user")]


def test_a_stored_boot_of_the_same_inputs_is_taken_whole_and_judged_afresh(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    store(path, "r1", "k1", EVERY)
    taken = BootResult("bookworm-256M", KERNEL, 256, inputs="k1")
    assert reuse.Reuse(path, judge.Judge(OK)).fill(PLAN, taken)
    assert taken.reused_from == "r1" and taken.uname == "6.1.0-50-amd64"
    assert [(c.case, c.memlock, c.user, c.outcome) for c in taken.cases] == [
        ("a", "default", "root", Outcome.PASS),
        ("b", "default", "root", Outcome.PASS),
        ("a", "64K", "user", Outcome.PASS),
    ]
    # A new expectation applies to what is reused: the observation is judged again, not copied.
    stricter = Expectations({**OK.cases, "b": (Rule({}, {"result": "EPERM"}, "a new citation"),)}, ())
    again = BootResult("bookworm-256M", KERNEL, 256, inputs="k1")
    assert reuse.Reuse(path, judge.Judge(stricter)).fill(PLAN, again)
    assert [c.outcome for c in again.cases] == [Outcome.PASS, Outcome.DEVIATION, Outcome.PASS]
    assert again.cases[1].citation == "a new citation"


@pytest.mark.parametrize(
    ("cases", "error", "why"),
    [
        (EVERY[:2], "", "a planned result is missing"),
        ([*EVERY[:2], result("a", "64K", "user", Outcome.TIMEOUT)], "", "a timeout says nothing of the kernel"),
        ([*EVERY[:2], result("a", "64K", "user", Outcome.INFRA_ERROR)], "", "nor does an infrastructure error"),
        (EVERY, "gave up after losing the guest 4 times", "a boot that failed"),
    ],
)
def test_a_boot_is_reused_whole_or_not_at_all(tmp_path: Path, cases: list[CaseResult], error: str, why: str) -> None:
    path = tmp_path / "history.sqlite"
    store(path, "r1", "k1", cases, error)
    taken = BootResult("bookworm-256M", KERNEL, 256, inputs="k1")
    assert not reuse.Reuse(path, judge.Judge(OK)).fill(PLAN, taken), why
    assert taken.cases == [] and taken.reused_from == ""


def test_other_inputs_no_history_or_fresh_reuse_nothing(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    store(path, "r1", "k1", EVERY)
    for where, inputs in ((path, "k2"), (tmp_path / "none.sqlite", "k1"), (None, "k1")):
        assert not reuse.Reuse(where, judge.Judge(OK)).fill(
            PLAN, BootResult("bookworm-256M", KERNEL, 256, inputs=inputs)
        )
    store(path, "r2", "k1", [*EVERY[:2], result("a", "64K", "user", Outcome.TIMEOUT)])
    taken = BootResult("bookworm-256M", KERNEL, 256, inputs="k1")
    assert (
        reuse.Reuse(path, judge.Judge(OK)).fill(PLAN, taken) and taken.reused_from == "r1"
    )  # the latest that answered


def harness(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(args, Console(file=out, width=300))
    return code, out.getvalue()


@pytest.mark.integration
def test_a_second_run_boots_nothing_and_says_whose_results_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    flags = ["run", "--kernel", "debian:bookworm", "--case", "mlock_*", "--memlock", "64K", "--user", "user"]
    flags += ["--results", str(tmp_path)]
    first_code, _ = harness(flags)
    first = rundir.locate("latest", tmp_path).resolve()
    code, out = harness(flags)
    second = rundir.locate("latest", tmp_path).resolve()
    assert second != first and code == first_code
    assert (
        f"1 of 1 boots took the results of an earlier boot of the same kernel, image, QEMU and probe (run {first.name})"
        in out
    )
    (boot,) = resultsfile.read_results(second).boots
    (before,) = resultsfile.read_results(first).boots
    assert boot.reused_from == first.name and boot.inputs == before.inputs and boot.qemu_argv == []
    assert [(c.case, c.outcome, c.fingerprint) for c in boot.cases] == [
        (c.case, c.outcome, c.fingerprint) for c in before.cases
    ]
    assert not (second / "serial").exists() or not list((second / "serial").iterdir())  # no guest was booted
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["boots"][0]["reused_from"] == first.name
    (suite,) = JUnitXml.fromfile(str(second / "junit.xml"))
    assert {p.name: p.value for p in suite.properties()}["reused_from"] == first.name
    assert len(list(suite)) == len(boot.cases)
    assert "took the results of an earlier boot" in (second / "report.html").read_text()
    assert f"run {first.name}" in (second / "summary.md").read_text()
    with sqlite3.connect(tmp_path / "history.sqlite") as db:  # the second run added no rows
        assert db.execute("SELECT COUNT(*) FROM boots").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM observations").fetchone() == (len(boot.cases),)

    code, out = harness([*flags, "--fresh"])
    (fresh,) = resultsfile.read_results(rundir.locate("latest", tmp_path)).boots
    assert fresh.reused_from == "" and fresh.qemu_argv and "took the results" not in out
    assert verdict.load()  # the real expectations judged all three runs
