"""Small-input Inception-v4 and Inception-ResNet-v2 (Szegedy et al. 2017).

timm builds these blocks at fixed ImageNet widths (384/1024/1536 and 320/1088/2080 channels), so the blocks
here take every branch width as a multiple `s` of the paper's and are otherwise the paper's blocks,
branch for branch: at s=1 they load timm's weights and give timm's outputs (tested). The small networks
keep the paper's block order, block counts and residual scales and replace only the stem (no down-sampling
before the first Inception block); the two reduction blocks are the network's only down-samplings.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import ConvNormAct

from cnnkit.models.base import Classifier
from cnnkit.models.layers import drop_path as make_drop_path
from cnnkit.models.layers import drop_path_rates, make_attn, with_drop_block
from cnnkit.models.registry import register_model

# BN epsilon of the TensorFlow originals (as timm uses); padding 0 unless given.
cna = partial(ConvNormAct, padding=0, norm_kwargs=dict(eps=1e-3), act_kwargs=dict(inplace=True))


def _w(n: int, s: float) -> int:
    return max(int(round(n * s)), 4)


def _pool_branch(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), cna(cin, cout, 1))


class Concat(nn.Module):
    """Run the branches on the input and concatenate them along channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.children()], 1)


class InceptionA(Concat):
    """Inception-v4 block A (35×35 grid in the paper; out 384·s)."""

    def __init__(self, cin: int, s: float = 1.0):
        super().__init__()
        self.branch0 = cna(cin, _w(96, s), 1)
        self.branch1 = nn.Sequential(cna(cin, _w(64, s), 1), cna(_w(64, s), _w(96, s), 3, padding=1))
        self.branch2 = nn.Sequential(cna(cin, _w(64, s), 1), cna(_w(64, s), _w(96, s), 3, padding=1),
                                     cna(_w(96, s), _w(96, s), 3, padding=1))
        self.branch3 = _pool_branch(cin, _w(96, s))
        self.out_chs = 4 * _w(96, s)


class ReductionA(Concat):
    """Reduction-A with the paper's (k, l, m, n) = (192, 224, 256, 384)·s; out = in + m + n."""

    def __init__(self, cin: int, s: float = 1.0, k: int = 192, l: int = 224, m: int = 256, n: int = 384):
        super().__init__()
        self.branch0 = cna(cin, _w(n, s), 3, stride=2)
        self.branch1 = nn.Sequential(cna(cin, _w(k, s), 1), cna(_w(k, s), _w(l, s), 3, padding=1),
                                     cna(_w(l, s), _w(m, s), 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, 2)
        self.out_chs = cin + _w(n, s) + _w(m, s)


class InceptionB(Concat):
    """Inception-v4 block B: 1×7 / 7×1 factorized branches (17×17 grid in the paper; out 1024·s)."""

    def __init__(self, cin: int, s: float = 1.0):
        super().__init__()
        c = lambda n: _w(n, s)  # noqa: E731
        self.branch0 = cna(cin, c(384), 1)
        self.branch1 = nn.Sequential(cna(cin, c(192), 1), cna(c(192), c(224), (1, 7), padding=(0, 3)),
                                     cna(c(224), c(256), (7, 1), padding=(3, 0)))
        self.branch2 = nn.Sequential(cna(cin, c(192), 1), cna(c(192), c(192), (7, 1), padding=(3, 0)),
                                     cna(c(192), c(224), (1, 7), padding=(0, 3)),
                                     cna(c(224), c(224), (7, 1), padding=(3, 0)),
                                     cna(c(224), c(256), (1, 7), padding=(0, 3)))
        self.branch3 = _pool_branch(cin, c(128))
        self.out_chs = c(384) + c(256) + c(256) + c(128)


class ReductionB(Concat):
    """Inception-v4 Reduction-B; out = in + (192 + 320)·s."""

    def __init__(self, cin: int, s: float = 1.0):
        super().__init__()
        c = lambda n: _w(n, s)  # noqa: E731
        self.branch0 = nn.Sequential(cna(cin, c(192), 1), cna(c(192), c(192), 3, stride=2))
        self.branch1 = nn.Sequential(cna(cin, c(256), 1), cna(c(256), c(256), (1, 7), padding=(0, 3)),
                                     cna(c(256), c(320), (7, 1), padding=(3, 0)), cna(c(320), c(320), 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, 2)
        self.out_chs = cin + c(192) + c(320)


class InceptionC(nn.Module):
    """Inception-v4 block C: branches that split into 1×3 and 3×1 halves (8×8 grid in the paper; out 1536·s)."""

    def __init__(self, cin: int, s: float = 1.0):
        super().__init__()
        c = lambda n: _w(n, s)  # noqa: E731
        self.branch0 = cna(cin, c(256), 1)
        self.branch1_0 = cna(cin, c(384), 1)
        self.branch1_1a = cna(c(384), c(256), (1, 3), padding=(0, 1))
        self.branch1_1b = cna(c(384), c(256), (3, 1), padding=(1, 0))
        self.branch2_0 = cna(cin, c(384), 1)
        self.branch2_1 = cna(c(384), c(448), (3, 1), padding=(1, 0))
        self.branch2_2 = cna(c(448), c(512), (1, 3), padding=(0, 1))
        self.branch2_3a = cna(c(512), c(256), (1, 3), padding=(0, 1))
        self.branch2_3b = cna(c(512), c(256), (3, 1), padding=(1, 0))
        self.branch3 = _pool_branch(cin, c(256))
        self.out_chs = 6 * c(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([self.branch0(x), self.branch1_1a(b1), self.branch1_1b(b1), self.branch2_3a(b2),
                          self.branch2_3b(b2), self.branch3(x)], 1)


class ResidualInception(nn.Module):
    """Inception-ResNet block: concatenated branches, a linear 1×1 conv back to the input width, the
    residual scaled by `scale` (the paper's 0.1–0.3, Fig. 20), added, then ReLU (none after the last block)."""

    def __init__(self, cin: int, branches: list[nn.Module], mixed: int, scale: float, relu: bool = True,
                 attn: str | None = None, drop_path: float = 0.0):
        super().__init__()
        self.scale = scale
        for i, b in enumerate(branches):
            self.add_module(f"branch{i}", b)
        self.n_branches = len(branches)
        self.conv2d = nn.Conv2d(mixed, cin, 1)
        self.attn = make_attn(attn, cin)
        self.drop_path = make_drop_path(drop_path)
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n_branches)], 1)
        out = self.drop_path(self.attn(self.conv2d(out)) * self.scale)
        return self.act(out + x)


