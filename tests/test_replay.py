"""harness/replay.py and sources.pin: a run's kernels found again by SHA-256, and the inputs that cannot be the same."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_kernels import bzimage, tiny_elf

from harness import kernels, replay
from harness.boot import vm
from harness.cache import lease
from harness.debian.archive import Deb
from harness.errors import UserError
from harness.kernels import sources
from harness.kernels.sources import debian
from harness.manifest import Manifest
from harness.plan import matrix
from harness.report import rundir

MATRIX = "kernels:\n  - debian: bookworm\n  - debian: trixie\n"
DEB = Deb("linux-image-6.12.117+deb13-amd64", "6.12.117-1", "pool/main/l/linux/x.deb", "d" * 64, 10, "trixie")


def cache_kernel(cache: Path, label: str, sha: str) -> None:
    """A kernel unpacked in the cache, as kernels.fetch leaves it (only its metadata matters here)."""
    folder = cache / "kernels" / sha[:16]
    folder.mkdir(parents=True)
    (folder / kernels.META_FILE).write_text(
        json.dumps(
            {
                "label": label,
                "release": "6.1.0-50-amd64",
                "image": "vmlinuz",
                "vmlinux": None,
                "modules_dir": None,
                "sha256": sha,
                "package": "linux-image-6.1.0-50-amd64",
                "version": "6.1.176-1",
                "debs": [],
                "source": "debian:bookworm",
                "format": kernels.META_FORMAT,
            }
        )
    )


def manifest(**kernel_shas: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {"spec": "bookworm", "sha256": kernel_shas.get("bookworm", "")},
        {
            "spec": "trixie",
            "sha256": kernel_shas.get("trixie", ""),
            "release": "6.12.117+deb13-amd64",
            "version": "6.12.117-1",
            "package": DEB.package,
            "debs": [dataclasses.asdict(DEB)],
        },
    ]
    return {"matrix_text": MATRIX, "kernels": entries}


def pin(
    mx: matrix.Matrix,
    doc: dict[str, Any],
    cache: Path,
    fetch: Callable[[debian.Resolved], kernels.Kernel],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[sources.KernelSpec, kernels.Kernel]:
    """sources.pin with the mirror replaced: `fetch` stands in for downloading the recorded .debs, which
    no mirror reachable here still has."""
    monkeypatch.setattr(debian, "mirrors", lambda ctx: None)
    monkeypatch.setattr(debian, "fetch", lambda resolved, archive, cache, leases: fetch(resolved))
    return sources.pin(mx.kernels, Manifest.from_json(doc).kernels, sources.Context(cache))


def fetched(sha: str) -> kernels.Kernel:
    return kernels.Kernel(
        "whatever",
        "6.12.117+deb13-amd64",
        Path("/k"),
        None,
        None,
        sha,
        DEB.package,
        DEB.version,
        (DEB,),
        "debian:trixie",
    )


def test_kernels_come_from_the_cache_by_sha_else_from_the_recorded_debs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_kernel(tmp_path, "old-label", "a" * 64)
    mx = matrix.parse(MATRIX, "m.yaml")
    asked: list[debian.Resolved] = []

    def fetch(resolved: debian.Resolved) -> kernels.Kernel:
        asked.append(resolved)
        return fetched("b" * 64)

    pinned = pin(mx, manifest(bookworm="a" * 64, trixie="b" * 64), tmp_path, fetch, monkeypatch)
    bookworm, new = mx.kernels
    assert pinned[bookworm].sha256 == "a" * 64 and pinned[bookworm].label == "bookworm"
    assert pinned[new].label == "trixie"
    (resolved,) = asked  # only the kernel the cache lacks, by exactly the .debs the run used
    assert resolved.debs == (DEB,) and resolved.version == "6.12.117-1" and resolved.suite == "trixie"


def test_a_kernel_found_in_the_cache_is_leased_until_the_replay_is_done(tmp_path: Path) -> None:
    """harness cache prune must not take it between the pinning and the replay's boots."""
    cache_kernel(tmp_path, "old-label", "a" * 64)
    mx = matrix.parse(MATRIX, "m.yaml")
    with lease.Leases() as replaying:
        ctx = sources.Context(tmp_path, leases=replaying)
        assert sources.pin(mx.kernels, Manifest.from_json(manifest(bookworm="a" * 64)).kernels, ctx)
        with lease.exclusive(tmp_path / "kernels" / ("a" * 16)) as free:
            assert not free
    with lease.exclusive(tmp_path / "kernels" / ("a" * 16)) as free:
        assert free


def test_debs_that_no_longer_give_the_same_kernel_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mx = matrix.parse(MATRIX, "m.yaml")
    with pytest.raises(UserError, match=r"kernel trixie: the \.debs now give sha256 cccccccccccc, the run booted bbbb"):
        pin(mx, manifest(trixie="b" * 64), tmp_path, lambda r: fetched("c" * 64), monkeypatch)


def test_a_kernel_the_run_could_not_resolve_is_resolved_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mx = matrix.parse(MATRIX, "m.yaml")
    assert pin(mx, manifest(), tmp_path, lambda r: fetched("c" * 64), monkeypatch) == {}


def test_a_path_kernel_is_pinned_only_while_it_is_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage(tiny_elf(), "xz", version="6.6.6-custom"))
    mx = matrix.parse(f"kernels:\n  - path: {kernel}\n", "m.yaml")
    doc = {"kernels": [{"spec": mx.kernels[0].label, "sha256": hashlib.sha256(kernel.read_bytes()).hexdigest()}]}
    assert pin(mx, doc, tmp_path, lambda r: fetched(""), monkeypatch)[mx.kernels[0]].release == "6.6.6-custom"
    kernel.write_bytes(bzimage(tiny_elf(), "xz", version="6.6.7-rebuilt"))
    with pytest.raises(UserError, match=rf"{kernel}: changed since the run \(sha256 [0-9a-f]{{12}}, the run booted"):
        pin(mx, doc, tmp_path, lambda r: fetched(""), monkeypatch)


def test_inputs_that_differ_are_named(tmp_path: Path) -> None:
    same = {"probe": {"sha256": "p" * 64}, "qemu_version": vm.qemu_version(), "accelerator": {"name": "tcg"}}
    assert replay.differences(Manifest.from_json(same), "p" * 64, "tcg") == []
    other = {
        **same,
        "probe": {"sha256": "q" * 64},
        "qemu_version": "1.0",
        "accelerator": {"name": "kvm"},
        "expectations_sha256": "0" * 64,
    }
    lines = replay.differences(Manifest.from_json(other), "p" * 64, "tcg")
    assert [line.split(":")[0] for line in lines] == ["probe", "expectations", "qemu", "accelerator"]


def test_find_run_by_directory_or_id(tmp_path: Path) -> None:
    run_dir = tmp_path / "results" / "20261126T000000Z-abcd"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text("{}")
    assert rundir.locate(str(run_dir), tmp_path / "elsewhere") == run_dir
    assert rundir.locate("20261126T000000Z-abcd", tmp_path / "results") == run_dir
    with pytest.raises(UserError, match="no such run"):
        rundir.locate("nope", tmp_path / "results")
