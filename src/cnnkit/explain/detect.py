"""Explanations of one detection of a detector (a detection run: `cnnkit.models.detect`'s N×D×6 rows x0, y0, x1,
y1, score, class; best first; class -1 pads), and the `cnnkit explain` workflow on image files.

- Which detection: the K-th of the image's detections, best first (`detection`, default 0), or the K-th of those
  of one class (`target`); none, or K out of range, is one line (ExplainError).
- LayerCAM (Jiang et al. 2021): for each chosen layer A, the map Σ_k ReLU(∂y/∂A_k) ⊙ A_k through a ReLU, where y
  is the detection's score (its box is held fixed: the gradient is the score's only, not the box's); each layer's
  map is upsampled to the image (bilinear) and scaled to [0, 1], and the maps are combined by their mean, scaled to
  [0, 1] again (pytorch-grad-cam aggregates its layers the same way). Default layers: the backbone blocks whose
  maps the head reads (strides 8, 16 and 32 by default: every cnnkit detector has them, SSD has no FPN); any
  layers that give a B×C×H×W map can be named, e.g. the FPN's outputs `net.backbone.fpn.layer_blocks.0`…`2`.
- D-RISE (Petsiuk et al. 2021): `masks` random masks as RISE makes them (a `grid`×`grid` grid of cells kept with
  probability `keep_prob`, upsampled bilinearly to (grid + 1) cells and cropped at a random shift of less than a
  cell); each masked image (the normalized image times the mask, so masked pixels go to the dataset mean) is run
  through the detector and the mask is weighted by the best similarity between the explained detection and the
  masked image's detections; the map is the weighted sum of the masks. D-RISE's similarity is IoU × the cosine of
  the class-probability vectors × objectness; cnnkit's detectors give a class and a score per detection, not a
  probability vector, so the similarity here is IoU × [same class] × the masked detection's score.
- The deletion/insertion check (Petsiuk et al. 2018, `explain.metrics.deletion_insertion`): pixels deleted (set
  to 0, the normalized mean) or inserted (revealed on a blurred copy) in a map's order, most salient first, the
  curve tracking the same similarity as D-RISE against the explained detection (its box and class fixed before
  anything changes); each map's areas beside those of `seeds` uniform random maps. A faithful map has a lower
  deletion area and a higher insertion area than random maps.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ExplainError, close_matches

DETECT_METHODS = ("layercam", "drise")
DRISE_MASKS = 256  # about 5 s for a 96×96 image with retinanet_small (width 16) on 2 CPU cores
DRISE_GRID = 8  # cells of 12 pixels on a 96×96 image
DRISE_KEEP = 0.5
RANDOM_SEEDS = 3
STEPS = 16


def parse_methods(text: str | list[str] | None) -> list[str]:
    """'layercam,drise', 'all' or None (both) -> checked method names for a detection run."""
    if text is None:
        return list(DETECT_METHODS)
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if names == ["all"]:
        return list(DETECT_METHODS)
    from cnnkit.explain.cam import CAM_METHODS
    from cnnkit.explain.gradients import GRADIENT_METHODS

    for m in names:
        if m in CAM_METHODS + GRADIENT_METHODS:
            raise ExplainError(f"{m} explains a classifier; a detection run is explained by layercam (LayerCAM) or "
                               f"drise (D-RISE)")
        if m not in DETECT_METHODS:
            raise ExplainError(f"unknown method {m!r}{close_matches(m, DETECT_METHODS)}; a detection run is "
                               f"explained by: {', '.join(DETECT_METHODS)}")
    if not names:
        raise ExplainError("no method given; choose from: " + ", ".join(DETECT_METHODS))
    return list(dict.fromkeys(names))


# -- which detection ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def score_threshold(model: nn.Module, value: float | None) -> Iterator[None]:
    """Within the block, the detector keeps detections scoring above `value` (None: its own threshold)."""
    if value is None:
        yield
        return
    if not 0.0 <= value <= 1.0:
        raise ExplainError(f"--score-threshold is a fraction from 0 to 1, got {value}")
    if hasattr(model, "set_postprocess"):  # the detector's own setter, where it has one
        old = model.postprocess["score_threshold"]
        model.set_postprocess(score_threshold=float(value))
        try:
            yield
        finally:
            model.set_postprocess(score_threshold=old)
        return
    net = getattr(model, "net", None)
    holder = getattr(net, "roi_heads", net)  # torchvision's: Faster R-CNN's box head, else the detector itself
    if holder is None or not hasattr(holder, "score_thresh"):
        raise ExplainError(f"{type(model).__name__} has no score threshold to set; leave out --score-threshold")
    old = holder.score_thresh
    holder.score_thresh = float(value)
    try:
        yield
    finally:
        holder.score_thresh = old


def current_threshold(model: nn.Module) -> float | None:
    """The score threshold the detector keeps its detections by now (None where it has none to read)."""
    if hasattr(model, "postprocess"):
        return float(model.postprocess["score_threshold"])
    net = getattr(model, "net", None)
    holder = getattr(net, "roi_heads", net)
    return float(holder.score_thresh) if hasattr(holder, "score_thresh") else None


def choose_detections(outputs: torch.Tensor, detection: int | None, target: int | None, classes: list[str],
                      names: list[str] | None = None) -> torch.Tensor:
    """Per image of N×D×6 detections (best first), the row explained: the `detection`-th (default 0) of its
    detections, or of its detections of class `target`. One line (ExplainError) where there is none."""
    k = 0 if detection is None else int(detection)
    if k < 0:
        raise ExplainError(f"--detection counts from 0 (the best detection), got {k}")
    rows = []
    for i, det in enumerate(outputs):
        name = names[i] if names else f"image {i + 1}"
        valid = (det[:, 5] >= 0).nonzero().flatten()
        if not len(valid):
            raise ExplainError(f"{name} has no detections (none scores above the detector's threshold); a barely "
                               f"trained detector may need a lower --score-threshold")
        of = ""
        if target is not None:
            found = sorted({classes[int(c)] for c in det[valid, 5].tolist()})
            valid = valid[det[valid, 5] == target]
            of = f" of class {classes[target]!r}"
            if not len(valid):
                raise ExplainError(f"{name} has no detection{of}; its detections are of: {', '.join(found)}")
        if k >= len(valid):
            raise ExplainError(f"--detection {k} is out of range: {name} has {len(valid)} detection"
                               f"{'s' if len(valid) != 1 else ''}{of} (0–{len(valid) - 1})")
        rows.append(int(valid[k]))
    return torch.tensor(rows, dtype=torch.long)


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of B×4 boxes with B×D×4 boxes (x0, y0, x1, y1): B×D."""
    box = box[:, None]
    w = (torch.minimum(box[..., 2], boxes[..., 2]) - torch.maximum(box[..., 0], boxes[..., 0])).clamp_min(0)
    h = (torch.minimum(box[..., 3], boxes[..., 3]) - torch.maximum(box[..., 1], boxes[..., 1])).clamp_min(0)
    inter = w * h

    def area(b: torch.Tensor) -> torch.Tensor:
        return (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)

    union = area(box) + area(boxes) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def similarity(targets: torch.Tensor, detections: torch.Tensor) -> torch.Tensor:
    """D-RISE's similarity as cnnkit's detectors allow it: per image, the best IoU(target box, box) × [same class] ×
    score over its detections (B×6 targets, B×D×6 detections; padding rows, class -1, never match). 0 where none
    matches."""
    targets, detections = targets.float(), detections.float().to(targets.device)
    same = (detections[..., 5] == targets[:, None, 5]) & (detections[..., 5] >= 0)
    s = _iou(targets[:, :4], detections[..., :4]) * detections[..., 4] * same
    return s.amax(1) if s.shape[1] else s.new_zeros(len(s))


