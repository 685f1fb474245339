"""The evaluation loop shared by validation during training, `evaluate` and `predict`."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.data import BatchLoader
from cnnkit.runtime import autocast


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: BatchLoader, device: torch.device, amp: torch.dtype | None,
                    tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and labels over a loader; flip TTA averages with the mirrored image."""
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        with autocast(device, amp):
            p = model(x).float().softmax(1)
            if tta:
                p = 0.5 * (p + model(x.flip(3)).float().softmax(1))
        probs.append(p)
        labels.append(y)
    return torch.cat(probs).cpu(), torch.cat(labels).cpu()
