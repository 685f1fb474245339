"""Small-input ResNets: the CIFAR ResNets of He et al. 2016 (§4.2) and the DAWNBench ResNet-9 (Page 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.models.base import Classifier, conv_bn_relu
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


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or option-A) shortcut, ReLU after the addition."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ShortcutA(stride, cout - cin) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class CifarResNet(Classifier):
    """3×3 stem of 16 filters, three stages of n blocks (16, 32, 64 filters), global average pool, linear.

    Depth is 6n + 2; the second and third stages start with stride 2.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64)):
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n + 2")
        n = (depth - 2) // 6
        super().__init__(widths[-1], num_classes)
        self.stem = conv_bn_relu(in_chans, widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks = [BasicBlock(cin if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.Sequential(*stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _cifar_resnet(depth: int):
    def builder(num_classes: int = 10, in_chans: int = 3, img_size=None) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_chans)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = f"ResNet-{depth} for 28–32 px inputs (He et al. 2016, CIFAR-10 section, option-A shortcuts)."
    return register_model("resnet (small input)", min_size=8, paper="He et al. 2016, §4.2")(builder)


resnet20, resnet32, resnet44, resnet56, resnet110 = (_cifar_resnet(d) for d in (20, 32, 44, 56, 110))


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class ResNet9(Classifier):
    """Page's DAWNBench ResNet-9: prep, three conv-pool layers (the first and last with a residual pair of
    conv-BN-ReLU), global max-pool, linear head scaled by 1/8. Widths are `width`×(1, 2, 4, 8)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 64, logit_scale: float = 0.125):
        w = width
        super().__init__(8 * w, num_classes, pool="max")
        self.logit_scale = logit_scale
        self.stem = conv_bn_relu(in_chans, w)
        self.layer1 = nn.Sequential(conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),
                                    Residual(nn.Sequential(conv_bn_relu(2 * w, 2 * w), conv_bn_relu(2 * w, 2 * w))))
        self.layer2 = nn.Sequential(conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn_relu(4 * w, 8 * w), nn.MaxPool2d(2),
                                    Residual(nn.Sequential(conv_bn_relu(8 * w, 8 * w), conv_bn_relu(8 * w, 8 * w))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.global_pool(x), 1)
        return x if pre_logits else self.fc(x) * self.logit_scale


@register_model("resnet (small input)", min_size=8, paper="Page 2018, DAWNBench ResNet-9")
def resnet9(num_classes: int = 10, in_chans: int = 3, img_size=None, width: int = 64) -> ResNet9:
    """ResNet-9 (Page 2018) with base width `width` (64 in the original; 16 trains fast on a CPU)."""
    return ResNet9(num_classes, in_chans, width)
