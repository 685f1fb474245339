"""`evaluate` a checkpoint on a dataset split and `predict` on image files."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.data import BatchLoader, ImageData, Normalize, train_val_split
from cnnkit.data.compat import checkpoint_data_source, load_checkpoint_data
from cnnkit.data.images import load_model_inputs
from cnnkit.data.settings import PATH_SOURCES
from cnnkit.runtime import autocast, autocast_dtype, cpu_only_artifact, pick_device
from cnnkit.artifacts import LoadedCheckpoint, atomic_write_text, claim_dir, is_exported, load
from cnnkit.evaluate.loop import evaluate_loader
from cnnkit.evaluate.masks import MaskFolder, check_input_size, class_areas, native_predictions, segment_files
from cnnkit.errors import ConfigError
from cnnkit.tasks import Task, get_task


def _probs(model, loader: BatchLoader, dev: torch.device, amp: torch.dtype | None, tta: bool,
           adapt: str | None, alpha: float | None, tent_lr: float,
           task: Task | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's outputs (classification: probabilities) and targets over a loader, from the model as it is
    or adapted to each batch (a fresh copy per call; classification only)."""
    if adapt is None:
        return evaluate_loader(model, loader, dev, amp, tta, task or get_task(None))
    from cnnkit.evaluate.adapt import BatchNormAdapter, adapted_probs

    return adapted_probs(BatchNormAdapter(model, adapt, alpha, tent_lr, dev, amp), loader)


def _check_tta(tta: bool, adapt: str | None) -> None:
    """Refused before anything is loaded: flipping each image and adapting to each batch do not combine."""
    if tta and adapt is not None:
        raise ConfigError("--tta and --adapt do not combine: adaptation already sees each batch once")


def task_of(ckpt: LoadedCheckpoint) -> Task:
    """The task a checkpoint's model was trained for (checkpoints from before tasks: classification)."""
    return get_task(ckpt.meta.get("task"))


def _adaptable(ckpt: LoadedCheckpoint, adapt: str | None, alpha: float | None, tent_lr: float) -> None:
    from cnnkit.evaluate.adapt import check_adapt

    check_adapt(adapt, alpha, tent_lr)
    task = task_of(ckpt)
    if adapt is not None and task.name != "classify":
        raise ConfigError(f"--adapt adapts a classifier to test batches; {ckpt.path.name} is a {task.name} model")
    if adapt is not None and is_exported(ckpt.model):
        raise ConfigError(f"--adapt changes BatchNorm layers, which {ckpt.path.name} (an exported artifact) does not "
                          f"expose; adapt a cnnkit checkpoint (.safetensors or a run directory)")


@dataclass
class EvalResult:
    """Metrics of a checkpoint on a dataset split, and the files written."""

    metrics: dict[str, Any]
    probs: torch.Tensor  # what the task keeps of its outputs: class probabilities; a segmentation's predicted masks
    labels: torch.Tensor
    data: ImageData
    json_path: Path | None = None
    confusion_png: Path | None = None
    figures: dict[str, Path] = field(default_factory=dict)  # what the task's report drew (name -> file)
    summary: dict[str, Any] = field(default_factory=dict)  # what a command prints: the task's few metrics


