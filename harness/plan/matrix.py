"""Matrix files: parse and validate YAML into typed records, then expand into a plan of boots.

Everything here is pure except `load`, which reads one file. Errors name the file, line and key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from harness import yamlfile
from harness.files import read_text
from harness.kernels import sources
from harness.kernels.sources import KernelSpec
from harness.kit import suites, transports, userland
from harness.sizes import Memlock as Memlock
from harness.sizes import format_size as format_size
from harness.sizes import parse_size as parse_size
from harness.yamlfile import FieldError, KeyPath, Where

USERS = ("root", "user")  # the accounts the guest image has
MIN_RAM_MB = 96  # Debian kernels panic unpacking the initramfs below this (PROTOTYPE pitfall 11)
MAX_RAM_MB = 1 << 20  # 1 TiB: far above any guest this harness boots; a run also checks the host's memory
MAX_LIMIT = 1 << 62  # RLIMIT_MEMLOCK in bytes; anything near 2**64 is RLIM_INFINITY's territory: 'unlimited'
MAX_TIMEOUT = 86_400.0  # seconds
DEFAULT_MATRIX = "default-matrix.yaml"
DEFAULT_SOURCE = f"<default matrix: harness/{DEFAULT_MATRIX}>"  # how messages and manifests name it
MAX_BYTES = 1 << 20  # every Debian build of every line fits in a few kB


@dataclass(frozen=True)
class Timeouts:
    boot: float = 180.0  # seconds from QEMU start to SSH ready (TCG, two VMs per core is slow)
    case: float = 60.0  # seconds for one probe case inside the guest


@dataclass(frozen=True)
class Matrix:
    source: str  # file the matrix came from, for messages and the manifest
    kernels: tuple[KernelSpec, ...]
    ram_mb: tuple[int, ...]
    memlocks: tuple[Memlock | None, ...]  # None = leave the limit as the guest sets it
    users: tuple[str, ...]
    cases: tuple[str, ...] | None  # None = every case the probe has
    timeouts: Timeouts = field(default_factory=Timeouts)
    transports: tuple[str, ...] = (transports.AUTO,)  # how the harness reaches each guest (harness.kit.transports)
    userland: str = userland.AUTO  # the guest's programs: glibc, musl, or by kernel (harness.kit.userland)
    suites: tuple[str, ...] = (suites.PROBE,)  # what runs in each guest (harness.kit.suites); the probe alone


@dataclass(frozen=True)
class RunPlan:
    """One probe invocation inside a boot: a limit and a user, all selected cases."""

    memlock: Memlock | None
    user: str
    cases: tuple[str, ...]

    @property
    def memlock_label(self) -> str:
        return "default" if self.memlock is None else self.memlock.label


@dataclass(frozen=True)
class BootPlan:
    """One boot per (kernel, RAM); every run of the matrix happens inside it."""

    id: str
    kernel: KernelSpec
    ram_mb: int
    runs: tuple[RunPlan, ...]
    timeouts: Timeouts
    transport: str = transports.AUTO  # as the matrix asked; a run chooses for `auto`


# --- loading -----------------------------------------------------------------------------------


_TOP_KEYS = {"kernels", "ram", "memlock", "users", "cases", "timeouts", "transport", "userland", "suites"}


def load(path: Path) -> Matrix:
    return parse(read_text(path, MAX_BYTES, "matrix file"), str(path))


def load_default() -> Matrix:
    return parse(default_text(), DEFAULT_SOURCE)


def default_text() -> str:
    return resources.files("harness").joinpath(DEFAULT_MATRIX).read_text()


def parse(text: str, source: str) -> Matrix:
    root, data = yamlfile.read(text, source)
    return from_data(data, Where(source, root))


def from_data(data: object, where: Where) -> Matrix:
    """A matrix from its parsed document; errors are FieldErrors naming `where`'s source, line and key."""
    if not isinstance(data, dict):
        raise where.error((), "a matrix file is a mapping with at least a 'kernels' list")
    for key in data:
        if key not in _TOP_KEYS:
            raise where.error((key,), f"unknown key; allowed: {', '.join(sorted(_TOP_KEYS))}")
    if "kernels" not in data:
        raise where.error((), "missing 'kernels': list at least one kernel")

    kernels = tuple(sources.parse(k, where, ("kernels", i)) for i, k in enumerate(_list(where, data, "kernels")))
    ram = tuple(_ram(where, ("ram", i), v) for i, v in enumerate(_list(where, data, "ram", ["256M"])))
    memlocks = tuple(
        _memlock(where, ("memlock", i), v) for i, v in enumerate(_list(where, data, "memlock", ["default"]))
    )
    users = tuple(_user(where, ("users", i), v) for i, v in enumerate(_list(where, data, "users", ["root"])))
    cases = _cases(where, data.get("cases", "all"))
    timeouts = _timeouts(where, data.get("timeouts", {}))
    ways = tuple(
        _transport(where, ("transport", i), v) for i, v in enumerate(_list(where, data, "transport", [transports.AUTO]))
    )
    for i, kernel in enumerate(kernels):
        if kernel in kernels[:i]:
            raise where.error(("kernels", i), f"the same kernel as kernels.{kernels.index(kernel)}; remove one")
    axes: tuple[tuple[str, tuple[object, ...]], ...] = (
        ("ram", ram),
        ("memlock", memlocks),
        ("users", users),
        ("cases", cases or ()),
        ("transport", ways),
    )
    for name, axis in axes:
        if len(set(axis)) != len(axis):
            raise where.error((name,), "lists the same value twice; remove the duplicate")
    libc = data.get("userland", userland.AUTO)
    if libc not in userland.NAMES:
        raise where.error(("userland",), f"{libc!r}: give one of {', '.join(userland.NAMES)}")
    names = _list(where, data, "suites", [suites.PROBE])
    for i, name in enumerate(names):
        if name not in suites.NAMES:
            raise where.error(("suites", i), f"{name!r}: give one of {', '.join(suites.NAMES)}")
    if len(set(names)) != len(names) or not names:
        raise where.error(("suites",), "list each suite once, at least one")
    return Matrix(where.source, kernels, ram, memlocks, users, cases, timeouts, ways, libc, tuple(names))


