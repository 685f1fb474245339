"""The `cnnkit explain` workflows: explain image files with a checkpoint (a PNG per image and a JSON of the
maps' statistics), and benchmark every method on a localization test set (CSV, Markdown and a PNG chart)."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.data import Normalize
from cnnkit.data.compat import check_compatible, load_checkpoint_data
from cnnkit.data.images import load_model_inputs
from cnnkit.errors import ConfigError, DataError, ExplainError, close_matches
from cnnkit.evaluate.api import task_of
from cnnkit.explain.cam import CAM_METHODS, explain, resolve_layer
from cnnkit.explain.gradients import GRADIENT_METHODS
from cnnkit.explain.detect import DETECT_METHODS, explain_detection
from cnnkit.explain.detect import parse_methods as detection_methods
from cnnkit.explain.metrics import map_stats
from cnnkit.runtime import pick_device
from cnnkit.artifacts import LoadedCheckpoint, atomic_write_text, claim_dir, load

METHODS = CAM_METHODS + GRADIENT_METHODS


def parse_methods(text: str | list[str]) -> list[str]:
    """'gradcam,eigencam' or 'all' -> checked method names."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if names == ["all"]:
        return list(METHODS)
    for m in names:
        if m in DETECT_METHODS:
            raise ExplainError(f"{m} explains a detector's detections (a detection run); choose from: "
                               f"{', '.join(METHODS)}")
        if m not in METHODS:
            raise ExplainError(f"unknown method {m!r}{close_matches(m, METHODS)}; choose from: {', '.join(METHODS)}")
    if not names:
        raise ExplainError("no method given; choose from: " + ", ".join(METHODS))
    return list(dict.fromkeys(names))


def target_index(target: str | int | None, classes: list[str]) -> int | None:
    """A class given by index or by name."""
    if target is None:
        return None
    text = str(target)
    if text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < len(classes):
            raise ExplainError(f"target class {i} is out of range: the model has {len(classes)} classes "
                               f"(0–{len(classes) - 1})")
        return i
    if text not in classes:
        raise ExplainError(f"unknown target class {text!r}{close_matches(text, classes)}; the classes are: "
                           f"{', '.join(classes)}")
    return classes.index(text)


@dataclass
class ExplainRun:
    """What `explain_files` wrote: one PNG per image and the JSON of statistics."""

    out_dir: Path
    pngs: list[Path]
    json_path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)


def _load(checkpoint, device: str) -> tuple[LoadedCheckpoint, torch.device]:
    """The checkpoint's PyTorch model and the device to run it on. Every method and visualization needs
    gradients or layers of the model itself, which exported artifacts (ONNX, .pt2) do not give."""
    from cnnkit.artifacts import is_exported

    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint)
    task_of(ckpt).check_available("explain")
    if is_exported(ckpt.model):
        source = ckpt.meta.get("source")
        raise ExplainError(f"explain and visualize need a training checkpoint (a run directory or .safetensors "
                           f"file), not the exported artifact {ckpt.path.name}; pass "
                           + (f"the checkpoint it was made from: {source}" if source else "its checkpoint instead"))
    return ckpt, pick_device(device)


def _run_methods(model, x, targets, methods, layer, batch_size) -> dict[str, tuple[Any, float]]:
    out = {}
    for m in methods:
        t0 = time.perf_counter()
        parts = [explain(model, x[i:i + batch_size], targets[i:i + batch_size], method=m,
                         layer=layer if m in CAM_METHODS else "auto") for i in range(0, len(x), batch_size)]
        seconds = time.perf_counter() - t0
        maps = torch.cat([p.maps for p in parts])
        extra: dict[str, list] = {}
        for p in parts:
            for k, v in p.extra.items():
                extra.setdefault(k, []).extend(v)
        zero = [i + j for j, p in zip(range(0, len(x), batch_size), parts) for i in p.zero_maps]
        out[m] = (maps, parts[0].layer, zero, extra, seconds)
    return out