def block35(cin: int, s: float = 1.0, scale: float = 0.17, **kw) -> ResidualInception:
    """Inception-ResNet-v2 block A (the 35×35 grid)."""
    c = lambda n: _w(n, s)  # noqa: E731
    branches = [cna(cin, c(32), 1),
                nn.Sequential(cna(cin, c(32), 1), cna(c(32), c(32), 3, padding=1)),
                nn.Sequential(cna(cin, c(32), 1), cna(c(32), c(48), 3, padding=1), cna(c(48), c(64), 3, padding=1))]
    return ResidualInception(cin, branches, 2 * c(32) + c(64), scale, **kw)


def block17(cin: int, s: float = 1.0, scale: float = 0.10, **kw) -> ResidualInception:
    """Inception-ResNet-v2 block B (the 17×17 grid): a 1×7 / 7×1 branch."""
    c = lambda n: _w(n, s)  # noqa: E731
    branches = [cna(cin, c(192), 1),
                nn.Sequential(cna(cin, c(128), 1), cna(c(128), c(160), (1, 7), padding=(0, 3)),
                              cna(c(160), c(192), (7, 1), padding=(3, 0)))]
    return ResidualInception(cin, branches, 2 * c(192), scale, **kw)


def block8(cin: int, s: float = 1.0, scale: float = 0.20, **kw) -> ResidualInception:
    """Inception-ResNet-v2 block C (the 8×8 grid): a 1×3 / 3×1 branch."""
    c = lambda n: _w(n, s)  # noqa: E731
    branches = [cna(cin, c(192), 1),
                nn.Sequential(cna(cin, c(192), 1), cna(c(192), c(224), (1, 3), padding=(0, 1)),
                              cna(c(224), c(256), (3, 1), padding=(1, 0)))]
    return ResidualInception(cin, branches, c(192) + c(256), scale, **kw)


