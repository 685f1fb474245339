"""The surface every cnnkit model shares (same as timm's): forward_features, forward_head, reset_classifier."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.models.layers import make_head


class Classifier(nn.Module):
    """A feature extractor, then pooling (see `layers.HEADS`), an optional pre-logits block and a linear head.

    Subclasses build `stem` and `stages` (an nn.Sequential) or override `forward_features`; `stage_names`
    lists the modules whose outputs `cnnkit models info` reports.
    """

    num_classes: int
    num_features: int

    def __init__(self, num_features: int, num_classes: int, pool: str = "avg", pre_logits: nn.Module | None = None):
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.head_kind = pool
        self.global_pool, self.fc = make_head(pool, num_features, num_classes)
        self.pre_logits = pre_logits if pre_logits is not None else nn.Identity()

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
        self.global_pool, self.fc = make_head(self.head_kind, self.num_features, num_classes)

    def stage_names(self) -> list[str]:
        """Names of the modules that end each stage, input side first."""
        names = ["stem"] if hasattr(self, "stem") else []
        if isinstance(getattr(self, "stages", None), nn.Sequential):
            names += [f"stages.{i}" for i in range(len(self.stages))]
        return names


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution (no bias), batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