def explain_files(checkpoint: str | os.PathLike | LoadedCheckpoint, inputs: list[str | os.PathLike],
                  methods: str | list[str] | None = None, layer: str = "auto", target: str | int | None = None,
                  out_dir: str | os.PathLike | None = None, device: str = "auto", strict: bool = False,
                  batch_size: int = 64, region: str | None = None, seeds: int | None = None,
                  detection: int | None = None, score_threshold: float | None = None, masks: int | None = None,
                  grid: int | None = None, keep_prob: float | None = None, seed: int | None = None) -> ExplainRun:
    """Explain the checkpoint's prediction (or `target`) on image files or folders with each method (None: the
    task's default, `gradcam` or, for a detection run, both of its methods). For a segmentation run: Seg-Grad-CAM of `target` (default: the largest predicted class) over
    `region` ('x0,y0,x1,y1' in the pixels of the image as the model sees it; default: the pixels predicted as the
    class), with the deletion check against `seeds` (default 8) random maps (see `cnnkit.explain.segment`). For a
    detection run: LayerCAM and D-RISE of the `detection`-th detection (of class `target` if given), with the
    deletion/insertion check against `seeds` (default 3) random maps, among the detections scoring above
    `score_threshold` (default: the detector's own); D-RISE draws `masks` masks of `grid`×`grid` cells kept with
    probability `keep_prob` from `seed` (see `cnnkit.explain.detect`). The options of one task are refused for
    another's runs."""
    from cnnkit.report.explain_plots import save_explanation_figure

    ckpt, dev = _load(checkpoint, device)
    task = task_of(ckpt).name
    given = [o for o, v in (("--detection", detection), ("--score-threshold", score_threshold), ("--masks", masks),
                            ("--grid", grid), ("--keep-prob", keep_prob), ("--seed", seed)) if v is not None]
    if given and task != "detect":
        raise ExplainError(f"{given[0]} applies to detection runs; this run "
                           + ("segments images" if task == "segment" else "classifies images"))
    if task == "detect":
        names = detection_methods(methods)
    else:
        names = parse_methods("gradcam" if methods is None else methods)
    tgt_index = target_index(target, ckpt.classes)
    segment = task == "segment"
    if region is not None and not segment:
        raise ExplainError("--region explains a segmentation model over a box; this run "
                           + ("detects objects (choose one with --detection and --class)" if task == "detect"
                              else "classifies images"))
    raw, kept = load_model_inputs(list(inputs), ckpt.in_chans, ckpt.img_size, strict)
    x = Normalize(*ckpt.normalization, dev)(raw)
    out = Path(out_dir) if out_dir is not None else ckpt.path.parent / "explain"
    if task == "detect":
        pngs, records, json_path, names = explain_detection(
            ckpt, dev, raw, x, kept, names, layer, detection, tgt_index, out, seeds, score_threshold, masks, grid,
            keep_prob, seed)
        return ExplainRun(out, pngs, json_path, records, names)
    if segment:
        from cnnkit.explain.segment import explain_segmentation

        pngs, records, json_path = explain_segmentation(ckpt, dev, raw, x, kept, names, layer, tgt_index, region,
                                                        out, 8 if seeds is None else seeds, batch_size)
        return ExplainRun(out, pngs, json_path, records, names)
    model = ckpt.model.to(dev).eval()
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), 1).cpu()
    pred = probs.argmax(1)
    targets = pred.clone() if tgt_index is None else torch.full_like(pred, tgt_index)
    results = _run_methods(model, x, targets.to(dev), names, layer, batch_size)
    claim_dir(out)  # writes there replace only files cnnkit wrote
    pngs, records = [], []
    stems: dict[str, int] = {}
    for i, f in enumerate(kept):
        stems[f.stem] = stems.get(f.stem, 0) + 1
        stem = f.stem if stems[f.stem] == 1 else f"{f.stem}-{stems[f.stem]}"
        overlays = {m: r[0][i].cpu().numpy() for m, r in results.items()}
        png = save_explanation_figure(raw[i].numpy(), overlays, out / f"{stem}.png", classes=ckpt.classes,
                                      pred=int(pred[i]), target=int(targets[i]))
        pngs.append(png)
        rec = {"image": str(f), "png": str(png), "predicted": ckpt.classes[int(pred[i])],
               "probability": round(float(probs[i, pred[i]]), 5), "target": ckpt.classes[int(targets[i])],
               "methods": {}}
        for m, (maps, lay, zero, extra, _) in results.items():
            rec["methods"][m] = {"layer": lay, "zero_map": i in zero, **map_stats(maps[i].cpu()),
                                 **{k: round(float(v[i]), 6) for k, v in extra.items()}}
        records.append(rec)
    summary = {"checkpoint": str(ckpt.path), "methods": names, "layer": layer,
               "seconds_per_method": {m: round(r[4], 4) for m, r in results.items()}, "images": records}
    json_path = out / "explain.json"
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return ExplainRun(out, pngs, json_path, records, names)