def evaluate(checkpoint: str | os.PathLike | LoadedCheckpoint, data: str | None = None, split: str = "test",
             data_dir: str | os.PathLike | None = None, tta: bool = False, batch_size: int = 512,
             device: str = "auto", out_dir: str | os.PathLike | None = None, strict: bool = False,
             amp: str = "off", ignore_class_names: bool = False, adapt: str | None = None,
             alpha: float | None = None, tent_lr: float = 1e-3, scales: list[float] | None = None,
             window: bool = False, images: int | None = None, drop_bad_boxes: bool = False) -> EvalResult:
    """Top-1/top-5, per-class precision/recall/F1 and ECE of a checkpoint on `split` of `data` (default: the
    checkpoint's own dataset, with the test split it held out); writes JSON and a confusion PNG to out_dir.
    `adapt` (bn, alpha-bn, tent) adapts a copy of the model to the test batches of `batch_size` as it goes
    (see cnnkit.evaluate.adapt). For a corruption benchmark (e.g. fashion-mnist-c) use `evaluate_corruptions`.
    A segmentation model can be run at several input `scales` (probabilities averaged) and, on images larger than
    it was trained at, in overlapping `window`s of its training size instead of whole. `images` scores a
    stratified, seeded subset of that many images of the split (a quick look; the JSON records `subset`).
    `drop_bad_boxes` leaves a detection file's bad boxes out (as its run did, for its own data, unasked)."""
    _check_tta(tta, adapt)
    if images is not None and images < 1:
        raise ConfigError(f"images must be at least 1, got {images}")
    from cnnkit.data.corruptions import parse_benchmark

    if data is not None and parse_benchmark(data) is not None:
        raise ConfigError(f"{data} is a corruption benchmark of many test sets: use evaluate_corruptions "
                          f"(`cnnkit eval --data {data}` does)")
    dev = pick_device(device, cpu_only_artifact(checkpoint))
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint, dev)
    _adaptable(ckpt, adapt, alpha, tent_lr)
    ckpt.model.to(dev)
    data = checkpoint_data_source(ckpt, data).name
    task = task_of(ckpt)
    if task.name == "restore":
        if adapt is not None or scales or window or images is not None:
            raise ConfigError("--adapt, --scales, --window and --images are not for restoration models")
        return _evaluate_restoration(ckpt, data, split, data_dir, strict, tta, dev, amp, out_dir)
    ds = load_checkpoint_data(ckpt, data, split, data_dir=data_dir, strict=strict,
                              ignore_class_names=ignore_class_names, match_classes=task.outputs_are_classes,
                              drop_bad_boxes=drop_bad_boxes)
    ds = task.data_for(ds)
    whole = len(ds)
    if images is not None and images < whole:  # each class its share (one more for rounding), then exactly `images`
        extra = images + int(ds.labels.max()) + 1
        keep = train_val_split(ds.labels, extra / whole, 0)[1] if extra < whole else torch.arange(whole)
        keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))[:images].sort().values]
        ds = ds.subset(keep, ds.split)
    mean, std = ckpt.normalization
    loader = BatchLoader(ds, batch_size, Normalize(mean, std, dev))
    from cnnkit.tasks.segment import test_time_model

    model = test_time_model(ckpt.model, task, scales, window, ckpt.img_size)
    native = task.name == "segment" and getattr(ds, "native_masks", None) is not None and not window
    if native:  # a segmentation set resized when loaded: scored against each mask as its file holds it
        scored = native_predictions(model, loader, ds.native_masks, task, tta,
                                    lambda: autocast(dev, autocast_dtype(amp, dev)))
        probs, labels = scored[2], scored[3]
    else:
        probs, labels = _probs(model, loader, dev, autocast_dtype(amp, dev), tta, adapt, alpha, tent_lr, task)
        scored = (probs, labels)
    metrics = {"checkpoint": os.path.abspath(ckpt.path), "data": full_data_name(data),
               **({"data_dir": os.path.abspath(os.path.expanduser(data_dir))} if data_dir is not None else {}),
               "split": ds.split, **({"subset": f"{len(ds)} of the split's {whole} images (stratified, seed 0)"}
                                     if len(ds) < whole else {}),
               "tta": tta, **({"scales": scales} if scales else {}),
               **({"window": list(ckpt.img_size)} if window else {}),
               "adapt": _adapt_record(adapt, alpha, tent_lr, batch_size),
               **({"resolution": "native (each mask as its file holds it)"} if native else {}),
               **task.evaluate(scored[0], scored[1], ckpt.classes), **({"images": len(labels)} if native else {})}
    result = EvalResult(metrics, probs, labels, ds, summary=task.summary(metrics))
    if out_dir is not None:
        claim_dir(out_dir)  # writes there replace only files cnnkit wrote
        out = Path(out_dir)
        stem = report_stem(out, ckpt.path, data, split, adapt)
        result.json_path = out / f"eval-{stem}.json"
        atomic_write_text(result.json_path, json.dumps(metrics, indent=2) + "\n")
        result.figures = task.report(metrics, ckpt.classes, out, stem, images=ds.images, outputs=probs, targets=labels,
                                     meta=ckpt.meta)
        result.confusion_png = result.figures.get("confusion matrix")
    return result


