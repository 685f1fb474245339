"""Small-input MobileNetV2, ConvNeXt and InceptionNeXt, composed from timm's own blocks.

Each uses timm's block unchanged (InvertedResidual, ConvNeXtBlock, MetaNeXtBlock with InceptionDWConv2d);
only the stem and the number of down-samplings change for 28–64 px inputs. With `attn` set, the ConvNeXt
and MetaNeXt blocks become subclasses whose forward inserts the attention on the residual branch (before
layer scale); without it they are timm's classes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.convnext import ConvNeXtBlock
from timm.models.inception_next import ConvMlp, InceptionDWConv2d, MetaNeXtBlock

from cnnkit.errors import ModelError
from cnnkit.models.base import Classifier
from cnnkit.models.layers import drop_path_rates, make_attn, with_drop_block
from cnnkit.models.registry import register_model

SHARED = ("attn", "drop_path", "drop_block", "drop_block_size", "head")

# MobileNetV2 (Sandler et al. 2018, Table 2): expansion t, channels c, repeats n, stride s.
MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(v: float, d: int = 8) -> int:
    """Round channels to a multiple of 8 as the paper's reference code does (never below 90%)."""
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class MobileNetV2Small(Classifier):
    """MobileNetV2 for small inputs: a stride-1 stem and stride 1 in the 24-channel stage (the original's
    first two down-samplings), so a 28 px image ends at 4×4 as a 224 px one ends at 7×7."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 1.0, attn: str | None = None,
                 drop_path: float = 0.0, drop_block: float = 0.0, drop_block_size: int = 3, head: str = "avg"):
        last = _divisible(1280 * max(1.0, width))
        super().__init__(last, num_classes, pool=head)
        c0 = _divisible(32 * width)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU6(True))
        se = (lambda ch, **_: make_attn(attn, ch)) if attn else None
        rates = iter(drop_path_rates(drop_path, sum(r[2] for r in MBV2)))
        stages, cin = [], c0
        for i, (t, c, n, s) in enumerate(MBV2):
            s = 1 if i == 1 else s  # the adapted down-sampling
            cout, blocks = _divisible(c * width), []
            for j in range(n):
                stride = s if j == 0 else 1
                if t == 1:
                    blocks.append(DepthwiseSeparableConv(cin, cout, stride=stride, act_layer=nn.ReLU6, se_layer=se,
                                                         drop_path_rate=next(rates)))
                else:
                    blocks.append(InvertedResidual(cin, cout, stride=stride, exp_ratio=t, act_layer=nn.ReLU6,
                                                   se_layer=se, drop_path_rate=next(rates)))
                cin = cout
            stages.append(nn.Sequential(*with_drop_block(blocks, i, len(MBV2), drop_block, drop_block_size)))
        stages.append(nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(True)))
        self.stages = nn.Sequential(*stages)


class ConvNeXtAttnBlock(ConvNeXtBlock):
    """timm's ConvNeXt block with an attention module on the branch, after the MLP and before layer scale."""

    def __init__(self, dim: int, attn: str, **kw):
        super().__init__(dim, **kw)
        self.attn = make_attn(attn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        x = self.attn(x)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x) + self.shortcut(shortcut)


class MetaNeXtAttnBlock(MetaNeXtBlock):
    """timm's MetaNeXt block with an attention module on the branch, after the MLP and before layer scale."""

    def __init__(self, dim: int, attn: str, **kw):
        super().__init__(dim, **kw)
        self.attn = make_attn(attn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.attn(self.mlp(self.norm(self.token_mixer(x))))
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x) + shortcut


class DepthwiseMixer(nn.Conv2d):
    """ConvNeXt's 7×7 depthwise convolution as a MetaNeXt token mixer (for the InceptionNeXt comparison)."""

    def __init__(self, dim: int, dilation: int = 1, kernel_size: int = 7, **kw):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **kw)


