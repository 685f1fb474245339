"""The evaluation loop shared by validation during training, `evaluate` and `predict`, driven by a task."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from cnnkit.runtime import autocast
from cnnkit.tasks import CLASSIFY, Task

Batch = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: Iterable, device: torch.device, amp: torch.dtype | None,
                    tta: bool = False, task: Task = CLASSIFY) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's evaluation outputs (what `task.kept` keeps of `task.infer`'s) and targets over a loader
    (classification: class probabilities and labels; segmentation: predicted and true masks; flip TTA averages
    with the mirrored image)."""
    model.eval()
    outputs, targets = [], []
    for x, y in loader:
        with autocast(device, amp):
            outputs.append(task.kept(task.infer(model, x, tta)))
        targets.append(task.targets(x, y))
    return torch.cat(outputs).cpu(), torch.cat(targets).cpu()


@torch.no_grad()
def validation_sums(model: nn.Module, loader: Iterable, task: Task, device: torch.device, amp: torch.dtype | None,
                    tta: bool = False, batch: Batch | None = None, classes: int | None = None) -> torch.Tensor:
    """[loss summed, images, what the score is made from (`task.score_sum`, summed)...] over a loader, float64;
    `batch` turns each batch into what the model sees and its targets (an objective's, e.g. RotNet's); `classes`
    is the model's number of outputs (what `task.score_counts` may size its counts by)."""
    was = model.training
    model.eval()
    sums: torch.Tensor | None = None
    for x, y in loader:
        t = task.targets(x, y)
        if batch is not None:
            x, t = batch(x, t)
        with autocast(device, amp):
            out = task.infer(model, x, tta)
        score = task.score_sum(out, t) if classes is None else task.score_counts(out, t, classes)
        part = torch.cat([torch.stack([task.loss_sum(out, t).double().cpu(), torch.tensor(len(t), dtype=torch.float64)]),
                          score.double().flatten().cpu()])
        sums = part if sums is None else sums + part
    model.train(was)
    return sums if sums is not None else torch.zeros(3, dtype=torch.float64)


def validation_metrics(sums: torch.Tensor, task: Task) -> dict[str, float]:
    """`validation_sums` read out: the mean loss and the task's score."""
    images = float(sums[1])
    return {"val_loss": float(sums[0]) / max(images, 1.0), f"val_{task.score}": task.score_value(sums[2:], images)}
