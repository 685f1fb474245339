"""Segmentation networks: a label per pixel. Every model maps N×C×H×W images to N×K×H×W logits (K classes,
background included) at the input's resolution.

Small-input families, written here because no library builds them for 28–128-pixel images:
- `unet_small`: U-Net (Ronneberger et al. 2015): two 3×3 conv-BN-ReLU per level, max-pool down, transposed
  convolution up, the encoder's features concatenated at each level (`skips=False` drops them: the ablation).
- `deeplab_small`: DeepLabv3 (Chen et al. 2017) on a small residual backbone: output stride 8 or 16 (the last
  stages dilated instead of strided, "atrous convolution"), atrous spatial pyramid pooling (1×1, three 3×3
  at `rates`, image pooling; `aspp=False` is an FCN head, the ablation), `decoder=True` adds DeepLabv3+'s
  decoder (Chen et al. 2018); `hdc=True` gives the dilated blocks hybrid rates (1, 2, 3) against gridding and
  `upsample="duc"` the dense upsampling convolution (Wang et al. 2018, "Understanding Convolution for
  Semantic Segmentation") instead of bilinear upsampling.
ImageNet-size networks come from torchvision (`fcn_resnet50`, `deeplabv3_resnet50`, `lraspp_mobilenet_v3`,
LR-ASPP from MobileNetV3, Howard et al. 2019), built without weights and with the first convolution taking
`in_chans` channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ModelError
from cnnkit.models.registry import register_model


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """A k×k convolution (no bias; padded to keep the size at stride 1), BatchNorm and ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def to_size(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """`x` resized bilinearly to `size` (H, W) where it is not that size already (a stem stride shrank it)."""
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


torch.fx.wrap("to_size")  # one call in a traced graph (the explorer's): its test of the size is not traced into


class SegmentationNet(nn.Module):
    """What every cnnkit segmentation model is: `forward(x)` gives N×K×H×W logits at the input's size."""

    task = "segment"
    num_classes: int


class UNet(SegmentationNet):
    def __init__(self, num_classes: int, in_chans: int, width: int = 16, depth: int = 3, skips: bool = True,
                 stem_stride: int = 1):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.skips = skips
        self.down = nn.ModuleList()
        cin = in_chans
        for i, w in enumerate(widths):
            self.down.append(nn.Sequential(conv_bn_relu(cin, w, stride=stem_stride if i == 0 else 1), conv_bn_relu(w, w)))
            cin = w
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(nn.Sequential(conv_bn_relu(widths[i] * (2 if skips else 1), widths[i]), conv_bn_relu(widths[i], widths[i]))
                                   for i in reversed(range(depth)))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, kept = x.shape[-2:], []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2, ceil_mode=True))
            kept.append(x)
        kept.pop()
        for up, merge in zip(self.up, self.merge):
            skip = kept.pop()
            x = up(x)[..., :skip.shape[-2], :skip.shape[-1]]  # odd sizes: the pooled side was rounded up
            x = merge(torch.cat([skip, x], 1) if self.skips else x)
        return to_size(self.classifier(x), size)


