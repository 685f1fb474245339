"""Attention modules, regularizers and heads shared by the small-input families.

SE, ECA, stochastic depth and DropBlock come from timm; ULSAM, ELA, polarized self-attention, IBN, the
multi-sample dropout head and the spatial pyramid pooling head are not in timm and are written here.
Every family builds them through `make_attn`, `ScheduledDropBlock`, `drop_path_rates`, `make_pool` and `make_fc`, so an
option means the same thing in every family.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropBlock2d, DropPath, EcaModule, SEModule

from cnnkit.errors import ModelError

ATTENTION = ("se", "eca", "ulsam", "ela", "psa")
HEADS = ("avg", "max", "msd", "spp")

# What `cnnkit models info` prints for each shared option.
OPTION_DOCS = {
    "width": "width multiplier (or base width) of every stage",
    "depth": "number of layers (6n + 2 for the CIFAR ResNets)",
    "alpha": "PyramidNet's total width increase over the three stages",
    "depths": "blocks per stage",
    "dims": "channels per stage",
    "mixer": "token mixer: inception (InceptionNeXt's) or dw7 (ConvNeXt's 7×7 depthwise)",
    "fc_width": "hidden width of the two fully connected layers",
    "hidden": "filters per convolution",
    "drop": "dropout before the classifier",
    "eca_kernel_sizes": "ECA kernel size per stage instead of the formula (3,5,5,7 gives the paper's 80 parameters)",
    "attn": "attention module in every block: se (Hu et al. 2018, r=16), eca (Wang et al. 2020, adaptive kernel), "
            "ulsam (Saini et al. 2020), ela (Xu & Wan 2024), psa (Liu et al. 2021, parallel layout)",
    "drop_path": "stochastic depth (Huang et al. 2016): drop probability of the last block; block l of L drops "
                 "with probability drop_path*l/L (linearly decaying survival)",
    "drop_block": "DropBlock (Ghiasi et al. 2018) on the blocks of the last two stages; the drop rate grows "
                  "linearly from 0 to this value over training",
    "drop_block_size": "DropBlock block size (default 3 for 7-28 px feature maps)",
    "ibn": "IBN-Net 'a' (Pan et al. 2018): half the channels of each block's first norm are instance-normalized, "
           "in every stage but the last",
    "head": "avg (global average pool + linear), max, msd (multi-sample dropout, Inoue 2019: 8 dropout samples "
            "of p=0.5 share the linear layer) or spp (spatial pyramid pooling, He et al. 2014: 1+4+16 bins, "
            "fixed-length output for any input size)",
}
COMMON_OPTIONS = ("attn", "drop_path", "drop_block", "drop_block_size", "head")


# ---------------------------------------------------------------- attention


class ULSAM(nn.Module):
    """Ultra-lightweight subspace attention (Saini et al. 2020): the channels are split into `groups`
    subspaces; each gets one spatial attention map (depthwise 1×1 conv, 3×3 max-pool, pointwise conv to one
    channel, softmax over positions) and is refined as F·A + F."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        while channels % groups:
            groups -= 1
        self.groups = groups
        self.dw = nn.Conv2d(channels, channels, 1, groups=channels)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.pw = nn.Conv2d(channels, groups, 1, groups=groups)  # one map per subspace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = self.pw(self.pool(self.dw(x)))  # B × groups × H × W
        a = torch.softmax(a.flatten(2), dim=-1).view(b, self.groups, 1, h, w)
        xs = x.view(b, self.groups, c // self.groups, h, w)
        return (xs * a + xs).view(b, c, h, w)


class ELA(nn.Module):
    """Efficient local attention (Xu & Wan 2024): average-pool along each axis, a shared depthwise 1-D
    convolution and group norm, sigmoid; the input is scaled by the row and the column weights."""

    def __init__(self, channels: int, kernel_size: int = 7, groups: int = 16):
        super().__init__()
        groups = math.gcd(channels, groups)
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                              bias=False)
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_h = torch.sigmoid(self.norm(self.conv(x.mean(3))))  # B × C × H
        a_w = torch.sigmoid(self.norm(self.conv(x.mean(2))))  # B × C × W
        return x * a_h.unsqueeze(3) * a_w.unsqueeze(2)


