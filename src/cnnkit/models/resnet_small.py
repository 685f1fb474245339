"""Small-input ResNets: the CIFAR ResNets of He et al. 2016 (§4.2) and the DAWNBench ResNet-9 (Page 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ModelError
from cnnkit.models.base import Classifier, conv_bn_relu
from cnnkit.models.layers import drop_path as make_drop_path
from cnnkit.models.layers import ScheduledDropBlock, drop_path_rates, make_attn, norm2d, with_drop_block
from cnnkit.models.registry import register_model


class ShortcutA(nn.Module):
    """Option A shortcut (He et al. 2016): subsample by the stride, zero-pad the new channels; no parameters."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


RESIDUAL_OPTIONS = ("attn", "drop_path", "drop_block", "drop_block_size", "head")


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or option-A) shortcut, ReLU after the addition.

    Options: attention on the residual branch before the addition (as SE-ResNet places it), stochastic depth
    of the branch, and IBN-a in place of the first batch norm.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, attn: str | None = None, drop_path: float = 0.0,
                 ibn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm2d(cout, ibn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.attn = make_attn(attn, cout)
        self.drop_path = make_drop_path(drop_path)
        self.shortcut = ShortcutA(stride, cout - cin) if stride != 1 or cin != cout else nn.Identity()
        self.act1, self.act2 = nn.ReLU(inplace=True), nn.ReLU(inplace=True)  # modules, for Guided Backprop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        return self.act2(self.drop_path(out) + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings"): BN-ReLU-conv3×3 twice, nothing after
    the addition; option-A shortcut on the block input."""

    def __init__(self, cin: int, cout: int, stride: int = 1, attn: str | None = None, drop_path: float = 0.0,
                 ibn: bool = False):
        super().__init__()
        self.bn1 = norm2d(cin, ibn)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.attn = make_attn(attn, cout)
        self.drop_path = make_drop_path(drop_path)
        self.shortcut = ShortcutA(stride, cout - cin) if stride != 1 or cin != cout else nn.Identity()
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.attn(self.conv2(self.act2(self.bn2(out))))
        return self.drop_path(out) + self.shortcut(x)


class PyramidBlock(nn.Module):
    """PyramidNet's basic unit (Han et al. 2017, Fig. 6d): BN-conv3×3-BN-ReLU-conv3×3-BN, no ReLU after the
    addition; the shortcut average-pools when the stride is 2 and zero-pads the extra channels."""

    def __init__(self, cin: int, cout: int, stride: int = 1, attn: str | None = None, drop_path: float = 0.0,
                 ibn: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = norm2d(cout, ibn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.attn = make_attn(attn, cout)
        self.drop_path = make_drop_path(drop_path)
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.extra = cout - cin
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.bn3(self.conv2(self.act(self.bn2(out))))
        out = self.drop_path(self.attn(out))
        short = self.pool(x)
        if self.extra:
            short = F.pad(short, (0, 0, 0, 0, 0, self.extra))
        return out + short


class CifarResNet(Classifier):
    """3×3 stem, three stages of n residual blocks, global average pool, linear (He et al. 2016, §4.2).

    `block` is the basic block (depth 6n + 2, widths 16/32/64), the pre-activation block, or the pyramid
    block, whose width grows by alpha/(3n) at every block instead of doubling at each stage. The second and
    third stages start with stride 2.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64),
                 block: type[nn.Module] = BasicBlock, alpha: float | None = None, attn: str | None = None,
                 drop_path: float = 0.0, drop_block: float = 0.0, drop_block_size: int = 3, ibn: bool = False,
                 head: str = "avg"):
        if depth < 8 or (depth - 2) % 6:
            raise ModelError(f"this ResNet's depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        total = 3 * n
        if alpha is not None:  # PyramidNet: additive widening, D_k = floor(16 + alpha * k / N)
            chans = [widths[0] + int(alpha * (k + 1) / total) for k in range(total)]
        else:
            chans = [w for w in widths for _ in range(n)]
        preact = block is not BasicBlock
        super().__init__(chans[-1], num_classes, pool=head)
        stem: list[nn.Module] = [nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0])]
        if not preact or block is PreActBlock:
            stem = stem[:1] if block is PreActBlock else stem + [nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        rates = drop_path_rates(drop_path, total)
        stages, cin, k = [], widths[0], 0
        for i in range(3):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, chans[k], stride, attn=attn, drop_path=rates[k], ibn=ibn and i < 2))
                cin, k = chans[k], k + 1
            stages.append(nn.Sequential(*with_drop_block(blocks, i, 3, drop_block, drop_block_size)))
        self.stages = nn.Sequential(*stages)
        # pre-activation nets end with the BN-ReLU the last block leaves out
        self.final = (nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True)) if preact else nn.Identity())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.stages(self.stem(x)))


def _cifar_resnet(depth: int, block: type[nn.Module] = BasicBlock, prefix: str = "resnet", paper: str = "",
                  doc: str = ""):
    def builder(num_classes: int = 10, in_chans: int = 3, img_size=None, ibn: bool = False, **options) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_chans, block=block, ibn=ibn, **options)

    builder.__name__ = f"{prefix}{depth}"
    builder.__doc__ = doc.format(depth=depth)
    return register_model("resnet (small input)", min_size=8, paper=paper, shared=RESIDUAL_OPTIONS)(builder)