class Mixed6a(Concat):
    """Inception-ResNet-v2 reduction from grid A to grid B; out = in + 768·s."""

    def __init__(self, cin: int, s: float = 1.0):
        super().__init__()
        c = lambda n: _w(n, s)  # noqa: E731
        self.branch0 = cna(cin, c(384), 3, stride=2)
        self.branch1 = nn.Sequential(cna(cin, c(256), 1), cna(c(256), c(256), 3, padding=1),
                                     cna(c(256), c(384), 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, 2)
        self.out_chs = cin + 2 * c(384)


class Mixed7a(Concat):
    """Inception-ResNet-v2 reduction from grid B to grid C; out = in + (384 + 288 + 320)·s."""

    def __init__(self, cin: int, s: float = 1.0):
        super().__init__()
        c = lambda n: _w(n, s)  # noqa: E731
        self.branch0 = nn.Sequential(cna(cin, c(256), 1), cna(c(256), c(384), 3, stride=2))
        self.branch1 = nn.Sequential(cna(cin, c(256), 1), cna(c(256), c(288), 3, stride=2))
        self.branch2 = nn.Sequential(cna(cin, c(256), 1), cna(c(256), c(288), 3, padding=1),
                                     cna(c(288), c(320), 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, 2)
        self.out_chs = cin + c(384) + c(288) + c(320)


def _stem(in_chans: int, cout: int, s: float) -> nn.Sequential:
    """The small-input stem: three 3×3 convs, no down-sampling."""
    return nn.Sequential(cna(in_chans, _w(32, s), 3, padding=1), cna(_w(32, s), _w(64, s), 3, padding=1),
                         cna(_w(64, s), cout, 3, padding=1))


def _stage(blocks: list[nn.Module], i: int, reduction, cin: int, s: float, drop_block: float,
           drop_block_size: int) -> tuple[nn.Sequential, int]:
    """A stage's blocks (with DropBlock in the last two stages), then its reduction block if any."""
    blocks = with_drop_block(blocks, i, 3, drop_block, drop_block_size)
    if reduction is not None:
        r = reduction(cin, s)
        cin = r.out_chs
        blocks.append(r)
    return nn.Sequential(*blocks), cin


class AttnAfter(nn.Sequential):
    """A non-residual block followed by an attention module on its output (as SE-Inception places it)."""


class SmallInceptionV4(Classifier):
    """Stem (3×3 convs, no down-sampling), A×n_a, Reduction-A, B×n_b, Reduction-B, C×n_c, average pool."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, s: float = 0.125, depths=(4, 7, 3),
                 attn: str | None = None, drop_block: float = 0.0, drop_block_size: int = 3, head: str = "avg"):
        cin = _w(384, s)
        stem = _stem(in_chans, cin, s)
        stages = []
        for i, (block, red, n) in enumerate(((InceptionA, ReductionA, depths[0]), (InceptionB, ReductionB, depths[1]),
                                             (InceptionC, None, depths[2]))):
            blocks: list[nn.Module] = []
            for _ in range(n):
                b = block(cin, s)
                cin = b.out_chs
                blocks.append(AttnAfter(b, make_attn(attn, cin)) if attn else b)
            stage, cin = _stage(blocks, i, red, cin, s, drop_block, drop_block_size)
            stages.append(stage)
        super().__init__(cin, num_classes, pool=head)
        self.stem, self.stages = stem, nn.Sequential(*stages)


class SmallInceptionResNetV2(Classifier):
    """Stem (3×3 convs, no down-sampling), 5×A (scale 0.17), Mixed-6a, 10×B (0.10), Mixed-7a, 5×C (0.20,
    no ReLU after the last), 1×1 conv to 1536·s, average pool."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, s: float = 0.125, depths=(5, 10, 5),
                 attn: str | None = None, drop_path: float = 0.0, drop_block: float = 0.0,
                 drop_block_size: int = 3, head: str = "avg"):
        cin = _w(320, s)
        stem = _stem(in_chans, cin, s)
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        stages = []
        for i, (block, red, n) in enumerate(((block35, Mixed6a, depths[0]), (block17, Mixed7a, depths[1]),
                                             (block8, None, depths[2]))):
            blocks: list[nn.Module] = [block(cin, s, attn=attn, drop_path=next(rates),
                                             relu=not (red is None and j == n - 1)) for j in range(n)]
            stage, cin = _stage(blocks, i, red, cin, s, drop_block, drop_block_size)
            stages.append(stage)
        stages[-1].append(cna(cin, _w(1536, s), 1))
        super().__init__(_w(1536, s), num_classes, pool=head)
        self.stem, self.stages = stem, nn.Sequential(*stages)


@register_model("inception (small input)", min_size=15, paper="Szegedy et al. 2017, Inception-v4",
                shared=("attn", "drop_block", "drop_block_size", "head"))
def inception_v4_mini(num_classes: int = 10, in_chans: int = 3, img_size=None, width: float = 0.125,
                       depths: tuple[int, int, int] = (4, 7, 3), **options) -> SmallInceptionV4:
    """Inception-v4's pure Inception blocks (4×A, 7×B, 3×C as in the paper) at `width` × the paper's widths."""
    return SmallInceptionV4(num_classes, in_chans, width, tuple(depths), **options)


@register_model("inception (small input)", min_size=15, paper="Szegedy et al. 2017, Inception-ResNet-v2",
                shared=("attn", "drop_path", "drop_block", "drop_block_size", "head"))
def inception_resnet_v2_mini(num_classes: int = 10, in_chans: int = 3, img_size=None, width: float = 0.125,
                              depths: tuple[int, int, int] = (5, 10, 5), **options) -> SmallInceptionResNetV2:
    """Inception-ResNet-v2's residual Inception blocks with the paper's scaling, at `width` × its widths."""
    return SmallInceptionResNetV2(num_classes, in_chans, width, tuple(depths), **options)
