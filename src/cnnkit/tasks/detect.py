"""Detection: boxes with classes and scores (`cnnkit.models.detect`'s tensor interface).

Targets are N×M×5 rows (class, x0, y0, x1, y1; class -1 pads), outputs N×D×6 rows (x0, y0, x1, y1, score,
class; class -1 pads). Training minimizes each detector's own losses (torchvision's: focal loss and GIoU or
smooth-L1 for RetinaNet, FCOS's centerness, SSD's hard negatives, Faster R-CNN's two stages), summed.

Scores. The full evaluation (`evaluate`) is COCO's, computed by torchmetrics' MeanAveragePrecision with
pycocotools as its backend: mAP@[.5:.95], AP50, AP75, AP and recall by object size, per-class AP. The score
the trainer keeps its best checkpoint by is the same mAP summed batch by batch (so that it adds up across
batches and processes like every other task's): each batch's detections are matched to its objects as COCO
matches them (per image and class, best score first, to the unmatched object of highest IoU at or above each
threshold 0.50, 0.55, ..., 0.95), and counted as true or false positives in SCORE_BINS bins of their score;
AP is then COCO's 101-point interpolated precision over those counts. Binning the scores merges detections of
nearly equal score, the only difference from COCO's; a test bounds it against pycocotools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.errors import ConfigError
from cnnkit.tasks.base import Objective, Task, refuse_augmentations, register_task

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
SCORE_BINS = 200
RECALL_POINTS = torch.linspace(0, 1, 101)


class DetectionLoss(Objective):
    """The detector's own losses, summed: the model is called with the targets (torchvision's detectors compute
    their losses inside, from their anchors and matching)."""

    flip_invariant = False  # a mirrored image's boxes are mirrored: no flip averaging of outputs

    def forward(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Any:
        return model(x, targets)

    def loss(self, outputs: Any, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return sum(v.float() for v in outputs.values())


def match_counts(detections: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    """COCO's matching of a batch, counted (see the module docstring): float64 classes×T×SCORE_BINS×2 counts of
    true and false positives by class, IoU threshold and score bin, then the objects per class; flattened."""
    from torchvision.ops import box_iou

    t_count = len(IOU_THRESHOLDS)
    counts = torch.zeros(classes, t_count, SCORE_BINS, 2, dtype=torch.float64)
    objects = torch.zeros(classes, dtype=torch.float64)
    thresholds = IOU_THRESHOLDS.to(detections.device)
    for det, tgt in zip(detections.float(), targets.float()):
        tgt = tgt[tgt[:, 0] >= 0]
        objects += torch.bincount(tgt[:, 0].long().cpu(), minlength=classes)[:classes].double()
        det = det[det[:, 5] >= 0]
        if not len(det):
            continue
        det = det[det[:, 4].argsort(descending=True, stable=True)]
        iou = box_iou(det[:, :4], tgt[:, 1:]) if len(tgt) else det.new_zeros(len(det), 0)
        iou = torch.where(det[:, 5, None] == tgt[None, :, 0], iou, -1.0)
        taken = torch.zeros(t_count, len(tgt), dtype=torch.bool, device=det.device)
        hit = torch.zeros(t_count, len(det), dtype=torch.bool, device=det.device)
        if len(tgt):
            for j in range(len(det)):
                free = torch.where(taken, -1.0, iou[j].expand(t_count, -1))
                best, which = free.max(1)
                ok = best >= thresholds
                hit[:, j] = ok
                taken[ok, which[ok]] = True
        cls = det[:, 5].long().cpu()
        bins = (det[:, 4] * SCORE_BINS).long().clamp(0, SCORE_BINS - 1).cpu()
        hit = hit.cpu().double()
        for positive, index in ((hit, 0), (1 - hit, 1)):
            flat = (cls[None, :] * t_count + torch.arange(t_count)[:, None]) * SCORE_BINS + bins[None, :]
            counts[..., index].view(-1).index_add_(0, flat.flatten(), positive.flatten())
    return torch.cat([counts.flatten(), objects])


def average_precision(total: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO's 101-point interpolated AP from `match_counts` summed: per class and IoU threshold (NaN where a class
    has no objects), and the objects per class."""
    t_count = len(IOU_THRESHOLDS)
    counts = total[:-classes].view(classes, t_count, SCORE_BINS, 2).double()
    objects = total[-classes:].double()
    tp = counts[..., 0].flip(-1).cumsum(-1)  # from the highest score down
    fp = counts[..., 1].flip(-1).cumsum(-1)
    recall = tp / objects.clamp_min(1)[:, None, None]
    precision = tp / (tp + fp).clamp_min(1e-12)
    envelope = precision.flip(-1).cummax(-1).values.flip(-1)
    points = RECALL_POINTS.double().to(recall.device)
    index = torch.searchsorted(recall.contiguous(), points.expand(classes, t_count, -1).contiguous(), right=False)
    found = index < SCORE_BINS
    sampled = envelope.gather(-1, index.clamp(max=SCORE_BINS - 1)) * found  # recall never reached: precision 0
    ap = sampled.mean(-1)
    return torch.where(objects[:, None] > 0, ap, torch.full_like(ap, float("nan"))), objects


