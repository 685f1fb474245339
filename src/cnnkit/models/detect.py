"""Object detectors: boxes with classes and scores. torchvision's detectors (RetinaNet, FCOS, SSD, Faster R-CNN)
on a small residual backbone for small images, each wrapped so that the rest of cnnkit sees one tensor.

A cnnkit detector maps N×C×H×W images (normalized as the run's data) to N×D×6 rows (x0, y0, x1, y1, score,
class), at most D = `max_detections` per image, best first, padded with rows of score 0 and class -1. The
classes are the data's (class 0, `background` in fashion-scenes, is never a target). In training mode it takes
the targets too, N×M×5 rows (class, x0, y0, x1, y1) padded with class -1, and gives the model's own losses
(a dict, summed by the detection task's objective). Boxes are in pixel-edge coordinates of the input.

`Detector.set_postprocess(score_threshold, nms_iou)` sets, at inference, the threshold a detection's score must
pass and the IoU above which NMS drops the lower-scoring of two boxes of a class (each detector's own
attributes). `padded_detections` keeps the number of detections a tensor's (no Python length), so that a
traced graph, the ONNX export with the post-processing inside (`cnnkit.deploy.detect`), keeps it dynamic.

The images reach torchvision's detector at the size they are given: cnnkit's data pipeline has already
resized and normalized them, so the detector's own transform (GeneralizedRCNNTransform) is replaced by one
that only stacks the batch.

- `retinanet_small`: RetinaNet (Lin et al. 2017, focal loss) on an FPN (Lin et al. 2017) over the backbone's
  stride 8, 16 and 32 maps (`strides`; a single-scale head without the FPN with `fpn=False`).
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

STRIDES = (8, 16, 32)  # the backbone maps the heads read by default
BACKBONE_STRIDES = (4, 8, 16, 32)  # the maps SmallBackbone gives (32: its extra block)
ANCHOR_LEVELS = 3  # anchor sizes a run derives from its boxes: one per default level


class _KeepSize(GeneralizedRCNNTransform):
    """torchvision's detector transform without its resizing and normalization: the batch as given."""

    def __init__(self) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=[0.0], image_std=[1.0], size_divisible=1)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image, target=None):  # noqa: ANN001, ANN201 (torchvision's signature)
        return image, target


class SmallBackbone(nn.Module):
    """A residual network for small images: a stride-2 stem, then three stages of `depth` residual blocks each,
    every stage halving the resolution (its first block strides) and doubling the width; gives the stages' maps at
    strides 4, 8 and 16 (`extra`: one more, a stride-2 3×3 convolution block, at 32) as an ordered dict."""

    def __init__(self, in_chans: int, width: int, extra: bool = False, depth: int = 1):
        super().__init__()
        self.stem = conv_bn_relu(in_chans, width, 3, 2)
        self.stages = nn.ModuleList([_stage(width * 2 ** i, width * 2 ** (i + 1), depth) for i in range(3)])
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


def _stage(cin: int, cout: int, depth: int) -> nn.Module:
    """`depth` residual blocks, the first striding by 2 (one block alone: bare, as older checkpoints hold it)."""
    first = Residual(cin, cout, 2)
    return first if depth == 1 else nn.Sequential(first, *(Residual(cout, cout) for _ in range(depth - 1)))


class Maps(nn.Module):
    """The maps of a SmallBackbone at the given strides (of 4, 8, 16, 32), keyed "0", "1", ... from the finest;
    `channels` their widths."""

    def __init__(self, in_chans: int, width: int, strides: tuple[int, ...], depth: int = 1):
        super().__init__()
        self.body = SmallBackbone(in_chans, width, extra=32 in strides, depth=depth)
        self.keys = [str(BACKBONE_STRIDES.index(s)) for s in strides]
        self.channels = [self.body.channels[int(k)] for k in self.keys]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = self.body(x)
        return OrderedDict((str(i), out[k]) for i, k in enumerate(self.keys))


