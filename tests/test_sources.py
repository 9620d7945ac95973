"""harness/sources: the registry of kernel kinds, the run's Kernels, and `harness kernels resolve` for every kind."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from test_cli import run
from test_kernels import bzimage, tiny_elf

from harness import manifest
from harness import run as runner
from harness.errors import UserError
from harness.kernels import Kernel, sources
from harness.kernels.sources import path as path_source
from harness.kernels.sources.base import Context
from harness.plan import matrix
from harness.yamlfile import KeyPath, Where


def test_each_kind_is_found_by_its_key_and_nothing_else_passes(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"not read while parsing")
    text = f"kernels:\n  - debian: bookworm\n  - path: {kernel}\n  - {{path: {kernel}, modules: {tmp_path}}}\n"
    mx = matrix.parse(text, "m.yaml")
    assert [k.kind for k in mx.kernels] == ["debian", "path", "path"]
    for item in ("{path: x, debian: bookworm}", f"{{path: {kernel}, bogus: 1}}", "{modules: /lib}", "bookworm", "{}"):
        with pytest.raises(UserError) as e:
            matrix.parse(f"kernels:\n  - {item}\n", "m.yaml")
        assert str(e.value) == (
            "m.yaml:2: kernels.0: each kernel is {debian: SUITE or {suite, package, abi}}, "
            "{path: FILE} or {git: {repo, rev, config}}"
        )


@dataclasses.dataclass(frozen=True)
class FixedKernel:
    name: str
    origin: str = dataclasses.field(default="", compare=False)
    kind = "fixed"

    @property
    def label(self) -> str:
        return f"fixed-{self.name}"


class FixedSource:
    """A new kind of kernel, written the way debian, path and git are: one kernel file made on demand."""

    kind = "fixed"
    keys = frozenset({"fixed"})
    syntax = "{fixed: NAME}"
    local = True

    def __init__(self, file: Path) -> None:
        self.file = file
        self.calls: list[str] = []

    def parse(self, item: dict[str, Any], where: Where, at: KeyPath) -> FixedKernel:
        if not isinstance(item["fixed"], str):
            raise where.error((*at, "fixed"), "give a name")
        return FixedKernel(item["fixed"], where.origin(at))

    def resolve(self, spec: FixedKernel, ctx: Context) -> str:
        self.calls.append(f"resolve {spec.name}")
        return spec.name

    def describe(self, resolved: str) -> list[str]:
        return ["fixed", resolved]

    def fetch(self, resolved: str, ctx: Context) -> Kernel:
        self.calls.append(f"fetch {resolved}")
        kernel = path_source.from_path(path_source.PathKernel(self.file), ctx.cache)
        return dataclasses.replace(kernel, label=f"fixed-{resolved}", source=f"fixed:{resolved}")

    def record(self, kernel: Kernel) -> dict[str, Any]:
        return {"fixed": {"made": True}}

    def pin(self, spec: FixedKernel, entry: manifest.Kernel, ctx: Context) -> Kernel:
        self.calls.append(f"pin {spec.name}")
        return self.fetch(spec.name, ctx)


def test_a_new_kind_is_one_source_in_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering a source is all a new kind takes: matrices, the run's Kernels, the manifest and replay
    reach it through the registry, and no other module dispatches on the kind of a spec."""
    file = tmp_path / "bzImage"
    file.write_bytes(bzimage(tiny_elf(), "xz", version="6.6.6-fixed"))
    fixed = FixedSource(file)
    monkeypatch.setattr(sources, "SOURCES", {**sources.SOURCES, "fixed": fixed})

    mx = matrix.parse("kernels:\n  - fixed: one\n  - debian: bookworm\n", "m.yaml")
    spec = mx.kernels[0]
    assert spec == FixedKernel("one") and spec.origin == "m.yaml:2: kernels.0"
    with pytest.raises(UserError, match=r"m.yaml:2: kernels.0.fixed: give a name"):
        matrix.parse("kernels:\n  - fixed: [1]\n", "m.yaml")
    with pytest.raises(UserError, match=r"\{git: \{repo, rev, config\}\} or \{fixed: NAME\}$"):
        matrix.parse("kernels:\n  - nothing: 1\n", "m.yaml")

    kernels = sources.Kernels(Context(tmp_path / "cache"))
    assert kernels.describe(spec) == ["fixed", "one"]
    kernel = kernels.fetch(spec)
    assert kernel.release == "6.6.6-fixed" and kernel.source == "fixed:one"
    assert fixed.calls == ["resolve one", "fetch one"]  # resolved once, whatever asks

    entry = runner._kernel_entry(spec, runner.Prepared(kernel))
    doc = manifest.Manifest(kernels=(entry,)).to_json()["kernels"][0]
    assert doc["fixed"] == {"made": True} and doc["source"] == "fixed:one" and doc["spec"] == "fixed-one"
    recorded = manifest.Manifest.from_json({"kernels": [doc]}).kernels
    pinned = sources.pin(mx.kernels, recorded, Context(tmp_path / "cache"))
    assert pinned == {spec: kernel} and fixed.calls[-2:] == ["pin one", "fetch one"]


def test_kernels_resolve_prints_every_kind(
    tmp_path: Path,
    make_repo: Callable[[Sequence[tuple[str, dict[str, str]]]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = make_repo([("first", {"Makefile": "1\n"}), ("mm: the second", {"Makefile": "2\n"})])
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage(tiny_elf(), "xz", version="6.6.6-custom"))
    m = tmp_path / "m.yaml"
    m.write_text(f"kernels:\n  - path: {kernel}\n  - git: {{repo: {repo}, rev: HEAD}}\n")
    code, out, err = run(["kernels", "resolve", "--matrix", str(m), "--cache", str(tmp_path / "cache")], capsys)
    assert (code, err) == (0, "")
    sha = hashlib.sha256(kernel.read_bytes()).hexdigest()
    assert out.splitlines() == [
        f"6.6.6-custom\tpath\t{kernel}\t6.6.6-custom\t{sha[:16]}",
        f"linux@HEAD\tgit\t{git(repo, 'rev-parse', 'HEAD')[:12]}\tmm: the second",
    ]