def _evaluate_restoration(ckpt: LoadedCheckpoint, data: str, split: str, data_dir: str | os.PathLike | None,
                          strict: bool, tta: bool, dev: torch.device, amp: str,
                          out_dir: str | os.PathLike | None) -> EvalResult:
    """`evaluate` for a restoration model: each image whole, at its own size (cnnkit.evaluate.restore)."""
    from cnnkit.errors import CheckpointError
    from cnnkit.evaluate.restore import evaluate_restoration

    ds = load_checkpoint_data(ckpt, data, split, data_dir=data_dir, strict=strict, check=False)
    if ds.in_chans != ckpt.in_chans:
        raise CheckpointError(f"{ds.name} ({ds.split}) gives {ds.in_chans}-channel images but {ckpt.path} restores "
                              f"{ckpt.in_chans}-channel ones")
    from cnnkit.tasks.restore import check_pair_scale, restoration_net

    check_pair_scale(restoration_net(ckpt.model).scale, ds)
    scores = evaluate_restoration(ckpt.model, ds.images, ds.sizes, dev, autocast_dtype(amp, dev), tta)
    metrics = {"checkpoint": os.path.abspath(ckpt.path), "data": full_data_name(data),
               **({"data_dir": os.path.abspath(os.path.expanduser(data_dir))} if data_dir is not None else {}),
               "split": ds.split, "tta": tta, **scores}
    task = task_of(ckpt)
    empty = torch.zeros(0)
    result = EvalResult(metrics, empty, empty, ds, summary=task.summary(metrics))
    if out_dir is not None:
        claim_dir(out_dir)
        out = Path(out_dir)
        stem = report_stem(out, ckpt.path, data, split, None)
        result.json_path = out / f"eval-{stem}.json"
        atomic_write_text(result.json_path, json.dumps(metrics, indent=2) + "\n")
    return result


def full_data_name(data: str) -> str:
    """A data set's name as a report records it: an image folder's or shards' folder made absolute."""
    kind, colon, where = data.partition(":")
    if colon and kind in PATH_SOURCES:
        return f"{kind}:{os.path.abspath(os.path.expanduser(where))}"
    return data


def checkpoint_label(path: str | os.PathLike) -> str:
    """A checkpoint as a report's file name names it: a run's best checkpoint by the run's name, another
    file by its stem, a file that is not a checkpoint with its kind after it (`model-onnx`), and the files
    every run or soup folder names alike with their folder's name before them (`fm-last`, `fm-best-onnx`,
    `fm-soup-greedy`)."""
    p = Path(os.path.abspath(path))
    stem = p.stem if p.suffix == ".safetensors" else f"{p.stem}-{p.suffix.lstrip('.')}".rstrip("-")
    if p.name == "best.safetensors":
        return p.parent.name or "best"
    if p.stem in ("best", "last", "soup-greedy", "soup-uniform") and p.parent.name:
        return f"{p.parent.name}-{stem}"
    return stem


def data_label(data: str) -> str:
    """A data set as a report's file name names it: `sample`, `imagefolder-<the folder's own name>`,
    `sample-c-fog-5` (a corruption benchmark's selection, `+` between several)."""
    kind, colon, rest = data.partition(":")
    if colon and kind in PATH_SOURCES:
        rest = Path(os.path.expanduser(rest)).resolve().name or "root"
    return kind + (f"-{rest.replace(':', '-').replace(',', '+')}" if colon else "")


def report_stem(out: Path, checkpoint: str | os.PathLike, data: str, split: str, adapt: str | None) -> str:
    """`<checkpoint>-<data>-<split>[-<adapt>]` (see `checkpoint_label`, `data_label`), numbered `-2`, `-3`, ...
    when a report of that name in `out` measured another checkpoint: a report replaces only its own."""
    parts = [p for p in (checkpoint_label(checkpoint), data_label(data), split, adapt) if p]
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", "-".join(parts)).strip("-")
    own = os.path.abspath(checkpoint)
    for n in range(1, 1000):
        candidate = stem if n == 1 else f"{stem}-{n}"
        report = out / f"eval-{candidate}.json"
        if not report.exists():
            return candidate
        try:
            recorded = json.loads(report.read_text()).get("checkpoint")
        except (OSError, ValueError, AttributeError, RecursionError):  # unreadable: someone else's
            continue
        if isinstance(recorded, str) and os.path.abspath(recorded) == own:
            return candidate
    raise ConfigError(f"{out} already holds reports of 999 other checkpoints named {stem}; give another --out")


