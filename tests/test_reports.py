"""A run's reports: junit.xml (junit), results.json and the RunWriter's files (rundir), the terminal summary
(terminal) and exit codes (results)."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import io
import json
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from conftest import results_doc
from rich.console import Console

from harness.errors import InfraError, UserError
from harness.kit.known import Known
from harness.manifest import Manifest, Shard
from harness.report import junit, resultsfile, rundir
from harness.report.junit import junit_xml
from harness.report.resultsfile import read_results, results_json
from harness.report.rundir import RunWriter, read_manifest
from harness.report.terminal import print_summary
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, exit_code

RUN_ID = "20261126T185300Z-ab12"
STARTED = "2026-11-26T18:53:00Z"

# --- fixtures ----------------------------------------------------------------------------------

DEBIAN = KernelInfo(
    label="bookworm",
    release="6.1.0-28-amd64",
    package="linux-image-6.1.0-28-amd64",
    version="6.1.119-1",
    sha256="ab" * 32,
    source="bookworm",
)
PATH_KERNEL = KernelInfo(
    label="bzImage", release="6.12.0", package=None, version=None, sha256="cd" * 32, source="/k/bzImage"
)


def case(boot_id: str, name: str, outcome: Outcome, message: str = "", **kw: Any) -> CaseResult:
    kw.setdefault("observation", {"errno": 0, "locked_kb": 64})
    return CaseResult(boot_id=boot_id, case=name, memlock="64K", user="user", outcome=outcome, message=message, **kw)


DEVIATION_MESSAGE = "expected mmap to fail with EAGAIN, observed success (locked 64K over a 0 limit)"


def full_boot(boot_id: str = "bookworm-256M") -> BootResult:
    """One case per Outcome."""
    return BootResult(
        boot_id=boot_id,
        kernel=DEBIAN,
        ram_mb=256,
        accelerator="tcg",
        qemu_version="7.2.15",
        memtotal_kb=249_344,
        uname="6.1.0-28-amd64",
        qemu_argv=["qemu-system-x86_64", "-m", "256"],
        serial_log=f"{boot_id}/serial.log",
        timings={"marker": 9.25, "ssh": 14.5, "probe": 31.0},
        cases=[
            case(boot_id, "lock_basic", Outcome.PASS, duration_s=0.8123),
            case(
                boot_id,
                "lock_over_limit",
                Outcome.DEVIATION,
                DEVIATION_MESSAGE,
                expected={"errno": "EAGAIN"},
                citation="mm/mlock.c: can_do_mlock()",
                duration_s=1.5,
            ),
            case(boot_id, "lock_as_root", Outcome.NOT_APPLICABLE, "needs root; ran as user", observation=None),
            case(boot_id, "lock_all_ram", Outcome.OOM_KILLED, "probe child killed by the OOM killer"),
            case(boot_id, "lock_fault", Outcome.PANIC, "Kernel panic - not syncing: Fatal exception"),
            case(boot_id, "lock_huge", Outcome.TIMEOUT, "no answer after 60s", observation=None, duration_s=60),
            case(boot_id, "lock_ssh", Outcome.INFRA_ERROR, "SSH connection reset", observation=None),
        ],
    )


def failed_boot(boot_id: str = "trixie-96M") -> BootResult:
    return BootResult(
        boot_id=boot_id,
        kernel=None,
        ram_mb=96,
        serial_log=f"{boot_id}/serial.log",
        error="no login marker on the serial console after 180s",
    )


def suites(xml_text: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml_text)
    assert root.tag == "testsuites"
    return {s.get("name", ""): s for s in root.findall("testsuite")}


def cases_of(suite: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name", ""): c for c in suite.findall("testcase")}


# --- junit.xml ---------------------------------------------------------------------------------


def test_junit_counts_per_suite_and_overall() -> None:
    text = junit_xml([full_boot(), failed_boot()], RUN_ID)
    root = ET.fromstring(text)
    by_name = suites(text)
    assert list(by_name) == ["bookworm-256M", "trixie-96M"]
    full = by_name["bookworm-256M"]
    assert (full.get("tests"), full.get("failures"), full.get("errors"), full.get("skipped")) == (
        "7",
        "3",
        "2",
        "1",
    )
    assert full.get("hostname") == "qemu"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("8", "3", "3")
    assert root.get("name") == RUN_ID


def test_junit_properties_only_those_set() -> None:
    path_boot = BootResult(boot_id="bzImage-256M", kernel=PATH_KERNEL, ram_mb=256)
    by_name = suites(junit_xml([dataclasses.replace(full_boot(), restored="5eed"), path_boot], RUN_ID))
    props = {p.get("name"): p.get("value") for p in by_name["bookworm-256M"].iter("property")}
    assert props == {
        "run_id": RUN_ID,
        "kernel.label": "bookworm",
        "kernel.package": "linux-image-6.1.0-28-amd64",
        "kernel.version": "6.1.119-1",
        "kernel.release": "6.1.0-28-amd64",
        "kernel.sha256": "ab" * 32,
        "kernel.source": "bookworm",
        "ram_mb": "256",
        "memtotal_kb": "249344",
        "accelerator": "tcg",
        "qemu_version": "7.2.15",
        "uname": "6.1.0-28-amd64",
        "restored": "5eed",
    }
    sparse = {p.get("name") for p in by_name["bzImage-256M"].iter("property")}
    assert sparse == {
        "run_id",
        "kernel.label",
        "kernel.release",
        "kernel.sha256",
        "kernel.source",
        "ram_mb",
    }


def test_junit_testcase_per_outcome() -> None:
    boot = full_boot()
    cases = cases_of(suites(junit_xml([boot], RUN_ID))[boot.boot_id])
    assert list(cases) == [r.name for r in boot.cases]
    for r in boot.cases:
        assert cases[r.name].get("classname") == junit.classname(boot.boot_id)
        package, _, klass = (cases[r.name].get("classname") or "").rpartition(".")  # as Jenkins splits it
        assert (package, klass) == ("harness", boot.boot_id.replace(".", "_"))

    passed = cases["lock_basic[memlock=64K,user=user]"]
    assert list(passed) == []  # a pass is one line; its observation is in results.json
    assert passed.get("time") == "0.812"

    deviation = cases["lock_over_limit[memlock=64K,user=user]"].find("failure")
    assert deviation is not None
    assert deviation.get("message") == DEVIATION_MESSAGE
    assert deviation.get("type") == "deviation"
    body = deviation.text or ""
    assert 'expected: {"errno":"EAGAIN"}' in body
    assert 'observed: {"errno":0,"locked_kb":64}' in body
    assert "citation: mm/mlock.c: can_do_mlock()" in body
    # A new failure carries its observation; the same failure known (a skip) carries only what it said.
    assert cases["lock_over_limit[memlock=64K,user=user]"].find("system-out") is not None
    known_boot = dataclasses.replace(
        boot, cases=[dataclasses.replace(r, known="a known reason (a link)") for r in boot.cases[2:3]]
    )
    (known,) = cases_of(suites(junit_xml([known_boot], RUN_ID))[boot.boot_id]).values()
    assert [e.tag for e in known] == ["skipped"] and (known[0].text or "").startswith(boot.cases[2].message[:20])

    # A known deviation that no longer shows in a boot (every result of its entry there passes) is
    # news: its passes carry their observation, and say which entry they no longer need.
    entry = Known("lock_basic", "locks leak (a link)")
    fixed = cases_of(suites(junit_xml([boot], RUN_ID, [entry]))[boot.boot_id])["lock_basic[memlock=64K,user=user]"]
    out = fixed.find("system-out")
    assert out is not None and (out.text or "").startswith("fixed: no longer deviates as known-deviations.yaml")
    assert "(locks leak (a link))" in (out.text or "") and '\nobserved: {"errno":0,"locked_kb":64}' in (out.text or "")
    assert fixed.find("failure") is None and fixed.find("skipped") is None  # still a pass
    still = dataclasses.replace(
        boot, cases=[*boot.cases, dataclasses.replace(boot.cases[1], case="lock_basic", memlock="0")]
    )
    shown = cases_of(suites(junit_xml([still], RUN_ID, [Known("lock_basic", "r")]))[boot.boot_id])
    assert list(shown["lock_basic[memlock=64K,user=user]"]) == []  # the entry still shows in this boot: a line

    for name, tag, kind in (
        ("lock_all_ram", "failure", "oom_killed"),
        ("lock_fault", "failure", "panic"),
        ("lock_huge", "error", "timeout"),
        ("lock_ssh", "error", "infra_error"),
    ):
        element = cases[f"{name}[memlock=64K,user=user]"].find(tag)
        assert element is not None, name
        assert element.get("type") == kind

    skipped = cases["lock_as_root[memlock=64K,user=user]"].find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "needs root; ran as user"
    assert cases["lock_as_root[memlock=64K,user=user]"].find("system-out") is None


def test_junit_boot_error_is_an_errored_testcase() -> None:
    boot = failed_boot()
    suite = suites(junit_xml([boot], RUN_ID))["trixie-96M"]
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("1", "1", "0")
    cases = cases_of(suite)
    assert list(cases) == ["boot"]
    error = cases["boot"].find("error")
    assert error is not None
    assert error.get("message") == boot.error
    assert error.get("type") == "infra_error"
    assert "trixie-96M/serial.log" in (error.text or "")


def test_junit_boot_error_after_some_cases_still_errors() -> None:
    boot = full_boot()
    boot.cases = boot.cases[:1]
    boot.error = "guest stopped answering SSH"
    suite = suites(junit_xml([boot], RUN_ID))[boot.boot_id]
    assert (suite.get("tests"), suite.get("errors")) == ("2", "1")
    assert "boot" in cases_of(suite)


def test_junit_message_without_text_is_still_a_failure() -> None:
    boot = BootResult("b", DEBIAN, 256, cases=[case("b", "c", Outcome.DEVIATION, "", observation=None)])
    suite = suites(junit_xml([boot], RUN_ID))["b"]
    assert suite.get("failures") == "1"


def test_junit_strips_characters_xml_cannot_carry() -> None:
    nasty = "bad\x00nul \x07bell \x1b[31mred\x1b[0m \ud800surrogate \ufffe end"
    boot = BootResult(
        "b\x01oot",
        DEBIAN,
        256,
        uname="6.1\x08",
        error="serial said \x00\x1b",
        cases=[case("b", "c", Outcome.DEVIATION, nasty, observation={"raw": "x\x02y"})],
    )
    text = junit_xml([boot], RUN_ID)
    text.encode("utf-8")  # no lone surrogates left
    suite = suites(text)["boot"]
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert failure.get("message") == "badnul bell [31mred[0m surrogate  end"
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["uname"] == "6.1"
    # JSON escapes control characters itself, so the observation survives intact.
    out = suite.find("testcase/system-out")
    assert out is not None and json.loads(out.text or "") == {"raw": "x\x02y"}


def test_junit_multiline_message_survives() -> None:
    message = "expected EAGAIN\nobserved 0\ttabbed"
    boot = BootResult("b", DEBIAN, 256, cases=[case("b", "c", Outcome.DEVIATION, message)])
    failure = ET.fromstring(junit_xml([boot], RUN_ID)).find("testsuite/testcase/failure")
    assert failure is not None and failure.get("message") == message


# --- results.json ------------------------------------------------------------------------------


def test_results_json_round_trips_with_counts() -> None:
    boots = [full_boot(), failed_boot()]
    doc = results_json(boots, RUN_ID, STARTED, None)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["schema"] == 1
    assert (doc["run_id"], doc["started"], doc["finished"], doc["complete"]) == (RUN_ID, STARTED, None, False)
    assert doc["counts"] == {o.value: 1 for o in Outcome}
    first, second = doc["boots"]
    assert first["kernel"]["package"] == "linux-image-6.1.0-28-amd64"
    assert first["timings"] == {"marker": 9.25, "ssh": 14.5, "probe": 31.0}
    assert set(first) == {
        "boot_id",
        "kernel",
        "ram_mb",
        "accelerator",
        "qemu_version",
        "memtotal_kb",
        "uname",
        "qemu_argv",
        "serial_log",
        "timings",
        "error",
        "reboots",
        "retries",
        "transport",
        "restored",
        "inputs",
        "reused_from",
        "cases",
    }
    deviation = first["cases"][1]
    assert deviation == {
        "case": "lock_over_limit",
        "memlock": "64K",
        "user": "user",
        "outcome": "deviation",
        "message": DEVIATION_MESSAGE,
        "expected": {"errno": "EAGAIN"},
        "citation": "mm/mlock.c: can_do_mlock()",
        "duration_s": 1.5,
        "fingerprint": "",
        "observation": {"errno": 0, "locked_kb": 64},
    }
    assert second["kernel"] is None and second["cases"] == [] and second["error"]

    done = results_json(boots, RUN_ID, STARTED, "2026-11-26T19:10:00Z")
    assert done["complete"] is True and done["finished"] == "2026-11-26T19:10:00Z"


def test_results_json_empty_run() -> None:
    doc = results_json([], RUN_ID, STARTED, None)
    assert doc["boots"] == [] and sum(doc["counts"].values()) == 0


def test_read_results_gives_back_the_records(tmp_path: Path) -> None:
    boots = [full_boot(), failed_boot()]
    (tmp_path / "results.json").write_text(json.dumps(results_json(boots, RUN_ID, STARTED, "2026-11-26T19:10:00Z")))
    run = read_results(tmp_path)
    assert (run.run_id, run.started, run.finished, run.complete) == (RUN_ID, STARTED, "2026-11-26T19:10:00Z", True)
    assert run.boots == boots


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "cannot read it as JSON"),
        ("[]", "top level"),
        ('{"schema": 99, "run_id": "r", "boots": []}', "schema: 99"),
        ('{"schema": 1, "boots": []}', "run_id: missing"),
        (
            '{"schema": 1, "run_id": "r", "boots": [{"boot_id": "b", "ram_mb": 1, "cases": [{"case": "c", '
            '"memlock": "0", "user": "u", "outcome": "great"}]}]}',
            "boots[0].cases[0].outcome: 'great'",
        ),
    ],
)
def test_read_results_names_file_and_field(tmp_path: Path, text: str, says: str) -> None:
    file = tmp_path / "results.json"
    file.write_text(text)
    with pytest.raises(UserError) as e:
        read_results(file)
    assert str(e.value).startswith(f"{file}: ") and says in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        read_results(tmp_path / "elsewhere")


def test_results_are_written_compressed_and_read_back_whole(tmp_path: Path) -> None:
    """results.json.gz is gzip members joined (one per boot): zcat gives one compact JSON document,
    and read_results gives back every record, observations included."""
    boots = [full_boot(), failed_boot()]
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    writer.add_boots(boots)
    writer.finish("2026-11-26T19:10:00Z")
    packed = (tmp_path / "results.json.gz").read_bytes()
    assert packed.count(b"\x1f\x8b\x08") >= 1 + len(boots)  # the head, each boot, the tail
    assert results_doc(tmp_path) == results_json(boots, RUN_ID, STARTED, "2026-11-26T19:10:00Z")
    assert read_results(tmp_path).boots == boots
    assert not (tmp_path / "results.json").exists()


def test_an_older_runs_plain_results_json_is_read_when_there_is_no_compressed_one(tmp_path: Path) -> None:
    boots = [full_boot()]
    (tmp_path / "results.json").write_text(json.dumps(results_json(boots, RUN_ID, STARTED, None), indent=2))
    assert read_results(tmp_path).boots == boots
    assert rundir.find_run(str(tmp_path), tmp_path) == tmp_path
    RunWriter(tmp_path, RUN_ID, STARTED).add_boots([failed_boot()])  # the new file wins once there is one
    assert [b.boot_id for b in read_results(tmp_path).boots] == [failed_boot().boot_id]


def test_a_broken_or_bottomless_results_file_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    writer.add_boots([full_boot()])
    file = tmp_path / "results.json.gz"
    whole = file.read_bytes()
    file.write_bytes(whole[: len(whole) // 2])  # cut short: copied while it was being written, say
    with pytest.raises(UserError, match=rf"^{file}: not a whole gzip file .*give a results.json the harness wrote"):
        read_results(tmp_path)
    file.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=rf"^{file}: not a whole gzip file"):
        read_results(tmp_path)
    # 1 KB that expands to 100 MB: read no further than the bound.
    monkeypatch.setattr(resultsfile, "MAX_RESULTS_BYTES", 1 << 20)
    file.write_bytes(gzip.compress(b" " * (100 << 20)))
    with pytest.raises(UserError, match=rf"^{file}: holds more than 1 MiB, more than any results.json holds"):
        read_results(tmp_path)


# --- RunWriter ---------------------------------------------------------------------------------


def read_reports(run_dir: Path) -> tuple[dict[str, Any], ET.Element]:
    results = results_doc(run_dir)
    junit = ET.fromstring((run_dir / "junit.xml").read_text())
    return results, junit


def test_writer_files_valid_after_each_update(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    writer = RunWriter(run_dir, RUN_ID, STARTED, order=["bookworm-256M", "trixie-96M"])
    complete = full_boot()
    live = BootResult(complete.boot_id, complete.kernel, complete.ram_mb, accelerator="tcg")
    writer.add_boot(live)
    results, junit = read_reports(run_dir)
    assert [b["boot_id"] for b in results["boots"]] == ["bookworm-256M"]
    assert junit.get("tests") == "0"
    for n, result in enumerate(complete.cases, start=1):
        live.cases.append(result)
        writer.update(live)
        results, junit = read_reports(run_dir)
        assert len(results["boots"][0]["cases"]) == n
        assert junit.get("tests") == str(n)
        assert results["complete"] is False
    # Added first but listed second: the plan's order wins.
    writer.add_boot(failed_boot())
    writer.add_boot(failed_boot("zz-extra"))
    writer.finish("2026-11-26T19:10:00Z")
    results, junit = read_reports(run_dir)
    assert results["complete"] is True
    assert [b["boot_id"] for b in results["boots"]] == ["bookworm-256M", "trixie-96M", "zz-extra"]
    assert [s.get("name") for s in junit.findall("testsuite")] == ["bookworm-256M", "trixie-96M", "zz-extra"]
    assert [b.boot_id for b in writer.boots()] == ["bookworm-256M", "trixie-96M", "zz-extra"]
    # The pages for people come with the end of the run, not with every update.
    names = ["boot", "junit.xml", "report.html", "results.json.gz", "summary.md"]
    assert sorted(p.name for p in run_dir.iterdir()) == names
    assert (run_dir / "junit.xml").stat().st_mode & 0o777 == 0o644


def test_writer_earlier_order_boot_added_later_moves_up(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, RUN_ID, STARTED, order=["a", "b"])
    writer.update(failed_boot("b"))
    writer.update(failed_boot("a"))
    results, _ = read_reports(tmp_path)
    assert [b["boot_id"] for b in results["boots"]] == ["a", "b"]


def test_writer_add_boot_twice_is_a_bug(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    writer.add_boot(failed_boot())
    with pytest.raises(ValueError, match="already added"):
        writer.add_boot(failed_boot())


def test_writer_manifest(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    written = Manifest(matrix_source="default", matrix_text="kernels: [{debian: bookworm}]\n", shard=Shard(1, 2))
    writer.write_manifest(written)
    assert read_manifest(tmp_path) == written
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["matrix_source"] == "default" and doc["shard"] == {"index": 1, "count": 2}


def test_writer_run_dir_under_a_file_is_infra_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InfraError, match=r"file/run: cannot create run directory: E\w+"):
        RunWriter(blocker / "run", RUN_ID, STARTED)


def test_writer_disk_full_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC is simulated (os.replace raising it) because a full disk cannot be made here cheaply."""
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    boot = full_boot()
    writer.add_boot(boot)
    before = {name: (tmp_path / name).read_bytes() for name in ("results.json.gz", "junit.xml")}

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    boot.cases.append(case(boot.boot_id, "late", Outcome.PASS))
    with pytest.raises(InfraError) as raised:
        writer.update(boot)
    message = str(raised.value)
    assert "\n" not in message
    assert str(tmp_path / "results.json.gz") in message and "ENOSPC" in message
    monkeypatch.undo()

    after = {name: (tmp_path / name).read_bytes() for name in ("results.json.gz", "junit.xml")}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "results.json.gz"]  # no temp files left