def _list(where: Where, data: dict[str, Any], key: str, default: list[Any] | None = None) -> list[Any]:
    if key not in data:
        if default is None:
            raise where.error((key,), "missing")
        return default
    value = data[key]
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise where.error((key,), "is empty; list at least one value or remove the key for the default")
    return value


def _ram(where: Where, path: KeyPath, value: object) -> int:
    try:
        size = parse_size(value)
    except ValueError as e:
        raise where.error(path, f"{e}; guest RAM is a size such as 256M") from None
    mb = size // (1 << 20)
    if isinstance(value, int) or size % (1 << 20):
        raise where.error(path, "give guest RAM in whole megabytes with a unit, such as 256M")
    if mb < MIN_RAM_MB:
        raise where.error(path, f"{value} is too small: Debian kernels need at least {MIN_RAM_MB}M to boot")
    if mb > MAX_RAM_MB:
        raise where.error(path, f"{value} is more than {format_size(MAX_RAM_MB << 20)}; give guest RAM such as 256M")
    return mb


def _limit(where: Where, path: KeyPath, value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() in ("unlimited", "infinity"):
        return None
    try:
        limit = parse_size(value)
    except ValueError as e:
        raise where.error(path, f"{e}; a limit is a size such as 64K, 0 or 'unlimited'") from None
    if limit > MAX_LIMIT:
        raise where.error(path, f"{value} is more than {format_size(MAX_LIMIT)}; give 'unlimited' for no limit")
    return limit


def _memlock(where: Where, path: KeyPath, value: object) -> Memlock | None:
    if value == "default":
        return None
    if isinstance(value, dict):
        for key in value:
            if key not in ("soft", "hard"):
                raise where.error((*path, key), "unknown key; a limit pair has 'soft' and 'hard'")
        if "soft" not in value:
            raise where.error(path, "a limit pair needs 'soft' (and optionally 'hard')")
        soft = _limit(where, (*path, "soft"), value["soft"])
        hard = _limit(where, (*path, "hard"), value.get("hard", value["soft"]))
        if hard is not None and (soft is None or soft > hard):
            raise where.error(path, "soft limit is above the hard limit; make soft <= hard")
        return Memlock(soft, hard)
    limit = _limit(where, path, value)
    return Memlock(limit, limit)


def _user(where: Where, path: KeyPath, value: object) -> str:
    if value not in USERS:
        raise where.error(path, f"{value!r} is not a guest user; the image has: {', '.join(USERS)}")
    return str(value)


def _cases(where: Where, value: object) -> tuple[str, ...] | None:
    if value == "all":
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise where.error(("cases",), "give 'all' or a list of case names (the probe's, or SUITE:PROGRAM)")
    return tuple(names)


def _transport(where: Where, path: KeyPath, value: object) -> str:
    if value not in transports.NAMES:
        raise where.error(path, f"{value!r}: give one of {', '.join(transports.NAMES)}")
    return str(value)


def _timeouts(where: Where, value: object) -> Timeouts:
    if not isinstance(value, dict):
        raise where.error(("timeouts",), "expected a mapping such as {boot: 180, case: 60}")
    out: dict[str, float] = {}
    for key, v in value.items():
        if key not in ("boot", "case"):
            raise where.error(("timeouts", key), "unknown key; allowed: boot, case")
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= MAX_TIMEOUT:
            raise where.error(("timeouts", key), f"give a positive number of seconds, at most {MAX_TIMEOUT:g}")
        out[key] = float(v)
    return Timeouts(**out)


# --- expansion (pure) --------------------------------------------------------------------------


def expand(matrix: Matrix, catalogue: Sequence[str]) -> list[BootPlan]:
    """Boots in matrix order: one per (kernel, RAM, transport); each runs every (limit, user) with all cases."""
    # A suite's programs are cases named SUITE:PROGRAM; naming one in `cases` runs its suite.
    programs = suite_cases()
    if matrix.cases is None:
        cases = tuple(c for n in matrix.suites for c in (catalogue if n == suites.PROBE else programs[n]))
    else:
        known = {*catalogue, *(c for group in programs.values() for c in group)}
        unknown = [c for c in matrix.cases if c not in known]
        if unknown:
            reason = (
                f"unknown case {unknown[0]!r}; `harness cases` lists the {len(catalogue)} the probe has, "
                f"and a suite's are SUITE:PROGRAM ({', '.join(programs[n][0] for n in programs)}...)"
            )
            raise FieldError(f"{matrix.source}: cases", ("cases",), reason)
        cases = matrix.cases
    runs = tuple(RunPlan(m, u, cases) for m in matrix.memlocks for u in matrix.users)
    boots: list[BootPlan] = []
    seen: set[str] = set()
    for kernel in matrix.kernels:
        for ram in matrix.ram_mb:
            for way in matrix.transports:
                # A transport is named in the boot only when the matrix compares several.
                name = f"{kernel.label}-{ram}M" + (f"-{way}" if len(matrix.transports) > 1 else "")
                boots.append(BootPlan(_unique(_slug(name), seen), kernel, ram, runs, matrix.timeouts, way))
    return boots


def suite_cases() -> dict[str, tuple[str, ...]]:
    """The cases of each suite but the probe (whose catalogue the probe lists): SUITE:PROGRAM."""
    return {n: tuple(suites.case_name(n, p) for p in suites.get(n).programs) for n in suites.NAMES if n != suites.PROBE}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text)


def _unique(name: str, seen: set[str]) -> str:
    candidate, n = name, 2
    while candidate in seen:
        candidate, n = f"{name}.{n}", n + 1
    seen.add(candidate)
    return candidate
