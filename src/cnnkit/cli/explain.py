"""`cnnkit explain` and `cnnkit visualize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import percent, stdout, summary
from cnnkit.cli.options import (Checkpoint, DataDir, Device, IgnoreClassNames, ScoreThreshold, Strict, check_early,
                                check_out_folder)
from cnnkit.errors import ConfigError

# the options of a detection run (cnnkit.explain.detect)
DetectionIndex = Annotated[Optional[int], typer.Option("--detection", min=0, help="Detection runs: which detection "
                                                       "to explain, 0 = the best (of --class if given; default 0).")]
Masks = Annotated[Optional[int], typer.Option(min=1, help="Detection runs: D-RISE's random masks (default 256).")]
Grid = Annotated[Optional[int], typer.Option(min=1, help="Detection runs: D-RISE's mask grid, S×S cells (default 8).")]
KeepProb = Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Detection runs: the probability that "
                                                   "D-RISE keeps a cell (default 0.5).")]
Seed = Annotated[Optional[int], typer.Option(help="Detection runs: the seed of D-RISE's masks (default 0).")]


def explain(
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Image files or folders (or use --images).")] = None,
    checkpoint: Checkpoint = None,
    url: Annotated[Optional[str], typer.Option(help="Ask a running `cnnkit serve` instead: "
                                                    "http://HOST:PORT/v1/models/NAME; writes each overlay PNG to "
                                                    "--out.")] = None,
    images: Annotated[Optional[list[Path]], typer.Option("--images", help="Image files or folders to "
                                                                          "explain.")] = None,
    method: Annotated[Optional[str], typer.Option(help="Comma-separated methods, or 'all': gradcam, gradcam++, "
                                                       "smoothgradcam++, scorecam, eigencam, saliency, smoothgrad, "
                                                       "integrated_gradients, guided_backprop, lrp (default: "
                                                       "gradcam; with --benchmark: all); detection runs: layercam, "
                                                       "drise (default: both).")] = None,
    layer: Annotated[str, typer.Option(help="Layer for the CAM methods (default: the last stage); detection runs: "
                                            "LayerCAM's layers, comma-separated (default: the backbone's stages at "
                                            "strides 4, 8, 16).")] = "auto",
    target: Annotated[Optional[str], typer.Option("--target", "--class", help="Class to explain, by index or name "
                                                  "(default: the prediction; segmentation: the largest predicted "
                                                  "class; detection: the detection's class, default any).")] = None,
    detection: DetectionIndex = None,
    score_threshold: ScoreThreshold = None,
    masks: Masks = None,
    grid: Grid = None,
    keep_prob: KeepProb = None,
    seed: Seed = None,
    region: Annotated[Optional[str], typer.Option(help="Segmentation runs: explain the class over this box, "
                                                       "x0,y0,x1,y1 in pixels of the image as the model sees it (x1, "
                                                       "y1 exclusive; default: the pixels predicted as the "
                                                       "class).")] = None,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="Segmentation and detection runs: random maps the "
                                                             "deletion check compares the map with (default 8; "
                                                             "detection: 3).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: RUN/explain or "
                                                     "RUN/explain-benchmark).")] = None,
    benchmark: Annotated[bool, typer.Option("--benchmark", help="Run the methods on a localization test set and "
                                                                "write a table (CSV, Markdown, PNG).")] = False,
    data: Annotated[str, typer.Option(help="With --benchmark: a dataset with boxes.")] = "cluttered-fashion-mnist",
    data_dir: DataDir = None,
    limit: Annotated[int, typer.Option(min=1, help="With --benchmark: how many test images.")] = 500,
    device: Device = "auto",
    strict: Strict = False,
    ignore_class_names: IgnoreClassNames = False,
) -> None:
    """Explain a checkpoint's decisions: a PNG per image with each method's map, and the maps' statistics."""
    check_out_folder(out)
    if (checkpoint is None) == (url is None):
        raise ConfigError("give --checkpoint RUN (explain here) or --url http://HOST:PORT/v1/models/NAME "
                          "(ask a running cnnkit serve), one of the two")
    for_files = {"--region": region, "--seeds": seeds, "--detection": detection, "--score-threshold": score_threshold,
                 "--masks": masks, "--grid": grid, "--keep-prob": keep_prob, "--seed": seed}
    _check_where(url, benchmark, device, strict, for_files)
    from cnnkit.evaluate.boxes import check_postprocess

    check_postprocess(score_threshold, None)
    if url is not None:
        _explain_remote(url, list(inputs or []) + list(images or []), method or "gradcam", layer, target, out)
        return
    from cnnkit.explain.workflows import benchmark_methods, explain_files

    check_early(device=device)
    if benchmark:
        _print_benchmark(benchmark_methods(checkpoint, data, data_dir=data_dir, methods=method or "all", limit=limit,
                                           out_dir=out, device=device, ignore_class_names=ignore_class_names))
        return
    files = list(inputs or []) + list(images or [])
    if not files:
        raise ConfigError("give image files or folders to explain (or --benchmark)")
    run = explain_files(checkpoint, files, method, layer=layer, target=target, out_dir=out, device=device,
                        strict=strict, region=region, seeds=seeds, detection=detection,
                        score_threshold=score_threshold, masks=masks, grid=grid, keep_prob=keep_prob, seed=seed)
    if run.records and "detection" in run.records[0]:
        _print_detection(run.records)
    elif run.records and "region" in run.records[0]:
        _print_segmentation(run.records)
    else:
        _print_classification(run.records)
    summary("explain", {"images": len(run.records), "methods": ",".join(run.methods), "json": run.json_path,
                        "folder": run.out_dir})


