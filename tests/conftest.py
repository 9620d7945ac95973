"""Shared fixtures: the real probe, built once per session, and its catalogue; small git repositories."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import lzma
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard

GUEST_TESTS = Path(__file__).resolve().parent.parent / "guest-tests"


@pytest.fixture(autouse=True)
def results_where_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests find and write runs under ./results, wherever they chdir to (as the harness did before
    HARNESS_RESULTS); a test of where runs go when it is unset unsets it."""
    monkeypatch.setenv("HARNESS_RESULTS", "results")


@pytest.fixture(scope="session")
def probe() -> Path:
    """guest-tests/probe, built with the same `make -s -C guest-tests` the harness runs."""
    subprocess.run(["make", "-s", "-C", str(GUEST_TESTS)], check=True)
    return GUEST_TESTS / "probe"


@pytest.fixture(scope="session")
def catalogue(probe: Path) -> list[str]:
    """Case names from `probe --list`, in catalogue order."""
    out = subprocess.run([str(probe), "--list"], check=True, capture_output=True, text=True).stdout
    names = [line.split("\t", 1)[0] for line in out.splitlines() if line]
    assert names, "probe --list printed no cases"
    return names


def git(repo: Path, *args: str) -> str:
    """git -C repo ..., its output; fails the test on a git error."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[[Sequence[tuple[str, dict[str, str]]]], Path]:
    """A git repository tmp_path/linux on branch main, one commit per (title, {file: text})."""

    def make(commits: Sequence[tuple[str, dict[str, str]]]) -> Path:
        repo = tmp_path / "linux"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.email", "t@example.org")
        git(repo, "config", "user.name", "t")
        for title, files in commits:
            for name, text in files.items():
                (repo / name).write_text(text)
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", title)
        return repo

    return make


# --- kernel modules: real ELF objects with a .modinfo section -------------------------------------


@pytest.fixture(scope="session")
def build_ko(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Sequence[str]], bytes]:
    """gcc -c of a file with a .modinfo section, as a kernel module has."""
    folder = tmp_path_factory.mktemp("ko")

    def build(name: str, deps: Sequence[str]) -> bytes:
        entries = [f"name={name}", f"depends={','.join(deps)}", "license=GPL", f"alias=pci:{name}"]
        src = folder / f"{name}.c"
        src.write_text(
            "".join(
                f'__attribute__((section(".modinfo"), used)) static const char m{i}[] = "{e}";\n'
                for i, e in enumerate(entries)
            )
            + "int init_module(void) { return 0; }\n"
        )
        out = folder / f"{name}.o"
        subprocess.run(["gcc", "-c", "-o", str(out), str(src)], check=True)
        return out.read_bytes()

    return build


def write_module(path: Path, elf: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".ko.gz"):
        path.write_bytes(gzip.compress(elf, mtime=0))
    elif path.name.endswith(".ko.xz"):
        path.write_bytes(lzma.compress(elf))
    elif path.name.endswith(".ko.zst"):
        # like the zstd CLI in a pipe: no content size in the frame header
        path.write_bytes(zstandard.ZstdCompressor(write_content_size=False).compress(elf))
    else:
        path.write_bytes(elf)
    return path


# --- a local HTTP server, standing in for Debian's mirror (this machine reaches no other) -----------


@contextlib.contextmanager
def http_root(root: Path, on_get: Callable[[str], None] = lambda path: None) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving the files under `root`; `on_get` sees each request's
    path before it is answered (to record it, or to take its time). Yields the server's base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            on_get(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def results_doc(run_dir: Path) -> Any:
    """A run's results.json.gz as JSON: what a consumer of the file reads (`zcat | jq`)."""
    return json.loads(gzip.decompress((run_dir / "results.json.gz").read_bytes()))


def log_text(path: Path) -> str:
    """A serial log as text, whether the boot left it compressed (serial/<boot>.log.gz) or not."""
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return data.decode(errors="replace")
