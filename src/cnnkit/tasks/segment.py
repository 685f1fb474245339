"""Semantic segmentation: a class per pixel (background included). Targets are N×H×W masks (255: ignored);
the objective is pixel-wise cross-entropy with the ignored pixels left out, plus Dice (Milletari et al. 2016)
when asked; the score is the mean intersection over union (mIoU) of a confusion matrix summed over the
split; the metrics (mIoU, per-class IoU, pixel accuracy, mean class accuracy, the confusion matrix) come
from torchmetrics."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ConfigError
from cnnkit.tasks.base import Objective, Task, register_task

IGNORE = 255  # a mask's value for pixels that count nowhere (unlabelled, borders)


def default_palette(classes: int) -> list[tuple[int, int, int]]:
    """Pascal VOC's colour map for `classes` class indices (0 black; bits of the index spread over R, G, B),
    the colours a mask PNG uses when the data recorded none."""
    colours = []
    for i in range(classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def run_palette(meta: dict[str, Any], classes: int) -> list[tuple[int, int, int]]:
    """The palette a checkpoint recorded (`meta["palette"]`: one [r, g, b] per class), else VOC's."""
    recorded = meta.get("palette")
    if isinstance(recorded, list) and len(recorded) == classes and all(
            isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in recorded):
        return [tuple(c) for c in recorded]
    return default_palette(classes)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 − the mean soft Dice coefficient over the classes present in the batch, ignored pixels left out."""
    probs = logits.float().softmax(1)
    valid = (targets != IGNORE).unsqueeze(1)
    onehot = F.one_hot(targets.clamp_max(logits.shape[1] - 1).long(), logits.shape[1]).permute(0, 3, 1, 2)
    probs, onehot = probs * valid, onehot * valid
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    return 1 - (2 * inter[present] / total[present].clamp_min(1e-6)).mean()


class PixelCrossEntropy(Objective):
    """Cross-entropy over the labelled pixels (label smoothing allowed), plus `dice` × the Dice loss."""

    def __init__(self, label_smoothing: float = 0.0, dice: float = 0.0) -> None:
        super().__init__()
        self.smoothing, self.dice = label_smoothing, dice

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(outputs.float(), targets, ignore_index=IGNORE, label_smoothing=self.smoothing)
        return loss + self.dice * dice_loss(outputs, targets) if self.dice else loss


def confusion(predicted: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    """The classes×classes confusion counts (rows: true class, columns: predicted) of the labelled pixels."""
    keep = targets != IGNORE
    index = targets[keep].long() * classes + predicted[keep].long()
    return torch.bincount(index, minlength=classes * classes).view(classes, classes)


def iou_from_confusion(matrix: torch.Tensor) -> torch.Tensor:
    """Each class's intersection over union; NaN for a class neither present nor predicted."""
    m = matrix.double()
    inter = m.diagonal()
    union = m.sum(0) + m.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


class Segmentation(Task):
    """A class per pixel: the model's outputs are N×K×H×W logits, one channel per class."""

    name = "segment"
    score = "miou"
    output = "logits"

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return labels.long()

    def objective(self, cfg: Any) -> Objective:
        aug = cfg.augment
        refused = [name for name, on in (("resized_crop", aug.resized_crop), ("policy", aug.policy != "none"),
                                         ("erasing", aug.erasing), ("mixup", aug.mixup), ("cutmix", aug.cutmix)) if on]
        if refused:
            raise ConfigError(f"--augment {refused[0]} is not available for segmentation (it would not move the "
                              f"masks with the images); use crop_padding and hflip")
        if cfg.pretext or cfg.distill:
            raise ConfigError("RotNet pretraining and distillation are for classification; segmentation trains "
                              "with cross-entropy (and --dice)")
        return PixelCrossEntropy(cfg.label_smoothing, getattr(cfg, "dice", 0.0))

    def infer(self, model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Per-pixel class probabilities; flip TTA averages them with the mirrored image's, mirrored back."""
        p = model(x).float().softmax(1)
        if tta:
            p = 0.5 * (p + model(x.flip(3)).float().softmax(1).flip(3))
        return p

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each image's mean negative log-likelihood over its labelled pixels, summed over the images."""
        nll = F.nll_loss(outputs.clamp_min(1e-12).log(), targets, ignore_index=IGNORE, reduction="none")
        labelled = (targets != IGNORE).sum((1, 2)).clamp_min(1)
        return (nll.sum((1, 2)) / labelled).sum()

    def score_size(self, outputs: int) -> int:
        return outputs * outputs

    def score_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's confusion counts, flattened (summed over batches and processes, then read by
        `score_value`)."""
        return confusion(outputs.argmax(1), targets, outputs.shape[1]).flatten()

    def score_value(self, total: torch.Tensor, images: float) -> float:
        """mIoU over the classes present in the labels or the predictions."""
        classes = int(round(total.numel() ** 0.5))
        iou = iou_from_confusion(total.view(classes, classes))
        return float(iou.nanmean()) if bool((~iou.isnan()).any()) else 0.0

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
        from cnnkit.tasks.segment_metrics import segmentation_report

        return segmentation_report(outputs, targets, names)

    def predictions(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
        """The classes each image's predicted mask covers, with the share of its pixels, largest first (at most
        `topk`)."""
        predicted = outputs.argmax(1)
        shares = F.one_hot(predicted.flatten(1), len(names)).float().mean(1)
        values, indices = shares.topk(max(1, min(topk, len(names))), dim=1)
        return [[(names[int(i)], float(v)) for v, i in zip(vs, ix) if v > 0] for vs, ix in zip(values, indices)]

    def answer(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[dict[str, Any]]]:
        return [[{"class": n, "area": v} for n, v in image] for image in self.predictions(outputs, names, topk)]

    def format_value(self, value: float) -> str:
        return f"{value:.1%} of the pixels"

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"mIoU": metrics["miou"], "pixel accuracy": metrics["pixel_accuracy"],
                "mean class accuracy": metrics["mean_class_accuracy"]}


SEGMENT = register_task(Segmentation())