@dataclass
class BenchmarkResult:
    rows: list[dict[str, Any]]
    csv_path: Path
    md_path: Path
    png_path: Path


COLUMNS = ["method", "images_per_s", "pointing_game", "box_iou", "deletion_auc", "insertion_auc",
           "randomization_spearman"]


def benchmark_methods(checkpoint: str | os.PathLike | LoadedCheckpoint, data: str = "cluttered-fashion-mnist",
                      data_dir: str | os.PathLike | None = None, methods: str | list[str] = "all",
                      limit: int = 500, batch_size: int = 64, steps: int = 16, sanity_images: int = 32,
                      out_dir: str | os.PathLike | None = None, device: str = "auto",
                      ignore_class_names: bool = False) -> BenchmarkResult:
    """Every method on the first `limit` test images of a dataset with boxes, explaining the true class:
    pointing game, box IoU, deletion/insertion AUC, images/s, and the rank correlation of the maps after
    the classifier and the last stage are re-initialized. A centre-point row is the pointing-game baseline."""
    from cnnkit.explain.metrics import (centre_maps, deletion_insertion, localization_iou, pointing_game,
                                        randomization_check)

    names = parse_methods(methods)
    ckpt, dev = _load(checkpoint, device)
    if task_of(ckpt).name == "segment":
        raise ExplainError("--benchmark measures classifiers on boxes; explain a segmentation run on its images "
                           "(each gets Seg-Grad-CAM's deletion check against random maps)")
    if task_of(ckpt).name == "detect":
        raise ExplainError("--benchmark measures classifiers on boxes; explain a detection run on its images "
                           "(each map gets the deletion/insertion check against random maps)")
    ds = load_checkpoint_data(ckpt, data, "test", data_dir=data_dir, check=False)
    if ds.boxes is None:
        raise DataError(f"{data} has no ground-truth boxes; the benchmark needs a localization set such as "
                        f"cluttered-fashion-mnist")
    ds = check_compatible(ckpt, ds, ignore_class_names)  # the same classes in another order: renumbered
    n = min(limit, len(ds))
    x = Normalize(*ckpt.normalization, dev)(ds.images[:n])
    labels, boxes = ds.labels[:n].to(dev), ds.boxes[:n]
    model = ckpt.model.to(dev).eval()
    rows = []
    centre = centre_maps(n, ds.img_size)
    rows.append({"method": "centre point (baseline)", "images_per_s": float("nan"),
                 "pointing_game": float(pointing_game(centre, boxes).mean()),
                 "box_iou": float(localization_iou(centre, boxes).mean()), "deletion_auc": float("nan"),
                 "insertion_auc": float("nan"), "randomization_spearman": float("nan")})
    for m in names:
        try:
            maps, _, _, _, seconds = _run_methods(model, x, labels, [m], "auto", batch_size)[m]
        except ExplainError as e:
            warnings.warn(f"{m}: {e}", stacklevel=2)
            continue
        maps = maps.cpu()
        curves = deletion_insertion(model, x, maps.to(dev), labels, steps=steps)
        k = min(sanity_images, n)
        sanity = randomization_check(model, x[:k], lambda mm: explain(mm, x[:k], labels[:k], method=m).maps,
                                     depth=2)
        rows.append({"method": m, "images_per_s": n / seconds,
                     "pointing_game": float(pointing_game(maps, boxes).mean()),
                     "box_iou": float(localization_iou(maps, boxes).mean()),
                     "deletion_auc": float(curves["deletion"].mean()),
                     "insertion_auc": float(curves["insertion"].mean()),
                     "randomization_spearman": sanity[-1]["spearman"]})
    out = Path(out_dir) if out_dir is not None else ckpt.path.parent / "explain-benchmark"
    claim_dir(out)
    return BenchmarkResult(rows, *_write_table(rows, out, f"{data} {ds.split}, first {n} images, {ckpt.meta['model']}"))


def format_cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) > 1 else f"{v:.3f}"
    return str(v)


