"""What every kind of kernel source provides, and what it is given to work with.

A source kind (debian, path, git, ...) is one module with one `Source` object: it reads its specs
from a matrix, resolves a spec (cheap; bad input surfaces here, before anything is downloaded or
built), fetches the resolved kernel into the cache, describes it for `harness kernels resolve` and
for the run's manifest, and finds the very kernel a recorded run booted again for `replay`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from harness import manifest
from harness.cache.lease import Leases
from harness.kernels import Kernel
from harness.yamlfile import KeyPath, Where


class KernelSpec(Hashable, Protocol):
    """A kernel as a matrix names it: a frozen record of its source kind's own fields."""

    @property
    def kind(self) -> str: ...  # the registry's name for its source: "debian", "path", "git"

    @property
    def label(self) -> str: ...  # how boots, reports and manifests name it

    @property
    def origin(self) -> str: ...  # "file:line: kernels.N", for messages; "" when not from a file


R = TypeVar("R")


@dataclass
class Context:
    """What a source may use during one command: the cache, the user's settings, a log, the leases
    on what it uses of the cache (the run's), and objects shared by every kernel of the run (one
    verified mirror index, say), made once on first use."""

    cache: Path
    log: Callable[[str], None] = print
    mirror: str | None = None
    insecure: bool = False
    leases: Leases = field(default_factory=Leases, compare=False, repr=False)
    _shared: dict[str, Any] = field(default_factory=dict)

    def shared(self, name: str, make: Callable[[], R]) -> R:
        if name not in self._shared:
            self._shared[name] = make()
        value: R = self._shared[name]
        return value


class Source(Protocol):
    """One kind of kernel source. Each implementation types its own spec and what `resolve` finds
    (enough to fetch without asking again); here they are Any, so one registry holds them all."""

    kind: str  # the matrix key that names this kind
    keys: frozenset[str]  # every key a matrix entry of this kind may have (the kind's own among them)
    syntax: str  # how a matrix entry of this kind looks, for the message about one that is none
    local: bool  # resolving needs no network: such kernels are resolved first, so bad input fails fast

    def parse(self, item: dict[str, Any], where: Where, path: KeyPath) -> KernelSpec:
        """The spec of a matrix entry; FieldError (via `where`) naming the key that is wrong."""
        ...

    def expand(self, spec: Any, ctx: Context) -> Sequence[KernelSpec]:
        """The specs this one stands for, one per kernel to boot (itself, for most): a spec of many
        builds becomes one spec per build before the run is planned."""
        ...

    def resolve(self, spec: Any, ctx: Context) -> Any:
        """What the spec names now; UserError when it names nothing, InfraError when it cannot be known."""
        ...

    def describe(self, resolved: Any) -> list[str]:
        """Fields after the label in `harness kernels resolve`: what the spec resolved to."""
        ...

    def fetch(self, resolved: Any, ctx: Context) -> Kernel:
        """The kernel ready to boot, downloaded, unpacked or built into the cache as needed."""
        ...

    def cached(self, resolved: Any, ctx: Context) -> Path | None:
        """The folder of the cache `fetch` keeps this kernel in (there or not yet); None when the
        cache keeps none (a path: kernel is the user's own file). `harness cache prune` reads it."""
        ...

    def record(self, kernel: Kernel) -> dict[str, Any]:
        """The kind's own part of the manifest's kernel entry (beyond what every kernel records)."""
        ...

    def pin(self, spec: Any, entry: manifest.Kernel, ctx: Context) -> Kernel:
        """The very kernel `entry` says a run booted (same SHA-256), for a replay; UserError when it
        can no longer be had."""
        ...
