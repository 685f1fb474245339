"""VGG-style 3×3 stacks with batch norm for small inputs (Simonyan & Zisserman 2015, configuration A)."""

from __future__ import annotations

import torch.nn as nn

from cnnkit.models.base import Classifier, conv_bn_relu
from cnnkit.models.layers import make_attn, with_drop_block
from cnnkit.models.registry import register_model

# Convolution widths per stage; a max-pool ends every stage but the last.
CONFIGS = {
    8: ((64,), (128,), (256, 256), (512,)),  # 5 conv + 3 FC
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),  # configuration A: 8 conv + 3 FC
}


class SmallVGG(Classifier):
    """The paper's 3×3 conv-BN-ReLU stacks; on 28–64 px inputs only the first three stages end in a 2×2
    max-pool (the original's five would leave nothing of a 28 px image). Global average pooling feeds the
    paper's three fully connected layers, whose hidden width is `fc_width` (4096 at ImageNet size)."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, width: float = 1.0,
                 fc_width: int = 512, attn: str | None = None, drop_block: float = 0.0, drop_block_size: int = 3,
                 head: str = "avg", dropout: float = 0.5):
        cfg = [[max(int(c * width), 8) for c in stage] for stage in CONFIGS[depth]]

        def hidden(pooled: int) -> tuple[nn.Module, int]:
            return nn.Sequential(nn.Linear(pooled, fc_width), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True), nn.Dropout(dropout)), fc_width

        super().__init__(cfg[-1][-1], num_classes, pool=head, pre_logits=hidden)
        self.stem = nn.Identity()
        stages, cin = [], in_chans
        for i, widths in enumerate(cfg):
            layers: list[nn.Module] = []
            for c in widths:
                layers.append(conv_bn_relu(cin, c))
                cin = c
            layers.append(make_attn(attn, cin))
            layers = with_drop_block(layers, i, len(cfg), drop_block, drop_block_size)
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)


def _vgg(depth: int):
    def builder(num_classes: int = 10, in_chans: int = 3, img_size=None, width: float = 1.0, fc_width: int = 512,
                **options) -> SmallVGG:
        return SmallVGG(depth, num_classes, in_chans, width, fc_width, **options)

    builder.__name__ = f"vgg{depth}_bn_mini"
    builder.__doc__ = (f"VGG-{depth} with batch norm for 28–64 px inputs: three 2×2 max-pools, global average "
                       f"pooling, three FC layers of `fc_width`; `width` scales every convolution.")
    return register_model("vgg (small input)", min_size=8, paper="Simonyan & Zisserman 2015",
                          shared=("attn", "drop_block", "drop_block_size", "head"))(builder)


vgg8_bn_mini, vgg11_bn_mini = _vgg(8), _vgg(11)
