"""The browser explorer's API and static export: a model's graph, every layer's activations for one image (top-k
channels per layer, paged), one layer's numbers at one channel, class explanations with deletion and insertion
scores, and a gallery of the run's test images. The page itself lives in `cnnkit/serve/explorer/`.

Every answer is keyed by a path relative to `/v1/models/{name}/explore/` (for example `images/ID/nodes/N?page=1
&topk=8`); the static export stores the same answers under the same keys, so the page reads either."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from cnnkit.errors import CnnkitError, ExplainError, error_line

PAGE_DIR = Path(__file__).parent / "explorer"
WHY_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam", "lrp", "saliency")
RESTORE_WHY = ("saliency", "integrated_gradients")  # which input pixels an output patch depends on
DETECTIONS = "__detections__"  # a detector's detections among an image's activations (no layer has this id)
EXPLORE_SIDE = 128  # a restoration model's input is explored at most this large (uploads are shrunk to it)
GALLERY_CROP = 96  # the clean side of a restoration gallery image, before it is degraded


DEFAULT_TOPK = 8
ORDERS = ("activity", "index")  # a layer's channels listed most active first, or by their number
MAX_VECTOR = 4096  # a flat layer wider than this is sent as its first values only


def methods_of(task: str) -> tuple[str, ...]:
    """The explanation methods "why" offers for a model of `task` (`cnnkit explain`'s for that task)."""
    if task == "segment":
        from cnnkit.explain.cam import SEGMENT_METHODS

        return SEGMENT_METHODS
    if task == "detect":
        from cnnkit.explain.detect import DETECT_METHODS

        return DETECT_METHODS
    return RESTORE_WHY if task == "restore" else WHY_METHODS


def _map_answer(maps: torch.Tensor, zero: bool) -> dict[str, Any]:
    """A 1×H×W explanation map in [0, 1] as the page draws it: 8 bits, base64."""
    q = (maps[0].detach().float().cpu().clamp(0, 1) * 255).round().byte()
    return {"height": maps.shape[1], "width": maps.shape[2], "map": base64.b64encode(q.numpy().tobytes()).decode(),
            "zero_map": bool(zero)}


def _curve_answer(scores: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One image's deletion and insertion areas and curves (`explain.metrics.deletion_insertion`'s)."""
    return {"deletion": float(scores["deletion"][0]), "insertion": float(scores["insertion"][0]),
            "deletion_curve": [round(float(v), 4) for v in scores["deletion_curve"][0]],
            "insertion_curve": [round(float(v), 4) for v in scores["insertion_curve"][0]]}


class _PatchMean(torch.nn.Module):
    """A restoration network seen as a one-output model: the mean of its output over a box (x0, y0, x1, y1), so that
    the gradient methods explain which input pixels that patch of the restored image depends on."""

    def __init__(self, net: torch.nn.Module, box: tuple[int, int, int, int]):
        super().__init__()
        self.net, self.box = net, box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = self.box
        return self.net(x)[..., y0:y1, x0:x1].mean((1, 2, 3))[:, None]


class NotFound(CnnkitError):
    """An image id, layer or channel the explorer does not know (HTTP 404)."""


def f32(t: torch.Tensor) -> str:
    """Little-endian float32 bytes, base64: exact values for the elastic and formula views."""
    return base64.b64encode(t.detach().float().contiguous().cpu().numpy().astype("<f4").tobytes()).decode()


def q8(t: torch.Tensor) -> tuple[str, list[float], list[float]]:
    """K×H×W maps as uint8 per map (0 = its min, 255 = its max), base64, with each map's min and max."""
    t = t.detach().float().reshape(len(t), -1)
    lo, hi = t.min(1).values, t.max(1).values
    q = ((t - lo[:, None]) / (hi - lo).clamp_min(1e-12)[:, None] * 255).round().clamp(0, 255).byte()
    return base64.b64encode(q.numpy().tobytes()).decode(), lo.tolist(), hi.tolist()


def png(image: torch.Tensor) -> str:
    """A uint8 C×H×W image as a base64 PNG."""
    from PIL import Image

    a = image.cpu().numpy()
    im = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a[:3].transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _encode(value: Any) -> Any:
    """Tensors in a detail answer as float32 base64 with their shape; the rest as it is."""
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "f32": f32(value)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


class Explorer:
    """The explorer's state for one served model: the traced graph, recent images and their activations."""

    def __init__(self, m, keep_images: int = 256, keep_activations: int = 4):
        from cnnkit.explain.inside import Inside

        if not m.explainable:
            raise ExplainError(f"model {m.name!r} is an exported artifact; the explorer needs its training "
                               f"checkpoint: serve the run directory or .safetensors file")
        self.m = m
        self.task = m.task.name  # what the output column shows: class scores, a mask, boxes or an image
        c, h, w = m.input_shape
        self.model = m.model
        # a detector is shown to the end of its backbone (and feature pyramid): its head's anchors, box regression
        # and non-maximum suppression are not layers of maps; the boxes it gives are the output column
        shown = self.model.net.backbone if self.task == "detect" else self.model
        self.inside = Inside(shown, torch.zeros(1, c, h, w, device=m.device))
        self.images: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.pinned: dict[str, torch.Tensor] = {}  # gallery images: never evicted
        self.acts: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.keep_images, self.keep_activations = keep_images, keep_activations
        self.lock = threading.Lock()
        self._gallery: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------- images
    def add_image(self, x: torch.Tensor, pin: bool = False) -> str:
        """Remember a uint8 C×H×W model input; its id is a hash of its pixels."""
        key = hashlib.sha1(x.cpu().numpy().tobytes()).hexdigest()[:16]
        with self.lock:
            if pin:
                self.pinned[key] = x
            else:
                self.images[key] = x
                self.images.move_to_end(key)
                while len(self.images) > self.keep_images:
                    self.images.popitem(last=False)
        return key

    def image(self, key: str) -> torch.Tensor:
        with self.lock:
            x = self.pinned.get(key)
            if x is None:
                x = self.images.get(key)
        if x is None:
            raise NotFound(f"unknown image {key!r}: the explorer keeps the last {self.keep_images} uploads; "
                           f"upload it again")
        return x

    def activations(self, key: str) -> dict[str, torch.Tensor]:
        with self.lock:
            if key in self.acts:
                self.acts.move_to_end(key)
                return self.acts[key]
        x = self.m.normalize(self.image(key)[None])
        acts = self.inside.run(x.contiguous())
        if self.task == "detect":  # the detections (D×6: x0, y0, x1, y1, score, class; class -1 pads)
            with torch.no_grad():
                acts[DETECTIONS] = self.model(x.contiguous())[0].float()
        with self.lock:
            self.acts[key] = acts
            while len(self.acts) > self.keep_activations:
                self.acts.popitem(last=False)
        return acts

    # ----------------------------------------------------------------------------------------- answers
    def graph(self) -> dict[str, Any]:
        ins = self.inside
        return {"model": self.m.name, "architecture": self.m.card.get("architecture"), "traced": ins.traced,
                "note": "" if ins.traced else (f"torch.fx could not trace this model ({ins.trace_error}); the "
                                               f"layers are shown in the order they run, joins unknown"),
                "classes": self.m.classes, "nodes": [n.as_dict() for n in ins.nodes], "output": ins.output_id,
                "task": self.task, "methods": list(methods_of(self.task)),
                **({"palette": self._palette()} if self.task == "segment" else {})}

    def _scale(self) -> int:
        from cnnkit.tasks.restore import restoration_net

        return int(restoration_net(self.model).scale)

    def _palette(self) -> list[list[int]]:
        from cnnkit.tasks.segment import run_palette

        return [list(c) for c in run_palette(self.m.ckpt.meta, len(self.m.classes))]

    def overview(self, key: str, topk: int = DEFAULT_TOPK, order: str = "activity") -> dict[str, Any]:
        t = time.perf_counter()
        x = self.image(key)
        acts = self.activations(key)
        out = self._answer(acts)
        normalized = self.m.normalize(x[None])[0].float()
        mean, std = self.m.ckpt.normalization
        nodes = {n.id: self._node_page(acts[n.id], 0, topk, order) for n in self.inside.nodes}
        finite = [v for d in nodes.values() for v in (d["min"], d["max"])]
        return {"image": key, "model": self.m.name, "topk": topk, "order": order,
                "input": {"png": png(x), "channels": x.shape[0], "height": x.shape[1], "width": x.shape[2],
                          "mean": mean, "std": std, "min": float(normalized.min()), "max": float(normalized.max())},
                **self._output(out), "global": {"min": min(finite), "max": max(finite)}, "nodes": nodes,
                "seconds": time.perf_counter() - t}

    def _answer(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's own output for an image: the last layer's, or a detector's detections."""
        return acts[DETECTIONS] if self.task == "detect" else acts[self.inside.output_id]

    def _predicted(self, out: torch.Tensor) -> int:
        """The class "why" explains first: a classifier's top class, a segmentation network's class on most pixels
        (background only where nothing else is)."""
        if self.task == "segment":
            from cnnkit.explain.cam import largest_class

            return int(largest_class(out[None])[0])
        return int(out.flatten().argmax())

    def _output(self, out: torch.Tensor) -> dict[str, Any]:
        """What the network answers for the image. A classifier: logits, probabilities, the predicted class. A
        segmentation network: the predicted mask (a palette PNG, as `cnnkit predict` writes it), each class's
        share of the pixels as the scores, and the class on most pixels (background only where nothing else
        is) as the prediction, the class "why" explains first."""
        if self.task == "detect":  # the boxes kept by the detector's score threshold and NMS, best first
            rows = out[out[:, 5] >= 0]
            h, w = self.m.input_shape[1:]
            return {"probabilities": [], "predicted": 0 if len(rows) else None,
                    "output": {"kind": "boxes", "height": h, "width": w,
                               "detections": [[round(float(v), 2) for v in r[:4]] + [round(float(r[4]), 5), int(r[5])]
                                              for r in rows]}}
        if self.task == "restore":  # the restored image, clipped to 0..1 as a saved image is
            pixels = out.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
            return {"probabilities": [], "predicted": None,
                    "output": {"kind": "image", "height": pixels.shape[1], "width": pixels.shape[2],
                               "scale": self._scale(), "png": png(pixels)}}
        if self.task != "segment":
            logits = out.flatten()
            probs = torch.softmax(logits, 0)
            return {"logits": logits.tolist(), "probabilities": probs.tolist(), "predicted": int(probs.argmax())}
        from cnnkit.evaluate.masks import mask_png

        mask = out.argmax(0).to(torch.uint8)
        shares = torch.bincount(mask.flatten().long(), minlength=out.shape[0]).float() / mask.numel()
        return {"probabilities": shares.tolist(), "predicted": self._predicted(out),
                "output": {"kind": "mask", "height": mask.shape[0], "width": mask.shape[1],
                           "png": base64.b64encode(mask_png(mask.cpu(), [tuple(c) for c in self._palette()])).decode()}}

    def node_page(self, key: str, node: str, page: int, topk: int, order: str = "activity") -> dict[str, Any]:
        if node not in self.inside.by_id:
            raise NotFound(f"no layer {node!r} in {self.m.name}")
        return self._node_page(self.activations(key)[node], page, topk, order)

    @staticmethod
    def _node_page(a: torch.Tensor, page: int, topk: int, order_by: str = "activity") -> dict[str, Any]:
        if a.ndim == 1 or (a.ndim == 3 and a.shape[1:] == (1, 1)):  # a vector: every value (up to a bound)
            v = a.flatten()
            return {"kind": "vector", "size": len(v), "values": [round(float(f), 6) for f in v[:MAX_VECTOR]],
                    "min": float(v.min()), "max": float(v.max())}
        if a.ndim == 2:  # tokens × features: one map
            a = a[None]
        if a.ndim != 3:
            a = a.reshape(a.shape[0], a.shape[1], -1)
        channels = a.shape[0]
        order = (torch.arange(channels) if order_by == "index"  # a row is one channel in every column
                 else a.flatten(1).mean(1).argsort(descending=True, stable=True))  # most active first
        pages = max(1, -(-channels // topk))
        if not 0 <= page < pages:
            raise NotFound(f"page {page} does not exist: {pages} pages of {topk} channels")
        shown = order[page * topk:(page + 1) * topk]
        data, lo, hi = q8(a[shown])
        return {"kind": "maps", "channels": channels, "height": a.shape[1], "width": a.shape[2], "page": page,
                "pages": pages, "topk": topk, "order": shown.tolist(), "data": data, "lo": lo, "hi": hi,
                "min": float(a.min()), "max": float(a.max())}

    def detail(self, key: str, node: str, channel: int) -> dict[str, Any]:
        from cnnkit.explain.inside import layer_terms

        if node not in self.inside.by_id:
            raise NotFound(f"no layer {node!r} in {self.m.name}")
        try:
            with torch.no_grad():
                return _encode(layer_terms(self.inside, self.activations(key), node, channel))
        except ExplainError as e:
            raise NotFound(error_line(e)) from None

    def why(self, key: str, target: int | None, method: str, region: str | None = None,
            detection: int | None = None) -> dict[str, Any]:
        """One explanation map of `target` (default the predicted class) and its deletion and insertion
        scores (probability of the class as the most relevant pixels are removed / revealed; area under
        the curve: lower deletion and higher insertion are better). A restoration model: the map of the input
        pixels that a box of the restored image (`region`, "x0,y0,x1,y1" in its pixels; default a box at its
        centre) depends on, by `method` (saliency or integrated gradients). A detector: its `detection`-th
        detection (best first; of class `target` if given) by LayerCAM or D-RISE, the curves tracking the
        similarity (IoU × same class × score) of the changed image's detections with it."""
        from cnnkit.explain.cam import explain
        from cnnkit.explain.metrics import deletion_insertion

        t = time.perf_counter()
        x = self.m.normalize(self.image(key)[None]).float()
        out = self._answer(self.activations(key))
        if self.task == "restore":
            return {**self._why_patch(x, out, method, region), "seconds": time.perf_counter() - t}
        if self.task == "detect":
            return {**self._why_detection(x, out, method, target, detection), "seconds": time.perf_counter() - t}
        target = self._predicted(out) if target is None else target
        if not 0 <= target < len(self.m.classes):
            raise NotFound(f"class {target} does not exist: {len(self.m.classes)} classes")
        region, score = None, None
        if self.task == "segment":  # Seg-Grad-CAM over the pixels predicted as the class, scored over them
            from cnnkit.explain.cam import predicted_region
            from cnnkit.explain.segment import region_probability

            if method not in methods_of(self.task):
                return {"method": method, "target": target, "error": f"{method} explains a classifier; a "
                        f"segmentation model is explained by {' or '.join(methods_of(self.task))} (Seg-Grad-CAM)"}
            region = predicted_region(out[None].float(), torch.tensor([target], device=out.device))
            if not region.sum():
                return {"method": method, "target": target, "error": f"no pixel is predicted as "
                        f"{self.m.classes[target]!r}: there is no region to explain it over"}
            score = region_probability(region)
        try:
            e = explain(self.model, x, [target], method=method, region=region)
        except (CnnkitError, RuntimeError, NotImplementedError) as err:  # LRP on an unsupported layer, ...
            return {"method": method, "target": target, "error": error_line(err)}
        maps = e.maps.detach().float()
        scores = deletion_insertion(self.model, x, maps, torch.tensor([target], device=x.device), steps=24,
                                    **({"score": score} if score else {}))
        return {"method": method, "target": target, "class": self.m.classes[target], "layer": e.layer,
                **_map_answer(maps, e.zero_maps), **_curve_answer(scores), "seconds": time.perf_counter() - t}

    def _detection_gallery(self, ds: Any, count: int) -> dict[str, Any]:
        """The first `count` test images, each with its number of labelled objects and of detections."""
        items = []
        for i in range(min(count, len(ds.images))):
            with torch.inference_mode():
                found = self.model(self.m.normalize(ds.images[i:i + 1]).float())[0]
            objects = int((ds.objects[i, :, 0] >= 0).sum()) if ds.objects is not None else None
            key = self.add_image(ds.images[i].clone(), pin=True)
            items.append({"id": key, "index": i, "label": None, "predicted": None, "correct": None,
                          "objects": objects, "detections": int((found[:, 5] >= 0).sum()), "png": png(ds.images[i])})
        return {"images": items, "data": ds.name, "split": "test", "classes": list(ds.classes)}

    def _restoration_gallery(self, ds: Any, count: int) -> dict[str, Any]:
        """Crops of the test photographs (`GALLERY_CROP` pixels, at three places in each), each degraded as the
        network was trained (shrunk by its scale, or its noise added, with a fixed seed): the given image is what
        is explored; its caption is the restored crop's PSNR against the clean one, beside the plain baseline's
        (bicubic enlargement, or the noisy input itself)."""
        from cnnkit.models.restore import bicubic
        from cnnkit.tasks.restore import degrade, psnr, restoration_net

        net = restoration_net(self.model)
        side = GALLERY_CROP - GALLERY_CROP % max(1, net.scale)
        items = []
        generator = torch.Generator().manual_seed(0)
        for i in range(len(ds.images)):
            h, w = ds.images.shape[-2:]
            for fy, fx in ((0.5, 0.5), (0.3, 0.3), (0.7, 0.7)):
                if len(items) >= count or h < side or w < side:
                    break
                y0, x0 = int((h - side) * fy), int((w - side) * fx)
                clean = ds.images[i, :, y0:y0 + side, x0:x0 + side].float().div(255)[None]
                given = degrade(net, clean, generator).clamp(0, 1).mul(255).round().to(torch.uint8)
                with torch.inference_mode():
                    restored = self.model(self.m.normalize(given).float()).float().cpu()
                plain = (bicubic(given.float().div(255), size=(side, side)) if net.scale > 1 else given.float().div(255))
                key = self.add_image(given[0].clone(), pin=True)
                items.append({"id": key, "index": i, "label": None, "predicted": None, "correct": None,
                              "psnr": round(float(psnr(restored, clean)[0]), 3),
                              "baseline_psnr": round(float(psnr(plain, clean)[0]), 3),
                              "baseline": "bicubic" if net.scale > 1 else "the noisy input", "png": png(given[0])})
        return {"images": items, "data": ds.name, "split": "test", "classes": list(self.m.classes)}

    def _why_detection(self, x: torch.Tensor, dets: torch.Tensor, method: str, target: int | None,
                       detection: int | None) -> dict[str, Any]:
        from cnnkit.explain.detect import DETECT_METHODS, choose_detections, detection_score, drise, layercam
        from cnnkit.explain.metrics import deletion_insertion

        if method not in DETECT_METHODS:
            return {"method": method, "error": f"{method} explains a class; a detector is explained by "
                    f"{' or '.join(DETECT_METHODS)} of one of its detections"}
        try:
            row = int(choose_detections(dets[None], detection, target, self.m.classes)[0])
        except ExplainError as err:
            return {"method": method, "error": error_line(err).replace("--detection", "detection")}
        chosen = dets[row][None]
        try:
            e = layercam(self.model, x, torch.tensor([row])) if method == "layercam" else drise(self.model, x, chosen)
        except (CnnkitError, RuntimeError) as err:
            return {"method": method, "detection": row, "error": error_line(err)}
        maps = e.maps.detach().float().cpu()
        scores = deletion_insertion(self.model, x, maps.to(x.device), torch.tensor([0], device=x.device), steps=24,
                                    score=detection_score(chosen))
        box = [round(float(v), 2) for v in chosen[0, :4]]
        return {"method": method, "detection": row, "target": int(chosen[0, 5]), "class": self.m.classes[int(chosen[0, 5])],
                "box": box, **_map_answer(maps, e.zero_maps), **_curve_answer(scores)}

    def _why_patch(self, x: torch.Tensor, out: torch.Tensor, method: str, region: str | None) -> dict[str, Any]:
        from cnnkit.explain.cam import explain
        from cnnkit.explain.segment import parse_region

        oh, ow = out.shape[-2:]
        if region is None:  # a box a quarter of the smaller side wide, at the centre
            side = max(1, min(oh, ow) // 4)
            box = ((ow - side) // 2, (oh - side) // 2, (ow - side) // 2 + side, (oh - side) // 2 + side)
        else:
            box = parse_region(region)
            if not (0 <= box[0] < box[2] <= ow and 0 <= box[1] < box[3] <= oh):
                raise ExplainError(f"region {region} is not inside the {ow}×{oh} restored image")
        if method not in RESTORE_WHY:
            return {"method": method, "region": list(box), "error": f"{method} explains a class; a restoration model "
                    f"is explained by {' or '.join(RESTORE_WHY)} of a box of its output"}
        try:  # integrated gradients from a black image (captum's, as `cnnkit explain` runs it)
            e = explain(_PatchMean(self.model, box).eval(), x, [0], method=method)
        except (CnnkitError, RuntimeError) as err:
            return {"method": method, "region": list(box), "error": error_line(err)}
        return {"method": method, "region": list(box), **_map_answer(e.maps, e.zero_maps)}

    def gallery(self, count: int = 24) -> dict[str, Any]:
        """Up to `count` test images of the run's own dataset, misclassified ones among them and marked. For a
        model whose classes are not the data's (a RotNet run predicts rotations) the images are shown unmarked."""
        if self._gallery is not None:
            return self._gallery
        from cnnkit.data.compat import load_checkpoint_data

        try:
            ds = load_checkpoint_data(self.m.ckpt, split="test", check=False)
            if self.task == "restore":
                self._gallery = self._restoration_gallery(ds, count)
                return self._gallery
            if self.task == "detect":
                self._gallery = self._detection_gallery(ds, count)
                return self._gallery
            if (ds.in_chans, *ds.img_size) != tuple(self.m.input_shape):
                raise ExplainError(f"{ds.name} ({ds.split}) gives {ds.in_chans}×{ds.img_size[0]}×{ds.img_size[1]} "
                                   f"images but the model takes {'×'.join(map(str, self.m.input_shape))}")
        except CnnkitError as e:
            from cnnkit.serve.problems import without_paths  # (the data folder is this machine's business)

            self._gallery = {"images": [], "note": f"no gallery: {without_paths(error_line(e))}"}
            return self._gallery
        n = min(len(ds.images), count if self.task == "segment" else 512)
        images, labels = ds.images[:n], ds.labels[:n]
        with torch.inference_mode():
            pred = torch.cat([self.model(self.m.normalize(images[i:i + 128])).argmax(1).cpu()
                              for i in range(0, n, 128)])
        same = list(ds.classes) == list(self.m.classes)
        if self.task == "segment":  # a mask per image: the share of its labelled pixels the model gets right
            items = []
            for i in range(min(count, n)):
                key = self.add_image(images[i].clone(), pin=True)
                truth = ds.masks[i] if ds.masks is not None else None
                known = truth != 255 if truth is not None else None
                acc = float((pred[i] == truth)[known].float().mean()) if known is not None and known.any() else None
                items.append({"id": key, "index": i, "label": None, "predicted": None, "correct": None,
                              "pixel_accuracy": acc, "png": png(images[i])})
            self._gallery = {"images": items, "data": ds.name, "split": "test", "classes": list(ds.classes)}
            return self._gallery
        wrong = (pred != labels).nonzero().flatten().tolist()[: count // 3] if same else []
        right = (pred == labels).nonzero().flatten().tolist()[: count - len(wrong)] if same else list(range(count))
        items = []
        for i in sorted(wrong + right)[:count]:
            key = self.add_image(images[i].clone(), pin=True)
            items.append({"id": key, "index": i, "label": int(labels[i]), "predicted": int(pred[i]),
                          "correct": bool(pred[i] == labels[i]) if same else None, "png": png(images[i])})
        self._gallery = {"images": items, "data": ds.name, "split": "test", "classes": list(ds.classes)}
        return self._gallery


# -------------------------------------------------------------------------------------------------- export

def page_html(data: dict[str, Any] | None = None) -> str:
    """The explorer page; with `data`, the self-contained export: script, style and answers inlined, so it
    opens from file:// as well as from any static web server."""
    html = (PAGE_DIR / "index.html").read_text()
    if data is None:
        return html
    css = (PAGE_DIR / "explorer.css").read_text()
    js = (PAGE_DIR / "explorer.js").read_text()
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no "</script>" inside the tag
    js = js.replace("</script", "<\\/script")
    html = html.replace('<link rel="stylesheet" href="explorer/explorer.css">', "<style>\n" + css + "\n</style>")
    return html.replace('<script type="module" src="explorer/explorer.js"></script>',
                        '<script id="cnnkit-data" type="application/json">' + blob + "</script>\n"
                        '<script type="module">\n' + js + "\n</script>")


def _mixed(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` gallery images, correctly classified and misclassified ones alternating while both last: an export
    shows what the model gets right as well as what it gets wrong."""
    right = [i for i in items if i["correct"] is not False]
    wrong = [i for i in items if i["correct"] is False]
    out: list[dict[str, Any]] = []
    while len(out) < n and (right or wrong):
        for pool in (right, wrong):
            if pool and len(out) < n:
                out.append(pool.pop(0))
    return out


def export_site(ex: Explorer, out: str | Path, images: int = 8, topk: int = DEFAULT_TOPK,
                max_detail_floats: int = 200_000) -> Path:
    """Write the explorer for `images` gallery images as one self-contained HTML file under `out`: overview,
    every page of every layer, the numbers of the channels on each layer's first page (layers whose input is at
    most `max_detail_floats` values), and the explanations of the predicted and true class."""
    from cnnkit.artifacts import atomic_write_text, claim_dir

    gallery = ex.gallery()
    chosen = _mixed(gallery["images"], images)
    if not chosen:
        raise ExplainError(f"nothing to export: {gallery.get('note') or 'the gallery is empty'}")
    answers: dict[str, Any] = {"graph": ex.graph(), "gallery": {**gallery, "images": chosen}}
    methods = list(methods_of(ex.task))
    for item in chosen:
        key = item["id"]
        ov = ex.overview(key, topk)
        answers[f"images/{key}?topk={topk}"] = ov
        acts = ex.activations(key)
        for node in ex.inside.nodes:
            first = ov["nodes"][node.id]
            for p in range(1, first.get("pages", 1)):
                answers[f"images/{key}/nodes/{node.id}?page={p}&topk={topk}"] = ex.node_page(key, node.id, p, topk)
            ins = sum(acts[i].numel() for i in node.inputs) if node.inputs else 0
            if node.kind == "input" or ins > max_detail_floats:
                continue
            for c in first.get("order", [0]):
                try:
                    answers[f"images/{key}/nodes/{node.id}/channels/{c}"] = ex.detail(key, node.id, c)
                except NotFound:
                    pass
        if ex.task == "detect" and ov["predicted"] is not None:  # the best detection, by each method
            for method in methods:
                answers[f"images/{key}/why?detection=0&method={quote(method, safe='')}"] = ex.why(key, None, method,
                                                                                                  detection=0)
        if ex.task == "restore":  # the box at the restored image's centre, by each method
            for method in methods:
                answers[f"images/{key}/why?method={quote(method, safe='')}"] = ex.why(key, None, method)
        for target in dict.fromkeys(t for t in (ov["predicted"], item["label"]) if t is not None):
            for method in methods:
                answers[f"images/{key}/why?target={target}&method={quote(method, safe='')}"] = ex.why(key, target,
                                                                                                   method)
    blobs: dict[str, int] = {}
    answers = _shared(answers, blobs)
    claim_dir(out)
    path = Path(out) / "index.html"
    atomic_write_text(path, page_html({"model": ex.m.name, "answers": answers, "blobs": list(blobs)}))
    return path


def _shared(value: Any, blobs: dict[str, int]) -> Any:
    """`value` with each float32 tensor's bytes stored once in `blobs` (bytes -> index) and referred to by index:
    a convolution's input is the same for each of its channels' details, and a layer's output is the next one's
    input. The page reads `{"shape", "ref"}` as it reads `{"shape", "f32"}`."""
    if isinstance(value, dict):
        if set(value) == {"shape", "f32"}:
            return {"shape": value["shape"], "ref": blobs.setdefault(value["f32"], len(blobs))}
        return {k: _shared(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v, blobs) for v in value]
    return value