def test_writer_failed_write_mid_file_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO/ENOSPC during fsync is simulated the same way: the half-written temp file is discarded."""
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    writer.add_boot(failed_boot())
    before = (tmp_path / "results.json.gz").read_bytes()

    def broken(fd: int) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(InfraError, match="EACCES"):
        writer.finish("2026-11-26T19:10:00Z")
    monkeypatch.undo()
    assert (tmp_path / "results.json.gz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "results.json.gz"]


def test_writer_concurrent_updates(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    ids = [f"boot{i}-256M" for i in range(8)]
    template = full_boot()
    errors: list[BaseException] = []
    stop = threading.Event()

    def boot_thread(boot_id: str) -> None:
        try:
            boot = BootResult(boot_id, DEBIAN, 256)
            writer.add_boot(boot)
            for r in template.cases:
                boot.cases.append(dataclasses.replace(r, boot_id=boot_id))
                boot.timings[f"after-{r.case}"] = 1.0  # mutate while others serialise
                writer.update(boot)
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    def reader() -> None:
        # Readers must never see a torn file while writers replace it.
        try:
            while not stop.is_set():
                read_reports(tmp_path)
        except FileNotFoundError:
            pass
        except BaseException as e:
            errors.append(e)

    (tmp_path / "results.json.gz").write_bytes(gzip.compress(b"{}"))
    (tmp_path / "junit.xml").write_text("<testsuites/>")
    watcher = threading.Thread(target=reader)
    watcher.start()
    threads = [threading.Thread(target=boot_thread, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []

    results, junit = read_reports(tmp_path)
    assert sorted(b["boot_id"] for b in results["boots"]) == ids
    assert all(len(b["cases"]) == len(template.cases) for b in results["boots"])
    assert results["counts"] == {o.value: 8 for o in Outcome}
    assert junit.get("tests") == str(8 * len(template.cases))


# --- summary and exit code ---------------------------------------------------------------------


def row_cells(text: str, needle: str) -> list[str]:
    """The cells of the first table row containing `needle`."""
    line = next(line for line in text.splitlines() if needle in line)
    if "│" not in line:
        return line.split()  # the summary table separates columns by spaces only
    return [cell.strip() for cell in line.strip().strip("│").split("│")]


def test_summary_shows_kernels_counts_and_problems() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)
    print_summary([full_boot(), failed_boot()], console, verbose=True)
    text = out.getvalue()
    assert "bookworm-256M" in text and "6.1.0-28-amd64" in text
    assert "9.2" in text and "14.5" in text and "31.0" in text
    for header in ("pass", "deviation", "n/a", "oom", "panic", "timeout", "error"):
        assert header in text
    assert row_cells(text, "bookworm-256M")[-7:] == ["1"] * 7
    assert row_cells(text, "trixie-96M")[-7:] == ["0", "0", "0", "0", "0", "0", "1"]
    # The problems table: every non-pass, non-n/a result, plus the boot error.
    assert DEVIATION_MESSAGE in text
    assert "lock_over_limit[memlock=64K,user=user]" in text
    assert "lock_basic[memlock=64K,user=user]" not in text
    assert "lock_as_root[memlock=64K,user=user]" not in text
    assert "no login marker on the serial console after 180s" in text
    assert "2 boots: 1 pass, 1 deviation, 1 n/a, 1 oom, 1 panic, 1 timeout, 1 error; 1 boot error" in text


def test_the_summary_groups_one_finding_seen_everywhere_into_one_line() -> None:
    """The default run's 126 deviation rows were 4 findings repeated per kernel, limit and user: the
    summary gives one row per (case, outcome, message) with the boots and runs it covers."""
    boots = []
    for kernel in ("bullseye-256M", "bookworm-256M", "trixie-256M", "sid-256M"):
        cases = [
            CaseResult(kernel, "protnone_mlock", limit, user, Outcome.DEVIATION, "locked: expected 'none'", None)
            for limit in ("default", "64K")
            for user in ("root", "user")
        ]
        cases.append(CaseResult(kernel, "mlock_over", "64K", "user", Outcome.PASS, "as expected", None))
        boots.append(BootResult(kernel, None, 256, cases=cases))
    boots[0].cases.append(CaseResult("bullseye-256M", "limits", "default", "root", Outcome.DEVIATION, "other", None))
    out = io.StringIO()
    print_summary(boots, Console(file=out, width=250))
    text = out.getvalue()
    rows = [line for line in text.splitlines() if "protnone_mlock" in line]
    assert len(rows) == 1 and "4: bullseye-256M, bookworm-256M, trixie-256M +1" in rows[0]
    assert "default/root, default/user, 64K/root, 64K/user" in rows[0]
    assert len([line for line in text.splitlines() if "│ limits" in line]) == 1
    full = io.StringIO()
    print_summary(boots, Console(file=full, width=250), verbose=True)
    assert len([line for line in full.getvalue().splitlines() if "protnone_mlock" in line]) == 16


def test_summary_gives_a_boot_that_did_not_start_one_line() -> None:
    """The grouped summary: a boot with an error whose guest never became ready is a line of its own,
    not a table row, and the counts still count it."""
    failed = failed_boot()
    failed.cases = [case(failed.boot_id, "lock_basic", Outcome.INFRA_ERROR, failed.error, observation=None)]
    out = io.StringIO()
    print_summary([full_boot(), failed], Console(file=out, width=200))
    text = out.getvalue()
    assert [line for line in text.splitlines() if "trixie-96M" in line and "│" in line] == []
    said = [line for line in text.splitlines() if "did not start" in line]
    assert said == [
        "1 boot did not start: no login marker on the serial console after 180s "
        "(boot: trixie-96M; 1 result: infra_error)"
    ]
    assert "lock_over_limit" in text  # the boot that started is still listed per case
    assert "2 boots: 1 pass, 1 deviation, 1 n/a, 1 oom, 1 panic, 1 timeout, 2 error; 1 boot error" in text


def test_summary_of_clean_run_has_no_problem_table() -> None:
    boot = full_boot()
    boot.cases = [r for r in boot.cases if r.outcome in (Outcome.PASS, Outcome.NOT_APPLICABLE)]
    out = io.StringIO()
    print_summary([boot], Console(file=out, width=200))
    assert "Deviations and errors" not in out.getvalue()


def test_summary_markup_in_names_is_literal() -> None:
    boot = BootResult("b", None, 256, error="[bold]not markup[/bold]")
    out = io.StringIO()
    print_summary([boot], Console(file=out, width=200))
    assert "[bold]not markup[/bold]" in out.getvalue()


def boot_with(*outcomes: Outcome, error: str = "") -> BootResult:
    return BootResult("b", DEBIAN, 256, error=error, cases=[case("b", f"c{i}", o) for i, o in enumerate(outcomes)])


@pytest.mark.parametrize(
    ("boots", "code"),
    [
        ([], 0),
        ([boot_with(Outcome.PASS, Outcome.NOT_APPLICABLE)], 0),
        ([boot_with(Outcome.PASS, Outcome.DEVIATION)], 1),
        ([boot_with(Outcome.OOM_KILLED)], 1),
        ([boot_with(Outcome.PANIC)], 1),
        ([boot_with(Outcome.TIMEOUT)], 3),
        ([boot_with(Outcome.INFRA_ERROR)], 3),
        ([boot_with(Outcome.PASS, error="QEMU died")], 3),
        ([boot_with(Outcome.DEVIATION), boot_with(Outcome.TIMEOUT)], 3),
        ([boot_with(Outcome.DEVIATION), boot_with(error="no kernel")], 3),
    ],
)
def test_exit_code(boots: list[BootResult], code: int) -> None:
    assert exit_code(boots) == code


def test_case_updates_are_throttled_and_flushes_are_not(tmp_path: Path) -> None:
    """Per-case updates rewrite the files at most once per min_interval; a flush always writes."""
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    writer.min_interval = 3600.0
    boot = full_boot()
    first = dataclasses.replace(boot, cases=boot.cases[:1])
    writer.update(first)  # a flush: written
    writer.update(dataclasses.replace(boot, cases=boot.cases[:2]), flush=False)  # within the interval
    on_disk = results_doc(tmp_path)
    assert len(on_disk["boots"][0]["cases"]) == 1
    writer.update(boot)
    on_disk = results_doc(tmp_path)
    assert len(on_disk["boots"][0]["cases"]) == len(boot.cases)


def test_the_files_written_case_by_case_are_what_one_rendering_of_the_final_boots_writes(tmp_path: Path) -> None:
    """Boots are rendered once per change and kept: a boot that changes after the others were
    rendered must be rendered again, and the assembled files must equal one whole rendering."""
    writer = RunWriter(tmp_path, RUN_ID, STARTED, order=["a", "b", "c"])
    writer.min_interval = 0.0
    a, b, c = full_boot("a"), failed_boot(), full_boot("c")
    b = dataclasses.replace(b, boot_id="b")
    for n in range(1, len(a.cases) + 1):  # two boots reporting case by case, interleaved
        writer.update(dataclasses.replace(a, cases=a.cases[:n]), flush=False)
        writer.update(dataclasses.replace(c, cases=c.cases[:n]), flush=False)
    writer.update(b)
    writer.update(dataclasses.replace(a, error="lost the guest"))
    final = [dataclasses.replace(a, error="lost the guest"), b, c]
    compact = json.dumps(results_json(final, RUN_ID, STARTED, None), separators=(",", ":"))
    assert gzip.decompress(writer.results_path.read_bytes()).decode() == compact + "\n"
    assert writer.junit_path.read_text() == junit_xml(final, RUN_ID)
    writer.finish("2026-11-26T19:10:00Z")
    assert results_doc(tmp_path) == results_json(final, RUN_ID, STARTED, "2026-11-26T19:10:00Z")


def test_case_updates_wait_ten_times_as_long_as_the_last_write_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big run's files take seconds to write; per-case rewrites must not take the CPU the guests need."""
    clock = [1000.0]
    monkeypatch.setattr("harness.report.rundir.time.monotonic", lambda: clock[0])
    real_write = __import__("harness.report.rundir", fromlist=["atomic_write"]).atomic_write

    def slow_write(path: Path, data: bytes | str) -> None:
        clock[0] += 2.5  # each of the two files: a write costs 5 s
        real_write(path, data)

    monkeypatch.setattr("harness.report.rundir.atomic_write", slow_write)
    writer = RunWriter(tmp_path, RUN_ID, STARTED)
    boot = full_boot()

    def written() -> int:
        return len(results_doc(tmp_path)["boots"][0]["cases"])

    writer.update(dataclasses.replace(boot, cases=boot.cases[:1]))  # a flush: written, took 5 s
    clock[0] += 30
    writer.update(dataclasses.replace(boot, cases=boot.cases[:2]), flush=False)
    assert written() == 1  # 30 s after a 5 s write: too soon
    clock[0] += 25
    writer.update(dataclasses.replace(boot, cases=boot.cases[:3]), flush=False)
    assert written() == 3
