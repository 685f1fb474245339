"""Faithfulness and localization of saliency maps, batched:

- deletion and insertion AUC (Petsiuk et al. 2018, RISE): pixels removed from the image, or revealed on a
  blurred copy, in the map's order, most salient first; the area under the target-probability curve
  (deletion: lower is better; insertion: higher is better);
- pointing game (Zhang et al. 2016): a hit when the map's maximum falls in the ground-truth box;
- box IoU (the Grad-CAM paper's localization): the map thresholded at a fraction of its maximum, the box
  around its largest connected region, compared with the ground-truth box;
- model-randomization sanity check (Adebayo et al. 2018): the top layers re-initialized in a cascade,
  the maps recomputed, and their Spearman rank correlation with the original maps reported.

Boxes are (x0, y0, x1, y1) in pixels, x1 and y1 exclusive.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from cnnkit.errors import ExplainError


def _check_maps(maps: torch.Tensor, images: torch.Tensor | None = None) -> None:
    if maps.ndim != 3:
        raise ExplainError(f"maps must be B×H×W, got shape {tuple(maps.shape)}")
    if images is not None and (images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]):
        raise ExplainError(f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}")


def _blur(images: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    k = max(3, (min(images.shape[-2:]) // 4) | 1)
    return gaussian_blur(images, [k, k], [k / 3.0, k / 3.0])


def target_probability(outputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A classifier's softmax probability of each image's target class (the score deletion tracks by default)."""
    return torch.softmax(outputs.float(), 1).gather(1, targets[images][:, None])[:, 0]


Score = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets, image indices) -> B


def deletion_insertion(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                       steps: int = 32, batch_size: int = 128, mode: str = "both", score: Score = target_probability
                       ) -> dict[str, torch.Tensor]:
    """Per-image deletion and insertion AUCs (and their curves, `steps`+1 points each). Deletion replaces
    pixels with zero (the normalized mean); insertion reveals them on a blurred copy, as in RISE. Ties in
    a map are broken by position, the same way for every method. The curve tracks `score(outputs, targets,
    image indices)` of the changed images (default: the target class's probability)."""
    _check_maps(maps, images)
    was_training = model.training
    model.eval()
    b, _, h, w = images.shape
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand(b, -1))
    fractions = torch.linspace(0, 1, steps + 1)
    out: dict[str, torch.Tensor] = {}
    targets = torch.as_tensor(targets, dtype=torch.long)
    kinds = ["deletion", "insertion"] if mode == "both" else [mode]
    try:
        for kind in kinds:
            start, end = (images, torch.zeros_like(images)) if kind == "deletion" else (_blur(images), images)
            probs = torch.empty(b, steps + 1)
            pairs = [(i, s) for i in range(b) for s in range(steps + 1)]
            with torch.no_grad():
                for j in range(0, len(pairs), batch_size):
                    idx = torch.tensor(pairs[j:j + batch_size])
                    img, st = idx[:, 0], idx[:, 1]
                    n_px = (fractions[st] * h * w).round().long()
                    changed = (rank[img] < n_px[:, None]).view(-1, 1, h, w)
                    x = torch.where(changed, end[img], start[img])
                    probs[img, st] = score(model(x), targets, img.to(targets.device)).float().cpu()
            out[f"{kind}_curve"] = probs
            out[kind] = torch.trapezoid(probs, fractions, dim=1)
    finally:
        model.train(was_training)
    return out


