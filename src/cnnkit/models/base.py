"""The surface every cnnkit model shares (same as timm's): forward_features, forward_head, reset_classifier."""

from __future__ import annotations

import torch
import torch.nn as nn

from collections.abc import Callable

from cnnkit.models.layers import make_fc, make_pool


class Classifier(nn.Module):
    """A feature extractor, then pooling (see `layers.HEADS`), an optional pre-logits block and a linear head.

    Subclasses build `stem` and `stages` (an nn.Sequential) or override `forward_features`; `stage_names`
    lists the modules whose outputs `cnnkit models info` reports.
    """

    num_classes: int
    num_features: int

    def __init__(self, num_features: int, num_classes: int, pool: str = "avg",
                 pre_logits: Callable[[int], tuple[nn.Module, int]] | None = None):
        """`pre_logits(pooled_width)` builds what sits between the pooling and the classifier (ConvNeXt's
        LayerNorm, VGG's fully connected layers) and says the width it hands to the classifier."""
        super().__init__()
        self.num_classes = num_classes
        self.head_kind = pool
        self.global_pool, pooled = make_pool(pool, num_features)
        self.pre_logits, self.num_features = pre_logits(pooled) if pre_logits else (nn.Identity(), pooled)
        self.fc = make_fc(pool, self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(torch.flatten(self.global_pool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialized one for `num_classes` (0 removes it), same head kind."""
        self.num_classes = num_classes
        self.fc = make_fc(self.head_kind, self.num_features, num_classes)

    def stage_names(self) -> list[str]:
        """Names of the modules that end each stage, input side first."""
        names = ["stem"] if hasattr(self, "stem") else []
        if isinstance(getattr(self, "stages", None), nn.Sequential):
            names += [f"stages.{i}" for i in range(len(self.stages))]
        return names


def stage_modules(model: nn.Module) -> list[str]:
    """Names of the modules that end each stage: cnnkit's `stage_names()`, timm's `feature_info`, else the
    top-level children."""
    names = getattr(model, "stage_names", None)
    if callable(names) and names():
        return names()
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[0], dict):
        return [d["module"] for d in info]
    return [n for n, _ in model.named_children()]


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution (no bias), batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