class Residual(nn.Module):
    """A basic residual block (two 3×3 convolutions); the first may stride or dilate."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cout, 3, stride, dilation),
                                  nn.Conv2d(cout, cout, 3, 1, dilation, dilation, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): a 1×1 branch, one 3×3 branch per rate, image pooling;
    concatenated and projected by a 1×1 convolution."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, 1, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class DeepLab(SegmentationNet):
    def __init__(self, num_classes: int, in_chans: int, width: int = 16, output_stride: int = 8, aspp: bool = True,
                 rates: tuple[int, ...] = (2, 4, 6), decoder: bool = False, hdc: bool = False,
                 upsample: str = "bilinear", backbone: str = "own", backbone_kw: dict | None = None):
        super().__init__()
        if output_stride not in (8, 16):
            raise ModelError(f"model option output_stride must be 8 or 16, got {output_stride}")
        if upsample not in ("bilinear", "duc"):
            raise ModelError(f"model option upsample must be bilinear or duc, got {upsample!r}")
        w = width
        if backbone == "own":
            self.stem = conv_bn_relu(in_chans, w)
            self.layer1 = nn.Sequential(Residual(w, 2 * w, 2), Residual(2 * w, 2 * w))  # stride 2
            self.layer2 = nn.Sequential(Residual(2 * w, 4 * w, 2), Residual(4 * w, 4 * w))  # 4
            self.layer3 = nn.Sequential(Residual(4 * w, 8 * w, 2), Residual(8 * w, 8 * w))  # 8
            strided = output_stride == 16  # the last stage strides to 16, or keeps 8 with dilated convolutions
            rates4 = (1, 2, 3) if hdc else (2, 2, 2)
            self.layer4 = nn.Sequential(Residual(8 * w, 8 * w, 2 if strided else 1, 1 if strided else rates4[0]),
                                        *[Residual(8 * w, 8 * w, 1, 1 if strided else r) for r in rates4[1:]])
            low_c, high_c = 4 * w, 8 * w
        else:  # any cnnkit classifier or timm/<name>, made atrous at the output stride (models/atrous.py)
            from cnnkit.models.atrous import AtrousBackbone

            if hdc:
                raise ModelError("model option hdc=true needs backbone=own (another backbone is dilated at one rate "
                                 "per stage)")
            if backbone_kw is not None and not isinstance(backbone_kw, dict):
                raise ModelError(f"model option backbone_kw must be a mapping of the backbone's options, e.g. "
                                 f"backbone_kw={{width: 16}}, got {backbone_kw!r}")
            self.backbone = AtrousBackbone(backbone, in_chans, output_stride, backbone_kw or {})
            low_c, high_c = self.backbone.channels
            if decoder and not low_c:
                raise ModelError(f"model option decoder=true needs stride-4 features, and no stage of {backbone} "
                                 f"ends at stride 4")
        self.output_stride = output_stride
        self.head = ASPP(high_c, 8 * w, tuple(rates)) if aspp else conv_bn_relu(high_c, 8 * w)  # without ASPP: FCN's head
        self.decoder = decoder
        if decoder:  # DeepLabv3+: the stride-4 features, projected, joined with the upsampled head's
            self.low = conv_bn_relu(low_c, w, 1)
            self.fuse = nn.Sequential(conv_bn_relu(9 * w, 4 * w), conv_bn_relu(4 * w, 4 * w))
        out_w, factor = (4 * w, 4) if decoder else (8 * w, output_stride)
        self.duc = upsample == "duc"
        self.classifier = nn.Conv2d(out_w, num_classes * (factor ** 2 if self.duc else 1), 1)
        self.shuffle = nn.PixelShuffle(factor) if self.duc else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if hasattr(self, "backbone"):
            low, high = self.backbone(x)
        else:
            low = self.layer2(self.layer1(self.stem(x)))
            high = self.layer4(self.layer3(low))
        y = self.head(high)
        if self.decoder:
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = self.fuse(torch.cat([y, self.low(low)], 1))
        y = self.shuffle(self.classifier(y))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False) if y.shape[-2:] != size else y


@register_model("unet", min_size=8, paper="Ronneberger et al. 2015, U-Net", task="segment",
                default_input="1x96x96")
def unet_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16, depth: int = 3,
               skips: bool = True, stem_stride: int = 1) -> nn.Module:
    """U-Net for small images: `depth` poolings, `width` channels at the first level, doubling per level;
    `skips=False` removes the encoder-decoder connections (the ablation); `stem_stride=2` makes the first
    convolution stride 2, so the network works at half resolution and its logits are resized bilinearly to the
    input (cheaper where objects span many pixels; the paper's U-Net is stem_stride=1)."""
    if stem_stride not in (1, 2, 4):
        raise ModelError(f"stem_stride must be 1, 2 or 4, got {stem_stride!r}")
    return UNet(num_classes, in_chans, width, depth, skips, stem_stride)


@register_model("deeplab", min_size=16, paper="Chen et al. 2017, DeepLabv3 (atrous convolution, ASPP)",
                task="segment", default_input="1x96x96")
def deeplab_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16, output_stride: int = 8,
                  aspp: bool = True, rates: tuple[int, int, int] = (2, 4, 6), decoder: bool = False,
                  hdc: bool = False, upsample: str = "bilinear", backbone: str = "own",
                  backbone_kw: dict | None = None) -> nn.Module:
    """DeepLabv3 on a small residual backbone (see the module docstring); `decoder=true`: DeepLabv3+;
    `backbone=NAME` puts the head on any cnnkit classifier (or `timm/<name>`) made atrous at the output stride
    (its features only; the head's width is 8 × `width`), built with `backbone_kw` (e.g. `{width: 16}`)."""
    return DeepLab(num_classes, in_chans, width, output_stride, aspp, tuple(rates), decoder, hdc, upsample, backbone,
                   backbone_kw)


class _TorchvisionSegmentation(SegmentationNet):
    """A torchvision segmentation model returning its "out" logits as a tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _first_conv_to(net: nn.Module, in_chans: int) -> nn.Module:
    """Make the first convolution of `net` take `in_chans` channels (a fresh one of the same shape otherwise)."""
    if in_chans == 3:
        return net
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
            setattr(parent, name.rsplit(".", 1)[-1], nn.Conv2d(
                in_chans, module.out_channels, module.kernel_size, module.stride, module.padding, module.dilation,
                module.groups, module.bias is not None))
            return net
    return net


@register_model("fcn", min_size=32, paper="Long et al. 2015, FCN (torchvision, ResNet-50)", task="segment",
                default_input="3x224x224", imagenet=True)
def fcn_resnet50(num_classes: int = 21, in_chans: int = 3, img_size=None) -> nn.Module:
    """torchvision's FCN on a dilated ResNet-50 (output stride 8), no weights."""
    from torchvision.models.segmentation import fcn_resnet50 as build

    return _TorchvisionSegmentation(_first_conv_to(build(weights=None, weights_backbone=None, num_classes=num_classes,
                                                         aux_loss=False), in_chans))


@register_model("deeplab", min_size=32, paper="Chen et al. 2017, DeepLabv3 (torchvision, ResNet-50)",
                task="segment", default_input="3x224x224", imagenet=True)
def deeplabv3_resnet50(num_classes: int = 21, in_chans: int = 3, img_size=None) -> nn.Module:
    """torchvision's DeepLabv3 on a dilated ResNet-50 (output stride 8), no weights."""
    from torchvision.models.segmentation import deeplabv3_resnet50 as build

    return _TorchvisionSegmentation(_first_conv_to(build(weights=None, weights_backbone=None, num_classes=num_classes,
                                                         aux_loss=False), in_chans))


@register_model("lraspp", min_size=32, paper="Howard et al. 2019, MobileNetV3 with LR-ASPP (torchvision)",
                task="segment", default_input="3x224x224", imagenet=True)
def lraspp_mobilenet_v3(num_classes: int = 21, in_chans: int = 3, img_size=None) -> nn.Module:
    """torchvision's LR-ASPP on MobileNetV3-Large, no weights."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large as build

    return _TorchvisionSegmentation(_first_conv_to(build(weights=None, weights_backbone=None,
                                                         num_classes=num_classes), in_chans))
