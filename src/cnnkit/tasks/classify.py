"""Classification: one class per image. Its objectives are cross-entropy (with label smoothing, and averaged
over the samples of a multi-sample dropout head), knowledge distillation and MEAL V2 (`tasks.distill`), and
RotNet's rotation pretext (`tasks.rotnet`); its metrics are top-1/top-5, per-class precision, recall and F1
(scikit-learn), ECE and NLL (`tasks.classify_metrics`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.tasks.base import Objective, Task, TrainSetting, register_task
from cnnkit.tasks.classify_metrics import classification_report


class CrossEntropy(Objective):
    """Cross-entropy with the labels (soft labels allowed), label smoothing, and Inoue's multi-sample
    dropout: with such a head, the mean of the per-sample losses."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = label_smoothing
        self.heads: list[nn.Module] = []

    def bind(self, setting: TrainSetting) -> None:
        from cnnkit.models.layers import MultiSampleDropout

        self.heads = [m for m in setting.model.modules() if isinstance(m, MultiSampleDropout)]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        samples = self.heads[0].last_samples if self.heads else None
        if samples is not None:
            return torch.stack([F.cross_entropy(s.float(), targets, label_smoothing=self.smoothing)
                                for s in samples]).mean()
        return F.cross_entropy(outputs.float(), targets, label_smoothing=self.smoothing)


class Classification(Task):
    """One class per image: the model's outputs are the classes' logits."""

    name = "classify"
    score = "acc"
    output = "logits"

    def objective(self, cfg: Any) -> Objective:
        if cfg.pretext:
            from cnnkit.tasks.rotnet import RotNet

            return RotNet(cfg.rotations)
        if cfg.distill:
            from cnnkit.tasks.distill import Distillation

            return Distillation(cfg.distill, cfg.teachers, cfg.kd_temperature, cfg.kd_alpha, cfg.disc_weight,
                                cfg.label_smoothing)
        return CrossEntropy(cfg.label_smoothing)

    def infer(self, model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Class probabilities; flip TTA averages them with the mirrored image's."""
        p = model(x).float().softmax(1)
        if tta:
            p = 0.5 * (p + model(x.flip(3)).float().softmax(1))
        return p

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the probabilities `infer` gives, summed."""
        return F.nll_loss(outputs.clamp_min(1e-12).log(), targets, reduction="sum")

    def score_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Correct top-1 predictions (soft targets count by their largest class)."""
        hard = targets if targets.ndim == 1 else targets.argmax(1)
        return (outputs.argmax(1) == hard).sum()

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
        return classification_report(outputs, targets, names)

    def predictions(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
        """The `topk` most probable classes of each image with their probabilities."""
        k = max(1, min(topk, len(names)))
        values, indices = outputs.topk(k, dim=1)
        return [[(names[int(i)], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values, indices)]

    def answer(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[dict[str, Any]]]:
        """The top-k classes of each image as {"class", "index", "probability"} (plain lists and floats: a
        service encodes them without walking tensors)."""
        k = max(1, min(topk, len(names)))
        values, indices = outputs.topk(k, dim=1)
        return [[{"class": names[i], "index": i, "probability": v} for v, i in zip(vs, ix)]
                for vs, ix in zip(values.tolist(), indices.tolist())]

    def format_value(self, value: float) -> str:
        return f"{value:.1%}"

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"top-1": metrics["top1"], "top-5": metrics["top5"], "macro F1": metrics["macro_f1"],
                "ECE": metrics["ece"]}

    def report(self, metrics: dict[str, Any], names: list[str], out_dir: Path, stem: str,
               images: torch.Tensor | None = None, outputs: torch.Tensor | None = None,
               targets: torch.Tensor | None = None, meta: dict[str, Any] | None = None) -> dict[str, Path]:
        from cnnkit.report.plots import save_confusion_matrix

        return {"confusion matrix": save_confusion_matrix(metrics["confusion_matrix"], names,
                                                       out_dir / f"confusion-{stem}.png")}


CLASSIFY = register_task(Classification())
