"""RotNet, a self-supervised objective of classification: the loop learns rotations instead of the labels.

RotNet (Gidaris, Singh and Komodakis, ICLR 2018): every image of a batch in all its rotations, each labelled
with its rotation; a network that tells them apart has to recognise what the objects are and where they point.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cnnkit.errors import ConfigError
from cnnkit.tasks.base import Objective

ROTATION_NAMES = {4: ["0°", "90°", "180°", "270°"], 2: ["0°", "180°"]}


def rotate_batch(x: torch.Tensor, rotations: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A B×C×H×W batch as (rotations·B)×C×H×W: all B images at 0°, then all at the next rotation, and so on,
    turned by `torch.rot90` (exact, no interpolation; counter-clockwise); labels 0..rotations-1 in that order.
    `rotations` 4: 0/90/180/270°; 2: 0/180° (which works on non-square images too)."""
    if rotations not in ROTATION_NAMES:
        raise ValueError(f"rotations must be 2 or 4, got {rotations}")
    quarter_turns = (0, 1, 2, 3) if rotations == 4 else (0, 2)
    channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in quarter_turns])
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(rotations, device=x.device).repeat_interleave(len(x))
    return out, labels


class RotNet(Objective):
    """RotNet's objective: the model learns which rotation each image is in (cross-entropy over the
    rotations); the data's labels are never used. The checkpoint's classes are the rotations, and it records
    the data's classes under `pretext`."""

    flip_invariant = False  # a mirrored 90° image is not a 90° image

    def __init__(self, rotations: int = 4) -> None:
        super().__init__()
        self.rotations = rotations  # 2 or 4: checked where it enters (TrainConfig; rotate_batch for direct use)

    def output_names(self, classes: list[str]) -> list[str]:
        return list(ROTATION_NAMES[self.rotations])

    def check_data(self, img_size: tuple[int, int]) -> None:
        h, w = img_size
        if self.rotations == 4 and h != w:
            raise ConfigError(f"RotNet with 4 rotations needs square images, these are {h}×{w}; give --img-size N "
                              f"or --rotations 2 (0° and 180°)")

    def batch(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rotate_batch(x, self.rotations)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def meta(self, data_classes: list[str]) -> dict[str, Any]:
        return {"pretext": {"method": "rotnet", "rotations": self.rotations, "data_classes": list(data_classes)}}
