"""Classification metrics from predicted probabilities (the classification task's evaluation metrics)."""

from __future__ import annotations

from typing import Any

import torch


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of samples whose label is among the k most probable classes."""
    k = min(k, probs.shape[1])
    return float((probs.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): confidence-accuracy gap averaged over equal-width confidence bins.

    Written here because neither torch nor scikit-learn provides it (sklearn has only calibration_curve).
    """
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs()
    return float(ece)


def classification_report(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Top-1/top-5, per-class precision/recall/F1, macro F1, ECE, NLL and the confusion matrix."""
    # imported here: scikit-learn takes about a second to import, which every `cnnkit train` would pay
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = probs.argmax(1)
    idx = list(range(len(classes)))
    p, r, f1, support = precision_recall_fscore_support(labels.numpy(), pred.numpy(), labels=idx, zero_division=0)
    return {
        "images": int(len(labels)),
        "top1": topk_accuracy(probs, labels, 1),
        "top5": topk_accuracy(probs, labels, 5),
        "macro_f1": float(f1.mean()),
        "ece": expected_calibration_error(probs, labels),
        "nll": float(torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels)),
        "per_class": [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                       "support": int(support[i])} for i, c in enumerate(classes)],
        "confusion_matrix": confusion_matrix(labels.numpy(), pred.numpy(), labels=idx).tolist(),
    }