@dataclass
class Prediction:
    """One image file's answer from its task: (name, value) pairs, best first (classification: the top-k
    classes and their probabilities)."""

    path: Path
    top: list[tuple[str, float]]
    shown: list[str] = field(default_factory=list)  # each pair as a command prints it (the task's format)
    answer: list[dict[str, Any]] = field(default_factory=list)  # JSON-ready, as a service sends it (classification:
    # {"class", "index", "probability"}, the probability a fraction)
    # segmentation: the image's (height, width), each class's area ({"share", "pixels"}, largest first), the mask
    # (uint8 H×W class indices at the image's size; None with keep_masks=False) and the files written (mask, overlay)
    size: tuple[int, int] | None = None
    areas: dict[str, dict[str, Any]] = field(default_factory=dict)
    mask: torch.Tensor | None = None
    files: dict[str, Path] = field(default_factory=dict)


def predict(checkpoint: str | os.PathLike | LoadedCheckpoint, inputs: list[str | os.PathLike], topk: int = 5,
            tta: bool = False, device: str = "auto", strict: bool = False,
            batch_size: int = 256, amp: str = "off", adapt: str | None = None, alpha: float | None = None,
            tent_lr: float = 1e-3, masks_out: str | os.PathLike | None = None, input_size: str = "model",
            keep_masks: bool = True, boxes_out: str | os.PathLike | None = None, score_threshold: float | None = None,
            nms_iou: float | None = None, images_out: str | os.PathLike | None = None, tile: int | None = None,
            compare: bool = False) -> list[Prediction]:
    """Top-k predictions for image files or folders of any size and mode, converted to what the model expects;
    `adapt` adapts a copy of the model to the images, `batch_size` at a time, in the order given.
    A segmentation model answers each image's mask at the image's own size and its classes' areas (`input_size`:
    the model sees the image at its training size, `model`, at the image's own, `native`, or at the image's own in
    windows of its training size, `window`; see cnnkit.evaluate.masks); `masks_out` writes each mask (palette
    PNG), an overlay and areas.json there; `keep_masks=False` leaves the masks out of the answers (many large
    images).
    A detection model answers each image's detections scoring at least `score_threshold` (default 0.25), boxes in
    the image's own pixels (see cnnkit.evaluate.boxes); `nms_iou` sets its suppression's IoU; `boxes_out` draws
    them into that folder with a boxes.json.
    A restoration model restores each image as it is given (the small image to enlarge, the noisy one to
    clean), in tiles of `tile` input pixels (default 512; 0: whole; see cnnkit.evaluate.restore); `images_out`
    writes each restored image there (`compare`: a side-by-side crop too) with a restored.json."""
    from cnnkit.evaluate.boxes import check_postprocess

    _check_tta(tta, adapt)
    check_input_size(input_size)
    check_postprocess(score_threshold, nms_iou)
    dev = pick_device(device, cpu_only_artifact(checkpoint))
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint, dev)
    task_of(ckpt).check_available("predict")
    _adaptable(ckpt, adapt, alpha, tent_lr)
    ckpt.model.to(dev)
    restoring = task_of(ckpt).name == "restore"
    for given, option in ((images_out is not None, "--images-out"), (tile is not None, "--tile"),
                          (compare, "--compare")):
        if given and not restoring:
            raise ConfigError(f"{option} is for restoration models; {ckpt.path.name} is a {task_of(ckpt).name} "
                              f"model")
    if restoring:
        if adapt is not None or masks_out is not None or input_size != "model":
            raise ConfigError("--adapt, --masks-out and --input-size are for classification and segmentation; a "
                              "restoration model restores each image at its own size (use --images-out to keep them)")
        return _predict_restored(ckpt, inputs, tta, dev, strict, amp, images_out, tile, compare)
    if task_of(ckpt).name == "detect":
        if adapt is not None or masks_out is not None or input_size != "model":
            raise ConfigError("--adapt, --masks-out and --input-size are for classification and segmentation; a "
                              "detector sees each image at its training size (use --boxes-out to draw its boxes)")
        return _predict_boxes(ckpt, inputs, topk, tta, dev, strict, batch_size, amp, boxes_out, score_threshold,
                              nms_iou)
    for given, option in ((boxes_out is not None, "--boxes-out"), (score_threshold is not None, "--score-threshold"),
                          (nms_iou is not None, "--nms-iou")):
        if given:
            raise ConfigError(f"{option} is for detection models; {ckpt.path.name} is a {task_of(ckpt).name} model")
    if task_of(ckpt).name == "segment":
        return _predict_masks(ckpt, inputs, topk, tta, dev, strict, batch_size, amp, masks_out, input_size,
                              keep_masks)
    for given, option in ((masks_out is not None, "--masks-out"), (input_size != "model", "--input-size")):
        if given:
            raise ConfigError(f"{option} is for segmentation models; {ckpt.path.name} is a {task_of(ckpt).name} "
                              f"model")
    images, kept = load_model_inputs(list(inputs), ckpt.in_chans, ckpt.img_size, strict)
    data = ImageData(images, torch.zeros(len(images), dtype=torch.long), ckpt.classes, "files", "predict")
    mean, std = ckpt.normalization
    task = task_of(ckpt)
    outputs, _ = _probs(ckpt.model, BatchLoader(data, batch_size, Normalize(mean, std, dev)), dev,
                        autocast_dtype(amp, dev), tta, adapt, alpha, tent_lr, task)
    answers = task.answer(outputs, ckpt.classes, topk)
    return [Prediction(f, top, [f"{name} {task.format_value(v)}" for name, v in top], answer)
            for f, top, answer in zip(kept, task.predictions(outputs, ckpt.classes, topk), answers)]


