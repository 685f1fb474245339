"""Segmentation architectures from segmentation_models_pytorch (smp) on any of its encoders or any timm backbone.

`cnnkit train --model smp_deeplabv3plus --model-kw encoder=timm/resnet18 --model-kw output_stride=8` builds
DeepLabv3+ (Chen et al. 2018) on timm's ResNet-18 made dilated to output stride 8 by atrous convolution (timm
and smp do the dilation); `encoder` takes smp's own encoder names (`resnet18`, `mobilenet_v2`,
`efficientnet-b0`, ...) or any timm model as `timm/<name>` (smp's `tu-<name>`). The architectures are the
literature's: U-Net, FPN (Kirillov et al.'s panoptic FPN head), PSPNet (pyramid pooling), DeepLabv3 (ASPP),
DeepLabv3+ (ASPP and decoder) and UPerNet. Built without weights (nothing is downloaded); weights enter through
`--init-from`. Any input size works: inputs are padded to a multiple of the network's stride and the logits
cropped back, so predict, export and the service take images of any size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ModelError, close_matches
from cnnkit.models.registry import TIMM_PREFIX, register_model
from cnnkit.models.segment import SegmentationNet


class SmpSegmentation(SegmentationNet):
    """An smp model taking any H×W: padded (zeros, bottom and right) to a multiple of `multiple`, cropped back."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        padded = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))
        return self.net(padded)[..., :h, :w]


def _encoder_name(encoder: str) -> str:
    """smp's name of `encoder`: timm/<name> is smp's tu-<name>; checked here, so that a typo is one line."""
    import segmentation_models_pytorch as smp
    import timm

    if encoder.startswith(TIMM_PREFIX) or encoder.startswith("tu-"):
        name = encoder.split("/", 1)[1] if encoder.startswith(TIMM_PREFIX) else encoder[3:]
        if not timm.is_model(name):
            raise ModelError(f"unknown timm encoder {name!r}{close_matches(name, timm.list_models())}")
        return "tu-" + name
    known = smp.encoders.get_encoder_names()
    if encoder not in known:
        raise ModelError(f"unknown encoder {encoder!r}{close_matches(encoder, known)}; give one of smp's encoders "
                         f"(e.g. resnet18, mobilenet_v2) or any timm model as timm/<name>")
    return encoder


def _smp(arch: str, num_classes: int, in_chans: int, encoder: str, encoder_depth: int, **kwargs) -> nn.Module:
    import segmentation_models_pytorch as smp

    if not 3 <= encoder_depth <= 5:
        raise ModelError(f"model option encoder_depth must be 3, 4 or 5, got {encoder_depth!r}")
    if "encoder_output_stride" in kwargs and kwargs["encoder_output_stride"] not in (8, 16):
        raise ModelError(f"model option output_stride must be 8 or 16, got {kwargs['encoder_output_stride']!r}")
    try:
        net = getattr(smp, arch)(encoder_name=_encoder_name(encoder), encoder_depth=encoder_depth, encoder_weights=None,
                                 in_channels=in_chans, classes=num_classes, **kwargs)
    except (KeyError, ValueError, RuntimeError, AssertionError, TypeError) as e:  # the encoder cannot serve this
        first = str(e).strip("'\"").splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"smp {arch} cannot be built on encoder {encoder!r}: {first[:200]}") from None
    # the stride the network's input must be a multiple of (DeepLab's encoders stop striding there and dilate)
    return SmpSegmentation(net, net.encoder.output_stride)


_PAPER = "segmentation_models_pytorch"


@register_model("smp", min_size=32, paper=f"Ronneberger et al. 2015, U-Net ({_PAPER})", task="segment",
                default_input="3x128x128")
def smp_unet(num_classes: int = 11, in_chans: int = 3, img_size=None, encoder: str = "resnet18",
             encoder_depth: int = 5) -> nn.Module:
    """U-Net's decoder on an smp or timm encoder (`encoder=timm/<name>`)."""
    return _smp("Unet", num_classes, in_chans, encoder, encoder_depth,
                decoder_channels=(256, 128, 64, 32, 16)[:encoder_depth])


@register_model("smp", min_size=32, paper=f"Kirillov et al. 2019, panoptic FPN head ({_PAPER})", task="segment",
                default_input="3x128x128")
def smp_fpn(num_classes: int = 11, in_chans: int = 3, img_size=None, encoder: str = "resnet18",
            encoder_depth: int = 5) -> nn.Module:
    """Feature Pyramid Network's semantic head on an smp or timm encoder."""
    return _smp("FPN", num_classes, in_chans, encoder, encoder_depth)


@register_model("smp", min_size=32, paper=f"Zhao et al. 2017, PSPNet (pyramid pooling) ({_PAPER})", task="segment",
                default_input="3x128x128")
def smp_pspnet(num_classes: int = 11, in_chans: int = 3, img_size=None, encoder: str = "resnet18",
               encoder_depth: int = 3) -> nn.Module:
    """PSPNet's pyramid pooling module on an smp or timm encoder (smp's default depth 3: output stride 8)."""
    return _smp("PSPNet", num_classes, in_chans, encoder, encoder_depth)


@register_model("smp", min_size=32, paper=f"Chen et al. 2017, DeepLabv3 (ASPP, atrous backbone) ({_PAPER})",
                task="segment", default_input="3x128x128")
def smp_deeplabv3(num_classes: int = 11, in_chans: int = 3, img_size=None, encoder: str = "resnet18",
                  output_stride: int = 8, rates: tuple[int, int, int] = (12, 24, 36)) -> nn.Module:
    """DeepLabv3: ASPP on an smp or timm encoder dilated to output stride 8 or 16."""
    return _smp("DeepLabV3", num_classes, in_chans, encoder, 5, encoder_output_stride=output_stride,
                decoder_atrous_rates=tuple(rates))


@register_model("smp", min_size=32, paper=f"Chen et al. 2018, DeepLabv3+ (ASPP and decoder) ({_PAPER})",
                task="segment", default_input="3x128x128")
def smp_deeplabv3plus(num_classes: int = 11, in_chans: int = 3, img_size=None, encoder: str = "resnet18",
                      output_stride: int = 16, rates: tuple[int, int, int] = (12, 24, 36)) -> nn.Module:
    """DeepLabv3+: ASPP and the stride-4 decoder on an smp or timm encoder dilated to output stride 8 or 16."""
    return _smp("DeepLabV3Plus", num_classes, in_chans, encoder, 5, encoder_output_stride=output_stride,
                decoder_atrous_rates=tuple(rates))


@register_model("smp", min_size=32, paper=f"Xiao et al. 2018, UPerNet ({_PAPER})", task="segment",
                default_input="3x128x128")
def smp_upernet(num_classes: int = 11, in_chans: int = 3, img_size=None, encoder: str = "resnet18",
                encoder_depth: int = 5) -> nn.Module:
    """UPerNet (pyramid pooling and FPN fusion) on an smp or timm encoder."""
    return _smp("UPerNet", num_classes, in_chans, encoder, encoder_depth)