# -- LayerCAM ----------------------------------------------------------------------------------------------------

def default_layers(model: nn.Module) -> list[str]:
    """The backbone blocks whose maps a cnnkit detector's head reads (default strides 8, 16 and 32; an older
    checkpoint's bare backbone: its stages)."""
    from cnnkit.models.detect import Maps, SmallBackbone

    for name, m in model.named_modules():
        if isinstance(m, Maps):
            stages = len(m.body.stages)
            return [f"{name}.body.stages.{k}" if int(k) < stages else f"{name}.body.extra" for k in m.keys]
        if isinstance(m, SmallBackbone):
            return [f"{name}.stages.{i}" for i in range(len(m.stages))]
    raise ExplainError(f"{type(model).__name__} has no cnnkit detection backbone; name the layers to explain with "
                       f"--layer NAME[,NAME...]")


def resolve_layers(model: nn.Module, layer: str | list[str] = "auto") -> list[str]:
    """'auto' (the backbone's stages) or comma-separated layer names, checked."""
    names = (default_layers(model) if layer in ("auto", ["auto"]) else
             [n.strip() for n in (layer.split(",") if isinstance(layer, str) else layer) if n.strip()])
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules or not n:
            fpn = [k for k in modules if ".fpn.layer_blocks." in k and k.rsplit(".", 1)[-1].isdigit()]
            try:
                stages = default_layers(model)
            except ExplainError:
                stages = []
            valid = [k for k in modules if k]
            raise ExplainError(f"unknown layer {n!r}{close_matches(n, valid)}; the backbone's stages: "
                               f"{', '.join(stages) or 'none'}" + (f"; the FPN's outputs: {', '.join(fpn)}" if fpn else ""))
    if not names:
        raise ExplainError("--layer names no layer; give auto or NAME[,NAME...]")
    return list(dict.fromkeys(names))