def map_stats(m: torch.Tensor) -> dict:
    """Summary of one H×W map in [0, 1]: the peak's (row, column), mean, share of pixels at ≥ half the peak."""
    h, w = m.shape
    i = int(m.flatten().argmax())
    return {"peak": [i // w, i % w], "mean": round(float(m.mean()), 5),
            "area_at_half_peak": round(float((m >= 0.5 * m.max()).float().mean()) if m.max() > 0 else 0.0, 5)}


def _check_boxes(boxes: torch.Tensor, n: int) -> torch.Tensor:
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if boxes.shape != (n, 4):
        raise ExplainError(f"boxes must be {n}×4 (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    return boxes


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Per-image hit (1.0) or miss (0.0): the map's maximum lies within `tolerance` pixels of the box. An
    all-zero map has no maximum and misses."""
    _check_maps(maps)
    boxes = _check_boxes(boxes, len(maps))
    w = maps.shape[-1]
    flat = maps.flatten(1)
    idx = flat.argmax(1)
    y, x = (idx // w).float() + 0.5, (idx % w).float() + 0.5  # pixel centres
    dx = torch.clamp(boxes[:, 0] - x, min=0) + torch.clamp(x - boxes[:, 2], min=0)
    dy = torch.clamp(boxes[:, 1] - y, min=0) + torch.clamp(y - boxes[:, 3], min=0)
    hit = (dx.pow(2) + dy.pow(2)).sqrt() <= tolerance
    return (hit & (flat.amax(1) > 0)).float()


def centre_maps(n: int, size: tuple[int, int]) -> torch.Tensor:
    """The centre-point baseline of the pointing game: a map peaking at the image centre."""
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    return (1 - (yy.pow(2) + xx.pow(2)).sqrt() / (h * w)).expand(n, h, w).clone()


def map_boxes(maps: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """The box around the largest connected region of each map above `threshold` × its maximum (as the
    Grad-CAM paper localizes); an all-zero map gives an empty box."""
    from scipy import ndimage

    _check_maps(maps)
    out = torch.zeros(len(maps), 4)
    for i, m in enumerate(maps.detach().float().numpy()):
        top = m.max()
        if top <= 0:
            continue
        labels, n = ndimage.label(m >= threshold * top)
        sizes = ndimage.sum(np.ones_like(m), labels, index=np.arange(1, n + 1))
        ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
        out[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return out


def box_iou(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-row IoU of two N×4 box sets (x1, y1 exclusive)."""
    from torchvision.ops import box_iou as tv_iou

    pred, truth = torch.as_tensor(pred, dtype=torch.float32), _check_boxes(truth, len(pred))
    return tv_iou(pred, truth).diagonal().nan_to_num(0.0)


def localization_iou(maps: torch.Tensor, boxes: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """Per-image IoU between the thresholded map's box and the ground-truth box."""
    return box_iou(map_boxes(maps, threshold), boxes)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman rank correlation of two B×… tensors (average ranks for ties); a constant row
    gives 0."""
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.flatten(1).double().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.flatten(1).double().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-30), torch.zeros_like(den)).float()


def _cascade(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Groups to re-initialize, output side first: the classifier, then each stage (or each layer)."""
    from cnnkit.models.base import stage_modules

    modules = dict(model.named_modules())
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    groups = [("classifier", head)] if head else []
    stages = [n for n in stage_modules(model) if n in modules]
    for name in reversed(stages):
        ms = [m for m in modules[name].modules() if hasattr(m, "reset_parameters")]
        if ms:
            groups.append((name, ms))
    return groups


def randomization_check(model: nn.Module, images: torch.Tensor, explain_fn: Callable[[nn.Module], torch.Tensor],
                        depth: int | None = None, seed: int = 0) -> list[dict[str, float]]:
    """Cascading model randomization (Adebayo et al. 2018). `explain_fn(model)` returns B×H×W maps for
    `images` (with the targets fixed by the caller). Starting at the classifier, each step re-initializes
    one more group of layers (stage by stage towards the input) on a copy of the model and reports the
    mean and per-image Spearman correlation with the original maps. Faithful maps decorrelate."""
    base = explain_fn(model)
    randomized = copy.deepcopy(model)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    rows = []
    try:
        for name, ms in _cascade(randomized)[:depth]:
            for m in ms:
                m.reset_parameters()
            rho = spearman(base, explain_fn(randomized))
            rows.append({"randomized_through": name, "spearman": float(rho.mean()),
                         "spearman_min": float(rho.min()), "spearman_max": float(rho.max())})
    finally:
        torch.random.set_rng_state(gen_state)
    if not rows:
        raise ExplainError(f"{type(model).__name__} has no layers with parameters to re-initialize")
    return rows

