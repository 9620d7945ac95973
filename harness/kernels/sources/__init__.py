"""Kernel sources: the registry of kinds, and the run's view of its kernels.

Every kind of kernel (a Debian package, a file on disk, a git tree) is one module with one
`Source` (see `base`); this registry is the only place that lists them. A new kind is a new module
and one line below; nothing else dispatches on the kind of a spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import manifest
from harness.errors import UserError
from harness.kernels import Kernel
from harness.kernels.sources import debian, git, path
from harness.kernels.sources.base import Context, KernelSpec, Source
from harness.yamlfile import KeyPath, Where

__all__ = ["SOURCES", "Context", "KernelSpec", "Kernels", "Source", "expand", "parse", "source_of"]

SOURCES: Mapping[str, Source] = {s.kind: s for s in (debian.SOURCE, path.SOURCE, git.SOURCE)}


def source_of(spec: KernelSpec) -> Source:
    return SOURCES[spec.kind]


def parse(item: object, where: Where, at: KeyPath) -> KernelSpec:
    """The spec of one `kernels:` entry of a matrix: the kind whose key it has, and no other key."""
    if isinstance(item, dict):
        kinds = [SOURCES[k] for k in item if k in SOURCES]
        if len(kinds) == 1 and set(item) <= kinds[0].keys:
            return kinds[0].parse(item, where, at)
    forms = [s.syntax for s in SOURCES.values()]
    raise where.error(at, f"each kernel is {', '.join(forms[:-1])} or {forms[-1]}")


def expand(specs: Sequence[KernelSpec], ctx: Context) -> tuple[KernelSpec, ...]:
    """Every spec as the kernels it stands for (a spec of many builds, one per build), in order,
    each once: a build two specs name is booted once."""
    out: dict[KernelSpec, None] = {}
    for spec in specs:
        with _from(spec):
            out.update(dict.fromkeys(source_of(spec).expand(spec, ctx)))
    return tuple(out)


class Kernels:
    """The kernels of one command: each distinct spec resolved once and fetched once.

    `pinned` kernels (a replay's) are used as they are, without asking their source again.
    """

    def __init__(self, ctx: Context, pinned: Mapping[KernelSpec, Kernel] | None = None) -> None:
        self.ctx = ctx
        self._pinned = dict(pinned or {})
        self._resolved: dict[KernelSpec, Any] = {}

    def resolve(self, spec: KernelSpec) -> None:
        """Bad input about the spec (UserError, naming where the matrix gave it) surfaces here."""
        if spec in self._pinned or spec in self._resolved:
            return
        with _from(spec):
            self._resolved[spec] = source_of(spec).resolve(spec, self.ctx)

    def describe(self, spec: KernelSpec) -> list[str]:
        """What `harness kernels resolve` prints after the label."""
        if spec in self._pinned:
            kernel = self._pinned[spec]
            return ["pinned", kernel.release, kernel.sha256[:16]]
        self.resolve(spec)
        return source_of(spec).describe(self._resolved[spec])

    def cached(self, spec: KernelSpec) -> Path | None:
        """The cache folder of the spec's kernel (see Source.cached)."""
        self.resolve(spec)
        with _from(spec):
            return source_of(spec).cached(self._resolved[spec], self.ctx)

    def fetch(self, spec: KernelSpec) -> Kernel:
        if spec in self._pinned:
            return self._pinned[spec]
        self.resolve(spec)
        with _from(spec):
            return source_of(spec).fetch(self._resolved[spec], self.ctx)


def pin(specs: tuple[KernelSpec, ...], recorded: tuple[manifest.Kernel, ...], ctx: Context) -> dict[KernelSpec, Kernel]:
    """Each kernel a recorded run booted, found again by its SHA-256 through its own source (replay).

    A kernel the run could not resolve is left out: the replay resolves it the way the run did.
    """
    by_label = {spec.label: spec for spec in specs}
    pinned: dict[KernelSpec, Kernel] = {}
    for entry in recorded:
        spec = by_label.get(entry.spec)
        if spec is None or entry.booted is None or not entry.booted.sha256:
            continue
        kernel = source_of(spec).pin(spec, entry, ctx)
        pinned[spec] = dataclasses.replace(kernel, label=spec.label)
    return pinned


@contextlib.contextmanager
def _from(spec: KernelSpec) -> Iterator[None]:
    """Bad input about a kernel names where the matrix gave it."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{spec.origin}: {e}" if spec.origin else str(e)) from e