def pr_curves(total: torch.Tensor, classes: int, names: list[str], thresholds: tuple[float, ...] = (0.5, 0.75)
              ) -> dict[str, dict[str, Any]]:
    """Each class's precision-recall points (K×2 numpy arrays of recall, precision; precision made non-increasing
    as AP reads it) at each IoU threshold, from `match_counts` summed; classes without objects left out."""
    t_count = len(IOU_THRESHOLDS)
    counts = total[:-classes].view(classes, t_count, SCORE_BINS, 2).double()
    objects = total[-classes:].double()
    out: dict[str, dict[str, Any]] = {}
    for threshold in thresholds:
        t = int(torch.isclose(IOU_THRESHOLDS, torch.tensor(threshold)).nonzero()[0])
        tp, fp = counts[:, t, :, 0].flip(-1).cumsum(-1), counts[:, t, :, 1].flip(-1).cumsum(-1)
        recall = tp / objects.clamp_min(1)[:, None]
        precision = (tp / (tp + fp).clamp_min(1e-12)).flip(-1).cummax(-1).values.flip(-1)
        out[f"{threshold:.2f}"] = {names[c]: torch.stack([recall[c], precision[c]], 1).numpy()
                                   for c in range(classes) if objects[c] > 0 and c < len(names)}
    return out


def image_errors(outputs: torch.Tensor, targets: torch.Tensor, classes: int, score: float) -> torch.Tensor:
    """Per image, its false positives and missed objects at IoU 0.50 among the detections scoring at least `score`
    (COCO's matching): what makes an image a bad example."""
    errors = []
    for det, tgt in zip(outputs.float().cpu(), targets.float().cpu()):
        det = torch.where((det[:, 4] >= score)[:, None], det, torch.tensor([0.0, 0, 0, 0, 0, -1]))
        c = match_counts(det[None], tgt[None], classes)
        per = c[:-classes].view(classes, len(IOU_THRESHOLDS), SCORE_BINS, 2)[:, 0].sum((0, 1))
        errors.append(float(per[1] + c[-classes:].sum() - per[0]))
    return torch.tensor(errors)


