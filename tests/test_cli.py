"""harness/cli.py: exit codes and one-line error messages, in process and as `python -m harness`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from harness import cli, matrix

BAD_MATRIX = "kernels:\n  - debian: bookworm\nram: [256M]\nmemlock:\n  - {soft: 1M, hard: 64K}\n"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path with a private cache, as if on a narrow (80-column) terminal."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "80")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    console = Console(file=io.StringIO())
    code = cli.main(argv, console=console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return code, out, capsys.readouterr().err


def test_print_default_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["run", "--print-default-matrix"], capsys)
    assert code == 0 and err == ""
    assert out == matrix.default_text()
    parsed = matrix.parse(out, "printed.yaml")
    assert parsed.kernels == matrix.load_default().kernels
    assert parsed.memlocks == matrix.load_default().memlocks


def test_missing_matrix_exits_2_naming_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["run", "--matrix", "missing.yaml"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: missing.yaml: cannot read matrix file")
    assert "Traceback" not in err and out == ""


def test_malformed_matrix_exits_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_MATRIX)
    code, out, err = run(["run", "--matrix", "bad.yaml"], capsys)
    assert code == 2
    assert err.splitlines() == [
        "harness: error: bad.yaml:5: memlock.0: soft limit is above the hard limit; make soft <= hard"
    ]
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "results").exists()  # nothing started


def test_jobs_zero_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["run", "--jobs", "0"], capsys)
    assert code == 2
    assert err.splitlines() == ["harness: error: --jobs 0: give at least 1"]


def test_unknown_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: ") and "invalid choice: 'frobnicate'" in line
    assert "Traceback" not in err


def test_no_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2 and err.startswith("harness: error: ")


def test_error_with_a_long_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path.joinpath(*["d" * 200] * 6, "m.yaml")  # about 1.2 kB, well under PATH_MAX
    code, _, err = run(["run", "--matrix", str(deep)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err


def test_cases_lists_the_probe_catalogue(catalogue: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["cases"], capsys)
    assert code == 0
    assert len(catalogue) > 50  # every scenario area of MAP_LOCKED.md, root and unprivileged
    assert [line.split("\t")[0] for line in out.splitlines()] == catalogue
    assert not [name for name in catalogue if name.startswith("_")]  # self-tests stay hidden


# --- the real entry point ---------------------------------------------------------------------


def module_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "HARNESS_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_python_m_harness_bad_matrix_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_MATRIX)
    proc = module_run(tmp_path, "run", "--matrix", "bad.yaml")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "harness: error: bad.yaml:5: memlock.0: soft limit is above the hard limit; make soft <= hard"
    ]
    assert proc.stdout == ""


def test_python_m_harness_cases_matches_probe_list(tmp_path: Path, probe: Path) -> None:
    listing = subprocess.run([str(probe), "--list"], capture_output=True, text=True, check=True).stdout
    proc = module_run(tmp_path, "cases")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == listing.splitlines()


def test_non_kernel_file_is_bad_input_before_any_boot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk").write_bytes(os.urandom(4096))
    (tmp_path / "m.yaml").write_text("kernels:\n  - debian: bookworm\n  - path: junk\n")
    code, out, err = run(["run", "--matrix", "m.yaml", "--mirror", "http://127.0.0.1:9/debian"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: m.yaml:3: kernels.1: ")
    assert "not a Linux kernel image" in line
    assert not (tmp_path / "results").exists()  # nothing started: path kernels are checked first


def test_truncated_kernel_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first 4 KiB of a real bzImage header layout is not a kernel QEMU can boot."""
    kernel = tmp_path / "vmlinuz"
    header = bytearray(8192)
    header[0x1F1] = 4  # setup_sects
    header[0x202:0x206] = b"HdrS"
    kernel.write_bytes(bytes(header[:600]))
    (tmp_path / "m.yaml").write_text("kernels:\n  - path: vmlinuz\n")
    code, _, err = run(["run", "--matrix", "m.yaml"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("harness: error: m.yaml:2: kernels.0: ")


def test_unwritable_results_directory_fails_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.yaml").write_text("kernels:\n  - debian: bookworm\n")
    (tmp_path / "taken").write_text("a file where the results directory should be")
    code, _, err = run(["run", "--matrix", "m.yaml", "--results", "taken/results"], capsys)
    assert code == 3
    (line,) = err.splitlines()
    assert line.startswith("harness: infrastructure error: taken/results: results cannot be written there")
