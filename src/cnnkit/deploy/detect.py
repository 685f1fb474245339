"""Detectors as ONNX with their post-processing inside: the graph takes N×C×H×W normalized images and gives
the detector's N×D×6 rows (x0, y0, x1, y1, score, class; class -1 pads), box decoding, score threshold, NMS
(ONNX NonMaxSuppression) and top-k included, so ONNX Runtime answers what PyTorch answers.

The exporter. torch.export (and so `torch.onnx.export(dynamo=True)`) cannot capture torchvision's per-image
post-processing (data-dependent shapes, Python loops over the images); torchvision's detectors are written for
torch.onnx's TorchScript-based exporter, which traces them (`dynamo=False`, opset `OPSET`). Tracing unrolls
the loop over the batch's images, so the graph takes one image per run (its batch is fixed at 1: cnnkit's ONNX
runner runs a larger batch image by image, see `cnnkit.artifacts.exported.OnnxModel`); its height and width
stay dynamic where the detector computes its anchors from the input's size at run time (RetinaNet, FCOS,
Faster R-CNN), and are the run's where it does not (SSD's default boxes: `Detector.exports_any_size`).

Parity. Rows of equal score may come in another order and a detection scoring within rounding of a threshold
may be kept by one runtime only, so the outputs are compared as detections (`match_detections`), not as
tensors: every detection of each runtime scoring clearly above the model's score threshold must have one of
the other's of the same class, with a box of IoU at least MIN_IOU and a score within SCORE_TOLERANCE."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cnnkit.artifacts.exported import onnx_runner, onnx_session

OPSET = 17  # NonMaxSuppression needs 10, torchvision's RoIAlign 16 for its aligned form
EXPORTER = f"torch.onnx.export(dynamo=False), TorchScript-based, opset {OPSET}"
MIN_IOU = 0.99  # the least IoU of a detection's box with its counterpart's
SCORE_TOLERANCE = 1e-3  # the largest score difference of a detection and its counterpart
CUT_MARGIN = 1e-4  # scores this close to a cut (the score threshold, the top-D limit) may fall either side
SAME_BOX = 1e-2  # pixels: boxes this close are the same, however small (a tiny box's IoU magnifies rounding)


def write_detector_onnx(model: nn.Module, example: torch.Tensor, tmp: str,
                        task: Any = None) -> Callable[[torch.Tensor], np.ndarray]:
    """Write the detector `model` to `tmp` as ONNX through the TorchScript-based exporter (input `images`, one
    image per run, a dynamic height and width where `model.exports_any_size`; output `detections`), and return
    a runner of the written file that takes any batch, image by image (a `Writer` for `export_artifact`)."""
    axes = {2: "height", 3: "width"} if getattr(model, "exports_any_size", True) else {}
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints the graph when it fails
        torch.onnx.export(model, (example[:1],), tmp, dynamo=False, opset_version=OPSET, input_names=["images"],
                          output_names=["detections"], dynamic_axes={"images": axes} if axes else None)
    run = onnx_runner(onnx_session(tmp))
    return lambda x: run(x.numpy())


def _pairs(a: torch.Tensor, b: torch.Tensor, min_iou: float, score_tol: float) -> tuple[torch.Tensor, ...]:
    """For rows `a` (n×6) and `b` (m×6): which pairs match (n×m), their boxes' IoU (counted as 1 for boxes the
    same to SAME_BOX pixels whose IoU says otherwise: boxes too small for it, or of no area, where it is
    undefined), and their largest difference of a coordinate or the score."""
    from torchvision.ops import box_iou

    iou = box_iou(a[:, :4], b[:, :4]).nan_to_num(0.0)
    same_box = (a[:, None, :4] - b[None, :, :4]).abs().amax(-1) <= SAME_BOX
    iou = torch.where(same_box & (iou < min_iou), torch.ones_like(iou), iou)
    diff = (a[:, None, :5] - b[None, :, :5]).abs().amax(-1)
    ok = (a[:, None, 5] == b[None, :, 5]) & ((a[:, None, 4] - b[None, :, 4]).abs() <= score_tol) & (iou >= min_iou)
    return ok, iou, diff


def match_detections(outputs: torch.Tensor, reference: torch.Tensor, min_score: float = 0.0,
                     min_iou: float = MIN_IOU, score_tol: float = SCORE_TOLERANCE,
                     margin: float = CUT_MARGIN) -> dict[str, float]:
    """How far two runtimes' detections (N×D×6 each, on the same images) agree, both ways: each detection of
    either scoring at least `min_score` + `margin` (and, where the other's list is full, at least its lowest
    score + `margin`: below, it may have been cut by the top-D limit) must have one of the other's of the
    same class, box IoU ≥ `min_iou` and score within `score_tol`. Returns `detection_agreement` (the share of
    those that have one; 1 when there are none), `detections_compared` (how many there were), the lowest IoU of
    a matched pair and its largest score difference, and the largest difference of a matched pair's coordinates
    or score (`max_abs_diff`) with the reference's largest coordinate (`max_abs_output`) for scale."""
    got, want = outputs.detach().float().cpu(), reference.detach().float().cpu()
    compared = matched = 0
    worst_diff, worst_score, worst_iou, scale = 0.0, 0.0, 1.0, 0.0
    for a_all, b_all in zip(got, want):
        a_all, b_all = a_all[a_all[:, 5] >= 0], b_all[b_all[:, 5] >= 0]
        full = len(a_all) == got.shape[1], len(b_all) == want.shape[1]
        if len(b_all):
            scale = max(scale, float(b_all[:, :4].abs().max()))
        for (a, b), other_full in (((a_all, b_all), full[1]), ((b_all, a_all), full[0])):
            floor = min_score + margin
            if other_full and len(b):
                floor = max(floor, float(b[:, 4].min()) + margin)
            a = a[a[:, 4] >= floor]
            compared += len(a)
            if not len(a) or not len(b):
                continue
            ok, iou, diff = _pairs(a, b, min_iou, score_tol)
            hit = ok.any(1)
            matched += int(hit.sum())
            if bool(hit.any()):
                rows = torch.nonzero(hit).flatten()
                best = torch.where(ok, iou, torch.full_like(iou, -1.0)).argmax(1)[rows]
                worst_iou = min(worst_iou, float(iou[rows, best].min()))
                worst_diff = max(worst_diff, float(diff[rows, best].max()))
                worst_score = max(worst_score, float((a[rows, 4] - b[best, 4]).abs().max()))
    return {"detection_agreement": matched / compared if compared else 1.0, "detections_compared": compared,
            "min_matched_iou": worst_iou, "max_score_diff": worst_score, "max_abs_diff": worst_diff,
            "max_abs_output": scale}