def _dicts(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[list[dict], list[dict]]:
    preds, truth = [], []
    for det, tgt in zip(outputs.float().cpu(), targets.float().cpu()):
        det, tgt = det[det[:, 5] >= 0], tgt[tgt[:, 0] >= 0]
        preds.append({"boxes": det[:, :4], "scores": det[:, 4], "labels": det[:, 5].long()})
        truth.append({"boxes": tgt[:, 1:], "labels": tgt[:, 0].long()})
    return preds, truth


def coco_metrics(outputs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """COCO's box metrics (torchmetrics' MeanAveragePrecision, pycocotools backend) of a whole split: mAP@[.5:.95],
    AP50, AP75, AP and recall by object size (small < 32² pixels < medium < 96² < large), per-class AP."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")
    metric.update(*_dicts(outputs, targets))
    r = metric.compute()
    out = {k: float(r[k]) for k in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
                                    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")}
    classes = r["classes"].flatten().tolist()
    per_class = r["map_per_class"].flatten().tolist()
    out["per_class_ap"] = {names[int(c)]: float(v) for c, v in zip(classes, per_class) if 0 <= int(c) < len(names)}
    out["images"] = int(len(targets))
    out["objects"] = int((targets[..., 0] >= 0).sum())
    out["detections"] = int((outputs[..., 5] >= 0).sum())
    return out


def anchor_sizes_from_boxes(objects: torch.Tensor, levels: int) -> list[float]:
    """`levels` anchor sizes from N×M×5 object rows: the quantiles (2i + 1) / (2 × levels) of the boxes' sides
    (the square root of their areas), in pixels, rounded to a tenth."""
    rows = objects.reshape(-1, 5)
    rows = rows[rows[:, 0] >= 0]
    if not len(rows):
        raise ConfigError("the training set has no boxes to size the anchors by; give --model-kw anchor_sizes=[...]")
    sides = ((rows[:, 3] - rows[:, 1]).clamp_min(1) * (rows[:, 4] - rows[:, 2]).clamp_min(1)).sqrt()
    q = torch.tensor([(2 * i + 1) / (2 * levels) for i in range(levels)])
    return [round(float(v), 1) for v in torch.quantile(sides.double(), q.double())]


class Detection(Task):
    """Boxes with classes: outputs N×D×6 (x0, y0, x1, y1, score, class), targets N×M×5 (class, x0, y0, x1, y1)."""

    name = "detect"
    score = "map"
    output = "detections"
    any_size = True
    # `cnnkit export` takes a detector as ONNX only, post-processing inside (cnnkit.deploy.detect: torch.export
    # cannot capture torchvision's per-image post-processing, so no .pt2); `cnnkit compress` refuses it (its
    # int8 artifacts are another issue's), which `exportable = False` tells it
    exportable = False
    export_formats = ("onnx",)

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return labels.float()

    def model_options(self, model: str, options: dict[str, Any], data: Any) -> dict[str, Any]:
        """`anchor_sizes` from the training boxes where the detector takes them and none were given: one size per
        level of the detector's pyramid, at the quantiles (2i + 1) / 2L of the boxes' sides (the square root of
        their areas), rounded to a tenth of a pixel."""
        from cnnkit.models import get_entry
        from cnnkit.models.detect import ANCHOR_LEVELS

        if "anchor_sizes" in options or model.startswith("timm/") or "anchor_sizes" not in get_entry(model).options():
            return {}
        return {"anchor_sizes": anchor_sizes_from_boxes(data.objects, ANCHOR_LEVELS)}

    def data_for(self, data: Any) -> Any:
        """The set's objects as the targets; its masks (fashion-scenes has both) left out."""
        if getattr(data, "objects", None) is None:
            raise ConfigError(f"{data.name} has no boxes: the detect task needs data with objects' boxes "
                              f"(e.g. fashion-scenes; your own: coco-boxes:FILE.json, voc-boxes:DIR or yolo:DIR)")
        from dataclasses import replace

        return replace(data, masks=None, instances=None, native_masks=None)

    def objective(self, cfg: Any) -> Objective:
        refuse_augmentations(cfg.augment, ("policy", "erasing", "mixup", "cutmix"), "detection",
                             "it would change objects without moving or dropping their boxes",
                             "hflip, crop_padding or resized_crop, which move the boxes with the images")
        if cfg.pretext or cfg.distill:
            raise ConfigError("RotNet pretraining and distillation are for classification; detection trains with "
                              "its detector's own losses")
        return DetectionLoss()  # not flip-invariant: validation runs without flip TTA whatever the recipe says

    def infer(self, model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        if tta:
            raise ConfigError("--tta (flip averaging) is for classification and segmentation; a detector's boxes "
                              "are not averaged")
        return model(x).float()

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NaN: a detector gives its losses only in training mode, from its own matching."""
        return torch.tensor(float("nan"))

    def score_size(self, outputs: int) -> int:
        return outputs * len(IOU_THRESHOLDS) * SCORE_BINS * 2 + outputs

    def score_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise ValueError("detection's counts are sized by the model's classes: call score_counts(outputs, targets, "
                         "classes)")

    def score_counts(self, outputs: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
        return match_counts(outputs, targets, classes).to(outputs.device)

    def score_value(self, total: torch.Tensor, images: float) -> float:
        """mAP@[.5:.95] over the classes with objects (NaN before any object was seen: in training)."""
        per_image = len(IOU_THRESHOLDS) * SCORE_BINS * 2 + 1
        classes = total.numel() // per_image
        ap, objects = average_precision(total.double().cpu(), classes)
        return float(ap[objects > 0].mean()) if bool((objects > 0).any()) else float("nan")

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
        return coco_metrics(outputs, targets, names)

    def predictions(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
        """Each image's `topk` highest-scoring detections as (class, score)."""
        return [[(names[int(d[5])], float(d[4])) for d in det[det[:, 5] >= 0][:topk]] for det in outputs.float().cpu()]

    def answer(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[dict[str, Any]]]:
        """Each image's `topk` highest-scoring detections: class, score and box [x0, y0, x1, y1] in pixels."""
        return [[{"class": names[int(d[5])], "score": float(d[4]), "box": [round(float(v), 2) for v in d[:4]]}
                 for d in det[det[:, 5] >= 0][:topk]] for det in outputs.float().cpu()]

    def format_value(self, value: float) -> str:
        return f"score {value:.2f}"

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"mAP@[.5:.95]": metrics["map"], "AP50": metrics["map_50"], "AP75": metrics["map_75"],
                "AP small": metrics["map_small"], "AR@100": metrics["mar_100"]}

    def report(self, metrics: dict[str, Any], names: list[str], out_dir: Path, stem: str,
               images: torch.Tensor | None = None, outputs: torch.Tensor | None = None,
               targets: torch.Tensor | None = None, meta: dict[str, Any] | None = None,
               shown: int = 4) -> dict[str, Path]:
        """An HTML report (`eval-<stem>.html`): COCO's metrics, AP per class, and given the outputs and targets,
        precision-recall curves per class at IoU 0.50 and 0.75 and, given the images too, the predictions drawn
        against the ground truth for the first `shown` images by index and the `shown` others with the most
        errors (false positives and missed objects at IoU 0.50 among detections scoring at least 0.25)."""
        from cnnkit.report.detect_report import SHOWN_SCORE, write_detection_report

        if outputs is None or targets is None:
            return write_detection_report(out_dir, stem, metrics, names)
        outputs, targets = outputs.float().cpu(), targets.float().cpu()
        curves = pr_curves(match_counts(outputs, targets, len(names)), len(names), names)
        if images is None:
            return write_detection_report(out_dir, stem, metrics, names, curves)
        errors = image_errors(outputs, targets, len(names), SHOWN_SCORE)
        first = list(range(min(shown, len(outputs))))
        worst = [i for i in errors.argsort(descending=True, stable=True).tolist() if i not in first][:shown]
        pick = first + worst
        rows = [{"image": i, "shown as": "first" if i in first else "most errors", "errors": int(errors[i]),
                 "objects": int((targets[i, :, 0] >= 0).sum())} for i in pick]
        examples = {"images": images[pick].cpu().numpy(), "truth": targets[pick].numpy(),
                    "detections": outputs[pick].numpy(), "rows": rows,
                    "titles": [f"#{r['image']} ({r['shown as']}): {r['errors']} errors" for r in rows],
                    "caption": f"the first {len(first)} images by index, then the {len(worst)} others with the most "
                               f"false positives and missed objects at IoU 0.50, detections scoring at least "
                               f"{SHOWN_SCORE}; ground truth dashed green, detections red"}
        return write_detection_report(out_dir, stem, metrics, names, curves, examples)


DETECT = register_task(Detection())
