"""Seg-Grad-CAM (Vinogradova et al. 2020) for segmentation runs: the region a class is explained over (a box,
or the pixels predicted as the class), a deletion check of the map against random maps, and the `cnnkit
explain` workflow on image files.

The deletion check (Petsiuk et al. 2018, as `explain.metrics.deletion_insertion` runs it) deletes pixels in
the map's order, most relevant first, and tracks the class's mean probability over the region; a faithful map
makes it fall faster than a random order does: its area under the curve is lower than random maps'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint
from cnnkit.errors import ExplainError
from cnnkit.explain.cam import SEGMENT_METHODS, explain, largest_class, predicted_region
from cnnkit.explain.metrics import Score, deletion_insertion


def parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    """'x0,y0,x1,y1' (pixels, x1 and y1 exclusive) -> a box; None -> None (the predicted region)."""
    if text is None:
        return None
    try:
        box = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ExplainError(f"--region takes a box as x0,y0,x1,y1 in pixels (x1, y1 exclusive), got {text!r}")
    return box  # type: ignore[return-value]


def box_region(box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """The H×W 0/1 mask of a box (x0, y0, x1, y1) that must lie inside an image of `size` (H, W)."""
    h, w = size
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ExplainError(f"--region {x0},{y0},{x1},{y1} is not a box inside the {w}×{h} image the model sees "
                           f"(0 ≤ x0 < x1 ≤ {w}, 0 ≤ y0 < y1 ≤ {h})")
    mask = torch.zeros(h, w)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def region_probability(regions: torch.Tensor) -> Score:
    """The deletion curve's score for segmentation: each image's mean probability of its class over its region
    (`regions`: B×H×W weights, fixed before any pixel is deleted)."""
    area = regions.sum((1, 2)).clamp_min(1e-12)

    def score(outputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(outputs.float(), 1)
        chosen = probs.gather(1, targets[images].view(-1, 1, 1, 1).expand(-1, 1, *probs.shape[2:]))[:, 0]
        r = regions[images].to(chosen)
        return (chosen * r).sum((1, 2)) / area[images].to(chosen)

    return score


def deletion_check(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                   regions: torch.Tensor, seeds: int = 8, steps: int = 16, batch_size: int = 128
                   ) -> dict[str, torch.Tensor]:
    """Deletion AUCs of the maps (`map`: B) and of `seeds` uniform random maps per image (`random`: B×seeds,
    seed s drawn from torch.Generator().manual_seed(s)), scored by `region_probability`; and the maps' curves."""
    if seeds < 1:
        raise ExplainError(f"the deletion check needs at least one random map, got seeds={seeds}")
    b = len(images)
    random = torch.stack([torch.rand(maps.shape, generator=torch.Generator().manual_seed(s)) for s in range(seeds)])
    all_maps = torch.cat([maps.cpu()[None], random]).flatten(0, 1).to(maps.device)  # map-major: k*B + image
    reps = seeds + 1
    tgt = torch.as_tensor(targets, dtype=torch.long).to(images.device).repeat(reps)
    out = deletion_insertion(model, images.repeat(reps, 1, 1, 1), all_maps, tgt, steps=steps, batch_size=batch_size,
                             mode="deletion", score=region_probability(regions.to(images.device).repeat(reps, 1, 1)))
    auc = out["deletion"].view(reps, b)
    return {"map": auc[0], "random": auc[1:].T, "curve": out["deletion_curve"].view(reps, b, -1)[0]}