resnet20, resnet32, resnet44, resnet56, resnet110 = (
    _cifar_resnet(d, paper="He et al. 2016, §4.2",
                  doc="ResNet-{depth} for 28–32 px inputs (He et al. 2016, CIFAR-10 section, option-A shortcuts).")
    for d in (20, 32, 44, 56, 110))
preact_resnet20, preact_resnet56, preact_resnet110 = (
    _cifar_resnet(d, PreActBlock, "preact_resnet", paper="He et al. 2016, Identity Mappings",
                  doc="Pre-activation ResNet-{depth} (BN-ReLU-conv blocks, identity after the addition).")
    for d in (20, 56, 110))


@register_model("pyramidnet (small input)", min_size=8, paper="Han et al. 2017, Deep Pyramidal Residual Networks",
                shared=RESIDUAL_OPTIONS)
def pyramidnet(num_classes: int = 10, in_chans: int = 3, img_size=None, depth: int = 110, alpha: float = 48,
               ibn: bool = False, **options) -> CifarResNet:
    """Additive PyramidNet with basic units; depth 110, alpha 48 is the paper's 1.7M-parameter CIFAR net."""
    return CifarResNet(depth, num_classes, in_chans, block=PyramidBlock, alpha=alpha, ibn=ibn, **options)


class Residual(nn.Module):
    """x + drop_path(attn(f(x)))."""

    def __init__(self, fn: nn.Module, attn: nn.Module | None = None, drop_path: float = 0.0):
        super().__init__()
        self.fn = fn
        self.attn = attn if attn is not None else nn.Identity()
        self.drop_path = make_drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.attn(self.fn(x)))


class ResNet9(Classifier):
    """Page's DAWNBench ResNet-9: prep, three conv-pool layers (the first and last with a residual pair of
    conv-BN-ReLU), global max-pool, linear head scaled by 1/8. Widths are `width`×(1, 2, 4, 8).

    Shared options: attention and stochastic depth on the two residual pairs, DropBlock after the last two
    layers, and the pooling head (max by default, as published). `pool_first` max-pools each down-sampling
    conv's output before its batch norm and ReLU (Page's "bag of tricks" ordering, also airbench's): the same
    convolutions, a quarter of the elements through BN and ReLU there: `fit` 1.22× faster in fp32 on a 2-core
    CPU at width 16 on 28×28 (benchmarks/trainer_overhead.py), where those memory-bound layers take about a
    third of a step; max-pool commutes with
    ReLU but not with BN, so the statistics are those of the pooled map."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 64, logit_scale: float = 0.125,
                 attn: str | None = None, drop_path: float = 0.0, drop_block: float = 0.0,
                 drop_block_size: int = 3, head: str = "max", pool_first: bool = False):
        w = width
        super().__init__(8 * w, num_classes, pool=head)
        self.logit_scale = logit_scale
        rates = drop_path_rates(drop_path, 2)

        def down(cin: int, cout: int) -> list[nn.Module]:  # conv-BN-ReLU then pool, or conv-pool-BN-ReLU
            if pool_first:
                return [conv_bn_relu(cin, cout).insert(1, nn.MaxPool2d(2))]
            return [conv_bn_relu(cin, cout), nn.MaxPool2d(2)]

        self.stem = conv_bn_relu(in_chans, w)
        self.layer1 = nn.Sequential(*down(w, 2 * w),
                                    Residual(nn.Sequential(conv_bn_relu(2 * w, 2 * w), conv_bn_relu(2 * w, 2 * w)),
                                             make_attn(attn, 2 * w), rates[0]))
        self.layer2 = nn.Sequential(*down(2 * w, 4 * w))
        self.layer3 = nn.Sequential(*down(4 * w, 8 * w),
                                    Residual(nn.Sequential(conv_bn_relu(8 * w, 8 * w), conv_bn_relu(8 * w, 8 * w)),
                                             make_attn(attn, 8 * w), rates[1]))
        if drop_block > 0:  # after the last two layers, appended so the weight names stay those of the original
            self.layer2.append(ScheduledDropBlock(drop_block, drop_block_size))
            self.layer3.append(ScheduledDropBlock(drop_block, drop_block_size))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = super().forward_head(x, pre_logits)
        return x if pre_logits else x * self.logit_scale

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def stage_names(self) -> list[str]:
        return ["stem", "layer1", "layer2", "layer3"]



@register_model("resnet (small input)", min_size=8, paper="Page 2018, DAWNBench ResNet-9", shared=RESIDUAL_OPTIONS)
def resnet9(num_classes: int = 10, in_chans: int = 3, img_size=None, width: int = 64, pool_first: bool = False,
            **options) -> ResNet9:
    """ResNet-9 (Page 2018) with base width `width` (64 in the original; 16 trains fast on a CPU); `pool_first`
    pools before BN and ReLU in the three down-sampling layers (Page's later ordering, faster)."""
    return ResNet9(num_classes, in_chans, width, pool_first=pool_first, **options)