def _predict_boxes(ckpt: LoadedCheckpoint, inputs: list[str | os.PathLike], topk: int, tta: bool, dev: torch.device,
                   strict: bool, batch_size: int, amp: str, boxes_out: str | os.PathLike | None,
                   score_threshold: float | None, nms_iou: float | None) -> list[Prediction]:
    """`predict` for a detection model: each image's detections at its own size (all of them in the answer, the
    best `topk` in the table's cells), drawn into `boxes_out`."""
    from cnnkit.data.images import decoded_images, list_image_files
    from cnnkit.evaluate.masks import model_input
    from cnnkit.evaluate.boxes import DEFAULT_SCORE_THRESHOLD, BoxFolder, scaled_answer

    task, classes, model = task_of(ckpt), ckpt.classes, ckpt.model
    threshold = DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold
    restore = None
    if nms_iou is not None or score_threshold is not None:
        if not hasattr(model, "set_postprocess"):
            if nms_iou is not None:
                raise ConfigError(f"--nms-iou sets a checkpoint's suppression; {ckpt.path.name} is an exported graph "
                                  f"with its suppression inside (export it again with --nms-iou)")
        else:  # the detector's own threshold and IoU, put back afterwards (`ckpt` may be the caller's)
            restore = model.postprocess
            model.set_postprocess(score_threshold=score_threshold, nms_iou=nms_iou)
    folder = BoxFolder(boxes_out, list_image_files(list(inputs))) if boxes_out is not None else None
    normalize, precision = Normalize(*ckpt.normalization, dev), autocast_dtype(amp, dev)
    out: list[Prediction] = []

    def run(batch: list[tuple[Path, Any]]) -> None:
        x = normalize(torch.stack([model_input(im, ckpt.in_chans, ckpt.img_size) for _, im in batch]).to(dev))
        with torch.no_grad(), autocast(dev, precision):
            detections = task.infer(model, x, tta)
        for (path, image), det in zip(batch, detections):
            answer = scaled_answer(det, classes, ckpt.img_size, (image.height, image.width), threshold)
            files = folder.write_boxes(path, image, answer, classes) if folder is not None else {}
            out.append(Prediction(path, [(a["class"], a["score"]) for a in answer],
                                  [f"{a['class']} {task.format_value(a['score'])}" for a in answer[:topk]], answer,
                                  (image.height, image.width), files=files))

    try:
        batch: list[tuple[Path, Any]] = []
        for item in decoded_images(list(inputs), strict):
            batch.append(item)
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    finally:
        if restore is not None:
            model.set_postprocess(**restore)
    if folder is not None:
        folder.finish_boxes({"checkpoint": os.path.abspath(ckpt.path), "score_threshold": threshold,
                             **({"nms_iou": nms_iou} if nms_iou is not None else {})}, classes)
    return out


