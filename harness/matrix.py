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

import yaml

from harness.errors import UserError

USERS = ("root", "user")  # the accounts the guest image has
MIN_RAM_MB = 96  # Debian kernels panic unpacking the initramfs below this (PROTOTYPE pitfall 11)
DEFAULT_MATRIX = "default-matrix.yaml"


@dataclass(frozen=True)
class DebianKernel:
    """A kernel from Debian's archive: the newest `package` across `suites`, or the concrete `abi`."""

    suites: tuple[str, ...]
    package: str = "linux-image-amd64"
    abi: str | None = None
    version: str | None = None  # an upstream line such as "6.19": the newest kernel of that line
    origin: str = field(default="", compare=False)  # "file:line: kernels.N", for messages

    @property
    def label(self) -> str:
        base = "+".join(self.suites)
        pinned = self.abi or self.version
        return f"{base}-{pinned}" if pinned else base


@dataclass(frozen=True)
class PathKernel:
    """A kernel image on disk (bzImage, vmlinuz or vmlinux), with an optional modules tree."""

    path: Path
    modules: Path | None = None
    origin: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class GitKernel:
    """A kernel built from a git tree at `rev`, with a config fragment merged onto `base`."""

    repo: Path
    rev: str
    config: Path | None = None  # fragment; None: images/kernel.config
    base: str = "tinyconfig"  # or defconfig
    origin: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.repo.name}@{self.rev}"


KernelSpec = DebianKernel | PathKernel | GitKernel
GIT_BASES = ("tinyconfig", "defconfig")


@dataclass(frozen=True)
class Memlock:
    """An RLIMIT_MEMLOCK pair in bytes; None means RLIM_INFINITY."""

    soft: int | None
    hard: int | None

    @property
    def label(self) -> str:
        if self.soft == self.hard:
            return format_size(self.soft)
        return f"{format_size(self.soft)}:{format_size(self.hard)}"


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