def segment_targets(model: nn.Module, x: torch.Tensor, target: int | None, box: tuple[int, int, int, int] | None,
                    classes: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's predicted classes (B×H×W), the explained class per image (`target`, else the largest
    predicted class) and the regions (the box, else the pixels predicted as the class: refused where none is)."""
    with torch.no_grad():
        logits = model(x).float()
    tgt = largest_class(logits) if target is None else torch.full((len(x),), target, device=x.device)
    if box is not None:
        regions = box_region(box, tuple(logits.shape[-2:])).to(x.device).expand(len(x), -1, -1).clone()
    else:
        regions = predicted_region(logits, tgt)
        empty = (regions.sum((1, 2)) == 0).nonzero().flatten().tolist()
        if empty:
            raise ExplainError(f"no pixel of image {empty[0] + 1} is predicted as {classes[int(tgt[empty[0]])]!r}; "
                               f"give --region x0,y0,x1,y1 to explain the class over a box")
    return logits.argmax(1), tgt, regions


def _maps_in_chunks(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, regions: torch.Tensor, method: str,
                    layer: str, batch_size: int) -> tuple[torch.Tensor, str, list[int]]:
    """Seg-Grad-CAM maps of a batch computed `batch_size` images at a time: the maps, the layer, the zero maps."""
    parts = [(i, explain(model, x[i:i + batch_size], targets[i:i + batch_size], method=method, layer=layer,
                         region=regions[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return (torch.cat([p.maps for _, p in parts]), parts[0][1].layer,
            [i + j for i, p in parts for j in p.zero_maps])


def explain_segmentation(ckpt: LoadedCheckpoint, dev: torch.device, raw: torch.Tensor, x: torch.Tensor,
                         files: list[Path], methods: list[str], layer: str, target: int | None, region: str | None,
                         out: Path, seeds: int = 8, batch_size: int = 64
                         ) -> tuple[list[Path], list[dict[str, Any]], Path]:
    """Seg-Grad-CAM of a segmentation checkpoint on loaded images (`raw` uint8, `x` normalized): a figure per
    image (the image, the predicted mask, each method's map with the region outlined), the deletion check
    against `seeds` random maps, and `explain.json`. Returns the figures, the records and the JSON's path."""
    from cnnkit.artifacts import atomic_write_text, claim_dir
    from cnnkit.report.explain_plots import save_segmentation_explanation
    from cnnkit.tasks.segment import run_palette

    refused = [m for m in methods if m not in SEGMENT_METHODS]
    if refused:
        raise ExplainError(f"{refused[0]} explains a classifier; a segmentation run is explained by "
                           f"{' or '.join(SEGMENT_METHODS)} (Seg-Grad-CAM)")
    model = ckpt.model.to(dev).eval()
    box = parse_region(region)
    predicted, tgt, regions = segment_targets(model, x, target, box, ckpt.classes)
    palette = run_palette(ckpt.meta, len(ckpt.classes))
    results = {m: _maps_in_chunks(model, x, tgt, regions, m, layer, batch_size) for m in methods}
    checks = {m: deletion_check(model, x, maps, tgt, regions, seeds=seeds) for m, (maps, _, _) in results.items()}
    claim_dir(out)  # every check passed: writes there replace only files cnnkit wrote
    pngs, records = [], []
    stems: dict[str, int] = {}
    for i, f in enumerate(files):
        stems[f.stem] = stems.get(f.stem, 0) + 1
        stem = f.stem if stems[f.stem] == 1 else f"{f.stem}-{stems[f.stem]}"
        cls = ckpt.classes[int(tgt[i])]
        scores = {m: f"deletion AUC {float(c['map'][i]):.3f} (random {float(c['random'][i].mean()):.3f})"
                  for m, c in checks.items()}
        png = save_segmentation_explanation(raw[i].numpy(), predicted[i].cpu().numpy(),
                                            {m: r[0][i].cpu().numpy() for m, r in results.items()},
                                            regions[i].cpu().numpy(), out / f"{stem}.png", ckpt.classes, palette,
                                            int(tgt[i]), scores)
        pngs.append(png)
        records.append({
            "image": str(f), "png": str(png), "target": cls,
            "region": list(box) if box is not None else "predicted", "region_pixels": int(regions[i].sum()),
            "methods": {m: {"layer": results[m][1], "zero_map": i in results[m][2],
                            "deletion_auc": round(float(c["map"][i]), 6),
                            "random_deletion_auc": {"mean": round(float(c["random"][i].mean()), 6),
                                                    "min": round(float(c["random"][i].min()), 6),
                                                    "max": round(float(c["random"][i].max()), 6), "seeds": seeds},
                            "faithful": bool(c["map"][i] < c["random"][i].mean())}
                        for m, c in checks.items()}})
    summary = {"checkpoint": str(ckpt.path), "task": "segment", "methods": methods, "layer": layer,
               "deletion": "pixels set to the normalized mean in the map's order; score: the class's mean "
                           "probability over the region", "images": records}
    json_path = out / "explain.json"
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return pngs, records, json_path
