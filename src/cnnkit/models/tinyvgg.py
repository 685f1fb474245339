"""TinyVGG, the network of CNN Explainer (Wang et al. 2020): two blocks of two valid 3×3 convs and a max-pool."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.models.base import Classifier
from cnnkit.models.layers import ScheduledDropBlock, make_attn
from cnnkit.models.registry import register_model


def _side_after(size: int) -> int:
    """Spatial side after conv3-conv3-pool2 twice, all convolutions unpadded."""
    for _ in range(2):
        size = (size - 4) // 2
    return size


class TinyVGG(Classifier):
    """conv-relu-conv-relu-maxpool ×2, flatten, linear; `hidden` filters per conv (CNN Explainer: 10)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: tuple[int, int] = (64, 64),
                 hidden: int = 10, attn: str | None = None, drop_block: float = 0.0, drop_block_size: int = 3,
                 head: str = "flatten"):
        flat = hidden * _side_after(img_size[0]) * _side_after(img_size[1])
        super().__init__(flat if head == "flatten" else hidden, num_classes, pool=head)

        def block(cin: int) -> nn.Sequential:
            layers = [nn.Conv2d(cin, hidden, 3), nn.ReLU(inplace=True), nn.Conv2d(hidden, hidden, 3),
                      nn.ReLU(inplace=True), nn.MaxPool2d(2), make_attn(attn, hidden)]
            return nn.Sequential(*layers)

        self.features = nn.Sequential(block(in_chans), block(hidden))
        if drop_block > 0:
            for b in self.features:
                b.append(ScheduledDropBlock(drop_block, drop_block_size))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def stage_names(self) -> list[str]:
        return ["features.0", "features.1"]


@register_model("vgg (small input)", min_size=16, paper="Wang et al. 2020, CNN Explainer",
                shared=("attn", "drop_block", "drop_block_size", "head"))
def tinyvgg(num_classes: int = 10, in_chans: int = 3, img_size: int | tuple[int, int] | None = 64,
            hidden: int = 10, **options) -> TinyVGG:
    """TinyVGG from CNN Explainer (64×64 inputs there; any side ≥ 16 here)."""
    size = (64, 64) if img_size is None else (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return TinyVGG(num_classes, in_chans, size, hidden, **options)