def _check_where(url: str | None, benchmark: bool, device: str, strict: bool, for_files: dict) -> None:
    """Refuse, in one line, the options that apply to explaining image files here, given with --url (or, for
    those of segmentation and detection runs, with --benchmark)."""
    given = next((o for o, v in for_files.items() if v is not None), None)
    if url is not None:
        here = ("--benchmark" if benchmark else "--device" if device != "auto" else "--strict" if strict else given)
        if here is not None:
            raise ConfigError(f"{here} applies to explaining here; give --checkpoint, not --url")
    elif benchmark and given is not None:
        raise ConfigError(f"{given} applies to explaining image files, not to --benchmark")


def _print_benchmark(r) -> None:  # noqa: ANN001 (a workflows.BenchmarkResult)
    from cnnkit.explain.workflows import COLUMNS, format_cell

    t = Table(title="explain benchmark", title_justify="left")
    for c in ("method", "images/s", "pointing", "IoU", "deletion", "insertion", "randomized ρ"):
        t.add_column(c, justify="left" if c == "method" else "right", overflow="fold")
    for row in r.rows:
        t.add_row(*(format_cell(row[c]) for c in COLUMNS))
    stdout.print(t)
    summary("explain --benchmark", {"csv": r.csv_path, "markdown": r.md_path, "chart": r.png_path})


def _print_classification(records: list[dict]) -> None:
    t = Table(title="explanations", title_justify="left")
    for c in ("image", "predicted", "target", "png"):
        t.add_column(c, overflow="fold")
    for rec in records:
        t.add_row(rec["image"], f"{rec['predicted']} {percent(rec['probability'])}", rec["target"], rec["png"])
    stdout.print(t)


