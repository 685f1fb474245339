"""The compression report: the measured variants as a table (Markdown, HTML), Pareto plots of accuracy against
latency and file size, and compress.json. The accuracy is the task's headline metric, as `cnnkit bench` names
it in each row (`metric`: top-1 for a classifier, mIoU for a segmentation model)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.artifacts import LoadedCheckpoint, atomic_write_bytes, atomic_write_text
from cnnkit.deploy.bench import metric_key


@dataclass
class CompressResult:
    """What `compress` wrote: the folder, the measured rows, and the report's files."""

    out_dir: Path
    rows: list[dict[str, Any]]
    json_path: Path
    html_path: Path
    png_path: Path
    notes: list[str] = field(default_factory=list)


def metric_of(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The rows' accuracy metric as (key, label): top1/top-1 for a classifier, miou/mIoU for a segmentation model,
    psnrydb/PSNR (Y, dB) for a restoration model."""
    label = rows[0].get("metric", "top-1")
    return metric_key(label), label


def in_decibels(key: str) -> bool:
    """Whether a metric is in dB (PSNR) rather than a fraction shown in percent (top-1, mIoU)."""
    return key.startswith("psnr")


def delta_key(key: str) -> str:
    """The row key of a metric's difference from the first variant: in points of percent, or in dB."""
    return f"{key}_delta_{'db' if in_decibels(key) else 'pts'}"


def shown_metric(key: str, v: float) -> str:
    """A metric's value as every command shows it: a percentage with two decimals, or dB."""
    return f"{v:.2f} dB" if in_decibels(key) else f"{100 * v:.2f}%"


def columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The report's columns (row key, header), the accuracy named by the rows' metric."""
    key, label = metric_of(rows)
    return [("variant", "variant"), ("runtime", "runtime"), ("file", "file"), (key, label),
            (delta_key(key), "Δ dB" if in_decibels(key) else "Δ pts"), ("params", "params"), ("macs", "MACs"),
            ("file_bytes", "file KiB"),
            ("size_ratio", "smaller ×"), ("latency_ms_p50", "p50 ms (b=1)"), ("latency_ms_p99", "p99 ms"),
            ("latency_speedup", "latency ×"), ("images_per_s", "img/s"), ("throughput_speedup", "throughput ×"),
            ("model_rss_mib", "model MiB")]


def format_value(key: str, v: Any) -> str:
    """One cell of the table: percentages, KiB, millions, signed points, as the column wants."""
    if v is None:
        return "–"
    if key in ("top1", "miou") or in_decibels(key):  # a metric as every command shows one
        return shown_metric(key, v)
    if key == "file_bytes":
        return f"{v / 1024:.0f}"
    if key == "model_rss_mib":
        return f"{v:.0f}"
    if key in ("params", "macs"):
        return f"{v / 1e6:.3f}M"
    if key.endswith(("_delta_pts", "_delta_db")):
        return f"{v:+.2f}"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 1000 else f"{v:,.0f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The measured variants as a Markdown table, in the report's columns."""
    cols = columns(rows)
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(format_value(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _pareto_png(rows: list[dict[str, Any]], path: Path) -> None:
    """The accuracy (top-1, mIoU) against latency and against file size, each with its Pareto front."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, label = metric_of(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "latency_ms_p50", "latency at batch 1, p50 (ms)"),
                           (axes[1], "file_bytes", "file size (KiB)")):
        unit = 1 if in_decibels(metric) else 100
        pts = [(r[key] / (1024 if key == "file_bytes" else 1), unit * r[metric], f"{r['variant']} / {r['runtime']}")
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
        ax.set_ylabel(label if in_decibels(metric) else f"{label} (%)")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(out: Path, rows: list[dict[str, Any]], src: LoadedCheckpoint, data: str,
                 skipped: list[str] | None = None, advice: list[str] | None = None) -> CompressResult:
    """compress.json (the rows, how they were measured, the recipes `skipped` and why, and `advice`: which file
    to ship), pareto.png and
    report.html in `out`."""
    skipped = list(skipped or [])
    png = out / "pareto.png"
    _pareto_png(rows, png)
    info = {"source": str(src.path), "model": src.meta["model"], "data": data, "split": rows[0].get("split", "test"),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
    jpath = out / "compress.json"
    atomic_write_text(jpath, json.dumps({**info, "skipped": skipped, "advice": list(advice or []), "rows": rows}, indent=2, default=str) + "\n")
    cols = columns(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(k, r.get(k)))}</td>" for k, _ in cols) + "</tr>"
                   for r in rows)
    notes = [f"<li>{html.escape(why)}</li>" for why in [*skipped, *(advice or [])]]
    notes += [f"<li>{html.escape(r['file'])}: runs in float: {html.escape(', '.join(r['float_ops']))}</li>"
              for r in rows if r.get("float_ops")]
    notes += [f"<li>{html.escape(r['file'])}: {100 * r['sparsity']:.1f}% of conv/linear weights are zero; "
              f"gzip {r['gzip_bytes'] / 1024:.0f} KiB. Dense kernels run the zeros: a size result, not a speed result.</li>"
              for r in rows if "sparsity" in r]
    img = base64.b64encode(png.read_bytes()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cnnkit compress: {html.escape(info['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style>
</head><body><h1>Compression report: {html.escape(info['model'])}</h1>
<p>Source <code>{html.escape(info['source'])}</code>; {html.escape(metric_of(rows)[1])} on {html.escape(data)}, split {html.escape(info['split'])}; latency at batch 1
(p50/p99), throughput at batch {rows[0]['throughput_batch']}, {info['torch_threads']} threads, torch {html.escape(info['torch'])}.
Every ratio is against the first row, measured in the same run.</p>
<table><tr>{head}</tr>{body}</table><ul>{''.join(notes)}</ul>
<img alt="Pareto plots" src="data:image/png;base64,{img}"></body></html>
"""
    hpath = out / "report.html"
    atomic_write_text(hpath, page)
    return CompressResult(out, rows, jpath, hpath, png, skipped)
