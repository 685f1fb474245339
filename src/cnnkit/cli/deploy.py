"""`cnnkit export` and `cnnkit bench`: ship a checkpoint and measure what ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import err, format_rows, machine_format, percent, print_rows, stdout, summary
from cnnkit.cli.options import (Amp, Checkpoint, CsvOutput, DataDir, Device, JsonOutput, NmsIou, ScoreThreshold,
                                check_early, parse_img_size)
from cnnkit.errors import ConfigError


def export(
    checkpoint: Checkpoint,
    out: Annotated[Optional[Path], typer.Option(help="The file to write (default: next to the checkpoint).")] = None,
    format: Annotated[str, typer.Option("--format", help="onnx (checked in ONNX Runtime) or torch-export "
                                                         "(.pt2).")] = "onnx",
    atol: Annotated[Optional[float], typer.Option(help="Largest output difference allowed against PyTorch, times the "
                                                       "outputs' largest magnitude where above 1 (default 1e-4 for "
                                                       "ONNX, 1e-5 for torch.export).")] = None,
    fold_bn: Annotated[bool, typer.Option(help="Fold each BatchNorm that follows a convolution into it "
                                               "first.")] = True,
    score_threshold: ScoreThreshold = None,
    nms_iou: NmsIou = None,
) -> None:
    """Export a checkpoint (dynamic batch) with its JSON sidecar, checked against PyTorch before writing."""
    from cnnkit.deploy import export_onnx, export_program
    from cnnkit.evaluate.boxes import check_postprocess

    if format not in ("onnx", "torch-export"):
        raise ConfigError(f"unknown export format {format!r}; choose onnx or torch-export")
    check_postprocess(score_threshold, nms_iou)
    if format == "onnx":
        r = export_onnx(checkpoint, out, atol=1e-4 if atol is None else atol, fold_bn=fold_bn,
                        score_threshold=score_threshold, nms_iou=nms_iou)
    else:
        if score_threshold is not None or nms_iou is not None:
            raise ConfigError("--score-threshold and --nms-iou are for a detector's ONNX export (--format onnx)")
        r = export_program(checkpoint, out, atol=1e-5 if atol is None else atol, fold_bn=fold_bn)
    side = json.loads(r.sidecar.read_text())
    checked = {f"at {c['size'][0]}×{c['size'][1]}": ", ".join(
        [f"max |Δ| {c['max_abs_diff']:.2e}"] + [_figure(k, v) for k, v in c.items()
                                               if k not in ("size", "max_abs_diff", "max_abs_output")]) for c in r.checks}
    detector: dict[str, Any] = {}
    if "detections_compared" in r.checks[0]:  # a detector: how it runs and what its parity compared
        detector = {"batch": f"{side['batch']} image per run (a larger batch runs image by image)",
                    "size": "any height and width" if side.get("dynamic_size") else
                    "×".join(map(str, side["img_size"])) + " only",
                    "post-processing": f"score > {side['score_threshold']:g}, NMS IoU {side['nms_iou']:g}, "
                                       f"top {side['max_detections']}",
                    "parity": side["parity_rule"]}
    summary("export", {format: r.path, "sidecar": r.sidecar, "BatchNorms folded": side.get("bn_folded", 0),
                       **detector, "max |artifact - torch|": f"{r.max_abs_diff:.2e}",
                       **(checked if len(checked) > 1 or detector else {})})


def _figure(key: str, value: float) -> str:
    """One parity figure as the export summary shows it: a share in percent, a count, or a number."""
    label = key.replace("_", " ")
    if key.endswith("_agreement"):
        return f"{label} {percent(value)}"
    if isinstance(value, int):
        return f"{label} {value}"
    return f"{label} {value:.2e}" if key.startswith("max_") else f"{label} {value:.6f}"


def bench(
    targets: Annotated[list[Path], typer.Argument(help="Run directories, checkpoints, .onnx or .pt2 (int8 "
                                                       "included) artifacts.")],
    data: Annotated[Optional[str], typer.Option(help="Also measure top-1 (mIoU for a segmentation model) on this "
                                                     "dataset's test split.")] = None,
    data_dir: DataDir = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the throughput measurement.")] = 64,
    repeats: Annotated[int, typer.Option(min=3, help="Timed runs at batch 1 (after warm-up).")] = 30,
    as_json: JsonOutput = False,
    as_csv: CsvOutput = False,
    out: Annotated[Optional[Path], typer.Option(help="Also write the measurements to this file: CSV when its name "
                                                     "ends in .csv, else JSON.")] = None,
    device: Device = "auto",
    amp: Amp = "off",
    img_size: Annotated[Optional[str], typer.Option("--img-size", help="Input size, N or HxW (default: each "
                                                                       "target's training size; another only for "
                                                                       "models that take any size, e.g. "
                                                                       "segmentation).")] = None,
    test_images: Annotated[Optional[int], typer.Option(min=1, help="With --data: score a stratified, seeded "
                                                                   "subset of this many test images.")] = None,
) -> None:
    """Parameters, MACs, file size, latency p50/p99 at batch 1 (and per megapixel), throughput, peak memory,
    accuracy."""
    from cnnkit.deploy.bench import bench_many

    fmt = machine_format(as_json, as_csv)
    size = parse_img_size(img_size)
    size = (size, size) if isinstance(size, int) else None if size is None else tuple(size)
    if out is not None and out.is_dir():  # before minutes of measuring
        raise ConfigError(f"--out {out} is a folder; give the file to write, e.g. {out / 'bench.json'}")
    if out is not None:
        from cnnkit.artifacts.files import check_writable

        check_writable([out], "--out")  # a file cnnkit did not write, the file-system root: refused now
    check_early(device=device, amp=amp)
    if test_images is not None and data is None:
        raise ConfigError("--test-images picks the images --data is scored on: give --data too")
    rows = bench_many(targets, data, data_dir=data_dir, batch=batch, repeats=repeats, device=device, amp=amp,
                      log=lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True), img_size=size,
                      test_images=test_images)
    if fmt:
        print_rows(rows, fmt)
    else:
        _bench_table(rows, batch)
    if out is not None:
        _write_rows(out, rows)


def _bench_table(rows: list[dict[str, Any]], batch: int) -> None:
    from cnnkit.deploy.bench import metric_key

    where = ", ".join(sorted({f"{r['device']} {r['precision']}" for r in rows}))
    t = Table(title=f"bench ({where}; {rows[0]['torch_threads']} torch threads)", title_justify="left")
    metrics = list(dict.fromkeys(r["metric"] for r in rows if "metric" in r))  # top-1, mIoU: each task's own
    cols = ["target", "size", "params", "MMACs", "MB on disk", "p50 ms", "p99 ms", "ms/MP", f"img/s @{batch}",
            "peak RSS MiB", "model MiB"]
    for c in cols + metrics:  # a narrow terminal folds cells onto more lines, never cuts them
        t.add_column(c, justify="left" if c == "target" else "right", overflow="fold")
    for r in rows:
        key = metric_key(r.get("metric", ""))
        cells = [r["target"], "×".join(map(str, r["img_size"])), f"{r['params']:,}",
                 "–" if r["macs"] is None else f"{r['macs'] / 1e6:.1f}", f"{r['file_bytes'] / 1e6:.2f}",
                 f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}", f"{r['ms_per_megapixel']:.1f}",
                 f"{r['images_per_s']:.0f}",
                 *("–" if r[k] is None else f"{r[k]:.0f}" for k in ("peak_rss_mib", "model_rss_mib"))]
        t.add_row(*cells, *(percent(r[key]) if r.get("metric") == m else "–" for m in metrics))
    stdout.print(t)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """The measurements as the file `path` (CSV or JSON, by its name), replacing only a file cnnkit wrote."""
    from cnnkit.artifacts import atomic_write_text, claim_dir

    claim_dir(path.parent, option="--out")
    atomic_write_text(path, format_rows(rows, "csv" if path.suffix.lower() == ".csv" else "json"))
