"""What every compression recipe works from: the recipe options (`Settings`), and the `Context` of one run:
the source checkpoint and its float model, the training split resolved at `compress`'s entry, the
calibration images drawn from it, the output folder, and the pruned models the recipes share."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint
from cnnkit.compress.prune import count_macs
from cnnkit.compress.quantize import quantizer_for
from cnnkit.deploy.export import dynamic_dims
from cnnkit.data import ImageData, Normalize
from cnnkit.tasks import get_task

# metadata a checkpoint's writer adds itself: a variant saved as a checkpoint does not carry the source's
WRITER_KEYS = ("format", "cnnkit_version", "torch_version")


@dataclass
class Settings:
    """The options of `cnnkit compress` that the recipes read (see `compress` for each)."""

    calibration: int = 512
    observer: str = "mse"
    quantizer: str = "auto"
    finetune_epochs: float = 1.0
    lr: float | None = None
    criterion: str = "l1"
    scope: str = "uniform"
    rounds: int = 1
    round_to: int | None = None
    distill: bool = False
    rewind: str | Path | None = None
    train_images: int | None = None
    batch: int = 64
    seed: int = 0
    onnx: bool = True


class Context:
    """One compression run: the source and its float model, the (fine-tuning) training images, the calibration
    images, the output folder and file-name stem, the settings, a progress printer, and what recipes share
    (the float model's counts, the `--rewind` weights, the pruned models by ratio); `task` is the model's task."""

    def __init__(self, ckpt: LoadedCheckpoint, out: Path, train: ImageData, settings: Settings,
                 log: Callable[[str], None], rewound: nn.Module | None = None):
        self.ckpt, self.out, self.settings, self.log, self.rewound = ckpt, out, settings, log, rewound
        self.name = ckpt.meta["model"].replace("/", "_")
        self.task = get_task(ckpt.meta.get("task"))
        self.mean, self.std = ckpt.normalization
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(settings.seed))
        self.train = train.subset(order[:settings.train_images], "train") if settings.train_images else train
        pick = order[:settings.calibration]
        self.model = ckpt.model.float().eval()
        # what the model is given for them (a restoration network: the images shrunk or made noisy, as it trains)
        self.calib = self.task.model_inputs(self.model, Normalize(self.mean, self.std)(train.images[pick]))
        self.calib_labels = train.labels[pick]
        self.example = self.calib[:2]
        self.quantizer = quantizer_for(settings.quantizer)  # PT2E's for this CPU; None: ONNX Runtime's int8 only
        self.dynamic = dynamic_dims(self.task)  # the input dimensions its programs take at any size
        self.pruned: dict[float, LoadedCheckpoint] = {}  # prune:R and prune:R+int8 share one pruned model
        self._base: dict[str, int] | None = None

    @property
    def base(self) -> dict[str, int]:
        """The float model's parameters and MACs."""
        if self._base is None:
            self._base = self.counts(self.model)
        return self._base

    def counts(self, model: nn.Module) -> dict[str, int]:
        """A model's parameters and MACs (on one calibration image)."""
        return {"params": int(sum(p.numel() for p in model.parameters())), "macs": count_macs(model, self.example)}

    def loaded(self, model: nn.Module, path: Path) -> LoadedCheckpoint:
        """`model` as a checkpoint of the source's metadata at `path` (what an export reads)."""
        return LoadedCheckpoint(model, dict(self.ckpt.meta), path)

    def variant_meta(self, **extra: Any) -> dict[str, Any]:
        """The metadata of a variant saved as a checkpoint: the source's, with `extra`."""
        return {**{k: v for k, v in self.ckpt.meta.items() if k not in WRITER_KEYS}, **extra}

    def teacher(self) -> nn.Module | None:
        """A copy of the float model to distill from (--distill), else None."""
        return copy.deepcopy(self.model) if self.settings.distill else None
