"""The shape docs/architecture.md describes: stages that import only stages below them, no import
cycle (counting imports made inside functions), no module too long to read in one sitting, kernel
kinds known only to harness/kernels/sources/, and every module on the map."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "harness"
MAX_LINES = 450

# Lowest first: a module may import its own stage and the stages before it, never one after it.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (name, frozenset(parts))
    for name, parts in (
        (
            "shared records and helpers",
            {
                "harness",
                "errors",
                "files",
                "jsondoc",
                "streams",
                "results",
                "versions",
                "sizes",
                "yamlfile",
                "processes",
            },
        ),
        ("cache", {"cache"}),
        ("debian", {"debian"}),
        ("manifest", {"manifest"}),
        ("kernels", {"kernels"}),
        ("kit", {"kit"}),
        ("plan", {"plan"}),
        ("judge", {"judge"}),
        ("boot", {"boot"}),
        ("report", {"report"}),
        ("history", {"history"}),
        ("what ties the stages together", {"run", "merge", "replay", "rejudge", "bisect", "prune", "reuse"}),
        ("cli", {"cli", "__main__"}),
    )
)
RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(HARNESS.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: set[str], inside_functions: bool) -> set[str]:
    """The harness modules `path` imports at module level, or (inside_functions) inside functions."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = set()
    for node in ast.walk(tree):
        if (id(node) in top) == inside_functions:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: a relative import"
            base = node.module or ""
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: (imports(path, set(known), False) | imports(path, set(known), True)) - {name}
        for name, path in known.items()
    }


def rank(module: str) -> int:
    parts = module.split(".")
    return RANK["harness" if len(parts) == 1 else parts[1]]


def test_every_module_belongs_to_a_stage() -> None:
    assert [m for m in modules() if m != "harness" and m.split(".")[1] not in RANK] == []


def test_stages_import_only_the_stages_before_them() -> None:
    against = sorted(
        f"{a} ({LAYERS[rank(a)][0]}) imports {b} ({LAYERS[rank(b)][0]})"
        for a, deps in graph().items()
        for b in deps
        if rank(b) > rank(a)
    )
    assert against == []


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(edges[name]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)


def test_no_harness_module_is_imported_inside_a_function() -> None:
    """An import inside a function hides an edge from readers (and once hid a cycle): none is left."""
    known = modules()
    hidden = {name: sorted(deps) for name, path in known.items() if (deps := imports(path, set(known), True))}
    assert hidden == {}


def test_every_module_reads_in_one_sitting() -> None:
    lines = {str(p.relative_to(HARNESS)): len(p.read_text().splitlines()) for p in HARNESS.rglob("*.py")}
    assert {name: n for name, n in lines.items() if n > MAX_LINES} == {}


def test_only_the_sources_know_the_kinds_of_kernel() -> None:
    kinds = ("DebianKernel", "PathKernel", "GitKernel")
    outside = [
        str(p.relative_to(HARNESS))
        for p in HARNESS.rglob("*.py")
        if "sources" not in p.parts and any(k in p.read_text() for k in kinds)
    ]
    assert outside == []


def test_every_package_and_module_is_on_the_map() -> None:
    """docs/architecture.md is the one module map: it names every file of the package."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(HARNESS.rglob("*.py")):
        rel = path.relative_to(HARNESS)
        if rel.name in ("__init__.py", "__main__.py") and rel.parent != Path("."):
            named = f"{rel.parent.as_posix()}/"
        elif rel.name in ("__init__.py", "__main__.py"):
            continue
        else:
            named = rel.as_posix()
        if f"`{named}`" not in text and f"`{rel.name}`" not in text:
            missing.append(named)
    assert missing == []
