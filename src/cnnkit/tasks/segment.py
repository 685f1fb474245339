"""Semantic segmentation: a class per pixel (background included). Targets are N×H×W masks (255: ignored);
the objective is pixel-wise cross-entropy with the ignored pixels left out, plus Dice (Milletari et al. 2016)
when asked; the score is the mean intersection over union (mIoU) of a confusion matrix summed over the
split; the metrics (mIoU, per-class IoU, pixel accuracy, mean class accuracy, the confusion matrix) come
from torchmetrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.settings import IGNORE  # a mask's value for pixels that count nowhere
from cnnkit.errors import ConfigError
from cnnkit.tasks.base import Objective, Task, refuse_augmentations, register_task



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


def predicted_classes(outputs: torch.Tensor) -> torch.Tensor:
    """Each pixel's class of highest score in N×K×H×W outputs: `max`'s indices, which on a CPU take a seventh of
    the time of `argmax` over the channels of an NCHW tensor (57 against 8 ms for 32×11×96×96), a fifth of a
    training step's time before; the same class but where two scores tie exactly."""
    return outputs.max(1).indices


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


class MultiScale(nn.Module):
    """A segmentation model run at several scales of its input (DeepLab's multi-scale inputs at test time):
    each scale's per-pixel probabilities resized back to the input size and averaged; returns their log, so that
    what follows (softmax, argmax, flip TTA) reads it as logits."""

    def __init__(self, model: nn.Module, scales: Sequence[float]) -> None:
        super().__init__()
        if not scales or any(not (0.1 <= s <= 4.0) for s in scales):
            raise ConfigError(f"test-time scales must be between 0.1 and 4, got {list(scales)}")
        self.model, self.scales = model, tuple(float(s) for s in scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        total = None
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False,
                                                  recompute_scale_factor=False)
            p = self.model(xs).float().softmax(1)
            if p.shape[-2:] != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            total = p if total is None else total + p
        return (total / len(self.scales)).clamp_min(1e-12).log()


def _starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets that cover `length` with windows of `window` at `stride` (the last one flush with the end)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


