"""HTML reports whose figures are PNG files beside them, referenced by relative path (viewable offline)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from cnnkit.artifacts import atomic_write_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}h2{margin-top:1.6em}"""


def image_tag(png: Path, alt: str, report_dir: Path) -> str:
    """An <img> that references `png` relative to the report's folder."""
    src = os.path.relpath(Path(png).resolve(), Path(report_dir).resolve())
    return f'<img alt="{html.escape(alt)}" src="{html.escape(Path(src).as_posix())}">'


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write an HTML page of (heading, html-body) sections."""
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{content}\n" for h, content in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}</body></html>\n")
    atomic_write_text(Path(path), page)
    return Path(path)
