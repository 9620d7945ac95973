"""A boot's runs spread over several guests (harness/boot/lanes.py) against one guest, on a real
kernel: the same results in the same order. Raw observations carry what varies between any two
runs, one guest or two (pids, MemAvailable, durations); the verdict and the behaviour fingerprint
of every result are what must not move."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import log_text
from rich.console import Console

from harness import cli
from harness.report import resultsfile, rundir


def run_one_kernel(results: Path, jobs: int) -> list[tuple[str, ...]]:
    args = ["run", "--kernel", "debian:bookworm", "--jobs", str(jobs), "--results", str(results)]
    code = cli.main(args, Console(file=io.StringIO(), width=200))
    assert code in (0, 1)
    (boot,) = resultsfile.read_results(rundir.locate("latest", results)).boots
    assert boot.error == "" and boot.reboots == 0
    return [(c.case, c.memlock, c.user, c.outcome.value, c.fingerprint, c.known or "") for c in boot.cases]


@pytest.mark.integration
def test_one_kernel_in_two_guests_answers_as_in_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    one = run_one_kernel(tmp_path / "one", 1)
    two = run_one_kernel(tmp_path / "two", 2)
    assert len(one) == 488 and two == one
    serial = log_text(next((tmp_path / "two").glob("*/serial/*.log.gz")))
    assert "[harness: the serial log of guest 2 of this boot, which ran beside it]" in serial
