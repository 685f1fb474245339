"""The code keeps the shape the design asks for: short functions, and no module reaching into another's
private names (a name that starts with `_` belongs to its module)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "cnnkit"
MAX_LINES = 80


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _is_table(node: ast.AST) -> bool:
    """A function that only returns a literal (a table of data) is exempt from the length rule."""
    body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, (ast.Dict, ast.List))


def test_no_function_is_longer_than_80_lines():
    long = [f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES and not _is_table(node)]
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_no_module_imports_another_modules_private_names():
    wrong = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnkit"):
                wrong += [f"{path.relative_to(SRC)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not wrong, "imports of another module's private names:\n" + "\n".join(wrong)


def test_each_package_exports_only_its_own_names():
    """A package's __init__ imports only from its own modules (no re-exports of other packages' names; the
    lazy-import helper aside, which it uses and does not export)."""
    wrong = []
    for init in sorted(SRC.glob("*/__init__.py")):
        package = f"cnnkit.{init.parent.name}"
        for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnkit") \
                    and node.module != "cnnkit.lazy" \
                    and not (node.module == package or node.module.startswith(package + ".")):
                wrong.append(f"{init.relative_to(SRC)}: from {node.module} import "
                             + ", ".join(a.name for a in node.names))
    assert not wrong, "package __init__ files re-exporting other packages' names:\n" + "\n".join(wrong)


def test_lazy_packages_export_what_they_list_and_start_without_torch():
    """cnnkit.data and cnnkit.train import their names on first use (the CLI starts without importing torch):
    every listed name resolves, `__all__` is the same list, and importing the CLI leaves torch unimported."""
    import importlib
    import subprocess
    import sys

    for name in ("cnnkit.data", "cnnkit.train"):
        package = importlib.import_module(name)
        assert sorted(package.__all__) == sorted(package._EXPORTS)
        assert all(getattr(package, n) is not None for n in package.__all__)
    probe = "import sys, cnnkit.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