class ClassifierMaps(nn.Module):
    """The maps of any cnnkit classifier or timm model at the given strides, keyed "0", "1", ... from the finest:
    the last module of each stage whose output has that stride (measured on a probe image; timm's own feature
    maps for timm models, no weights downloaded); strides past the deepest map are made by stride-2 3×3
    convolution blocks on it, as SSD adds its extra layers. `channels` their widths."""

    def __init__(self, name: str, in_chans: int, strides: tuple[int, ...], options: dict | None = None):
        super().__init__()
        from cnnkit.models.atrous import PROBE
        from cnnkit.models.base import stage_modules
        from cnnkit.models.registry import TIMM_PREFIX, create

        options = dict(options or {})
        self.strides = strides
        if name.startswith(TIMM_PREFIX):
            import timm

            if set(options) & {"pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay"}:
                raise ModelError("a detector's timm backbone takes no weights from a hub: load them with --init-from")
            try:
                net = timm.create_model(name[len(TIMM_PREFIX):], pretrained=False, features_only=True,
                                        in_chans=in_chans, **options)
            except Exception as e:  # noqa: BLE001 - timm raises many types for unknown names and options
                raise ModelError(f"{name} cannot give feature maps: {(str(e).splitlines() or [type(e).__name__])[0][:160]}"
                                 ) from None
            found = {r: (i, c) for i, (r, c) in enumerate(zip(net.feature_info.reduction(), net.feature_info.channels()))}
            self.timm, self.net = True, net
        else:
            net = create(name, num_classes=10, in_chans=in_chans, img_size=PROBE, **options)
            sizes: dict[str, tuple[int, int]] = {}
            hooks = [net.get_submodule(m).register_forward_hook(
                lambda mod, a, out, m=m: sizes.__setitem__(m, (PROBE // out.shape[-1], out.shape[1])))
                for m in stage_modules(net) if m]
            net.eval()
            with torch.no_grad():
                (net.forward_features if hasattr(net, "forward_features") else net)(torch.zeros(1, in_chans, PROBE, PROBE))
            for h in hooks:
                h.remove()
            found = {stride: (m, c) for m, (stride, c) in sizes.items()}  # the last module at each stride
            for attr in ("fc", "head", "global_pool", "pre_logits", "classifier"):
                if isinstance(getattr(net, attr, None), nn.Module):
                    setattr(net, attr, nn.Identity())
            self.timm, self.net = False, net
            self._taken: dict[int, torch.Tensor] = {}
            for module in {found[s][0] for s in strides if s in found} | {found[max(found)][0]}:
                net.get_submodule(module).register_forward_hook(self._keep)
        deepest = max(found)
        missing = [s for s in strides if s not in found and s < deepest]
        if missing:
            raise ModelError(f"{name} has no map at stride {missing[0]} (its maps: strides "
                             f"{', '.join(map(str, sorted(found)))}); choose strides among those")
        self.taken = [found[s][0] for s in strides if s in found]
        self.deepest = found[deepest][0]
        widths = {s: found[s][1] for s in strides if s in found}
        extra, width, stride = [], found[deepest][1], deepest
        for s in strides:
            while s > stride:
                extra.append(conv_bn_relu(width, width, 3, 2))
                stride *= 2
            widths.setdefault(s, width)
        self.extra = nn.ModuleList(extra)
        self.channels = [widths[s] for s in strides]

    def _keep(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self._taken[id(module)] = out

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.timm:
            feats = self.net(x)
            maps, last = [feats[i] for i in self.taken], feats[self.deepest]
        else:
            self._taken = {}
            self.net.forward_features(x) if hasattr(self.net, "forward_features") else self.net(x)
            get = self.net.get_submodule  # by name, on this copy's modules (EMA and BN-folded copies stay right)
            maps = [self._taken[id(get(m))] for m in self.taken]
            last = self._taken[id(get(self.deepest))]
            self._taken = {}
        for block in self.extra:
            last = block(last)
            maps.append(last)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class Projected(nn.Module):
    """A single map without a pyramid: the backbone's one map, projected by a 1×1 convolution to
    `out_channels` (the single-scale head FPN's paper compares against)."""

    def __init__(self, body: Maps, out_channels: int):
        super().__init__()
        self.body, self.out_channels = body, out_channels
        self.project = nn.Conv2d(body.channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((k, self.project(v)) for k, v in self.body(x).items())


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
    padded with (0, 0, 0, 0, 0, -1). Written without Python lengths (each image's rows and `limit` padding rows
    joined, then the first `limit` kept), so that a traced graph (ONNX export) keeps the number of detections
    dynamic instead of freezing the count it saw."""
    out = []
    for d in detections:
        scores = d["scores"]
        # the stable sort has no ONNX form: traced, ties keep ONNX TopK's order (torchvision's NMS already gives
        # its detections best first)
        order = (scores.sort(descending=True).indices if torch.jit.is_tracing()
                 else scores.argsort(descending=True, stable=True))[:limit]
        boxes = d["boxes"][order].float()
        rows = torch.cat([boxes, scores[order].float()[:, None], d["labels"][order].float()[:, None]], 1)
        pad = boxes.new_tensor([0.0, 0.0, 0.0, 0.0, 0.0, -1.0]).expand(limit, 6)
        out.append(torch.cat([rows, pad], 0)[:limit])
    return torch.stack(out) if out else torch.zeros(0, limit, 6)


class Detector(nn.Module):
    """A torchvision detector behind cnnkit's tensor interface (see the module docstring).

    `exports_any_size`: whether its ONNX export (torch.onnx's TorchScript-based exporter, which traces) keeps the
    height and width dynamic; SSD's default boxes are computed from the sizes the trace saw, so its graph takes
    the size it was exported at only."""

    task = "detect"

    def __init__(self, net: nn.Module, num_classes: int, max_detections: int, exports_any_size: bool = True):
        super().__init__()
        net.transform = _KeepSize()
        self.net, self.num_classes, self.max_detections = net, num_classes, max_detections
        self.exports_any_size = exports_any_size

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):  # noqa: ANN201 (losses or a tensor)
        images = list(x.unbind(0))
        if self.training:
            if targets is None:
                raise ModelError("a detector learns from targets: call it as model(images, targets) in training mode")
            return self.net(images, as_target_dicts(targets))
        return padded_detections(self.net(images), self.max_detections)

    def _postprocessor(self) -> nn.Module:
        """The module holding the final score threshold and NMS IoU: Faster R-CNN's box head, else the net."""
        return self.net.roi_heads if hasattr(self.net, "roi_heads") else self.net

    @property
    def postprocess(self) -> dict[str, float]:
        """The score threshold and NMS IoU its detections are kept by (torchvision's `score_thresh` and
        `nms_thresh`)."""
        holder = self._postprocessor()
        return {"score_threshold": float(holder.score_thresh), "nms_iou": float(holder.nms_thresh)}

    def set_postprocess(self, score_threshold: float | None = None, nms_iou: float | None = None) -> Detector:
        """Keep detections scoring above `score_threshold`, and suppress those overlapping a better one of
        their class by an IoU above `nms_iou` (each from 0 to 1; None: unchanged). Faster R-CNN's are its
        box head's (its region proposals keep their own NMS). ModelError for a value out of range, before
        anything changes."""
        import math

        given = {"score_threshold": score_threshold, "nms_iou": nms_iou}
        for name, v in given.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or not 0 <= v <= 1):
                raise ModelError(f"{name} must be a number from 0 to 1, got {v!r}")
        holder = self._postprocessor()
        if score_threshold is not None:
            holder.score_thresh = float(score_threshold)
        if nms_iou is not None:
            holder.nms_thresh = float(nms_iou)
        return self


BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")  # torchvision's detection box losses


def _check(width: int, fpn_channels: int, max_detections: int) -> None:
    for name, v in (("width", width), ("fpn_channels", fpn_channels), ("max_detections", max_detections)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ModelError(f"{name} must be a positive whole number, got {v!r}")


def _strides(strides, allowed: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128)) -> tuple[int, ...]:  # noqa: ANN001
    """The maps a head reads: distinct strides of `allowed`, finest first; anything else is one line."""
    try:
        out = tuple(sorted(int(v) for v in strides))
    except (TypeError, ValueError):
        out = ()
    if not out or len(set(out)) != len(out) or any(v not in allowed for v in out) or any(
            not isinstance(v, int) or isinstance(v, bool) for v in strides):
        raise ModelError(f"strides must be distinct strides of the backbone's maps ({', '.join(map(str, allowed))}), "
                         f"e.g. [8, 16, 32], got {strides!r}")
    return out


def _anchor_sizes(anchor_sizes, strides: tuple[int, ...], per_level: int = 1) -> tuple[tuple[float, ...], ...]:  # noqa: ANN001
    """ANCHOR_LEVELS sizes (default 16, 32, 64; `cnnkit train` derives them from the training boxes), each the
    middle of `per_level` octave scales 2^(k/per_level) around it: one size per map where the head reads three,
    every size on the one map of a single-scale head."""
    base = [16.0, 32.0, 64.0] if anchor_sizes is None else [float(s) for s in anchor_sizes]
    if len(base) != ANCHOR_LEVELS or any(not s > 0 for s in base):
        raise ModelError(f"anchor_sizes must be {ANCHOR_LEVELS} positive sizes in pixels (small to large), got "
                         f"{anchor_sizes!r}")
    if len(strides) not in (1, ANCHOR_LEVELS):
        raise ModelError(f"a detector with anchors reads {ANCHOR_LEVELS} maps (one anchor size each) or 1 (all "
                         f"sizes on it), got strides {list(strides)}")
    scales = [tuple(b * 2 ** ((i - (per_level - 1) / 2) / per_level) for i in range(per_level)) for b in base]
    return tuple(scales) if len(strides) == ANCHOR_LEVELS else (tuple(v for level in scales for v in level),)


def _body(in_chans: int, width: int, strides: tuple[int, ...], backbone: str, backbone_kw: dict | None,
          depth: int = 1) -> nn.Module:
    """The maps at `strides`: the small residual backbone (`backbone="small"`, `depth` blocks per stage) or any
    cnnkit classifier or timm model (`timm/NAME`) by name, with its options."""
    if not isinstance(backbone, str):
        raise ModelError(f"backbone must be a model's name (small, a cnnkit classifier or timm/NAME), got {backbone!r}")
    if backbone == "small":
        if backbone_kw:
            raise ModelError("backbone_kw is for a named backbone; the small backbone takes width and depth")
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 8:
            raise ModelError(f"depth (residual blocks per stage of the small backbone) must be 1 to 8, got {depth!r}")
        if any(s not in BACKBONE_STRIDES for s in strides):
            raise ModelError(f"the small backbone's maps are at strides {', '.join(map(str, BACKBONE_STRIDES))}, "
                             f"got {list(strides)}")
        return Maps(in_chans, width, strides, depth)
    if depth != 1:
        raise ModelError("depth is the small backbone's; a named backbone takes its own options in backbone_kw")
    if backbone_kw is not None and not isinstance(backbone_kw, dict):
        raise ModelError(f"backbone_kw must be a mapping of the backbone's options, got {backbone_kw!r}")
    return ClassifierMaps(backbone, in_chans, strides, backbone_kw)


def _features(in_chans: int, width: int, fpn_channels: int, strides: tuple[int, ...], fpn: bool,
              backbone: str = "small", backbone_kw: dict | None = None, depth: int = 1) -> nn.Module:
    """The backbone's maps at `strides` through an FPN, or (`fpn=False`) one map projected to `fpn_channels`."""
    if not isinstance(fpn, bool):
        raise ModelError(f"fpn must be true or false, got {fpn!r}")
    if not fpn and len(strides) != 1:
        raise ModelError(f"without an FPN the head reads one map: give one stride (e.g. strides=[16]), got "
                         f"{list(strides)}")
    body = _body(in_chans, width, strides, backbone, backbone_kw, depth)
    return WithFPN(body, fpn_channels) if fpn else Projected(body, fpn_channels)


def _classification_head(in_channels: int, anchors: int, num_classes: int, gamma: float, alpha: float):  # noqa: ANN202
    """RetinaNet's classification subnet with the focal loss's `gamma` and `alpha` as given (torchvision's uses
    2 and 0.25; gamma 0 is alpha-balanced cross-entropy, the paper's baseline), computed for the whole batch at
    once rather than image by image."""
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead
    from torchvision.ops import sigmoid_focal_loss

    for name, v, ok in (("focal_gamma", gamma, 0 <= gamma), ("focal_alpha", alpha, 0 <= alpha <= 1)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok:
            raise ModelError(f"{name} must be a number ({'0 or more' if name == 'focal_gamma' else 'from 0 to 1'}), "
                             f"got {v!r}")

    class Head(RetinaNetClassificationHead):
        def compute_loss(self, targets, head_outputs, matched_idxs):  # noqa: ANN001, ANN201 (torchvision's)
            logits = head_outputs["cls_logits"]
            matched = torch.stack(matched_idxs)
            labels = nn.utils.rnn.pad_sequence([t["labels"] for t in targets], batch_first=True, padding_value=0)
            if labels.shape[1] == 0:
                labels = labels.new_zeros(len(targets), 1)
            foreground = matched >= 0
            classes = labels.gather(1, matched.clamp_min(0))
            target = torch.zeros_like(logits)
            target.scatter_(2, classes[..., None], foreground[..., None].to(logits.dtype))
            valid = (matched != self.BETWEEN_THRESHOLDS).to(logits.dtype)
            loss = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none").sum(-1)
            return ((loss * valid).sum(1) / foreground.sum(1).clamp_min(1)).mean()

    return Head(in_channels, anchors, num_classes)


@register_model("retinanet", min_size=32, paper="Lin et al. 2017, RetinaNet (focal loss) on an FPN (torchvision)",
                task="detect", default_input="1x96x96")
def retinanet_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16, fpn_channels: int = 64,
                    anchor_sizes=None, max_detections: int = 100, strides=STRIDES, fpn: bool = True,
                    focal_gamma: float = 2.0, focal_alpha: float = 0.25, box_loss: str = "l1",
                    backbone: str = "small", backbone_kw=None, depth: int = 1) -> nn.Module:
    """RetinaNet on an FPN over a small residual backbone's maps at `strides` (default 8, 16, 32); three octave
    scales and aspect ratios 0.5, 1, 2 per level around `anchor_sizes` (three sizes in pixels, one per level;
    default 16, 32, 64). `fpn=False` with one stride: a single-scale head on that map, every anchor size on it.
    `focal_gamma`, `focal_alpha`: the focal loss's (gamma 0: alpha-balanced cross-entropy). `box_loss`: the box
    regression's loss, one of torchvision's (l1, the paper's on encoded offsets; smooth_l1; giou, diou, ciou on the
    decoded boxes). `backbone`: any
    cnnkit classifier or `timm/NAME` instead of the small one (`backbone_kw`: its options); `depth`: the small
    one's residual blocks per stage."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    _check(width, fpn_channels, max_detections)
    if box_loss not in BOX_LOSSES:
        raise ModelError(f"box_loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}")
    strides = _strides(strides)
    sizes = _anchor_sizes(anchor_sizes, strides, per_level=3)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head_cls = _classification_head(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, focal_gamma,
                                    focal_alpha)
    net = RetinaNet(_features(in_chans, width, fpn_channels, strides, fpn, backbone, backbone_kw, depth),
                    num_classes, anchor_generator=anchors,
                    detections_per_img=max_detections)
    net.head.classification_head = head_cls
    net.head.regression_head._loss_type = box_loss  # torchvision's own switch (its retinanet_resnet50_fpn_v2: giou)
    return Detector(net, num_classes, max_detections)


@register_model("fcos", min_size=32, paper="Tian et al. 2019, FCOS (anchor-free) on an FPN (torchvision)",
                task="detect", default_input="1x96x96")
def fcos_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16, fpn_channels: int = 64,
               max_detections: int = 100, strides=STRIDES, backbone: str = "small", backbone_kw=None,
               depth: int = 1, center_radius: float = 6.0) -> nn.Module:
    """FCOS on an FPN over a small residual backbone's maps at `strides` (default 8, 16, 32; `backbone`: any cnnkit
    classifier or `timm/NAME` instead): one location per map position. A location inside an object's box is a
    positive sample when it lies within `center_radius` strides of the box's centre (the paper's centre sampling
    uses 1.5; the default 6 makes nearly every location inside these small objects positive)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    _check(width, fpn_channels, max_detections)
    strides = _strides(strides)
    if not (isinstance(center_radius, (int, float)) and not isinstance(center_radius, bool)
            and 0 < center_radius <= 64):
        raise ModelError(f"center_radius is in strides, more than 0 and at most 64, got {center_radius!r}")
    # torchvision's FCOS measures the centre radius in units of its locations' size, which is 4 strides here
    anchors = AnchorGenerator(tuple((4.0 * s,) for s in strides), ((1.0,),) * len(strides))  # FCOS: one per place
    net = FCOS(_features(in_chans, width, fpn_channels, strides, True, backbone, backbone_kw, depth), num_classes,
               anchor_generator=anchors, center_sampling_radius=center_radius / 4.0,
               detections_per_img=max_detections)
    return Detector(net, num_classes, max_detections)


@register_model("ssd", min_size=32, paper="Liu et al. 2016, SSD (multi-scale feature maps, default boxes; "
                "torchvision)", task="detect", default_input="1x96x96")
def ssd_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16,
              max_detections: int = 100, strides=BACKBONE_STRIDES, backbone: str = "small", backbone_kw=None,
              lite: bool = False, depth: int = 1) -> nn.Module:
    """SSD on a small residual backbone: predictions from its maps at `strides` (default 4, 8, 16 and 32), default
    boxes from 0.15 to 0.9 of the image side spread over the maps, aspect ratios 1, 2 (and 3 on the inner maps;
    a single map has 1, 2 and 3). `backbone`: any cnnkit classifier or `timm/NAME` instead of the small one;
    `lite`: SSDlite's head (depthwise-separable predictions, MobileNetV2's paper) instead of SSD's 3×3 convolutions."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead
    from torchvision.models.detection.ssdlite import SSDLiteHead

    _check(width, 1, max_detections)
    strides = _strides(strides)
    size = tuple(img_size) if img_size is not None else (96, 96)
    if not isinstance(lite, bool):
        raise ModelError(f"lite must be true or false, got {lite!r}")
    body = _body(in_chans, width, strides, backbone, backbone_kw, depth)
    ratios = [[2, 3]] if len(strides) == 1 else [[2]] + [[2, 3]] * (len(strides) - 2) + [[2]]
    anchors = DefaultBoxGenerator(ratios, min_ratio=0.15, max_ratio=0.9)
    head = (SSDLiteHead(body.channels, anchors.num_anchors_per_location(), num_classes, nn.BatchNorm2d) if lite
            else SSDHead(body.channels, anchors.num_anchors_per_location(), num_classes))
    net = SSD(body, anchors, size, num_classes, head=head, detections_per_img=max_detections)
    return Detector(net, num_classes, max_detections, exports_any_size=False)


@register_model("fasterrcnn", min_size=32, paper="Ren et al. 2015, Faster R-CNN with an FPN (torchvision)",
                task="detect", default_input="1x96x96")
def fasterrcnn_small(num_classes: int = 11, in_chans: int = 1, img_size=None, width: int = 16,
                     fpn_channels: int = 64, anchor_sizes=None, max_detections: int = 100, strides=STRIDES,
                     backbone: str = "small", backbone_kw=None, depth: int = 1) -> nn.Module:
    """Faster R-CNN on an FPN over a small residual backbone's maps at `strides` (default 8, 16, 32): region
    proposals from one anchor size per level (`anchor_sizes`, default 16, 32, 64) and ratios 0.5, 1, 2; RoIAlign
    of 7×7, a two-layer box head of 256."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    _check(width, fpn_channels, max_detections)
    strides = _strides(strides)
    sizes = _anchor_sizes(anchor_sizes, strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    pool = MultiScaleRoIAlign([str(i) for i in range(len(strides))], 7, 2)
    net = FasterRCNN(_features(in_chans, width, fpn_channels, strides, True, backbone, backbone_kw, depth),
                     rpn_anchor_generator=anchors,
                     box_roi_pool=pool, box_head=TwoMLPHead(fpn_channels * 49, 256),
                     box_predictor=FastRCNNPredictor(256, num_classes), rpn_pre_nms_top_n_train=600,
                     rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                     box_detections_per_img=max_detections)
    return Detector(net, num_classes, max_detections)