def _predict_restored(ckpt: LoadedCheckpoint, inputs: list[str | os.PathLike], tta: bool, dev: torch.device,
                      strict: bool, amp: str, images_out: str | os.PathLike | None, tile: int | None,
                      compare: bool) -> list[Prediction]:
    """`predict` for a restoration model: each image restored at its own size, in tiles, written to `images_out`."""
    import warnings

    from cnnkit.errors import DataError
    from cnnkit.data.images import decoded_images, list_image_files
    from cnnkit.evaluate.restore import (DEFAULT_TILE, MAX_OUTPUT_PIXELS, RestoredFolder, check_tile, png_bytes,
                                         restoration_pixels, restore_pixels, side_by_side)
    from cnnkit.models.restore import bicubic
    from cnnkit.tasks.restore import restoration_net

    tile = DEFAULT_TILE if tile is None else tile
    check_tile(tile)
    if compare and images_out is None:
        raise ConfigError("--compare writes a side-by-side crop beside each restored image: give --images-out too")
    model, precision = ckpt.model.eval(), autocast_dtype(amp, dev)
    net = restoration_net(model)
    scale, task = net.scale, task_of(ckpt)
    files = list_image_files(list(inputs))
    folder = RestoredFolder(images_out, files, compare) if images_out is not None else None
    out: list[Prediction] = []
    for path, image in decoded_images(list(inputs), strict):
        h, w = image.height * scale, image.width * scale
        if h * w > MAX_OUTPUT_PIXELS:
            problem = (f"{path}: restored at ×{scale} it would be {w}×{h} pixels, more than cnnkit writes "
                       f"({MAX_OUTPUT_PIXELS // 1_000_000} Mpixels); give a smaller image")
            if strict:
                raise DataError(problem)
            warnings.warn(problem, stacklevel=2)
            continue
        pixels = restoration_pixels(image, ckpt.in_chans).unsqueeze(0).to(dev)
        with autocast(dev, precision):
            restored = restore_pixels(model, pixels, ckpt.in_chans, tile, tta)[0].cpu()
        x = pixels.float().div(255)
        files_written = {}
        if folder is not None:
            beside = None
            if compare:  # the plain enlargement (or the noisy input itself) the crop is set beside
                plain = (bicubic(x, size=(h, w)) if scale > 1 else x)[0].clamp(0, 1).mul(255).round().byte().cpu()
                beside = png_bytes(side_by_side(plain, restored))
            files_written = folder.write_restored(path, png_bytes(restored), (h, w), beside)
        what = f"×{scale} {w}×{h}" if scale > 1 else f"denoised {w}×{h}"
        answer = [{"height": h, "width": w, "scale": scale}]
        out.append(Prediction(path, [("restored", float(scale))], [what], answer, (h, w), files=files_written))
    if folder is not None:
        folder.finish_restored({"checkpoint": os.path.abspath(ckpt.path), "task": task.name, "scale": scale,
                                "tile": tile, "tta": tta})
    return out


