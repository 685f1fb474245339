"""`cnnkit export` and `cnnkit bench`: ship a checkpoint and measure what ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import stdout, summary
from cnnkit.cli.options import Amp, Checkpoint, DataDir, Device, check_early
from cnnkit.errors import ConfigError


def export(
    checkpoint: Checkpoint,
    out: Annotated[Optional[Path], typer.Option(help="The file to write (default: next to the checkpoint).")] = None,
    format: Annotated[str, typer.Option("--format", help="onnx (checked in ONNX Runtime) or torch-export "
                                                         "(.pt2).")] = "onnx",
    atol: Annotated[Optional[float], typer.Option(help="Largest output difference allowed against PyTorch (default "
                                                       "1e-4 for ONNX, 1e-5 for torch.export).")] = None,
    fold_bn: Annotated[bool, typer.Option(help="Fold each BatchNorm that follows a convolution into it "
                                               "first.")] = True,
) -> None:
    """Export a checkpoint (dynamic batch) with its JSON sidecar, checked against PyTorch before writing."""
    from cnnkit.deploy import export_onnx, export_program

    if format not in ("onnx", "torch-export"):
        raise ConfigError(f"unknown export format {format!r}; choose onnx or torch-export")
    fn, default = (export_onnx, 1e-4) if format == "onnx" else (export_program, 1e-5)
    r = fn(checkpoint, out, atol=default if atol is None else atol, fold_bn=fold_bn)
    folded = json.loads(r.sidecar.read_text()).get("bn_folded", 0)
    summary("export", {format: r.path, "sidecar": r.sidecar, "BatchNorms folded": folded,
                       "max |artifact - torch|": f"{r.max_abs_diff:.2e}"})


def bench(
    targets: Annotated[list[Path], typer.Argument(help="Run directories, checkpoints, .onnx or .pt2 artifacts.")],
    data: Annotated[Optional[str], typer.Option(help="Also measure top-1 on this dataset's test split.")] = None,
    data_dir: DataDir = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the throughput measurement.")] = 64,
    repeats: Annotated[int, typer.Option(min=3, help="Timed runs at batch 1 (after warm-up).")] = 30,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the measurements as JSON.")] = None,
    device: Device = "auto",
    amp: Amp = "off",
) -> None:
    """Parameters, MACs, file size, latency p50/p99 at batch 1, throughput, peak memory, accuracy."""
    from cnnkit.artifacts import atomic_write_text
    from cnnkit.deploy.bench import bench_many

    if json_out is not None and json_out.is_dir():  # before minutes of measuring
        raise ConfigError(f"--json {json_out} is a folder; give the JSON file to write, e.g. {json_out / 'bench.json'}")
    if json_out is not None:
        from cnnkit.artifacts.files import check_writable

        check_writable([json_out], "--json")  # a file cnnkit did not write, the file-system root: refused now
    check_early(device=device, amp=amp)
    rows = bench_many(targets, data, data_dir=data_dir, batch=batch, repeats=repeats, device=device, amp=amp)
    where = ", ".join(sorted({f"{r['device']} {r['precision']}" for r in rows}))
    t = Table(title=f"bench ({where}; {rows[0]['torch_threads']} torch threads)", title_justify="left")
    cols = ["target", "params", "MMACs", "MB on disk", "p50 ms", "p99 ms", f"img/s @{batch}", "peak RSS MiB", "model MiB"]
    cols += ["top-1"] if data else []
    for c in cols:
        t.add_column(c, justify="left" if c == "target" else "right", overflow="fold")
    for r in rows:
        cells = [r["target"], f"{r['params']:,}", "–" if r["macs"] is None else f"{r['macs'] / 1e6:.1f}",
                 f"{r['file_bytes'] / 1e6:.2f}", f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}",
                 f"{r['images_per_s']:.0f}",
                 *("–" if r[k] is None else f"{r[k]:.0f}" for k in ("peak_rss_mib", "model_rss_mib"))]
        t.add_row(*cells, *([f"{r['top1']:.4f}"] if data else []))
    stdout.print(t)
    if json_out:
        from cnnkit.artifacts import claim_dir

        claim_dir(json_out.parent, option="--json")  # replace only a file cnnkit wrote
        atomic_write_text(json_out, json.dumps(rows, indent=2) + "\n")
