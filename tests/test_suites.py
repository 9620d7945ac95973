"""Guest suites on real boots: the kernel's own selftests beside the probe, and a suite whose
programs crash and hang. Real QEMU, the real Debian 12 kernel and its linux-source from the
mirror; the crashing and hanging programs are real static binaries built here, given to the
harness as a suite of their own (the one stand-in: no kernel selftest crashes on demand)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import junitparser
import pytest
from conftest import results_doc
from test_integration import REPO

from harness import run as runner
from harness.cache import cache_dir
from harness.kernels import Kernel
from harness.kernels.sources.base import Context
from harness.kit import ktap, suites
from harness.kit.suites import Built, Judged, Judging, Run, Under, programs
from harness.kit.suites.base import Step
from harness.kit.suites.kselftest import judge
from harness.plan import matrix
from harness.results import Outcome

pytestmark = pytest.mark.integration


def test_kselftest_mm_runs_beside_the_probe_and_reads_back_as_junit(tmp_path: Path) -> None:
    """Debian 12's kernel with the selftests of its own linux-source: every program under each
    limit and user in the same boot as a probe case, in junit.xml (read back by junitparser),
    results.json (with the tree it came from) and the history."""
    (tmp_path / "m.yaml").write_text(
        "kernels: [{debian: bookworm}]\nmemlock: [64K]\nusers: [root, user]\n"
        "cases: [mlock_over, " + ", ".join(f"kselftest-mm:{p}" for p in suites.get("kselftest-mm").programs) + "]\n"
    )
    argv = [
        sys.executable,
        "-m",
        "harness",
        "run",
        "--matrix",
        str(tmp_path / "m.yaml"),
        "--results",
        str(tmp_path / "results"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr
    run_dir = (tmp_path / "results" / "latest").resolve()
    (boot,) = results_doc(run_dir)["boots"]
    got = {(c["case"], c["user"]): c for c in boot["cases"]}
    assert got[("mlock_over", "user")]["outcome"] == "pass"  # the probe, in the same boot
    for user in ("root", "user"):
        assert got[("kselftest-mm:map_populate", user)]["outcome"] == "pass"
        assert got[("kselftest-mm:mremap_dontunmap", user)]["outcome"] == "pass"
    assert got[("kselftest-mm:mlock2-tests", "root")]["outcome"] == "pass"
    assert got[("kselftest-mm:on-fault-limit", "user")]["outcome"] == "pass"
    assert got[("kselftest-mm:on-fault-limit", "root")]["outcome"] == "not_applicable"
    source = got[("kselftest-mm:mlock2-tests", "root")]["observation"]["source"]
    assert source["package"] == "linux-source-6.1" and source["exact"] is True
    (kernel,) = json.loads((run_dir / "manifest.json").read_text())["kernels"]
    assert kernel["suites"]["kselftest-mm"] == source and kernel["version"] == source["version"]
    assert "kselftest-mm:mlock2-tests" in (run_dir / "report.html").read_text()
    xml = junitparser.JUnitXml.fromfile(str(run_dir / "junit.xml"))
    names = {case.name for suite in xml for case in suite}
    assert "kselftest-mm:mlock2-tests[memlock=64K,user=root]" in names
    assert "mlock_over[memlock=64K,user=user]" in names
    history = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "history",
            "--history",
            str(tmp_path / "results" / "history.sqlite"),
            "--case",
            "kselftest-mm:map_populate",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert history.returncode == 0 and "6.1.0" in history.stdout, history.stdout + history.stderr


PROGRAMS = {
    # KTAP that stops after one of three results: the program dies by SIGSEGV.
    "crash": '#include <signal.h>\n#include <stdio.h>\nint main(void){printf("TAP version 13\\n1..3\\nok 1 first\\n");'
    "fflush(stdout);raise(SIGSEGV);return 0;}\n",
    "hang": '#include <stdio.h>\n#include <unistd.h>\nint main(void){puts("# waiting");fflush(stdout);'
    "for(;;)pause();}\n",
    "fine": '#include <stdio.h>\nint main(void){printf("TAP version 13\\n1..1\\nok 1 all good\\n");return 0;}\n',
}


class Misbehaving:
    """A suite of three real programs: one crashes mid-KTAP, one hangs, one passes, in that order."""

    name = "misbehaving"
    programs = tuple(PROGRAMS)

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def build(self, kernel: Kernel, ctx: Context, log: Callable[[str], None]) -> Built:
        out = {}
        for name, text in PROGRAMS.items():
            (self.folder / f"{name}.c").write_text(text)
            subprocess.run(
                ["gcc", "-static", "-O2", "-o", str(self.folder / name), str(self.folder / f"{name}.c")], check=True
            )
            out[name] = self.folder / name
        return Built(out, {}, {"what": "this test"})

    def steps(self, cases: Sequence[str], under: Under, built: Built | str) -> Iterator[Step]:
        return programs.steps(self, cases, under, built)

    def judge(self, case: str, observation: Mapping[str, Any], judging: Judging) -> list[Judged]:
        return programs.judge(self, case, observation)

    def read(self, program: str, run: Run) -> list[Judged]:
        return judge(self.name, program, run)

    def applies(self, program: str, user: str, memlock: str) -> str:
        return ""


def test_a_program_that_crashes_or_hangs_is_recorded_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Misbehaving(tmp_path)
    monkeypatch.setitem(suites.SUITES, fake.name, fake)  # type: ignore[arg-type]
    monkeypatch.setattr(suites, "NAMES", (*suites.NAMES, fake.name))
    mx = matrix.parse(
        "kernels: [{debian: bookworm}]\nsuites: [misbehaving]\ncases: [mlock_over, misbehaving:crash, "
        "misbehaving:hang, misbehaving:fine]\nmemlock: [64K]\nusers: [user]\ntimeouts: {case: 5}\n",
        str(tmp_path / "m.yaml"),
    )
    options = runner.Options(jobs=1, results=tmp_path / "results", cache=cache_dir())
    _, (boot,) = runner.execute(mx, options, lambda _: None)
    got = {c.case: c for c in boot.cases}
    crash, hang, fine = got["misbehaving:crash"], got["misbehaving:hang"], got["misbehaving:fine"]
    assert crash.outcome is Outcome.DEVIATION and "died by signal 11" in crash.message
    assert "2 planned results missing" in crash.message and got["misbehaving:crash/first"].outcome is Outcome.PASS
    assert hang.outcome is Outcome.TIMEOUT and hang.duration_s >= 5 * suites.TIMEOUT_CASES - 1
    assert fine.outcome is Outcome.PASS and got["misbehaving:fine/all good"].outcome is Outcome.PASS
    assert got["mlock_over"].outcome is Outcome.PASS and boot.error == "" and boot.reboots == 0
    assert ktap.parse(crash.observation["output"] if crash.observation else "").missing == 2
