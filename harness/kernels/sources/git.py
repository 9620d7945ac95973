"""Kernels built from a git tree: `git: {repo, rev, config, base}` in a matrix.

Resolving names the commit (a bad repository or revision is bad input); fetching builds it with
`harness.kernels.kbuild` (out of tree, cached by tree, config and compiler). The manifest records how it
was built, and a replay builds the recorded commit again (a branch may have moved since).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import manifest
from harness.debian import aptsources, tools
from harness.errors import UserError
from harness.kernels import Kernel, kbuild
from harness.kernels.sources.base import Context, KernelSpec
from harness.yamlfile import KeyPath, Where

BASES = ("tinyconfig", "defconfig")


@dataclass(frozen=True)
class GitKernel:
    """A kernel built from a git tree at `rev`, with a config fragment merged onto `base`."""

    repo: Path
    rev: str
    config: Path | None = None  # fragment; None: images/kernel.config
    base: str = "tinyconfig"  # or defconfig
    origin: str = field(default="", compare=False)
    compiler: str = "gcc"  # or gcc-N, installed from an older Debian suite when the host lacks it

    kind = "git"

    @property
    def label(self) -> str:
        # One commit built two ways (another fragment, another gcc) is two kernels of one matrix.
        return (
            f"{self.repo.name}@{self.rev}"
            + (f"+{self.config.stem}" if self.config else "")
            + (f"-{self.compiler}" if self.compiler != "gcc" else "")
        )


class GitSource:
    kind = "git"
    keys = frozenset({"git"})
    syntax = "{git: {repo, rev, config}}"
    local = True

    def parse(self, item: dict[str, Any], where: Where, path: KeyPath) -> GitKernel:
        value, origin, path = item["git"], where.origin(path), (*path, "git")
        if not isinstance(value, dict):
            raise where.error(
                path,
                "give {repo: DIR, rev: REV}, optionally config: FRAGMENT, base: tinyconfig|defconfig, compiler: gcc-N",
            )
        for key in value:
            if key not in ("repo", "rev", "config", "base", "compiler"):
                raise where.error((*path, key), "unknown key; allowed: repo, rev, config, base, compiler")
        repo, rev = value.get("repo"), value.get("rev")
        if not isinstance(repo, str) or not repo:
            raise where.error((*path, "repo"), "give the directory of a kernel git tree")
        repo_path = where.base_dir / Path(repo).expanduser()
        if not (repo_path / ".git").exists():
            raise where.error((*path, "repo"), f"{repo_path} is not a git work tree; give a kernel git checkout")
        if not isinstance(rev, str) or not rev:
            raise where.error((*path, "rev"), "give a revision: a commit, tag or branch (quote numbers: '1a2b3c')")
        config_path = where.optional_file(value.get("config"), (*path, "config"), "a config fragment")
        base = value.get("base", "tinyconfig")
        if base not in BASES:
            raise where.error((*path, "base"), f"{base!r}: give one of {', '.join(BASES)}")
        compiler = value.get("compiler", "gcc")
        if not (isinstance(compiler, str) and tools.COMPILER.match(compiler)):
            raise where.error((*path, "compiler"), f"{compiler!r}: give gcc or a Debian gcc-N, such as gcc-10")
        return GitKernel(repo_path.resolve(), rev, config_path, base, origin, compiler)

    def expand(self, spec: GitKernel, ctx: Context) -> Sequence[KernelSpec]:
        return [spec]

    def resolve(self, spec: GitKernel, ctx: Context) -> kbuild.Source:
        return kbuild.resolve(spec)  # a bad revision is bad input; building waits for fetch

    def describe(self, resolved: kbuild.Source) -> list[str]:
        return ["git", resolved.commit[:12], resolved.title]

    def fetch(self, resolved: kbuild.Source, ctx: Context) -> Kernel:
        if resolved.spec.compiler != "gcc":
            tools.ensure_compiler(
                resolved.spec.compiler, lambda: aptsources.mirror_from(ctx.mirror, os.environ), ctx.cache, ctx.log
            )
        return kbuild.build(resolved, ctx.cache, ctx.log, resolved.spec.label, ctx.leases)

    def cached(self, resolved: kbuild.Source, ctx: Context) -> Path | None:
        return kbuild.folder(resolved, ctx.cache)

    def record(self, kernel: Kernel) -> dict[str, Any]:
        # How it was built: commit, compiler, seconds, the config (its digest and file).
        build = {key: v for key, v in kbuild.metadata(kernel.image.parent).items() if key != "fragment"}
        return {"build": {**build, "config_file": str(kernel.image.parent / "config")}}

    def pin(self, spec: GitKernel, entry: manifest.Kernel, ctx: Context) -> Kernel:
        """Built from the commit the run built, then checked by hash."""
        assert entry.booted is not None
        commit = entry.booted.source.rpartition("@")[2] or spec.rev
        kernel = self.fetch(self.resolve(dataclasses.replace(spec, rev=commit), ctx), ctx)
        if kernel.sha256 != entry.booted.sha256:
            raise UserError(
                f"kernel {spec.label}: commit {commit} now builds sha256 {kernel.sha256[:12]}, the run "
                f"booted {entry.booted.sha256[:12]} (another compiler or config fragment?)"
            )
        return kernel


SOURCE = GitSource()