def _write_table(rows: list[dict[str, Any]], out: Path, title: str) -> tuple[Path, Path, Path]:
    from cnnkit.report.plots import plt, save_figure

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    atomic_write_text(out / "explain-benchmark.csv", buf.getvalue())
    head = ["method", "images/s", "pointing game ↑", "box IoU ↑", "deletion AUC ↓", "insertion AUC ↑",
            "randomized ρ ↓"]
    md = [f"{title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(format_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    atomic_write_text(out / "explain-benchmark.md", "\n".join(md) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.35 * len(rows) + 1.8), sharey=True)
    labels = [r["method"] for r in rows]
    for ax, (cols, xlabel) in zip(axes, [(["pointing_game", "box_iou"], "localization (higher is better)"),
                                         (["deletion_auc", "insertion_auc"], "AUC"),
                                         (["images_per_s"], "images/s (log)")]):
        for j, c in enumerate(cols):
            vals = [r[c] for r in rows]
            ax.barh([i + 0.4 * j for i in range(len(rows))], vals, height=0.4, label=c.replace("_", " "))
        ax.set_xlabel(xlabel)
        if cols == ["images_per_s"]:
            ax.set_xscale("log")
        else:
            ax.legend(fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks([i + 0.2 for i in range(len(rows))], labels)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    png = save_figure(fig, out / "explain-benchmark.png")
    return out / "explain-benchmark.csv", out / "explain-benchmark.md", png


VISUALS = ("class-models", "activations", "feature-maps", "filters")


def _channel_list(text: str) -> list[int]:
    try:
        out: list[int] = []
        for part in str(text).split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
        return out
    except ValueError:
        raise ExplainError(f"channels must look like 0-7 or 1,5,9, got {text!r}") from None


def visualize(checkpoint: str | os.PathLike | LoadedCheckpoint, what: str, layer: str = "auto",
              channels: str = "0-7", images: list[str | os.PathLike] | None = None, steps: int = 200,
              out: str | os.PathLike | None = None, device: str = "auto") -> Path:
    """One PNG: class-model images of every class, activation maximization of some channels of a layer, the
    feature maps of a layer for the first given image, or the first layer's filters."""
    from cnnkit.explain.visualize import activation_maximization, class_model, feature_maps, first_layer_filters
    from cnnkit.report.explain_plots import save_filter_grid, save_image_grid

    if what not in VISUALS:
        raise ExplainError(f"unknown visualization {what!r}{close_matches(what, VISUALS)}; choose from: "
                           f"{', '.join(VISUALS)}")
    ckpt, dev = _load(checkpoint, device)
    model = ckpt.model.to(dev).eval()
    path = Path(out) if out is not None else ckpt.path.parent / f"visualize-{what}.png"
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give the PNG file to write")
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out {path} should end in .png (visualize writes one PNG image)")
    claim_dir(path.parent)  # replace only a file cnnkit wrote
    shape = (ckpt.in_chans, *ckpt.img_size)
    if what == "filters":
        name, grid = first_layer_filters(model)
        return save_filter_grid(grid.cpu().numpy(), path, f"{name}: {ckpt.meta['model']} first-layer filters")
    if what == "class-models":
        imgs = class_model(model, list(range(len(ckpt.classes))), shape, steps=steps, jitter=1, blur_every=10)
        return save_image_grid(imgs.cpu().numpy(), path, titles=ckpt.classes, cols=5,
                               title=f"class-model images ({steps} steps)")
    if what == "activations":
        chans = _channel_list(channels)
        name = resolve_layer(model, layer)[0]
        imgs = activation_maximization(model, name, chans, shape, steps=steps, jitter=1, blur_every=10)
        return save_image_grid(imgs.cpu().numpy(), path, titles=[f"{name}:{c}" for c in chans],
                               title=f"activation maximization, {name}")
    if not images:
        raise ExplainError("feature-maps needs an image: pass --images FILE")
    raw, (f, *_) = load_model_inputs(list(images), ckpt.in_chans, ckpt.img_size)
    x = Normalize(*ckpt.normalization, dev)(raw[:1])
    name, maps = feature_maps(model, x, layer)
    maps = maps[0, :64, None].cpu().numpy()
    return save_image_grid(maps, path, titles=[str(i) for i in range(len(maps))],
                           title=f"{name} feature maps of {f.name} (first {len(maps)} channels)")

