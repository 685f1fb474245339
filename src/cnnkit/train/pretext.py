"""Self-supervised pretext tasks the training loop can learn instead of the labels.

RotNet (Gidaris, Singh and Komodakis, ICLR 2018): every image of a batch in all its rotations, each labelled
with its rotation; a network that tells them apart has to recognise what the objects are and where they point.
"""

from __future__ import annotations

import torch

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
