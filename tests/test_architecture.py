"""The shape docs/architecture.md describes: no import cycle in harness/, no module too long to read
in one sitting, and kernel kinds known only to harness/sources/."""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"
MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(HARNESS.rglob("*.py")):
        parts = path.relative_to(HARNESS.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The harness modules `name` imports at module level (not inside functions; no relative imports)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: a relative import"
            base = node.module or ""
            for a in node.names:
                target = f"{base}.{a.name}"
                out.add(target if target in known else base)
    return {m for m in out if m in known and m != name}


def test_no_import_cycle() -> None:
    known = modules()
    graph = {name: imports(name, path, set(known)) for name, path in known.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert "harness.report" not in graph  # the old report/overview pair, which imported each other


def test_every_module_reads_in_one_sitting() -> None:
    lines = {str(p.relative_to(HARNESS)): len(p.read_text().splitlines()) for p in HARNESS.rglob("*.py")}
    assert {name: n for name, n in lines.items() if n > MAX_LINES} == {}


def test_only_the_sources_know_the_kinds_of_kernel() -> None:
    kinds = ("DebianKernel", "PathKernel", "GitKernel")
    outside = [str(p.relative_to(HARNESS)) for p in HARNESS.rglob("*.py")
               if "sources" not in p.parts and any(k in p.read_text() for k in kinds)]  # fmt: skip
    assert outside == []
