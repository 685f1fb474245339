"""Imports run one way, from later steps of the flow to earlier ones (the layout in the design)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnkit"
IMPORT = re.compile(r"^\s*(?:from|import)\s+cnnkit\.(\w+)", re.MULTILINE)

# package -> the cnnkit packages it must never import
FORBIDDEN = {
    "artifacts": {"data", "train", "evaluate", "explain", "compress", "deploy", "report", "serve", "cli", "represent"},
    "models": {"artifacts", "data", "train", "evaluate", "explain", "compress", "deploy", "report", "serve", "cli", "represent"},
    "data": {"train", "evaluate", "explain", "compress", "deploy", "report", "serve", "cli", "represent"},
    "report": {"train", "evaluate", "explain", "compress", "deploy", "serve", "cli", "represent"},
    "evaluate": {"train", "explain", "compress", "deploy", "serve", "cli", "represent"},
    "deploy": {"train", "explain", "compress", "serve", "cli", "represent"},
    "train": {"explain", "compress", "deploy", "serve", "cli", "represent"},
    "explain": {"train", "compress", "deploy", "serve", "cli", "represent"},
    "serve": {"train", "compress", "cli", "represent"},
    "represent": {"compress", "deploy", "explain", "serve", "cli"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    wrong = [f"{f.relative_to(SRC)}: cnnkit.{m}" for f in sorted((SRC / package).rglob("*.py"))
             for m in IMPORT.findall(f.read_text()) if m in FORBIDDEN[package]]
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)
