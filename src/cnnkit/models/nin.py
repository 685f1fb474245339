"""Network-in-Network as RotNet uses it (Gidaris et al. 2018, after Lin et al. 2014): blocks of a k×k conv and
two 1×1 convs, each followed by BatchNorm and ReLU; a max-pool after block 1, an average pool after block 2;
global average pooling and a linear classifier. `nin3`, `nin4` and `nin5` have 3, 4 and 5 blocks; their outputs
are `blocks.block1` ... `blocks.blockN`, the layers the paper's probes read."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.models.base import Classifier
from cnnkit.models.registry import register_model


def _unit(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class NIN(Classifier):
    """`blocks` NIN blocks at 192 channels × `width` (the first block's 1×1 convs: 160 and 96, as in the paper)."""

    def __init__(self, blocks: int, num_classes: int = 10, in_chans: int = 3, width: float = 1.0):
        c = max(8, round(192 * width))
        c2, c3 = max(8, round(160 * width)), max(8, round(96 * width))
        super().__init__(c, num_classes, pool="avg")
        seq = nn.Sequential()
        seq.add_module("block1", nn.Sequential(_unit(in_chans, c, 5), _unit(c, c2, 1), _unit(c2, c3, 1)))
        seq.add_module("pool1", nn.MaxPool2d(3, 2, 1))
        seq.add_module("block2", nn.Sequential(_unit(c3, c, 5), _unit(c, c, 1), _unit(c, c, 1)))
        seq.add_module("pool2", nn.AvgPool2d(3, 2, 1))
        for i in range(3, blocks + 1):
            seq.add_module(f"block{i}", nn.Sequential(_unit(c, c, 3), _unit(c, c, 1), _unit(c, c, 1)))
        self.blocks = seq
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def stage_names(self) -> list[str]:
        return [f"blocks.{n}" for n, _ in self.blocks.named_children() if n.startswith("block")]


def _nin(blocks: int):
    def builder(num_classes: int = 10, in_chans: int = 3, img_size=None, width: float = 1.0) -> NIN:
        return NIN(blocks, num_classes, in_chans, width)

    builder.__name__ = f"nin{blocks}"
    builder.__doc__ = (f"Network-in-Network with {blocks} blocks, as in RotNet (Gidaris et al. 2018); `width` "
                       f"scales its 192 channels.")
    return register_model("nin", min_size=8, paper="Gidaris et al. 2018 (RotNet); Lin et al. 2014",
                          default_input="3x32x32")(builder)


nin3, nin4, nin5 = _nin(3), _nin(4), _nin(5)