class PolarizedSelfAttention(nn.Module):
    """Polarized self-attention (Liu et al. 2021), parallel layout: a channel-only branch (query collapsed to
    one channel, softmax over positions, LayerNorm, sigmoid) and a spatial-only branch (query pooled over
    positions, softmax over channels, sigmoid), their outputs added."""

    def __init__(self, channels: int):
        super().__init__()
        half = max(channels // 2, 1)
        self.ch_v, self.ch_q = nn.Conv2d(channels, half, 1), nn.Conv2d(channels, 1, 1)
        self.ch_z, self.ch_norm = nn.Conv2d(half, channels, 1), nn.LayerNorm(channels)
        self.sp_v, self.sp_q = nn.Conv2d(channels, half, 1), nn.Conv2d(channels, half, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = torch.softmax(self.ch_q(x).flatten(2), dim=-1)  # B × 1 × HW
        z = torch.bmm(self.ch_v(x).flatten(2), q.transpose(1, 2))  # B × C/2 × 1
        ch = torch.sigmoid(self.ch_norm(self.ch_z(z.unsqueeze(-1)).flatten(1))).view(b, c, 1, 1)
        q = torch.softmax(self.sp_q(x).mean((2, 3)), dim=-1).unsqueeze(1)  # B × 1 × C/2
        sp = torch.sigmoid(torch.bmm(q, self.sp_v(x).flatten(2))).view(b, 1, h, w)
        return x * ch + x * sp


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA's adaptive kernel size k = |log2(C)/γ + β/γ| rounded down to the nearest odd number, as timm does.

    For ResNet-50's block outputs (256, 512, 1024, 2048 channels) this gives 5, 5, 5, 7: 86 added parameters.
    The paper's 80 comes from 3, 5, 5, 7 (pass `eca_kernel_sizes` per stage to reproduce it).
    """
    t = int(abs((math.log2(channels) + beta) / gamma))
    return max(t if t % 2 else t + 1, 1)


def make_attn(kind: str | None, channels: int, kernel_size: int | None = None) -> nn.Module:
    """The attention module named `kind` for `channels` (Identity for None)."""
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "se":
        return SEModule(channels, rd_ratio=1 / 16)
    if kind == "eca":
        return EcaModule(kernel_size=kernel_size or eca_kernel_size(channels))
    if kind == "ulsam":
        return ULSAM(channels)
    if kind == "ela":
        return ELA(channels)
    if kind == "psa":
        return PolarizedSelfAttention(channels)
    raise ModelError(f"unknown attention {kind!r}; choose one of: {', '.join(ATTENTION)}")


# ---------------------------------------------------------------- normalization


class IBN(nn.Module):
    """IBN-Net 'a' normalization (Pan et al. 2018): instance norm on the first `ratio` of the channels,
    batch norm on the rest."""

    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], 1)


def norm2d(channels: int, ibn: bool = False) -> nn.Module:
    return IBN(channels) if ibn else nn.BatchNorm2d(channels)


# ---------------------------------------------------------------- regularizers


def drop_path_rates(rate: float, n_blocks: int) -> list[float]:
    """Stochastic depth with linearly decaying survival (Huang et al. 2016): block l (1..L) drops with
    probability rate·l/L, so the last block drops with `rate`."""
    if not 0 <= rate < 1:
        raise ModelError(f"drop_path must be in [0, 1), got {rate}")
    return [rate * (i + 1) / n_blocks for i in range(n_blocks)]


def drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


class ScheduledDropBlock(nn.Module):
    """timm's DropBlock2d whose drop rate follows training progress linearly from 0 to `drop_prob`
    (Ghiasi et al. 2018, §3: "we found that linearly increasing ... from 0 to the target value is more
    robust"). The trainer calls `set_progress(model, fraction)`; until it does, the full rate applies."""

    def __init__(self, drop_prob: float, block_size: int = 3):
        super().__init__()
        if not 0 <= drop_prob < 1:
            raise ModelError(f"drop_block must be in [0, 1), got {drop_prob}")
        if block_size < 1:
            raise ModelError(f"drop_block_size must be at least 1, got {block_size}")
        self.target = drop_prob
        self.block = DropBlock2d(drop_prob, block_size)

    def set_progress(self, fraction: float) -> None:
        self.block.drop_prob = self.target * min(max(fraction, 0.0), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)

    def extra_repr(self) -> str:
        return f"target={self.target}, block_size={self.block.block_size}"


def set_progress(model: nn.Module, fraction: float) -> None:
    """Tell every scheduled regularizer in `model` how far training has got (0 = start, 1 = end)."""
    for m in model.modules():
        if isinstance(m, ScheduledDropBlock):
            m.set_progress(fraction)


def with_drop_block(blocks: list[nn.Module], stage: int, n_stages: int, drop_block: float,
                    block_size: int) -> list[nn.Module]:
    """The stage's blocks, each followed by a DropBlock when the stage is one of the last two."""
    if drop_block <= 0 or stage < n_stages - 2:
        return blocks
    out: list[nn.Module] = []
    for b in blocks:
        out += [b, ScheduledDropBlock(drop_block, block_size)]
    return out


# ---------------------------------------------------------------- heads


class SpatialPyramidPool(nn.Module):
    """Spatial pyramid pooling (He et al. 2014): max-pool into 1×1, 2×2 and 4×4 bins and concatenate, so any
    input size gives a C·21 vector."""

    def __init__(self, levels: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in self.levels], 1)

    def out_features(self, channels: int) -> int:
        return channels * sum(n * n for n in self.levels)


class MultiSampleDropout(nn.Module):
    """Multi-sample dropout (Inoue 2019): in training, `samples` dropout masks share one linear layer and
    the logits are averaged; the per-sample logits are kept in `last_samples` so the trainer can average the
    per-sample losses as the paper does. In eval mode it is the plain linear layer."""

    def __init__(self, fc: nn.Module, samples: int = 8, p: float = 0.5):
        super().__init__()
        self.fc, self.samples, self.p = fc, samples, p
        self.last_samples: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.last_samples = None
            return self.fc(x)
        out = torch.stack([self.fc(F.dropout(x, self.p, True)) for _ in range(self.samples)])
        self.last_samples = out
        return out.mean(0)


def sample_logits(model: nn.Module) -> torch.Tensor | None:
    """The per-sample logits (samples × batch × classes) of the last training forward of a multi-sample
    dropout head, or None when the model has none."""
    for m in model.modules():
        if isinstance(m, MultiSampleDropout) and m.last_samples is not None:
            return m.last_samples
    return None


def make_pool(kind: str, num_features: int) -> tuple[nn.Module, int]:
    """The pooling of head `kind` and the length of the vector it gives."""
    if kind not in HEADS and kind != "flatten":
        raise ModelError(f"unknown head {kind!r}; choose one of: {', '.join(HEADS)}")
    if kind == "spp":
        pool = SpatialPyramidPool()
        return pool, pool.out_features(num_features)
    if kind == "flatten":  # TinyVGG: the whole map goes to the linear layer
        return nn.Identity(), num_features
    return (nn.AdaptiveMaxPool2d(1) if kind == "max" else nn.AdaptiveAvgPool2d(1)), num_features


def make_fc(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """The classifier of head `kind` (multi-sample dropout wraps the linear layer for 'msd')."""
    if num_classes <= 0:
        return nn.Identity()
    fc = nn.Linear(in_features, num_classes)
    return MultiSampleDropout(fc) if kind == "msd" else fc