def detector_parity(min_score: float) -> Callable[[torch.Tensor, torch.Tensor, Any], dict[str, float]]:
    """A comparison for `export_artifact`: `match_detections` above `min_score` (the model's score threshold)."""
    return lambda got, want, task: match_detections(got, want, min_score)


def fold_detector(model: nn.Module, extra: dict[str, Any]) -> nn.Module:
    """A copy of the detector with its backbone's conv→BN pairs folded (torch.fx traces the backbone's body
    alone: the pyramid's dict handling and the detector's post-processing are beyond it), else the detector
    itself; `extra` records which and why."""
    import copy

    from cnnkit.errors import ModelError
    from cnnkit.models.fold import fold_batchnorm

    holder = model.net.backbone
    body = getattr(holder, "body", holder)
    try:
        folded_body, extra["bn_folded"] = fold_batchnorm(body)
    except ModelError as e:
        extra["bn_folded"], extra["bn_not_folded_because"] = 0, str(e)
        return model
    folded = copy.deepcopy(model)
    if body is holder:
        folded.net.backbone = folded_body
    else:
        folded.net.backbone.body = folded_body
    return folded.eval()


def detection_settings(model: nn.Module) -> dict[str, Any]:
    """What a detector's ONNX sidecar records of its export: the exporter, opset and batch, its threshold, NMS
    IoU and most detections, and the parity rule."""
    return {"exporter": EXPORTER, "opset": OPSET, "batch": 1, **model.postprocess,
            "max_detections": model.max_detections,
            "parity_rule": f"same class, box IoU >= {MIN_IOU}, score within {SCORE_TOLERANCE}"}