def _predict_masks(ckpt: LoadedCheckpoint, inputs: list[str | os.PathLike], topk: int, tta: bool, dev: torch.device,
                   strict: bool, batch_size: int, amp: str, masks_out: str | os.PathLike | None, input_size: str,
                   keep_masks: bool) -> list[Prediction]:
    """`predict` for a segmentation model: each image's mask at its own size, its areas, the files written."""
    from cnnkit.data.images import list_image_files
    from cnnkit.tasks.segment import run_palette

    if input_size != "model" and is_exported(ckpt.model):
        raise ConfigError(f"--input-size {input_size} needs a model that takes any size; {ckpt.path.name} is an "
                          f"exported artifact of a fixed size: use --input-size model, or the run's .safetensors "
                          f"checkpoint")
    task, classes = task_of(ckpt), ckpt.classes
    palette = run_palette(ckpt.meta, len(classes))
    folder = MaskFolder(masks_out, list_image_files(list(inputs))) if masks_out is not None else None
    precision = autocast_dtype(amp, dev)
    out = []
    for s in segment_files(ckpt.model, task, Normalize(*ckpt.normalization, dev), inputs, ckpt.in_chans,
                           ckpt.img_size, input_size, tta, batch_size, strict, lambda: autocast(dev, precision)):
        areas = class_areas(s.mask, classes)
        top = [(c, a["share"]) for c, a in areas.items()][:topk]
        files = folder.write(s.path, s.image, s.mask, palette, classes, areas) if folder is not None else {}
        out.append(Prediction(s.path, top, [f"{c} {task.format_value(v)}" for c, v in top],
                              [{"class": c, "area": v} for c, v in top], tuple(s.mask.shape), areas,
                              s.mask if keep_masks else None, files))
    if folder is not None:
        folder.finish({"checkpoint": os.path.abspath(ckpt.path), "input_size": input_size, "tta": tta}, classes,
                      palette)
    return out


def _adapt_record(adapt: str | None, alpha: float | None, tent_lr: float, batch_size: int) -> dict[str, Any] | None:
    if adapt is None:
        return None
    from cnnkit.evaluate.adapt import DEFAULT_ALPHA

    record: dict[str, Any] = {"method": adapt, "batch_size": batch_size}
    if adapt == "alpha-bn":
        record["alpha"] = DEFAULT_ALPHA if alpha is None else alpha
    if adapt == "tent":
        record["lr"] = tent_lr
    return record


@dataclass
class CorruptionResult:
    """Top-1 error of a checkpoint on every cell of a corruption benchmark, and the files written."""

    errors: dict[str, dict[int, float]]  # corruption -> severity -> top-1 error
    clean_error: float
    metrics: dict[str, Any]
    json_path: Path | None = None

    @property
    def mean_corruption_error(self) -> float:
        cells = [e for row in self.errors.values() for e in row.values()]
        return sum(cells) / len(cells)


def evaluate_corruptions(checkpoint: str | os.PathLike | LoadedCheckpoint, data: str = "fashion-mnist-c",
                         data_dir: str | os.PathLike | None = None, batch_size: int = 512, device: str = "auto",
                         amp: str = "off", adapt: str | None = None, alpha: float | None = None,
                         tent_lr: float = 1e-3, images_per_cell: int | None = None, seed: int = 0,
                         out_dir: str | os.PathLike | None = None, progress: CorruptionProgress | None = None,
                         split: str = "test") -> CorruptionResult:
    """Top-1 error on each corruption and severity of `data` (e.g. fashion-mnist-c, or fashion-mnist-c:fog:5),
    on the clean test split, and the mean corruption error (the mean over the cells). With `adapt`, each cell
    starts from the source model (tent's updates do not carry from one cell to the next). `images_per_cell`
    evaluates a stratified, seeded subset of each cell (the same images in every cell). `progress`, if
    given, is called after the clean images and after each corruption's severities (see `CorruptionProgress`).

    `split="val"` corrupts, instead of the test split, the training images the checkpoint's run held out for
    validation (its `val_fraction` and split seed): the place to choose an adaptation setting (alpha-BN's α,
    Tent's learning rate) before reading the test split once. The run must have held images out."""
    from cnnkit.data import cache_dir
    from cnnkit.data.corruptions import benchmark_cells, parse_benchmark

    parsed = parse_benchmark(data)
    if parsed is None:
        raise ConfigError(f"{data} is not a corruption benchmark (fashion-mnist-c, mnist-c, cifar10-c, sample-c)")
    if images_per_cell is not None and images_per_cell < 1:
        raise ConfigError(f"--images-per-cell must be at least 1, got {images_per_cell}")
    if split not in ("test", "val"):
        raise ConfigError(f"a corruption benchmark corrupts the test split or the run's validation split (--split "
                          f"test or val), got {split!r}")
    dev = pick_device(device, cpu_only_artifact(checkpoint))
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint, dev)
    _adaptable(ckpt, adapt, alpha, tent_lr)
    ckpt.model.to(dev)
    cells = _CellScorer(ckpt, dev, autocast_dtype(amp, dev), batch_size, images_per_cell, seed,
                        (adapt, alpha, tent_lr), split, data_dir)
    report = progress or (lambda *a: None)
    errors: dict[str, dict[int, float]] = {}
    clean_error = None
    total, clean = len(parsed[1]), cells.clean(parsed[0])  # a mistake in the data shows before anything is said
    report("start", {}, min(len(clean), images_per_cell or len(clean)), total)
    for corruption, severity, cell in benchmark_cells(data, cells.clean, cache_dir() / "corrupted"):
        if clean_error is None:  # the same images uncorrupted, the same way
            clean_error = cells.error(clean)
            report("clean", {0: clean_error}, 0, total)
        if errors and corruption not in errors:
            done = next(reversed(errors))
            report(done, errors[done], len(errors), total)
        errors.setdefault(corruption, {})[severity] = cells.error(cell)
    if errors:
        done = next(reversed(errors))
        report(done, errors[done], len(errors), total)
    result = CorruptionResult(errors, float(clean_error), {})
    result.metrics = {"checkpoint": os.path.abspath(ckpt.path), "data": data, "split": split,
                      "images_per_cell": images_per_cell, "adapt": _adapt_record(adapt, alpha, tent_lr, batch_size),
                      "clean_error": result.clean_error, "mean_corruption_error": result.mean_corruption_error,
                      "per_corruption": {c: sum(r.values()) / len(r) for c, r in errors.items()},
                      "errors": {c: {str(s): e for s, e in r.items()} for c, r in errors.items()}}
    if out_dir is not None:
        claim_dir(out_dir)
        stem = report_stem(Path(out_dir), ckpt.path, data, "val" if split == "val" else "", adapt)
        result.json_path = Path(out_dir) / f"eval-{stem}.json"
        atomic_write_text(result.json_path, json.dumps(result.metrics, indent=2) + "\n")
    return result


