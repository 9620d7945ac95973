"""The matrix a command line asks for: `harness run --kernel SPEC --case GLOB --memlock L --user U
--ram R` over a matrix file (or the default matrix), each flag replacing that field.

Pure but for what the matrix's own parsing looks at (a `path:` kernel must exist). Each flag's
value becomes the YAML a matrix would hold there (`--kernel debian:bookworm@6.1` is
`{debian: {suite: bookworm, version: "6.1"}}`) and the whole goes through `matrix.from_data`, so
every check and message is the matrix's; a message names the flag and its value where a matrix
file would name its line and key.
"""

from __future__ import annotations

import difflib
import fnmatch
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from harness import yamlfile
from harness.errors import UserError
from harness.plan import matrix
from harness.yamlfile import KeyPath, Where

# The matrix key each flag replaces, and the flag (in the order a command line is echoed).
FLAGS = {"kernels": "--kernel", "cases": "--case", "memlock": "--memlock", "users": "--user", "ram": "--ram"}
KERNEL_FORMS = "a kernel image's path (bzImage, vmlinuz, vmlinux), debian:SUITE[@VERSION] or git:REPO@REV"


@dataclass(frozen=True)
class Flags:
    """What the command line gave, as written; an empty field leaves the matrix's."""

    kernels: tuple[str, ...] = ()
    cases: tuple[str, ...] = ()
    memlock: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    ram: tuple[str, ...] = ()

    def given(self) -> dict[str, tuple[str, ...]]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def words(self) -> str:
        """The flags as a shell would take them back."""
        return shlex.join(w for key, values in self.given().items() for v in values for w in (FLAGS[key], v))


@dataclass(frozen=True)
class Planned:
    """The matrix a run runs, the text its manifest records (what a replay parses), and each kernel
    as it was given (the flag's SPEC, or the matrix's entry), for a dry run to print."""

    matrix: matrix.Matrix
    text: str
    kernels: tuple[str, ...]


class _FlagWhere(Where):
    """Names the flag and the value it gave for a field the flags replaced; the file's line and key
    for the rest."""

    def __init__(self, source: str, root: yaml.Node | None, given: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__(source, root)
        self.given = given

    def origin(self, path: KeyPath) -> str:
        if not path or path[0] not in self.given:
            return super().origin(path)
        key, values = str(path[0]), self.given[str(path[0])]
        at = path[1] if len(path) > 1 else None
        # --case globs are expanded into names: an index is no longer the glob's
        if key != "cases" and isinstance(at, int) and 0 <= at < len(values):
            return f"{FLAGS[key]} {values[at]}"
        return FLAGS[key]


def apply(text: str, source: str, flags: Flags, catalogue: Sequence[str], cwd: Path) -> Planned:
    """The matrix of `text` (read from `source`) with the fields `flags` gives replaced; relative
    paths in flags are taken from `cwd`. `catalogue` is the probe's, for --case globs."""
    root, data = yamlfile.read(text, source)
    given = flags.given()
    if not given or not isinstance(data, dict):
        mx = matrix.from_data(data, Where(source, root))  # a document that is no mapping fails here
        return Planned(mx, text, tuple(_flow(k) for k in _items(data["kernels"])))
    merged = dict(data)
    if flags.kernels:
        merged["kernels"] = [kernel_entry(spec, cwd) for spec in flags.kernels]
    if flags.cases:
        merged["cases"] = select_cases(flags.cases, catalogue)
    if flags.memlock:
        merged["memlock"] = [_memlock(v) for v in flags.memlock]
    if flags.users:
        merged["users"] = list(flags.users)
    if flags.ram:
        merged["ram"] = list(flags.ram)
    mx = matrix.from_data(merged, _FlagWhere(source, root, given))
    mx = replace(mx, source=f"{source} with {flags.words()}")
    shown = flags.kernels or tuple(_flow(k) for k in _items(merged["kernels"]))
    header = "# " + " ".join(mx.source.split()) + "\n"  # a comment: one line, whatever the file is called
    return Planned(mx, header + yaml.safe_dump(merged, sort_keys=False), shown)


def kernel_entry(spec: str, cwd: Path) -> dict[str, Any]:
    """The matrix entry of one --kernel SPEC: `debian:SUITE[@VERSION]` (suites joined by commas;
    VERSION a line, a range, or an ABI such as 6.1.0-50-amd64), `git:REPO@REV`, else a path."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "debian":
        suite, at, version = rest.partition("@")
        value: dict[str, Any] = {"suite": suite.split(",") if "," in suite else suite}
        if at:
            value["abi" if "-" in version else "version"] = version  # an ABI has a dash, a range never
        return {"debian": value}
    if sep and kind == "git":
        repo, rev = _repo_rev(rest, cwd)
        if not rev:
            raise UserError(f"--kernel {spec}: give git:REPO@REV, such as git:~/src/linux@v6.12")
        return {"git": {"repo": str(cwd / Path(repo).expanduser()), "rev": rev}}
    path = cwd / Path(spec).expanduser()
    if sep and kind.isalpha() and not path.exists():  # debain:bookworm is no file either
        raise UserError(f"--kernel {spec}: no such file, and {kind}: is no kind of kernel; give {KERNEL_FORMS}")
    return {"path": str(path)}  # the path source says whether it is a file


def _repo_rev(text: str, cwd: Path) -> tuple[str, str]:
    """REPO@REV split at the first @ after which a directory ends (a revision may hold an @: HEAD@{1})."""
    cuts = [i for i, c in enumerate(text) if c == "@"]
    for i in cuts:
        if (cwd / Path(text[:i]).expanduser()).is_dir():
            return text[:i], text[i + 1 :]
    return (text[: cuts[0]], text[cuts[0] + 1 :]) if cuts else (text, "")


def select_cases(globs: Sequence[str], catalogue: Sequence[str]) -> list[str]:
    """The cases `globs` name, each glob's in catalogue order (the probe's, then each suite's
    SUITE:PROGRAM), each once; a glob that names none is bad input with the nearest names."""
    names = [*catalogue, *(c for group in matrix.suite_cases().values() for c in group)]
    chosen: dict[str, None] = {}
    for glob in globs:
        hits = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            near = difflib.get_close_matches(glob.strip("*?"), names, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
            raise UserError(
                f"--case {glob}: matches no case; {hint}`harness cases` lists the probe's {len(catalogue)}, "
                "a suite's are SUITE:PROGRAM"
            )
        chosen.update(dict.fromkeys(hits))
    return list(chosen)


def _memlock(value: str) -> object:
    """SOFT:HARD is a matrix's {soft, hard}; anything else as a matrix would hold it."""
    soft, sep, hard = value.partition(":")
    return {"soft": soft, "hard": hard} if sep else value


def _items(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


def _flow(entry: object) -> str:
    """A matrix entry on one line, as YAML's flow style writes it: {debian: bookworm}."""
    return (
        str(yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=1 << 16))
        .strip()
        .removesuffix("...")
        .strip()
    )
