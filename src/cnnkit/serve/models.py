"""A model as the service holds it: the loaded artifact, its card, and the functions its batchers run."""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.artifacts import LoadedCheckpoint, is_exported, load
from cnnkit.data import Normalize
from cnnkit.errors import ConfigError, ExplainError
from cnnkit.runtime import autocast, autocast_dtype, faster_inference_layout, precision_name
from cnnkit.tasks import get_task

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_artifact(spec: str) -> tuple[str, Path]:
    """'NAME=PATH' or 'PATH' (named after the run directory or the file's stem)."""
    name, sep, path = spec.partition("=")
    if not sep or "/" in name or not name:
        path, name = spec, ""
    p = Path(path).expanduser()
    if not name:
        name = p.name if p.is_dir() else p.name.split(".")[0]
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip("-.") or "model"
    if not NAME_RE.match(name):
        raise ConfigError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (64 at most)")
    return name, p


class ServedModel:
    """One artifact, loaded once, warmed, with its model card. A detection model answers the detections scoring
    at least `score_threshold` (default: `cnnkit predict`'s), which a checkpoint's detector then keeps too, and
    suppresses at `nms_iou` (a checkpoint's only: an exported graph has its suppression inside)."""

    def __init__(self, name: str, path: str | os.PathLike, device: torch.device, amp: str = "off",
                 measure_layout: bool = True, score_threshold: float | None = None, nms_iou: float | None = None):
        self.name, self.device = name, device
        self.ckpt: LoadedCheckpoint = load(path)
        self.task = get_task(self.ckpt.meta.get("task"))  # what its outputs mean, and what an answer looks like
        self.task.check_available("serve")
        # the image stretched whole to the input size, so that every pixel maps back: masks, boxes
        self.stretched = self.task.name in ("segment", "detect")
        self.restores = self.task.name == "restore"  # each image at its own size, answered as an image
        self.score_threshold = self._detection_settings(score_threshold, nms_iou)
        self.model = self.ckpt.model.to(device).eval()
        self.dtype = autocast_dtype(amp, device)
        self.explainable = not is_exported(self.model)
        self.channels_last = False
        if self.explainable and measure_layout:  # a PyTorch model: the faster layout here, in the precision it
            # will run in, measured on a batch of 8
            self.channels_last = faster_inference_layout(self.model, self.input_shape, 8, device, dtype=self.dtype)
        self.normalize = Normalize(*self.ckpt.normalization, device, channels_last=self.channels_last)
        self.card = self._card()
        # the one thread this model runs in (set by the app while it runs): see Batcher
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None

    def _detection_settings(self, score_threshold: float | None, nms_iou: float | None) -> float | None:
        """A detection model's answer threshold, its checkpoint's detector set to it and to `nms_iou` (as `cnnkit
        predict` sets them); None for another task."""
        if self.task.name != "detect":
            return None
        from cnnkit.evaluate.boxes import DEFAULT_SCORE_THRESHOLD

        model = self.ckpt.model
        if hasattr(model, "set_postprocess"):
            model.set_postprocess(score_threshold=score_threshold, nms_iou=nms_iou)
        elif nms_iou is not None:
            raise ConfigError(f"--nms-iou sets a checkpoint detector's suppression; {self.name!r} is an exported "
                              f"graph with its suppression inside (export it again with --nms-iou)")
        return DEFAULT_SCORE_THRESHOLD if score_threshold is None else float(score_threshold)

    @property
    def classes(self) -> list[str]:
        return self.ckpt.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.ckpt.in_chans, *self.ckpt.img_size)

    def _card(self) -> dict[str, Any]:
        c, h, w = self.input_shape
        mean, std = self.ckpt.normalization
        meta = self.ckpt.meta
        # the artifact by its file name only: the card is public, and a path shows this machine's folders
        card: dict[str, Any] = {
            "name": self.name, "artifact": self.ckpt.path.name, "kind": _kind(self.ckpt.path), "task": self.task.name,
            "architecture": meta.get("model"), "classes": self.classes,
            "input": {"channels": c, "height": h, "width": w,
                      "dtype": "uint8 pixels, resized (stretched) whole; " + (
                          "masks answered at the image's size" if self.task.name == "segment" else
                          "boxes answered in the image's pixels") if self.stretched else
                      "uint8 pixels at the image's own size, one image per request; answered as a PNG" if
                      self.restores else "uint8 pixels, resized and centre-cropped",
                      "normalization": {"mean": mean, "std": std}},
            "params": meta.get("params"), "macs": meta.get("macs"), "layers": [], "explainable": self.explainable,
            "precision": precision_name(self.dtype),
            "layout": "channels-last" if self.channels_last else "NCHW",
        }
        if self.task.name == "detect":
            card["detection"] = self._detection_card()
        if self.restores:
            card.update(self.task.export_meta(self.model))
        if self.explainable:
            from cnnkit.models.card import count_macs, layer_shapes

            x = torch.zeros(1, c, h, w, device=self.device)
            card["params"] = card["params"] or sum(p.numel() for p in self.model.parameters())
            card["macs"] = card["macs"] or count_macs(self.model, x)
            card["layers"] = layer_shapes(self.model, x)
        return card

    def _detection_card(self) -> dict[str, Any]:
        """What a detection model answers: the detections scoring at least `score_threshold`, after the
        detector's own threshold and NMS; an exported graph's batch."""
        meta = self.ckpt.meta
        own = self.model.postprocess if hasattr(self.model, "postprocess") else {
            k: meta[k] for k in ("score_threshold", "nms_iou") if k in meta}
        return {"score_threshold": self.score_threshold, "detector": own,
                "max_detections": meta.get("max_detections", (meta.get("model_kwargs") or {}).get("max_detections",
                                                                                                  100)),
                "graph_batch": meta.get("batch")}  # 1: an exported graph run image by image within a batch

    def box_answers(self, detections: torch.Tensor, sizes: list[tuple[int, int]],
                    names: list[str]) -> list[dict[str, Any]]:
        """A detection model's answer per image, as `cnnkit predict --json` gives it: the image's size and its
        detections scoring at least `score_threshold`, best first, boxes scaled back to the image's pixels."""
        from cnnkit.evaluate.boxes import scaled_answer

        size = self.ckpt.img_size
        return [{"image": name, "top": scaled_answer(d, self.classes, size, hw, self.score_threshold),
                 "height": hw[0], "width": hw[1]} for d, hw, name in zip(detections, sizes, names)]

    def warm(self, max_batch: int = 32) -> None:
        """One batch run before the service says it is ready; a program cnnkit compiles (an int8 `.pt2`) is
        compiled for every batch size its batcher can form (powers of two up to `max_batch`'s), so that no
        request waits for a compile (a restoration model's images keep their own sizes: compiled as they come).
        The seconds it took are on the model card (`compile_seconds`)."""
        from cnnkit.artifacts.programs import BUCKETS, CompiledProgram, bucket

        x = torch.zeros(2, *self.input_shape, dtype=torch.uint8)
        self.predict_batch(x, [None], [2])
        if isinstance(self.model, CompiledProgram) and not self.restores:
            sizes = tuple(b for b in BUCKETS if b <= bucket(min(max_batch, BUCKETS[-1])))
            example = self.normalize(torch.zeros(1, *self.input_shape, dtype=torch.uint8, device=self.device))
            self.card["compile_seconds"] = round(self.model.warm(sizes, example), 2)

    def predict_batch(self, x: torch.Tensor, _args: list[Any], sizes: list[int]) -> list[torch.Tensor]:
        """The task's outputs for a uint8 batch (classification: class probabilities; restoration: the restored
        images, uint8, in tiles as `cnnkit predict` restores them), split back per request."""
        with torch.inference_mode(), autocast(self.device, self.dtype):
            if self.restores:
                from cnnkit.evaluate.restore import restore_pixels

                outputs = restore_pixels(self.model, x.to(self.device), self.input_shape[0]).cpu()
            else:
                outputs = self.task.infer(self.model, self.normalize(x)).cpu()
        return list(outputs.split(sizes))

    def mask_answers(self, probs: torch.Tensor, sizes: list[tuple[int, int]], names: list[str],
                     topk: int) -> list[dict[str, Any]]:
        """A segmentation model's answer per image from its per-pixel probabilities at the input size: the mask
        at the image's own size as a palette PNG (base64; the run's palette), each class's area, the size, and
        the `topk` largest classes as every task's answer gives them."""
        import base64

        from cnnkit.evaluate.masks import class_areas, mask_at, mask_png
        from cnnkit.tasks.segment import run_palette

        palette = run_palette(self.ckpt.meta, len(self.classes))
        out = []
        for p, (h, w), name in zip(probs, sizes, names):
            mask = mask_at(p, (h, w))
            areas = class_areas(mask, self.classes)
            out.append({"image": name, "top": [{"class": c, "area": a["share"]} for c, a in areas.items()][:topk],
                        "mask": base64.b64encode(mask_png(mask, palette)).decode(), "areas": areas,
                        "height": h, "width": w})
        return out

    def explain_batch(self, x: torch.Tensor, args: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
        """Explanations of a uint8 batch; every request in the batch shares the method and layer (the batcher
        is per method and layer), each has its own target (None: the predicted class)."""
        from cnnkit.explain.cam import explain

        method, layer = args[0]["method"], args[0]["layer"]
        inputs = self.normalize(x)
        with torch.no_grad():
            probs = torch.softmax(self.model(inputs).float(), 1)
        pred = probs.argmax(1).tolist()
        wanted = [a["target"] for a, n in zip(args, sizes) for _ in range(n)]  # one per image
        targets = [p if t is None else t for p, t in zip(pred, wanted)]
        e = explain(self.model, inputs, torch.tensor(targets, device=inputs.device), method=method, layer=layer)
        raw = e.raw.detach().float().cpu()
        if raw.ndim == 4:  # gradient methods: input-shaped attributions; CAM methods are B×h×w already
            raw = raw.abs().amax(1)
        raw = raw.clamp_min(0)
        peak = raw.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        out = []
        for i in range(len(x)):
            out.append({"method": method, "layer": e.layer, "target": targets[i], "predicted": pred[i],
                        "probabilities": probs[i].cpu(), "map": e.maps[i].detach().float().cpu(),
                        "layer_map": raw[i] / peak[i], "zero_map": i in e.zero_maps})
        starts = np.cumsum([0] + sizes[:-1])
        return [out[s:s + n] for s, n in zip(starts, sizes)]

    def check_layer(self, layer: str) -> str:
        """The layer a CAM method would use (ExplainError listing the valid ones when unknown)."""
        from cnnkit.explain.cam import resolve_layer

        if not self.explainable:
            raise ExplainError(f"model {self.name!r} is an exported artifact ({_kind(self.ckpt.path)}); explanations "
                               f"need its training checkpoint: serve the run directory or .safetensors file")
        return resolve_layer(self.model, layer)[0]


def _kind(path: Path) -> str:
    return {".onnx": "onnx", ".pt2": "torch.export"}.get(path.suffix, "checkpoint")


def overlay_png(image: torch.Tensor, heat: torch.Tensor) -> bytes:
    """A PNG of the model-input image (uint8 C×H×W) with the [0, 1] map over it in the jet colour map."""
    from matplotlib import colormaps
    from PIL import Image

    base = image.float().div(255)
    base = base.expand(3, -1, -1) if base.shape[0] == 1 else base[:3]
    colour = torch.from_numpy(colormaps["jet"](heat.clamp(0, 1).numpy())[..., :3]).permute(2, 0, 1).float()
    mixed = (0.5 * base + 0.5 * colour).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(mixed, "RGB").save(buf, format="PNG")
    return buf.getvalue()