# called with ("start", {}, images per cell, n corruptions) once the clean set is loaded, ("clean", {0: error}, 0, n)
# once it is scored, then (corruption, {severity: error}, corruptions done, n) as each corruption's severities are
CorruptionProgress = Callable[[str, dict[int, float], int, int], None]


class _CellScorer:
    """The top-1 error of a checkpoint on the cells of a corruption benchmark, and the clean set they are
    made from (the test split, or the run's validation images), checked to fit it."""

    def __init__(self, ckpt: LoadedCheckpoint, dev: torch.device, precision: torch.dtype | None, batch_size: int,
                 images_per_cell: int | None, seed: int, adapt: tuple[str | None, float | None, float], split: str,
                 data_dir: str | os.PathLike | None):
        self.ckpt, self.dev, self.precision, self.batch_size = ckpt, dev, precision, batch_size
        self.images_per_cell, self.seed, self.adapt, self.split, self.data_dir = images_per_cell, seed, adapt, \
            split, data_dir
        self.keep: torch.Tensor | None = None
        self.loaded: dict[str, ImageData] = {}

    def clean(self, base: str) -> ImageData:
        """The clean set the cells are made from (loaded once)."""
        from cnnkit.data import load_dataset
        from cnnkit.data.compat import check_compatible, held_out_for_validation

        if base not in self.loaded:
            if self.split == "test":
                ds = load_dataset(base, "test", data_dir=self.data_dir)
            else:
                ds = held_out_for_validation(self.ckpt, load_dataset(base, "train", data_dir=self.data_dir))
            self.loaded[base] = check_compatible(self.ckpt, ds)  # the same classes in another order: renumbered
        return self.loaded[base]

    def error(self, ds: ImageData) -> float:
        if self.images_per_cell is not None and self.images_per_cell < len(ds):
            if self.keep is None:
                self.keep = train_val_split(ds.labels, self.images_per_cell / len(ds), self.seed)[1]
            ds = ds.subset(self.keep, ds.split)
        mean, std = self.ckpt.normalization
        probs, labels = _probs(self.ckpt.model, BatchLoader(ds, self.batch_size, Normalize(mean, std, self.dev)),
                               self.dev, self.precision, False, *self.adapt)
        return float((probs.argmax(1) != labels).float().mean())