# --- sizes -------------------------------------------------------------------------------------

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """'64K' -> 65536. Plain integers are bytes. Raises ValueError with a reason."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64K, 8M or 0")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 64K, 8M or 0")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size (use a number with K, M or G, e.g. 64K)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def format_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("T", "G", "M", "K"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


# --- loading -----------------------------------------------------------------------------------


class _Where:
    """Maps a key path in the parsed document to its line, from YAML's node tree."""

    def __init__(self, source: str, root: yaml.Node | None) -> None:
        self.source = source
        self.lines: dict[tuple[object, ...], int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[object, ...]) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                # errors look keys up as parsed (123, True), not as written ("123", "yes")
                key = yaml.SafeLoader("").construct_object(k) if isinstance(k, yaml.ScalarNode) else k.value
                self.lines[(*path, key)] = k.start_mark.line + 1
                self._walk(v, (*path, key))
                self.lines[(*path, key)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def origin(self, path: tuple[object, ...]) -> str:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        key = ".".join(str(p) for p in path) or "(top level)"
        return f"{self.source}:{self.lines.get(probe, 1)}: {key}"

    def error(self, path: tuple[object, ...], message: str) -> UserError:
        return UserError(f"{self.origin(path)}: {message}")


_TOP_KEYS = {"kernels", "ram", "memlock", "users", "cases", "timeouts"}


def load(path: Path) -> Matrix:
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read matrix file: {e.strerror}; give an existing YAML file") from e
    return parse(text, str(path))


def load_default() -> Matrix:
    return parse(default_text(), f"<default matrix: harness/{DEFAULT_MATRIX}>")


def default_text() -> str:
    return resources.files("harness").joinpath(DEFAULT_MATRIX).read_text()


def read_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data; bad YAML is one line naming source and line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "1"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{source}:{line}: invalid YAML: {problem}") from None


def parse(text: str, source: str) -> Matrix:
    root, data = read_yaml(text, source)
    where = _Where(source, root)
    if not isinstance(data, dict):
        raise where.error((), "a matrix file is a mapping with at least a 'kernels' list")
    for key in data:
        if key not in _TOP_KEYS:
            raise where.error((key,), f"unknown key; allowed: {', '.join(sorted(_TOP_KEYS))}")
    if "kernels" not in data:
        raise where.error((), "missing 'kernels': list at least one kernel")

    kernels = tuple(_kernel(where, ("kernels", i), k) for i, k in enumerate(_list(where, data, "kernels")))
    ram = tuple(_ram(where, ("ram", i), v) for i, v in enumerate(_list(where, data, "ram", ["256M"])))
    memlocks = tuple(
        _memlock(where, ("memlock", i), v) for i, v in enumerate(_list(where, data, "memlock", ["default"]))
    )
    users = tuple(_user(where, ("users", i), v) for i, v in enumerate(_list(where, data, "users", ["root"])))
    cases = _cases(where, data.get("cases", "all"))
    timeouts = _timeouts(where, data.get("timeouts", {}))
    for name, axis in (("ram", ram), ("memlock", memlocks), ("users", users), ("cases", cases or ())):
        if len(set(axis)) != len(axis):
            raise where.error((name,), "lists the same value twice; remove the duplicate")
    return Matrix(source, kernels, ram, memlocks, users, cases, timeouts)


def _list(where: _Where, data: dict[str, Any], key: str, default: list[Any] | None = None) -> list[Any]:
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


def _kernel(where: _Where, path: tuple[object, ...], item: object) -> KernelSpec:
    if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in ("debian", "path", "git"):
        if isinstance(item, dict) and set(item) == {"path", "modules"}:
            return _path_kernel(where, path, item)
        raise where.error(path, "each kernel is {debian: SUITE or {suite, package, abi}}, {path: FILE} or "
                                "{git: {repo, rev, config}}")  # fmt: skip
    kind, value = next(iter(item.items()))
    if kind == "path":
        return _path_kernel(where, path, item)
    if kind == "git":
        return _git_kernel(where, (*path, "git"), value)
    if isinstance(value, str):
        value = {"suite": value}
    if not isinstance(value, dict):
        raise where.error((*path, "debian"), "expected a suite name or a mapping {suite, package, abi}")
    for key in value:
        if key not in ("suite", "package", "abi", "version"):
            raise where.error((*path, "debian", key), "unknown key; allowed: suite, package, abi, version")
    suites = value.get("suite")
    if isinstance(suites, str):
        suites = [suites]
    if not suites or not all(isinstance(s, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", s) for s in suites):
        raise where.error((*path, "debian", "suite"), "give a Debian suite name such as bookworm, or a list")
    package = value.get("package", "linux-image-amd64")
    abi = value.get("abi")
    version = value.get("version")
    if version is not None:
        if not isinstance(version, str):  # YAML reads 6.10 as the number 6.1: only text is exact
            raise where.error((*path, "debian", "version"), 'quote it, e.g. version: "6.19" (YAML reads 6.10 as 6.1)')
        if not re.fullmatch(r"\d+\.\d+", version):
            raise where.error((*path, "debian", "version"), f"{version!r}: give an upstream line such as 6.19")
        if abi is not None:
            raise where.error((*path, "debian", "version"), "give either abi or version, not both")
    for key, v in (("package", package), ("abi", abi)):
        if v is not None and not (isinstance(v, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+~-]*", v)):
            raise where.error((*path, "debian", key), f"{v!r} is not a Debian package or ABI name")
    return DebianKernel(tuple(suites), package, abi, version, where.origin(path))


def _path_kernel(where: _Where, path: tuple[object, ...], item: dict[str, Any]) -> PathKernel:
    for key in item:
        if key not in ("path", "modules"):
            raise where.error((*path, key), "unknown key; a path kernel has 'path' and optional 'modules'")
    file = item.get("path")
    if not isinstance(file, str) or not file:
        raise where.error((*path, "path"), "give the file name of a bzImage, vmlinuz or vmlinux")
    base = Path(where.source).parent if not where.source.startswith("<") else Path.cwd()
    kernel = (base / file).expanduser()
    if not kernel.is_file():
        raise where.error((*path, "path"), f"{kernel} is not a file; give an existing kernel image")
    modules = item.get("modules")
    mod_path = None
    if modules is not None:
        if not isinstance(modules, str):
            raise where.error((*path, "modules"), "give a directory such as /lib/modules/6.1.0-50-amd64")
        mod_path = (base / modules).expanduser()
        if not mod_path.is_dir():
            raise where.error((*path, "modules"), f"{mod_path} is not a directory")
    return PathKernel(kernel, mod_path, where.origin(path))


def _git_kernel(where: _Where, path: tuple[object, ...], value: object) -> GitKernel:
    if not isinstance(value, dict):
        raise where.error(path, "give {repo: DIR, rev: REV}, optionally config: FRAGMENT, base: tinyconfig|defconfig")
    for key in value:
        if key not in ("repo", "rev", "config", "base"):
            raise where.error((*path, key), "unknown key; allowed: repo, rev, config, base")
    base_dir = Path(where.source).parent if not where.source.startswith("<") else Path.cwd()
    repo, rev = value.get("repo"), value.get("rev")
    if not isinstance(repo, str) or not repo:
        raise where.error((*path, "repo"), "give the directory of a kernel git tree")
    repo_path = (base_dir / repo).expanduser()
    if not (repo_path / ".git").exists():
        raise where.error((*path, "repo"), f"{repo_path} is not a git work tree; give a kernel git checkout")
    if not isinstance(rev, str) or not rev:
        raise where.error((*path, "rev"), "give a revision: a commit, tag or branch (quote numbers: '1a2b3c')")
    config = value.get("config")
    config_path = None
    if config is not None:
        config_path = (base_dir / str(config)).expanduser()
        if not config_path.is_file():
            raise where.error((*path, "config"), f"{config_path} is not a file; give a config fragment")
    base = value.get("base", "tinyconfig")
    if base not in GIT_BASES:
        raise where.error((*path, "base"), f"{base!r}: give one of {', '.join(GIT_BASES)}")
    return GitKernel(repo_path.resolve(), rev, config_path, base, where.origin(path[:-1]))


def _ram(where: _Where, path: tuple[object, ...], value: object) -> int:
    try:
        size = parse_size(value)
    except ValueError as e:
        raise where.error(path, f"{e}; guest RAM is a size such as 256M") from None
    mb = size // (1 << 20)
    if isinstance(value, int) or size % (1 << 20):
        raise where.error(path, "give guest RAM in whole megabytes with a unit, such as 256M")
    if mb < MIN_RAM_MB:
        raise where.error(path, f"{value} is too small: Debian kernels need at least {MIN_RAM_MB}M to boot")
    return mb


def _limit(where: _Where, path: tuple[object, ...], value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() in ("unlimited", "infinity"):
        return None
    try:
        return parse_size(value)
    except ValueError as e:
        raise where.error(path, f"{e}; a limit is a size such as 64K, 0 or 'unlimited'") from None


def _memlock(where: _Where, path: tuple[object, ...], value: object) -> Memlock | None:
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


def _user(where: _Where, path: tuple[object, ...], value: object) -> str:
    if value not in USERS:
        raise where.error(path, f"{value!r} is not a guest user; the image has: {', '.join(USERS)}")
    return str(value)


def _cases(where: _Where, value: object) -> tuple[str, ...] | None:
    if value == "all":
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise where.error(("cases",), "give 'all' or a list of probe case names")
    return tuple(names)


def _timeouts(where: _Where, value: object) -> Timeouts:
    if not isinstance(value, dict):
        raise where.error(("timeouts",), "expected a mapping such as {boot: 180, case: 60}")
    out: dict[str, float] = {}
    for key, v in value.items():
        if key not in ("boot", "case"):
            raise where.error(("timeouts", key), "unknown key; allowed: boot, case")
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise where.error(("timeouts", key), "give a positive number of seconds")
        out[key] = float(v)
    return Timeouts(**out)


# --- expansion (pure) --------------------------------------------------------------------------


def expand(matrix: Matrix, catalogue: Sequence[str]) -> list[BootPlan]:
    """Boots in matrix order: one per (kernel, RAM); each runs every (limit, user) with all cases."""
    if matrix.cases is None:
        cases = tuple(catalogue)
    else:
        unknown = [c for c in matrix.cases if c not in catalogue]
        if unknown:
            raise UserError(
                f"{matrix.source}: cases: unknown case {unknown[0]!r}; "
                f"`harness cases` lists the {len(catalogue)} the probe has"
            )
        cases = matrix.cases
    runs = tuple(RunPlan(m, u, cases) for m in matrix.memlocks for u in matrix.users)
    boots: list[BootPlan] = []
    seen: set[str] = set()
    for kernel in matrix.kernels:
        for ram in matrix.ram_mb:
            boot_id = _unique(_slug(f"{kernel.label}-{ram}M"), seen)
            boots.append(BootPlan(boot_id, kernel, ram, runs, matrix.timeouts))
    return boots


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text)


def _unique(name: str, seen: set[str]) -> str:
    candidate, n = name, 2
    while candidate in seen:
        candidate, n = f"{name}.{n}", n + 1
    seen.add(candidate)
    return candidate