def _normalize(m: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Each B×H×W map min-max scaled to [0, 1]; a constant map becomes zero and is reported."""
    lo = m.amin((1, 2), keepdim=True)
    span = m.amax((1, 2), keepdim=True) - lo
    zero = [i for i, s in enumerate(span.flatten().tolist()) if s <= 0]
    return torch.where(span > 0, (m - lo) / span.clamp_min(1e-12), torch.zeros_like(m)), zero


@dataclass
class DetectionMaps:
    """Maps for a batch, one explained detection per image: `maps` (B×H×W in [0, 1]); for LayerCAM the layers,
    each layer's map upsampled and scaled (`per_layer`) and at the layer's resolution before the ReLU (`raw`:
    Σ_k ReLU(∂y/∂A_k) A_k); for D-RISE the masks' weights (`weights`, B×N) and the unscaled map (`raw`)."""

    maps: torch.Tensor
    method: str
    layers: list[str] = field(default_factory=list)
    per_layer: dict[str, torch.Tensor] = field(default_factory=dict)
    raw: dict[str, torch.Tensor] | torch.Tensor | None = None
    weights: torch.Tensor | None = None
    zero_maps: list[int] = field(default_factory=list)
    zero_layers: dict[str, list[int]] = field(default_factory=dict)


def layercam(model: nn.Module, images: torch.Tensor, rows: torch.Tensor, layers: str | list[str] = "auto",
             targets: torch.Tensor | None = None) -> DetectionMaps:
    """LayerCAM of detection `rows[i]` (its index in image i's detections) on a batch: the gradient of the sum of
    the explained scores (one backward pass; in eval mode each image's gradient is its own). `targets` (B×6, the
    detections chosen on an earlier pass) are checked to be the rows explained."""
    names = resolve_layers(model, layers)
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m, _i, out):
            if not isinstance(out, torch.Tensor) or out.ndim != 4:
                got = f"a {out.ndim}-d tensor" if isinstance(out, torch.Tensor) else type(out).__name__
                raise ExplainError(f"layer {name!r} gives {got}, not a B×C×H×W feature map; LayerCAM needs a "
                                   f"convolutional layer")
            acts[name] = out
        return hook

    was_training = model.training
    model.eval()
    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        x = images.detach().clone().requires_grad_(True)  # every activation is on the graph, frozen weights or not
        with torch.enable_grad():
            out = model(x)
            missing = [n for n in names if n not in acts]
            if missing:
                raise ExplainError(f"layer {missing[0]!r} is not used by the model's forward pass")
            rows = torch.as_tensor(rows, dtype=torch.long, device=out.device)
            chosen = out[torch.arange(len(out), device=out.device), rows]
            if targets is not None and not (torch.allclose(chosen[:, :4].detach().float(), targets[:, :4].float().to(
                    out.device), atol=1e-3) and torch.equal(chosen[:, 5].detach(), targets[:, 5].to(out.device))):
                raise ExplainError("the detector gave other detections on a second pass over the same images; "
                                   "LayerCAM needs a deterministic detector")
            grads = torch.autograd.grad(chosen[:, 4].sum(), [acts[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    raw, per_layer, zero_layers = {}, {}, {}
    for n, g in zip(names, grads):
        a = acts[n].detach()
        g = torch.zeros_like(a) if g is None else g.detach()  # the layer does not reach the score
        raw[n] = (g.clamp_min(0) * a).sum(1).float()
        up = F.interpolate(raw[n].clamp_min(0)[:, None], size=images.shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
        per_layer[n], zero_layers[n] = _normalize(up)
    maps, zero = _normalize(torch.stack(list(per_layer.values())).mean(0))
    return DetectionMaps(maps, "layercam", names, per_layer, raw, zero_maps=zero, zero_layers=zero_layers)


# -- D-RISE ------------------------------------------------------------------------------------------------------

def check_drise(masks: int, grid: int, keep_prob: float, size: tuple[int, int]) -> None:
    if not isinstance(masks, int) or masks < 1:
        raise ExplainError(f"--masks must be at least 1, got {masks}")
    if not isinstance(grid, int) or not 1 <= grid <= min(size):
        raise ExplainError(f"--grid must be from 1 to the image's side ({min(size)}), got {grid}")
    if not 0.0 < keep_prob <= 1.0:
        raise ExplainError(f"--keep-prob is a fraction above 0 and at most 1, got {keep_prob}")


class RiseMasks:
    """RISE's random masks (Petsiuk et al. 2018), drawn once from `seed` (so a mask does not depend on the batch it
    is made in): `grid`×`grid` cells kept with probability `keep_prob`, upsampled bilinearly to (grid + 1) × the
    cell size and cropped to the image at a random shift of less than a cell."""

    def __init__(self, n: int, grid: int, keep_prob: float, size: tuple[int, int], seed: int = 0):
        check_drise(n, grid, keep_prob, size)
        g = torch.Generator().manual_seed(int(seed))
        self.size = size
        self.cells = (torch.rand(n, 1, grid, grid, generator=g) < keep_prob).float()
        self.cell = (math.ceil(size[0] / grid), math.ceil(size[1] / grid))
        self.shifts = torch.stack([torch.randint(0, self.cell[0], (n,), generator=g),
                                   torch.randint(0, self.cell[1], (n,), generator=g)], 1)
        self.grid = grid

    def __len__(self) -> int:
        return len(self.cells)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Masks start…stop-1 as (stop - start)×H×W in [0, 1]."""
        (h, w), (ch, cw) = self.size, self.cell
        up = F.interpolate(self.cells[start:stop], size=((self.grid + 1) * ch, (self.grid + 1) * cw),
                           mode="bilinear", align_corners=False)[:, 0]
        return torch.stack([m[dy:dy + h, dx:dx + w] for m, (dy, dx) in zip(up, self.shifts[start:stop].tolist())])


def parallel(fn, jobs: list, device: torch.device) -> list:  # noqa: ANN001
    """`fn` over `jobs`, results in order. On a CPU, when this process is cnnkit's alone (`owns_threads`), one
    single-threaded worker per core: a detector's small convolutions scale poorly across cores inside one op (and
    torch's threads spin-wait on a shared machine), while independent batches scale almost linearly (as Score-CAM's
    masked passes, `cam._score_weights`). Elsewhere one after another."""
    from cnnkit.runtime import owns_threads

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(jobs) < 2 or not owns_threads():
        return [fn(j) for j in jobs]
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(fn, jobs))
    finally:
        torch.set_num_threads(threads)


def drise(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, masks: int = DRISE_MASKS,
          grid: int = DRISE_GRID, keep_prob: float = DRISE_KEEP, seed: int = 0, batch_size: int | None = None
          ) -> DetectionMaps:
    """D-RISE maps of one detection per image (`targets`: B×6 rows x0, y0, x1, y1, score, class): Σ_i w_i M_i / N
    over the masks M_i, w_i = `similarity` of the target with the detections of the masked image x ⊙ M_i. The masked
    images run `batch_size` at a time (default: 16 on a CPU, 64 on a GPU), in parallel on a CPU (`parallel`)."""
    b, _, h, w = images.shape
    rise = RiseMasks(masks, grid, keep_prob, (h, w), seed)
    chunk = batch_size or (16 if images.device.type == "cpu" else 64)
    targets = targets.float().to(images.device)

    def run(job: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, start = job
        m = rise.batch(start, min(start + chunk, len(rise)))
        with torch.inference_mode():
            det = model(images[i:i + 1] * m.to(images.device, images.dtype)[:, None])
            wi = similarity(targets[i:i + 1].expand(len(m), -1), det).float().cpu()
        return wi, (wi[:, None, None] * m).sum(0)

    was_training = model.training
    model.eval()
    try:
        jobs = [(i, start) for i in range(b) for start in range(0, len(rise), chunk)]
        parts = parallel(run, jobs, images.device)
    finally:
        model.train(was_training)
    weights = torch.zeros(b, len(rise))
    raw = torch.zeros(b, h, w)
    for (i, start), (wi, part) in zip(jobs, parts):  # summed in the jobs' order: the same map however they ran
        weights[i, start:start + len(wi)] = wi
        raw[i] += part
    raw /= len(rise)
    maps, zero = _normalize(raw)
    return DetectionMaps(maps, "drise", raw=raw, weights=weights, zero_maps=zero)


# -- the deletion/insertion check --------------------------------------------------------------------------------

def detection_score(targets: torch.Tensor):  # noqa: ANN201 (a metrics.Score)
    """The deletion/insertion curves' score: `similarity` of each changed image's detections with its target row
    (the `targets` argument deletion_insertion passes is each image's index into `targets`)."""
    def score(outputs: torch.Tensor, index: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return similarity(targets.to(outputs.device)[index[images].to(outputs.device)], outputs)
    return score


def deletion_check(model: nn.Module, images: torch.Tensor, maps: dict[str, torch.Tensor], targets: torch.Tensor,
                   seeds: int = RANDOM_SEEDS, steps: int = STEPS, batch_size: int | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Deletion and insertion AUCs of each method's maps (B) and of `seeds` uniform random maps per image (B×seeds;
    seed s drawn from torch.Generator().manual_seed(s), as for segmentation), scored by `similarity` with the
    explained detections (`targets`, B×6); and each method's curves (B×(steps + 1); random: B×seeds×(steps + 1)).
    The changed images run `batch_size` at a time (default: 16 on a CPU, 64 on a GPU), in parallel on a CPU."""
    from cnnkit.explain.metrics import deletion_insertion

    if seeds < 1:
        raise ExplainError(f"the deletion check needs at least one random map, got seeds={seeds}")
    b = len(images)
    shape = next(iter(maps.values())).shape
    random = [torch.rand(shape, generator=torch.Generator().manual_seed(s)) for s in range(seeds)]
    every = [*(m.detach().float().cpu() for m in maps.values()), *random]
    score = detection_score(targets.float())
    chunk = batch_size or (16 if images.device.type == "cpu" else 64)
    index = torch.arange(b)
    # one job per map and image (each runs its curves' 2 × (steps + 1) changed images), in parallel on a CPU
    jobs = [(j, i) for j in range(len(every)) for i in range(b)]
    curves = parallel(lambda job: deletion_insertion(
        model, images[job[1]:job[1] + 1], every[job[0]][job[1]:job[1] + 1].to(images.device), index[job[1]:job[1] + 1],
        steps=steps, batch_size=chunk, score=score), jobs, images.device)
    keys = ("deletion", "insertion", "deletion_curve", "insertion_curve")
    stacked = {k: torch.stack([c[k][0] for c in curves]).view(len(every), b, *curves[0][k].shape[1:]) for k in keys}
    out: dict[str, dict[str, Any]] = {name: {k: stacked[k][j] for k in keys} for j, name in enumerate(maps)}
    out["random"] = {k: stacked[k][len(maps):].transpose(0, 1) for k in keys}
    return out


# -- the figure and the workflow ---------------------------------------------------------------------------------

def save_detection_explanation(image: np.ndarray, overlays: dict[str, np.ndarray], box, label: str, path: Path,
                               titles: dict[str, str] | None = None) -> Path:
    """One row: the image with the explained box, then each method's map over it with the box and a colour bar."""
    from matplotlib.patches import Rectangle

    from cnnkit.report.plots import plt, save_figure

    im = np.asarray(image, dtype=np.float32)  # C×H×W, scaled to [0, 1]: grey for one channel, RGB for three
    lo, hi = float(im.min()), float(im.max())
    im = (im - lo) / (hi - lo) if hi > lo else np.zeros_like(im)
    base, cmap = (im.transpose(1, 2, 0), None) if im.shape[0] == 3 else (im[0], "gray")
    n = 1 + len(overlays)
    fig, axes = plt.subplots(1, n, figsize=(2.8 * n + 0.4, 3.1))
    axes = np.atleast_1d(axes)
    axes[0].imshow(base, cmap=cmap)
    axes[0].set_title("detection", fontsize=8)
    for ax, (method, m) in zip(axes[1:], overlays.items()):
        ax.imshow(base, cmap=cmap)
        im = ax.imshow(np.asarray(m, dtype=np.float32), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
        ax.set_title(titles.get(method, method) if titles else method, fontsize=7)
    x0, y0, x1, y1 = (float(v) for v in box)
    for ax in axes:
        ax.axis("off")
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", lw=1.2))
        ax.text(x0 - 0.5, y0 - 1.5, label, color="black", fontsize=6, va="bottom",
                bbox={"facecolor": "lime", "edgecolor": "none", "pad": 1})
    fig.suptitle(f"explained detection: {label}", fontsize=9)
    return save_figure(fig, Path(path))


def _range(v: torch.Tensor, seeds: int) -> dict[str, Any]:
    return {"mean": round(float(v.mean()), 6), "min": round(float(v.min()), 6), "max": round(float(v.max()), 6),
            "seeds": seeds}


def explain_detection(ckpt, dev: torch.device, raw: torch.Tensor, x: torch.Tensor, files: list[Path],  # noqa: ANN001
                      methods: str | list[str] | None, layer: str, detection: int | None, target: int | None,
                      out: Path, seeds: int | None = None, threshold: float | None = None, masks: int | None = None,
                      grid: int | None = None, keep_prob: float | None = None, seed: int | None = None
                      ) -> tuple[list[Path], list[dict[str, Any]], Path, list[str]]:
    """LayerCAM and D-RISE of one detection per image of a detection checkpoint (`raw` uint8, `x` normalized), the
    deletion/insertion check against `seeds` random maps, a figure per image and `explain.json`. Returns the
    figures, the records, the JSON's path and the methods."""
    from cnnkit.artifacts import atomic_write_text, claim_dir
    from cnnkit.explain.metrics import map_stats

    names = parse_methods(methods)
    seeds = RANDOM_SEEDS if seeds is None else seeds
    masks, grid = DRISE_MASKS if masks is None else masks, DRISE_GRID if grid is None else grid
    keep_prob, seed = DRISE_KEEP if keep_prob is None else keep_prob, 0 if seed is None else seed
    if "drise" in names:
        check_drise(masks, grid, keep_prob, tuple(x.shape[-2:]))
    model = ckpt.model.to(dev).eval()
    layers = resolve_layers(model, layer) if "layercam" in names else []
    with score_threshold(model, threshold):
        kept_above = current_threshold(model)
        with torch.no_grad():
            outputs = model(x).float()
        rows = choose_detections(outputs, detection, target, ckpt.classes, [str(f) for f in files])
        targets = outputs[torch.arange(len(x)), rows.to(outputs.device)]
        results, seconds = {}, {}
        for m in names:
            t0 = time.perf_counter()
            results[m] = (layercam(model, x, rows, layers, targets) if m == "layercam" else
                          drise(model, x, targets, masks, grid, keep_prob, seed))
            seconds[m] = time.perf_counter() - t0
        checks = deletion_check(model, x, {m: r.maps for m, r in results.items()}, targets, seeds=seeds)
    claim_dir(out)  # every check passed: writes there replace only files cnnkit wrote
    pngs, records = [], []
    stems: dict[str, int] = {}
    rnd = checks["random"]
    for i, f in enumerate(files):
        stems[f.stem] = stems.get(f.stem, 0) + 1
        stem = f.stem if stems[f.stem] == 1 else f"{f.stem}-{stems[f.stem]}"
        t = targets[i].cpu()
        cls = ckpt.classes[int(t[5])]
        label = f"{cls} {float(t[4]):.2f}"
        titles = {m: f"{m}\ndeletion {float(c['deletion'][i]):.3f} (random {float(rnd['deletion'][i].mean()):.3f})\n"
                     f"insertion {float(c['insertion'][i]):.3f} (random {float(rnd['insertion'][i].mean()):.3f})"
                  for m, c in checks.items() if m != "random"}
        png = save_detection_explanation(raw[i].numpy(), {m: r.maps[i].cpu().numpy() for m, r in results.items()},
                                         t[:4].tolist(), label, out / f"{stem}.png", titles)
        pngs.append(png)
        method_records = {}
        for m, r in results.items():
            c = checks[m]
            d, ins = float(c["deletion"][i]), float(c["insertion"][i])
            method_records[m] = {
                **({"layers": r.layers, "zero_layers": [n for n in r.layers if i in r.zero_layers[n]]}
                   if m == "layercam" else
                   {"masks": masks, "grid": grid, "keep_prob": keep_prob, "seed": seed}),
                "zero_map": i in r.zero_maps, **map_stats(r.maps[i].cpu()),
                "deletion_auc": round(d, 6), "insertion_auc": round(ins, 6),
                "random_deletion_auc": _range(rnd["deletion"][i], seeds),
                "random_insertion_auc": _range(rnd["insertion"][i], seeds),
                "faithful": bool(d < float(rnd["deletion"][i].mean()) and ins > float(rnd["insertion"][i].mean()))}
        records.append({
            "image": str(f), "png": str(png),
            "detection": {"index": int(rows[i]), "class": cls, "score": round(float(t[4]), 5),
                          "box": [round(float(v), 2) for v in t[:4]]},
            "detections": int((outputs[i, :, 5] >= 0).sum()), "target": cls, "methods": method_records})
    summary = {"checkpoint": str(ckpt.path), "task": "detect", "methods": names, "layer": layer,
               "detection": 0 if detection is None else detection,
               "class": None if target is None else ckpt.classes[target], "score_threshold": kept_above,
               "seconds_per_method": {m: round(s, 4) for m, s in seconds.items()},
               "target": "the detection's score (its box held fixed)",
               "similarity": "best IoU with the explained box × same class × score, over the changed image's detections",
               "deletion": "pixels set to the normalized mean (insertion: revealed on a blurred copy) in the map's "
                           f"order, {STEPS} steps; score: the similarity", "images": records}
    json_path = out / "explain.json"
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return pngs, records, json_path, names