class MetaNeXtSmall(Classifier):
    """Four stages of ConvNeXt or MetaNeXt blocks. The 4×4 patchify stem becomes a 3×3 stride-1 conv, so a
    28 px image runs the stages at 28, 14, 7 and 3 px (each later stage starts with norm + 2×2 stride-2 conv).
    Head: global average pool, LayerNorm, linear."""

    def __init__(self, kind: str, num_classes: int = 10, in_chans: int = 3, dims=(40, 80, 160, 320),
                 depths=(2, 2, 6, 2), mlp_ratios=(4, 4, 4, 4), mixer: str = "inception", attn: str | None = None,
                 drop_path: float = 0.0, drop_block: float = 0.0, drop_block_size: int = 3, head: str = "avg",
                 ls_init_value: float = 1e-6):
        if len(dims) != 4 or len(depths) != 4:
            raise ModelError("dims and depths need one value per stage (4 each)")
        super().__init__(dims[-1], num_classes, pool=head, pre_logits=lambda n: (nn.LayerNorm(n), n))
        norm = (lambda c: LayerNorm2d(c)) if kind == "convnext" else nn.BatchNorm2d
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 3, 1, 1), norm(dims[0]))
        if mixer not in ("inception", "dw7"):
            raise ModelError(f"mixer must be 'inception' or 'dw7', got {mixer!r}")
        token_mixer = InceptionDWConv2d if mixer == "inception" else DepthwiseMixer
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        stages = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            blocks: list[nn.Module] = [] if i == 0 else [nn.Sequential(norm(dims[i - 1]),
                                                                       nn.Conv2d(dims[i - 1], dim, 2, 2))]
            for _ in range(depth):
                if kind == "convnext":
                    kw = dict(kernel_size=7, ls_init_value=ls_init_value, drop_path=next(rates),
                              mlp_ratio=mlp_ratios[i])
                    blocks.append(ConvNeXtAttnBlock(dim, attn, **kw) if attn else ConvNeXtBlock(dim, **kw))
                else:
                    kw = dict(token_mixer=token_mixer, norm_layer=nn.BatchNorm2d, mlp_layer=ConvMlp,
                              mlp_ratio=mlp_ratios[i], ls_init_value=ls_init_value, drop_path=next(rates))
                    blocks.append(MetaNeXtAttnBlock(dim, attn, **kw) if attn else MetaNeXtBlock(dim, **kw))
            stages.append(nn.Sequential(*with_drop_block(blocks, i, 4, drop_block, drop_block_size)))
        self.stages = nn.Sequential(*stages)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


@register_model("mobilenet (small input)", min_size=8, paper="Sandler et al. 2018, MobileNetV2", shared=SHARED)
def mobilenet_v2_mini(num_classes: int = 10, in_chans: int = 3, img_size=None, width: float = 1.0,
                      **options) -> MobileNetV2Small:
    """MobileNetV2 (inverted residuals with linear bottlenecks, Table 2 of the paper), width multiplier
    `width`, for 28–64 px inputs (8× down-sampling instead of 32×)."""
    return MobileNetV2Small(num_classes, in_chans, width, **options)


@register_model("convnext (small input)", min_size=8, paper="Liu et al. 2022, ConvNeXt", shared=SHARED)
def convnext_mini(num_classes: int = 10, in_chans: int = 3, img_size=None, dims=(40, 80, 160, 320),
                  depths=(2, 2, 6, 2), **options) -> MetaNeXtSmall:
    """ConvNeXt (7×7 depthwise conv, LayerNorm, 4× MLP, layer scale) at ConvNeXt-atto's widths and depths,
    built from timm's ConvNeXtBlock."""
    return MetaNeXtSmall("convnext", num_classes, in_chans, tuple(dims), tuple(depths), **options)


@register_model("inception_next (small input)", min_size=8, paper="Yu et al. 2024, InceptionNeXt",
                shared=SHARED)
def inception_next_mini(num_classes: int = 10, in_chans: int = 3, img_size=None, dims=(40, 80, 160, 320),
                        depths=(2, 2, 6, 2), mixer: str = "inception", **options) -> MetaNeXtSmall:
    """InceptionNeXt (Inception depthwise mixer: 3×3 square, 1×11 and 11×1 bands and identity on channel
    splits; BatchNorm; MLP ratios 4/4/4/3) at atto widths, from timm's MetaNeXtBlock. `mixer='dw7'` swaps in
    ConvNeXt's 7×7 depthwise conv as the token mixer, all else equal."""
    return MetaNeXtSmall("inception_next", num_classes, in_chans, tuple(dims), tuple(depths),
                         mlp_ratios=(4, 4, 4, 3), mixer=mixer, **options)
