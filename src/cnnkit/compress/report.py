"""The compression report: the measured variants as a table (Markdown, HTML), Pareto plots of accuracy against
latency and file size, and compress.json."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.artifacts import LoadedCheckpoint, atomic_write_bytes, atomic_write_text


@dataclass
class CompressResult:
    """What `compress` wrote: the folder, the measured rows, and the report's files."""

    out_dir: Path
    rows: list[dict[str, Any]]
    json_path: Path
    html_path: Path
    png_path: Path
    notes: list[str] = field(default_factory=list)


_COLUMNS = [("variant", "variant"), ("runtime", "runtime"), ("file", "file"), ("top1", "top-1"),
            ("top1_delta_pts", "Δ pts"), ("params", "params"), ("macs", "MACs"), ("file_bytes", "file KiB"),
            ("size_ratio", "smaller ×"), ("latency_ms_p50", "p50 ms (b=1)"), ("latency_ms_p99", "p99 ms"),
            ("latency_speedup", "latency ×"), ("images_per_s", "img/s"), ("throughput_speedup", "throughput ×"),
            ("model_rss_mib", "model MiB")]


def format_value(key: str, v: Any) -> str:
    """One cell of the table: percentages, KiB, millions, signed points, as the column wants."""
    if v is None:
        return "–"
    if key == "top1":  # an accuracy, as every command shows one: a percentage with two decimals
        return f"{100 * v:.2f}%"
    if key == "file_bytes":
        return f"{v / 1024:.0f}"
    if key == "model_rss_mib":
        return f"{v:.0f}"
    if key in ("params", "macs"):
        return f"{v / 1e6:.3f}M"
    if key == "top1_delta_pts":
        return f"{v:+.2f}"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 1000 else f"{v:,.0f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The measured variants as a Markdown table, in the report's columns."""
    lines = ["| " + " | ".join(h for _, h in _COLUMNS) + " |", "|" + " --- |" * len(_COLUMNS)]
    lines += ["| " + " | ".join(format_value(k, r.get(k)) for k, _ in _COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _pareto_png(rows: list[dict[str, Any]], path: Path) -> None:
    """Top-1 against latency and against file size, each with its Pareto front."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "latency_ms_p50", "latency at batch 1, p50 (ms)"),
                           (axes[1], "file_bytes", "file size (KiB)")):
        pts = [(r[key] / (1024 if key == "file_bytes" else 1), 100 * r["top1"], f"{r['variant']} / {r['runtime']}")
               for r in rows]
        for x, y, lab in pts:
            ax.scatter(x, y, s=30)
            ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best = [], -1.0
        for x, y, _ in sorted(pts):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*front), "k--", lw=0.8, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(out: Path, rows: list[dict[str, Any]], src: LoadedCheckpoint, data: str) -> CompressResult:
    """compress.json (the rows and how they were measured), pareto.png and report.html in `out`."""
    png = out / "pareto.png"
    _pareto_png(rows, png)
    info = {"source": str(src.path), "model": src.meta["model"], "data": data, "split": rows[0].get("split", "test"),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
    jpath = out / "compress.json"
    atomic_write_text(jpath, json.dumps({**info, "rows": rows}, indent=2, default=str) + "\n")
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in _COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(k, r.get(k)))}</td>" for k, _ in _COLUMNS) + "</tr>"
                   for r in rows)
    notes = [f"<li>{html.escape(r['file'])}: runs in float: {html.escape(', '.join(r['float_ops']))}</li>"
             for r in rows if r.get("float_ops")]
    notes += [f"<li>{html.escape(r['file'])}: {100 * r['sparsity']:.1f}% of conv/linear weights are zero; "
              f"gzip {r['gzip_bytes'] / 1024:.0f} KiB. Dense kernels run the zeros: a size result, not a speed result.</li>"
              for r in rows if "sparsity" in r]
    img = base64.b64encode(png.read_bytes()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cnnkit compress: {html.escape(info['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style>
</head><body><h1>Compression report: {html.escape(info['model'])}</h1>
<p>Source <code>{html.escape(info['source'])}</code>; accuracy on {html.escape(data)}, split {html.escape(info['split'])}; latency at batch 1
(p50/p99), throughput at batch {rows[0]['throughput_batch']}, {info['torch_threads']} threads, torch {html.escape(info['torch'])}.
Every ratio is against the first row, measured in the same run.</p>
<table><tr>{head}</tr>{body}</table><ul>{''.join(notes)}</ul>
<img alt="Pareto plots" src="data:image/png;base64,{img}"></body></html>
"""
    hpath = out / "report.html"
    atomic_write_text(hpath, page)
    return CompressResult(out, rows, jpath, hpath, png)