def _print_segmentation(records: list[dict]) -> None:
    """Seg-Grad-CAM's table: per image and method, the map's deletion AUC beside the random maps' (mean and
    lowest–highest); lower is more faithful."""
    t = Table(title="Seg-Grad-CAM (deletion AUC: lower is more faithful)", title_justify="left")
    for c in ("image", "class", "region", "method", "deletion AUC", "random maps: mean (range)", "png"):
        t.add_column(c, overflow="fold")
    for rec in records:
        region = "predicted" if rec["region"] == "predicted" else ",".join(str(v) for v in rec["region"])
        for m, r in rec["methods"].items():
            rnd = r["random_deletion_auc"]
            t.add_row(rec["image"], rec["target"], f"{region} ({rec['region_pixels']} px)", m,
                      f"{r['deletion_auc']:.3f}", f"{rnd['mean']:.3f} ({rnd['min']:.3f}–{rnd['max']:.3f}, "
                      f"{rnd['seeds']} seeds)", rec["png"])
    stdout.print(t)


def _print_detection(records: list[dict]) -> None:
    """LayerCAM's and D-RISE's table: per image and method, the explained detection, and the map's deletion and
    insertion AUCs beside the random maps' means (deletion: lower is more faithful; insertion: higher)."""
    t = Table(title="detection explanations (deletion AUC: lower is more faithful; insertion AUC: higher)",
              title_justify="left")
    for c in ("image", "detection", "method", "deletion AUC (random)", "insertion AUC (random)", "png"):
        t.add_column(c, overflow="fold")
    for rec in records:
        d = rec["detection"]
        for m, r in rec["methods"].items():
            rd, ri = r["random_deletion_auc"], r["random_insertion_auc"]
            t.add_row(rec["image"], f"#{d['index']} {d['class']} {d['score']:.2f}", m,
                      f"{r['deletion_auc']:.3f} ({rd['mean']:.3f})", f"{r['insertion_auc']:.3f} ({ri['mean']:.3f})",
                      rec["png"])
    stdout.print(t)


def _explain_remote(url: str, inputs: list[Path], methods: str, layer: str, target: str | None,
                    out: Path | None) -> None:
    """Explanations from a running service: an overlay PNG per image and method in --out, and a table."""
    import base64

    from cnnkit.artifacts import atomic_write_bytes, claim_dir
    from cnnkit.data.images import list_image_files
    from cnnkit.serve.client import Client

    if not inputs:
        raise ConfigError("give image files or folders to explain")
    files = list_image_files(inputs)
    folder = out or Path("explain-remote")
    t = Table(title="explanations (service)", title_justify="left")
    for c in ("image", "method", "layer", "predicted", "target", "png"):
        t.add_column(c, overflow="fold")
    with Client(url) as client:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        claim_dir(folder)
        for f in files:
            for m in names:
                r = client.explain(f, method=m, target=target, layer=layer)
                png = folder / f"{f.stem}-{m}.png"
                atomic_write_bytes(png, base64.b64decode(r["overlay_png"]))
                t.add_row(str(f), m, r["layer"], f"{r['predicted']['class']} {percent(r['predicted']['probability'])}",
                          r["target"]["class"], str(png))
    stdout.print(t)
    summary("explain", {"images": len(files), "methods": methods, "service": url, "folder": folder})


def visualize(
    what: Annotated[str, typer.Argument(help="class-models, activations, feature-maps or filters.")],
    checkpoint: Checkpoint,
    layer: Annotated[str, typer.Option(help="Layer for activations and feature-maps (default: the last "
                                            "stage).")] = "auto",
    channels: Annotated[str, typer.Option(help="Channels for activations, e.g. 0-7 or 1,5,9.")] = "0-7",
    images: Annotated[Optional[list[Path]], typer.Option("--images", help="Image files for feature-maps (the first "
                                                                          "is shown).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Gradient-ascent steps for class-models and "
                                                   "activations.")] = 200,
    out: Annotated[Optional[Path], typer.Option(help="PNG to write (default: RUN/visualize-WHAT.png).")] = None,
) -> None:
    """What the network has learnt: class-model images, activation maximization, feature maps, filters."""
    from cnnkit.explain.workflows import visualize as draw

    path = draw(checkpoint, what, layer=layer, channels=channels, images=images, steps=steps, out=out)
    summary("visualize", {"what": what, "png": path})
