"""Object detectors: boxes with classes and scores. torchvision's detectors (RetinaNet, FCOS, SSD, Faster R-CNN)
on a small residual backbone for small images, each wrapped so that the rest of cnnkit sees one tensor.

A cnnkit detector maps N×C×H×W images (normalized as the run's data) to N×D×6 rows (x0, y0, x1, y1, score,
class), at most D = `max_detections` per image, best first, padded with rows of score 0 and class -1. The
classes are the data's (class 0, `background` in fashion-scenes, is never a target). In training mode it takes
the targets too, N×M×5 rows (class, x0, y0, x1, y1) padded with class -1, and gives the model's own losses
(a dict, summed by the detection task's objective). Boxes are in pixel-edge coordinates of the input.

The images reach torchvision's detector at the size they are given: cnnkit's data pipeline has already
resized and normalized them, so the detector's own transform (GeneralizedRCNNTransform) is replaced by one
that only stacks the batch.

- `retinanet_small`: RetinaNet (Lin et al. 2017, focal loss) on an FPN (Lin et al. 2017) over the backbone's
  stride 4, 8 and 16 maps.
- `fcos_small`: FCOS (Tian et al. 2019), anchor-free, on the same FPN.
- `ssd_small`: SSD (Liu et al. 2016): class and box predictions from several feature maps of the backbone
  itself (strides 4, 8, 16 and an extra 32), default boxes of several aspect ratios per map.
- `fasterrcnn_small`: Faster R-CNN (Ren et al. 2015) with an FPN: region proposals, then RoIAlign and a box head.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from cnnkit.errors import ModelError
from cnnkit.models.registry import register_model
from cnnkit.models.segment import Residual, conv_bn_relu

STRIDES = (4, 8, 16)  # the backbone maps the heads read


class _KeepSize(GeneralizedRCNNTransform):
    """torchvision's detector transform without its resizing and normalization: the batch as given."""

    def __init__(self) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=[0.0], image_std=[1.0], size_divisible=1)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image, target=None):  # noqa: ANN001, ANN201 (torchvision's signature)
        return image, target


class SmallBackbone(nn.Module):
    """A residual network for small images: a stride-2 stem, then three stages of one residual block each,
    every one halving the resolution and doubling the width; gives the stages' maps at strides 4, 8 and 16
    (`extra`: one more, a stride-2 3×3 convolution block, at 32) as an ordered dict."""

    def __init__(self, in_chans: int, width: int, extra: bool = False):
        super().__init__()
        self.stem = conv_bn_relu(in_chans, width, 3, 2)
        self.stages = nn.ModuleList([Residual(width, 2 * width, 2), Residual(2 * width, 4 * width, 2),
                                     Residual(4 * width, 8 * width, 2)])
        self.extra = conv_bn_relu(8 * width, 8 * width, 3, 2) if extra else None
        self.channels = [2 * width, 4 * width, 8 * width] + ([8 * width] if extra else [])

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out, x = OrderedDict(), self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[str(i)] = x
        if self.extra is not None:
            out[str(len(self.stages))] = self.extra(x)
        return out


