"""`evaluate` a checkpoint on a dataset split and `predict` on image files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.data import BatchLoader, ImageData, Normalize
from cnnkit.data.compat import checkpoint_data_source, load_checkpoint_data
from cnnkit.data.images import load_model_inputs
from cnnkit.runtime import autocast_dtype, cpu_only_artifact, pick_device
from cnnkit.artifacts import LoadedCheckpoint, atomic_write_text, claim_dir, is_exported, load
from cnnkit.evaluate.loop import evaluate_loader
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
    probs: torch.Tensor
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
             alpha: float | None = None, tent_lr: float = 1e-3) -> EvalResult:
    """Top-1/top-5, per-class precision/recall/F1 and ECE of a checkpoint on `split` of `data` (default: the
    checkpoint's own dataset, with the test split it held out); writes JSON and a confusion PNG to out_dir.
    `adapt` (bn, alpha-bn, tent) adapts a copy of the model to the test batches of `batch_size` as it goes
    (see cnnkit.evaluate.adapt). For a corruption benchmark (e.g. fashion-mnist-c) use `evaluate_corruptions`."""
    _check_tta(tta, adapt)
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
    ds = load_checkpoint_data(ckpt, data, split, data_dir=data_dir, strict=strict,
                              ignore_class_names=ignore_class_names, match_classes=task.outputs_are_classes)
    mean, std = ckpt.normalization
    loader = BatchLoader(ds, batch_size, Normalize(mean, std, dev))
    probs, labels = _probs(ckpt.model, loader, dev, autocast_dtype(amp, dev), tta, adapt, alpha, tent_lr, task)
    metrics = {"checkpoint": str(ckpt.path), "data": data, "split": ds.split, "tta": tta,
               "adapt": _adapt_record(adapt, alpha, tent_lr, batch_size), **task.evaluate(probs, labels, ckpt.classes)}
    result = EvalResult(metrics, probs, labels, ds, summary=task.summary(metrics))
    if out_dir is not None:
        claim_dir(out_dir)  # writes there replace only files cnnkit wrote
        out = Path(out_dir)
        stem = f"{data.split(':')[0]}-{split}" + (f"-{adapt}" if adapt else "")
        result.json_path = out / f"eval-{stem}.json"
        atomic_write_text(result.json_path, json.dumps(metrics, indent=2) + "\n")
        result.figures = task.report(metrics, ckpt.classes, out, stem)
        result.confusion_png = result.figures.get("confusion matrix")
    return result


@dataclass
class Prediction:
    """One image file's answer from its task: (name, value) pairs, best first (classification: the top-k
    classes and their probabilities)."""

    path: Path
    top: list[tuple[str, float]]
    shown: list[str] = field(default_factory=list)  # each pair as a command prints it (the task's format)


def predict(checkpoint: str | os.PathLike | LoadedCheckpoint, inputs: list[str | os.PathLike], topk: int = 5,
            tta: bool = False, device: str = "auto", strict: bool = False,
            batch_size: int = 256, amp: str = "off", adapt: str | None = None, alpha: float | None = None,
            tent_lr: float = 1e-3) -> list[Prediction]:
    """Top-k predictions for image files or folders of any size and mode, converted to what the model expects;
    `adapt` adapts a copy of the model to the images, `batch_size` at a time, in the order given."""
    _check_tta(tta, adapt)
    dev = pick_device(device, cpu_only_artifact(checkpoint))
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint, dev)
    _adaptable(ckpt, adapt, alpha, tent_lr)
    ckpt.model.to(dev)
    images, kept = load_model_inputs(list(inputs), ckpt.in_chans, ckpt.img_size, strict)
    data = ImageData(images, torch.zeros(len(images), dtype=torch.long), ckpt.classes, "files", "predict")
    mean, std = ckpt.normalization
    task = task_of(ckpt)
    outputs, _ = _probs(ckpt.model, BatchLoader(data, batch_size, Normalize(mean, std, dev)), dev,
                        autocast_dtype(amp, dev), tta, adapt, alpha, tent_lr, task)
    return [Prediction(f, top, [f"{name} {task.format_value(v)}" for name, v in top])
            for f, top in zip(kept, task.predictions(outputs, ckpt.classes, topk))]


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
                         out_dir: str | os.PathLike | None = None, progress: bool = False,
                         split: str = "test") -> CorruptionResult:
    """Top-1 error on each corruption and severity of `data` (e.g. fashion-mnist-c, or fashion-mnist-c:fog:5),
    on the clean test split, and the mean corruption error (the mean over the cells). With `adapt`, each cell
    starts from the source model (tent's updates do not carry from one cell to the next). `images_per_cell`
    evaluates a stratified, seeded subset of each cell (the same images in every cell).

    `split="val"` corrupts, instead of the test split, the training images the checkpoint's run held out for
    validation (its `val_fraction` and split seed): the place to choose an adaptation setting (alpha-BN's α,
    Tent's learning rate) before reading the test split once. The run must have held images out."""
    from cnnkit.data import train_val_split
    from cnnkit.data.compat import check_compatible, held_out_for_validation
    from cnnkit.data.corruptions import benchmark_cells, parse_benchmark
    from cnnkit.data import cache_dir

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
    precision = autocast_dtype(amp, dev)
    mean, std = ckpt.normalization
    keep: torch.Tensor | None = None

    def clean_loader(base: str) -> ImageData:
        from cnnkit.data import load_dataset

        if split == "test":
            ds = load_dataset(base, "test", data_dir=data_dir)
        else:
            ds = held_out_for_validation(ckpt, load_dataset(base, "train", data_dir=data_dir))
        check_compatible(ckpt, ds)
        return ds

    def error(ds: ImageData) -> float:
        nonlocal keep
        if images_per_cell is not None and images_per_cell < len(ds):
            if keep is None:
                keep = train_val_split(ds.labels, images_per_cell / len(ds), seed)[1]
            ds = ds.subset(keep, ds.split)
        probs, labels = _probs(ckpt.model, BatchLoader(ds, batch_size, Normalize(mean, std, dev)), dev, precision,
                               False, adapt, alpha, tent_lr)
        return float((probs.argmax(1) != labels).float().mean())

    errors: dict[str, dict[int, float]] = {}
    clean_error = None
    for corruption, severity, cell in benchmark_cells(data, clean_loader, cache_dir() / "corrupted"):
        if clean_error is None:  # the same images uncorrupted, the same way
            clean_error = error(clean_loader(parsed[0]))
        errors.setdefault(corruption, {})[severity] = error(cell)
        if progress:
            print(f"{corruption} {severity}: error {errors[corruption][severity]:.4f}", flush=True)
    result = CorruptionResult(errors, float(clean_error), {})
    result.metrics = {"checkpoint": str(ckpt.path), "data": data, "split": split, "images_per_cell": images_per_cell,
                      "adapt": _adapt_record(adapt, alpha, tent_lr, batch_size), "clean_error": result.clean_error,
                      "mean_corruption_error": result.mean_corruption_error,
                      "per_corruption": {c: sum(r.values()) / len(r) for c, r in errors.items()},
                      "errors": {c: {str(s): e for s, e in r.items()} for c, r in errors.items()}}
    if out_dir is not None:
        claim_dir(out_dir)
        name = data.replace(":", "-").replace(",", "+") + ("-val" if split == "val" else "") + (f"-{adapt}" if adapt else "")
        result.json_path = Path(out_dir) / f"eval-{name}.json"
        atomic_write_text(result.json_path, json.dumps(result.metrics, indent=2) + "\n")
    return result