class SlidingWindow(nn.Module):
    """A segmentation model applied to an image larger than `window` (H, W) in overlapping tiles: each tile's
    probabilities are added where it lies and divided by how many tiles cover each pixel (an image no larger
    than the window is passed whole); returns log-probabilities, read as logits downstream."""

    def __init__(self, model: nn.Module, window: Sequence[int], overlap: float = 1 / 3) -> None:
        super().__init__()
        if len(window) != 2 or min(window) < 1 or not (0.0 <= overlap < 1.0):
            raise ConfigError(f"a sliding window needs a height×width of at least 1 and an overlap in [0, 1), got "
                              f"{list(window)} and {overlap}")
        self.model, self.window, self.overlap = model, (int(window[0]), int(window[1])), float(overlap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (wh, ww) = x.shape[-2:], self.window
        if h <= wh and w <= ww:
            return self.model(x)
        sh, sw = max(1, round(wh * (1 - self.overlap))), max(1, round(ww * (1 - self.overlap)))
        total = count = None
        for top in _starts(h, wh, sh):
            for left in _starts(w, ww, sw):
                p = self.model(x[..., top:top + wh, left:left + ww]).float().softmax(1)
                if total is None:
                    total = x.new_zeros((x.shape[0], p.shape[1], h, w), dtype=torch.float32)
                    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
                total[..., top:top + p.shape[-2], left:left + p.shape[-1]] += p
                count[..., top:top + p.shape[-2], left:left + p.shape[-1]] += 1
        return (total / count).clamp_min(1e-12).log()


def test_time_model(model: nn.Module, task: Task, scales: Sequence[float] | None, window: bool,
                    img_size: Sequence[int]) -> nn.Module:
    """`model` as evaluation runs it: at several input `scales` (averaged) and/or in sliding `window`s of the
    training size `img_size` over larger images; refused in one line for a task other than segmentation."""
    if (scales or window) and task.name != "segment":
        raise ConfigError(f"--scales and --window are for segmentation models; this one's task is {task.name}")
    if scales and list(scales) != [1.0]:
        model = MultiScale(model, scales)
    if window:
        model = SlidingWindow(model, img_size)
    return model


class Segmentation(Task):
    """A class per pixel: the model's outputs are N×K×H×W logits, one channel per class."""

    name = "segment"
    score = "miou"
    output = "logits"
    any_size = True

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return labels.long()

    def objective(self, cfg: Any) -> Objective:
        refuse_augmentations(cfg.augment, ("policy", "erasing", "mixup", "cutmix"), "segmentation",
                             "it would not move the masks with the images", "resized_crop, crop_padding and hflip")
        if cfg.pretext or cfg.distill:
            raise ConfigError("RotNet pretraining and distillation are for classification; segmentation trains "
                              "with cross-entropy (and --dice)")
        return PixelCrossEntropy(cfg.label_smoothing, cfg.dice)

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
        return confusion(predicted_classes(outputs), targets, outputs.shape[1]).flatten()

    def score_value(self, total: torch.Tensor, images: float) -> float:
        """mIoU over the classes present in the labels or the predictions."""
        classes = int(round(total.numel() ** 0.5))
        iou = iou_from_confusion(total.view(classes, classes))
        return float(iou.nanmean()) if bool((~iou.isnan()).any()) else 0.0

    def kept(self, outputs: torch.Tensor) -> torch.Tensor:
        """Each pixel's predicted class (uint8 N×H×W up to 256 classes): a split's probabilities would take
        K × 4 bytes per pixel, which Pascal-VOC-sized evaluations cannot hold."""
        return predicted_classes(outputs).to(torch.uint8 if outputs.shape[1] <= 256 else torch.int16)

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
        from cnnkit.tasks.segment_metrics import segmentation_report

        return segmentation_report(outputs, targets, names)

    def predictions(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
        """The classes each image's predicted mask covers, with the share of its pixels, largest first (at most
        `topk`)."""
        predicted = predicted_classes(outputs)
        shares = F.one_hot(predicted.flatten(1), len(names)).float().mean(1)
        values, indices = shares.topk(max(1, min(topk, len(names))), dim=1)
        return [[(names[int(i)], float(v)) for v, i in zip(vs, ix) if v > 0] for vs, ix in zip(values, indices)]

    def answer(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[dict[str, Any]]]:
        return [[{"class": n, "area": v} for n, v in image] for image in self.predictions(outputs, names, topk)]

    def format_value(self, value: float) -> str:
        return f"{value:.1%} of the pixels"

    def agreement(self, outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """The share of pixels given the same class (the argmax masks' agreement)."""
        return {"mask_agreement": float((predicted_classes(outputs) == predicted_classes(reference)).float().mean())}

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"mIoU": metrics["miou"], "pixel accuracy": metrics["pixel_accuracy"],
                "mean class accuracy": metrics["mean_class_accuracy"]}

    def report(self, metrics: dict[str, Any], names: list[str], out_dir: Path, stem: str,
               images: torch.Tensor | None = None, outputs: torch.Tensor | None = None,
               targets: torch.Tensor | None = None, meta: dict[str, Any] | None = None,
               shown: int = 4) -> dict[str, Path]:
        """An HTML report (`eval-<stem>.html`) with the mIoU, per-class IoU (table, bar chart), the confusion
        matrix and, given the images, outputs and targets, overlays of predictions against the ground truth for
        the first `shown` images by index and the `shown` others with the lowest mIoU of their own pixels."""
        from cnnkit.report.segment_report import write_segmentation_report

        palette = run_palette(meta or {}, len(names))  # the run's recorded colours, else VOC's
        if images is None or outputs is None or targets is None:
            return write_segmentation_report(out_dir, stem, metrics, names, palette)
        predicted = (predicted_classes(outputs) if outputs.ndim == 4 else outputs).cpu()
        targets = targets.cpu()
        per_image = torch.stack([iou_from_confusion(confusion(p, t, len(names))).nanmean()
                                 for p, t in zip(predicted, targets)]).nan_to_num(1.0)  # nothing labelled: not worst
        first = list(range(min(shown, len(predicted))))
        worst = [i for i in per_image.argsort(stable=True).tolist() if i not in first][:shown]
        pick = first + worst
        rows = [{"image": i, "shown as": "first" if i in first else "worst", "mIoU": float(per_image[i])} for i in pick]
        examples = {"images": images[pick].numpy(), "truth": targets[pick].numpy(),
                    "predicted": predicted[pick].numpy(),
                    "titles": [f"#{r['image']} ({r['shown as']}), mIoU {r['mIoU']:.2f}" for r in rows], "rows": rows,
                    "caption": f"the first {len(first)} images by index, then the {len(worst)} others with the lowest "
                               f"mIoU over their own pixels"}
        return write_segmentation_report(out_dir, stem, metrics, names, palette, examples)


SEGMENT = register_task(Segmentation())