class WithFPN(nn.Module):
    """A backbone's maps through a feature pyramid network (torchvision's): `out_channels` channels each."""

    def __init__(self, body: SmallBackbone, out_channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def as_target_dicts(targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """N×M×5 padded rows (class, x0, y0, x1, y1; class -1: none) as torchvision's per-image target dicts."""
    out = []
    for rows in targets:
        keep = rows[:, 0] >= 0
        out.append({"boxes": rows[keep, 1:].float(), "labels": rows[keep, 0].long()})
    return out


def padded_detections(detections: list[dict[str, torch.Tensor]], limit: int) -> torch.Tensor:
    """torchvision's per-image detections as N×`limit`×6 rows (x0, y0, x1, y1, score, class), best first,
    padded with (0, 0, 0, 0, 0, -1)."""
    out = torch.zeros(len(detections), limit, 6)
    out[..., 5] = -1
    for i, d in enumerate(detections):
        order = d["scores"].argsort(descending=True, stable=True)[:limit]
        k = len(order)
        out[i, :k, :4] = d["boxes"][order].float()
        out[i, :k, 4] = d["scores"][order].float()
        out[i, :k, 5] = d["labels"][order].float()
    return out.to(detections[0]["boxes"].device) if detections else out


class Detector(nn.Module):
    """A torchvision detector behind cnnkit's tensor interface (see the module docstring)."""

    task = "detect"

    def __init__(self, net: nn.Module, num_classes: int, max_detections: int):
        super().__init__()
        net.transform = _KeepSize()
        self.net, self.num_classes, self.max_detections = net, num_classes, max_detections

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):  # noqa: ANN201 (losses or a tensor)
        images = list(x.unbind(0))
        if self.training:
            if targets is None:
                raise ModelError("a detector learns from targets: call it as model(images, targets) in training mode")
            return self.net(images, as_target_dicts(targets))
        return padded_detections(self.net(images), self.max_detections)


def _check(width: int, fpn_channels: int, max_detections: int) -> None:
    for name, v in (("width", width), ("fpn_channels", fpn_channels), ("max_detections", max_detections)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ModelError(f"{name} must be a positive whole number, got {v!r}")


def _anchor_sizes(anchor_sizes, levels: int, per_level: int = 1) -> tuple[tuple[float, ...], ...]:  # noqa: ANN001
    """One size per level (default: 4× the level's stride; `cnnkit train` derives them from the training boxes),
    each the middle of `per_level` octave scales 2^(k/per_level) around it."""
    base = [4.0 * s for s in STRIDES[:levels]] if anchor_sizes is None else [float(s) for s in anchor_sizes]
    if len(base) != levels or any(not s > 0 for s in base):
        raise ModelError(f"anchor_sizes must be {levels} positive sizes in pixels (one per level, strides "
                         f"{', '.join(map(str, STRIDES[:levels]))}), got {anchor_sizes!r}")
    return tuple(tuple(b * 2 ** ((i - (per_level - 1) / 2) / per_level) for i in range(per_level)) for b in base)


@register_model("retinanet", min_size=32, paper="Lin et al. 2017, RetinaNet (focal loss) on an FPN (torchvision)",
                task="detect", default_input="1x96x96")
def retinanet_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16, fpn_channels: int = 64,
                    anchor_sizes=None, max_detections: int = 100) -> nn.Module:
    """RetinaNet on an FPN over a small residual backbone (strides 4, 8, 16); three octave scales and aspect
    ratios 0.5, 1, 2 per level around `anchor_sizes` (one size in pixels per level; default 16, 32, 64)."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    _check(width, fpn_channels, max_detections)
    sizes = _anchor_sizes(anchor_sizes, 3, per_level=3)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    net = RetinaNet(WithFPN(SmallBackbone(in_chans, width), fpn_channels), num_classes, anchor_generator=anchors,
                    detections_per_img=max_detections)
    return Detector(net, num_classes, max_detections)


@register_model("fcos", min_size=32, paper="Tian et al. 2019, FCOS (anchor-free) on an FPN (torchvision)",
                task="detect", default_input="1x96x96")
def fcos_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16, fpn_channels: int = 64,
               max_detections: int = 100) -> nn.Module:
    """FCOS on an FPN over a small residual backbone (strides 4, 8, 16): one location per map position."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    _check(width, fpn_channels, max_detections)
    anchors = AnchorGenerator(tuple((4.0 * s,) for s in STRIDES), ((1.0,),) * len(STRIDES))  # FCOS: one per place
    net = FCOS(WithFPN(SmallBackbone(in_chans, width), fpn_channels), num_classes, anchor_generator=anchors,
               detections_per_img=max_detections)
    return Detector(net, num_classes, max_detections)


@register_model("ssd", min_size=32, paper="Liu et al. 2016, SSD (multi-scale feature maps, default boxes; "
                "torchvision)", task="detect", default_input="1x96x96")
def ssd_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16,
              max_detections: int = 100) -> nn.Module:
    """SSD on a small residual backbone: predictions from its stride 4, 8, 16 and 32 maps, default boxes
    from 0.15 to 0.9 of the image side with aspect ratios 1, 2 (and 3 from the second map on)."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    _check(width, 1, max_detections)
    size = tuple(img_size) if img_size is not None else (96, 96)
    body = SmallBackbone(in_chans, width, extra=True)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2]], min_ratio=0.15, max_ratio=0.9)
    head = SSDHead(body.channels, anchors.num_anchors_per_location(), num_classes)
    net = SSD(body, anchors, size, num_classes, head=head, detections_per_img=max_detections)
    return Detector(net, num_classes, max_detections)


@register_model("fasterrcnn", min_size=32, paper="Ren et al. 2015, Faster R-CNN with an FPN (torchvision)",
                task="detect", default_input="1x96x96")
def fasterrcnn_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16,
                     fpn_channels: int = 64, anchor_sizes=None, max_detections: int = 100) -> nn.Module:
    """Faster R-CNN on an FPN over a small residual backbone (strides 4, 8, 16): region proposals from one
    anchor size per level (`anchor_sizes`, default 16, 32, 64) and ratios 0.5, 1, 2; RoIAlign of 7×7, a
    two-layer box head of 256."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    _check(width, fpn_channels, max_detections)
    sizes = _anchor_sizes(anchor_sizes, 3)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    pool = MultiScaleRoIAlign([str(i) for i in range(len(STRIDES))], 7, 2)
    net = FasterRCNN(WithFPN(SmallBackbone(in_chans, width), fpn_channels), rpn_anchor_generator=anchors,
                     box_roi_pool=pool, box_head=TwoMLPHead(fpn_channels * 49, 256),
                     box_predictor=FastRCNNPredictor(256, num_classes), rpn_pre_nms_top_n_train=600,
                     rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                     box_detections_per_img=max_detections)
    return Detector(net, num_classes, max_detections)
