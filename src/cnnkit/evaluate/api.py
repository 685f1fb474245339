"""`evaluate` a checkpoint on a dataset split and `predict` on image files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnkit.data import BatchLoader, ImageData, Normalize
from cnnkit.data.compat import checkpoint_data_source, load_checkpoint_data
from cnnkit.data.images import load_model_inputs
from cnnkit.evaluate.metrics import classification_report
from cnnkit.runtime import autocast_dtype, cpu_only_artifact, pick_device
from cnnkit.artifacts import LoadedCheckpoint, atomic_write_text, claim_dir, load_checkpoint
from cnnkit.evaluate.loop import evaluate_loader


@dataclass
class EvalResult:
    """Metrics of a checkpoint on a dataset split, and the files written."""

    metrics: dict[str, Any]
    probs: torch.Tensor
    labels: torch.Tensor
    data: ImageData
    json_path: Path | None = None
    confusion_png: Path | None = None


def evaluate(checkpoint: str | os.PathLike | LoadedCheckpoint, data: str | None = None, split: str = "test",
             data_dir: str | os.PathLike | None = None, tta: bool = False, batch_size: int = 512,
             device: str = "auto", out_dir: str | os.PathLike | None = None, strict: bool = False,
             amp: str = "off", ignore_class_names: bool = False) -> EvalResult:
    """Top-1/top-5, per-class precision/recall/F1 and ECE of a checkpoint on `split` of `data` (default: the
    checkpoint's own dataset, with the test split it held out); writes JSON and a confusion PNG to out_dir."""
    dev = pick_device(device, cpu_only_artifact(checkpoint))
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, dev)
    ckpt.model.to(dev)
    data = checkpoint_data_source(ckpt, data).name
    ds = load_checkpoint_data(ckpt, data, split, data_dir=data_dir, strict=strict,
                              ignore_class_names=ignore_class_names)
    mean, std = ckpt.normalization
    loader = BatchLoader(ds, batch_size, Normalize(mean, std, dev))
    probs, labels = evaluate_loader(ckpt.model, loader, dev, autocast_dtype(amp, dev), tta)
    metrics = {"checkpoint": str(ckpt.path), "data": data, "split": ds.split, "tta": tta,
               **classification_report(probs, labels, ckpt.classes)}
    result = EvalResult(metrics, probs, labels, ds)
    if out_dir is not None:
        from cnnkit.report.plots import save_confusion_matrix

        claim_dir(out_dir)  # writes there replace only files cnnkit wrote
        out = Path(out_dir)
        stem = f"{data.split(':')[0]}-{split}"
        result.json_path = out / f"eval-{stem}.json"
        atomic_write_text(result.json_path, json.dumps(metrics, indent=2) + "\n")
        result.confusion_png = save_confusion_matrix(metrics["confusion_matrix"], ckpt.classes,
                                                     out / f"confusion-{stem}.png")
    return result


@dataclass
class Prediction:
    """Top-k classes for one image file."""

    path: Path
    top: list[tuple[str, float]]


def predict(checkpoint: str | os.PathLike | LoadedCheckpoint, inputs: list[str | os.PathLike], topk: int = 5,
            tta: bool = False, device: str = "auto", strict: bool = False,
            batch_size: int = 256, amp: str = "off") -> list[Prediction]:
    """Top-k predictions for image files or folders of any size and mode, converted to what the model expects."""
    dev = pick_device(device, cpu_only_artifact(checkpoint))
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, dev)
    ckpt.model.to(dev)
    images, kept = load_model_inputs(list(inputs), ckpt.in_chans, ckpt.img_size, strict)
    k = max(1, min(topk, len(ckpt.classes)))
    data = ImageData(images, torch.zeros(len(images), dtype=torch.long), ckpt.classes, "files", "predict")
    mean, std = ckpt.normalization
    probs, _ = evaluate_loader(ckpt.model, BatchLoader(data, batch_size, Normalize(mean, std, dev)), dev,
                               autocast_dtype(amp, dev), tta)
    values, indices = probs.topk(k, dim=1)
    return [Prediction(f, [(ckpt.classes[int(i)], float(v)) for v, i in zip(vs, ix)])
            for f, vs, ix in zip(kept, values, indices)]
