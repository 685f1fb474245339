"""The ImageNet-size originals, built by timm (no re-implementation) under their papers' names.

Each is timm's model with a fresh head, so timm and torchvision weight files load into it with
`--init-from` (see `cnnkit.models.weights`) and cnnkit checkpoints of it load back into timm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from cnnkit.errors import ModelError
from cnnkit.models.layers import ATTENTION, make_attn
from cnnkit.models.registry import register_model


def _timm(timm_name: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    import timm

    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _family(name: str, timm_name: str, family: str, paper: str, min_size: int = 32, size: int = 224,
            drop_path: bool = True) -> None:
    if drop_path:
        def builder(num_classes: int = 1000, in_chans: int = 3, img_size=None, drop: float = 0.0,
                    drop_path: float = 0.0) -> nn.Module:
            return _timm(timm_name, num_classes, in_chans, drop_rate=drop, drop_path_rate=drop_path)
    else:
        def builder(num_classes: int = 1000, in_chans: int = 3, img_size=None, drop: float = 0.0) -> nn.Module:
            return _timm(timm_name, num_classes, in_chans, drop_rate=drop)
    builder.__name__ = name
    builder.__doc__ = f"{paper.split(',')[0]}'s network at ImageNet size: timm's `{timm_name}`."
    register_model(family, min_size, paper, default_input=f"3x{size}x{size}", imagenet=True)(builder)


for _depth in (11, 16, 19):
    for _bn in ("", "_bn"):
        _family(f"vgg{_depth}{_bn}", f"vgg{_depth}{_bn}", "vgg", "Simonyan & Zisserman 2015", drop_path=False)
_family("resnet18", "resnet18", "resnet", "He et al. 2016")
_family("resnet50", "resnet50", "resnet", "He et al. 2016")
_family("resnet50d", "resnet50d", "resnet", "He et al. 2019, Bag of Tricks (ResNet-D)")
_family("ecaresnet50d", "ecaresnet50d", "resnet", "Wang et al. 2020, ECA-Net (on ResNet-D)")
_family("inception_v3", "inception_v3", "inception", "Szegedy et al. 2016, Rethinking Inception",
        min_size=75, size=299, drop_path=False)
_family("inception_v4", "inception_v4", "inception", "Szegedy et al. 2017, Inception-v4",
        min_size=75, size=299, drop_path=False)
_family("inception_resnet_v2", "inception_resnet_v2", "inception", "Szegedy et al. 2017, Inception-ResNet-v2",
        min_size=75, size=299, drop_path=False)
_family("mobilenet_v2", "mobilenetv2_100", "mobilenet", "Sandler et al. 2018, MobileNetV2")
_family("convnext_tiny", "convnext_tiny", "convnext", "Liu et al. 2022, ConvNeXt")
_family("inception_next_tiny", "inception_next_tiny", "inception_next", "Yu et al. 2024, InceptionNeXt")


@register_model("resnet", 32, "Wang et al. 2020, ECA-Net; Hu et al. 2018, SE-Net", default_input="3x224x224",
                imagenet=True)
def resnet50_attn(num_classes: int = 1000, in_chans: int = 3, img_size=None, attn: str = "eca",
                  eca_kernel_sizes: Sequence[int] | None = None, drop: float = 0.0,
                  drop_path: float = 0.0) -> nn.Module:
    """ResNet-50 with an attention module after the last BN of every bottleneck (timm's `resnet50` with
    `attn_layer`). ECA's kernel follows the paper's formula per channel count: 5, 5, 5, 7 in the four stages
    (86 parameters); `eca_kernel_sizes=[3, 5, 5, 7]` gives the 80 the ECA-Net paper reports."""
    if attn not in ATTENTION:
        raise ModelError(f"unknown attention {attn!r}; choose one of: {', '.join(ATTENTION)}")
    model = _timm("resnet50", num_classes, in_chans, drop_rate=drop, drop_path_rate=drop_path)
    for s, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        for block in layer:
            k = eca_kernel_sizes[s] if attn == "eca" and eca_kernel_sizes else None
            block.se = make_attn(attn, block.conv3.out_channels, kernel_size=k)
    if eca_kernel_sizes is not None and (attn != "eca" or len(eca_kernel_sizes) != 4):
        raise ModelError("eca_kernel_sizes needs attn='eca' and one odd kernel size per stage (4 values)")
    return model
