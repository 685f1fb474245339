"""Imports run one way, from later steps of the flow to earlier ones (the layout in the design), and no
package's files import each other in a circle."""

from __future__ import annotations

import ast
import re
from collections import deque
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cnnkit"
IMPORT = re.compile(r"^\s*(?:from|import)\s+cnnkit\.(\w+)", re.MULTILINE)

# package -> the cnnkit packages it must never import
FORBIDDEN = {
    "artifacts": {"data", "train", "evaluate", "explain", "compress", "deploy", "report", "serve", "cli", "represent", "tasks", "merge"},
    "models": {"artifacts", "data", "train", "evaluate", "explain", "compress", "deploy", "report", "serve", "cli", "represent", "tasks", "merge"},
    "data": {"train", "evaluate", "explain", "compress", "deploy", "report", "serve", "cli", "represent", "tasks", "merge"},
    "report": {"train", "evaluate", "explain", "compress", "deploy", "serve", "cli", "represent", "tasks", "merge"},
    "evaluate": {"train", "explain", "compress", "deploy", "serve", "cli", "represent"},
    "deploy": {"train", "explain", "compress", "serve", "cli", "represent"},
    "train": {"explain", "compress", "deploy", "serve", "cli", "represent"},
    "explain": {"train", "compress", "deploy", "serve", "cli", "represent"},
    "serve": {"train", "compress", "cli", "represent"},
    "represent": {"compress", "deploy", "explain", "serve", "cli"},
    "merge": {"train", "explain", "compress", "deploy", "serve", "cli", "represent"},
    # a task is below the loops that drive it: the trainer, evaluation, export and the service call it
    "tasks": {"train", "evaluate", "explain", "compress", "deploy", "serve", "cli", "represent", "merge"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    wrong = [f"{f.relative_to(SRC)}: cnnkit.{m}" for f in sorted((SRC / package).rglob("*.py"))
             for m in IMPORT.findall(f.read_text()) if m in FORBIDDEN[package]]
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


# -- circles ---------------------------------------------------------------------------------------------------

def module_name(path: Path) -> str:
    """`src/cnnkit/data/base.py` -> `cnnkit.data.base`; a package's `__init__.py` is the package."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of cnnkit, by dotted name."""
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> list[str]:
    """The cnnkit modules one import statement loads by name: `from cnnkit.a import b` is the module
    `cnnkit.a.b` when there is one, else (a name defined in it) `cnnkit.a`."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package, up `level - 1` more
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    found = []
    for name in names:
        while name and name not in known:  # `import cnnkit.a.b.c` where c is a name: the nearest module
            name = name.rpartition(".")[0]
        if name.startswith("cnnkit") and name not in found:
            found.append(name)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: the line of one such import, a top-level one if any}, every import counted,
    those inside functions too (a lazy import still makes the two files depend on each other)."""
    mods = modules()
    known = set(mods)
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(node, name, path.name == "__init__.py", known):
                    if target != name:
                        edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def package_of(module: str) -> str:
    """The top-level package a module belongs to (`cnnkit.data.base` -> `cnnkit.data`); modules directly in
    cnnkit (`cnnkit.errors`) belong to `cnnkit`."""
    parts = module.split(".")
    if len(parts) > 1 and (SRC / parts[1]).is_dir():
        return ".".join(parts[:2])
    return "cnnkit"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """The shortest path from `start` back to itself (breadth first), as the modules along it."""
    before: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(before[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in before:
                before[child] = node
                queue.append(child)
    return []


def circles() -> list[str]:
    """Each import circle inside one package, as `a.py:N -> b.py:M -> a.py` (a.py imports b.py at its line N,
    b.py imports a.py at its line M); the shortest circle through each module, none repeated."""
    full = import_graph()
    chains: list[str] = []
    seen: set[frozenset] = set()
    for package in sorted({package_of(m) for m in full}):
        members = {m for m in full if package_of(m) == package}
        graph = {m: {t for t in full[m] if t in members} for m in members}
        for component in strongly_connected(graph):
            inside = {m: graph[m] & set(component) for m in component}
            for start in component:
                cycle = shortest_cycle(inside, start)
                key = frozenset(zip(cycle, cycle[1:]))
                if not cycle or key in seen:
                    continue
                seen.add(key)
                steps = [f"{full_path(a)}:{full[a][b]}" for a, b in zip(cycle, cycle[1:])]
                chains.append(" -> ".join([*steps, str(full_path(cycle[0]))]))
    return chains


def full_path(module: str) -> Path:
    path = SRC.parent / Path(*module.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(SRC)


def test_no_import_circles_inside_a_package():
    found = circles()
    assert not found, "files that import each other in a circle (FILE:LINE imports the next):\n" + "\n".join(found)


def test_the_circle_finder_finds_a_lazy_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert shortest_cycle(graph, "b") == ["b", "c", "a", "b"]
    tree = ast.parse("def f():\n    from cnnkit.data import base\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert imported(node, "cnnkit.data.x", False, {"cnnkit.data", "cnnkit.data.base"}) == ["cnnkit.data.base"]
    node = ast.parse("from . import y").body[0]
    assert imported(node, "cnnkit.data.x", False, {"cnnkit.data", "cnnkit.data.y"}) == ["cnnkit.data.y"]
