"""Segmentation's metrics over a split, computed by torchmetrics: mIoU and per-class IoU (Jaccard index),
pixel accuracy, mean class accuracy, and the confusion matrix, all over the labelled pixels (255 ignored)."""

from __future__ import annotations

from typing import Any

import torch

from cnnkit.data.settings import IGNORE

CHUNK = 64  # images per confusion-matrix update


def segmentation_report(outputs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """Metrics of per-pixel probabilities (N×K×H×W) or predicted classes (N×H×W) against N×H×W masks.

    mIoU averages the IoU of the classes present in the labels or the predictions (a class absent from both
    has no IoU and is left out, as torchmetrics' `zero_division` NaN convention and the papers do)."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    k = len(names)
    matrix = torch.zeros(k, k, dtype=torch.long)
    for a in range(0, len(targets), CHUNK):  # a chunk at a time: int64 copies of a whole split would not fit
        part = outputs[a:a + CHUNK]
        predicted = part.max(1).indices if part.ndim == 4 else part  # the argmax (segment.predicted_classes)
        matrix += multiclass_confusion_matrix(predicted.long(), targets[a:a + CHUNK].long(), k, ignore_index=IGNORE)
    inter = matrix.diagonal().double()
    union = matrix.sum(0).double() + matrix.sum(1).double() - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    present = matrix.sum(1) > 0
    per_class_acc = matrix.diagonal().double() / matrix.sum(1).double().clamp_min(1)
    pixel_acc = float(matrix.diagonal().sum() / matrix.sum().clamp_min(1))  # the labelled pixels predicted right
    return {"miou": float(iou.nanmean()), "pixel_accuracy": pixel_acc,
            "mean_class_accuracy": float(per_class_acc[present].mean()) if bool(present.any()) else 0.0,
            "per_class_iou": {n: (None if v != v else float(v)) for n, v in zip(names, iou.tolist())},
            "confusion_matrix": matrix.tolist(), "pixels": int(matrix.sum()), "images": int(len(targets))}
