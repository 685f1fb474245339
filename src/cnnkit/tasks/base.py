"""What a task is, written down once: the trainer, the evaluation loop, `predict`, the run directory and the
CLI talk to a task only through `Task` and the `Objective` it hands the trainer.

A task answers, for its kind of output:
- **targets**: what a batch's target is, made from what the data loader gives (`targets(x, labels)`), and
  the names of the model's outputs (`output_names`: the classes, recorded in every checkpoint);
- **training**: its `objective(cfg)`, whose `loss(outputs, targets, x)` the loop minimizes (classification's
  are cross-entropy, knowledge distillation, MEAL V2 and RotNet), and the score the loop reports and keeps
  the best checkpoint by (`score`, higher is better, summed per batch by `score_sum` and read by `score_value`);
- **evaluation**: its outputs at evaluation time (`infer`, with flip test-time augmentation where it makes
  sense), the loss reported on validation data (`loss_sum`), and its full metrics (`evaluate`);
- **predictions**: how raw outputs become answers (`predictions`: what `predict` prints; `answer`: what a
  service sends, JSON-ready);
- **report**: the metrics a command prints (`summary`) and the figures an evaluation writes beside them
  (`report`);
- **export**: an example input (`example_input`) and the name of the exported output (`output`).

Tasks are registered by name (`register_task`); a checkpoint records its task's name, so evaluation,
prediction and export find it again with `get_task`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.errors import ConfigError, close_matches


@dataclass
class TrainSetting:
    """What an objective may need once the model is built: the model, the data's shape and statistics, and
    where and how the run computes."""

    model: nn.Module
    classes: list[str]
    in_chans: int
    img_size: tuple[int, int]
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    amp: torch.dtype | None = None
    channels_last: bool = False


class Objective:
    """What the training loop minimizes for one batch. Subclasses set `loss`; the other hooks default to
    'nothing to do'."""

    #: modules trained beside the model by the same optimizer and saved with the training state
    modules: dict[str, nn.Module]
    #: whether a mirrored image has the same target (flip test-time augmentation applies)
    flip_invariant: bool = True

    def __init__(self) -> None:
        self.modules = {}

    def output_names(self, classes: list[str]) -> list[str]:
        """The model's outputs under this objective (RotNet: the rotations instead of the data's classes)."""
        return classes

    def check_data(self, img_size: tuple[int, int]) -> None:
        """Refuse data this objective cannot learn from, in one line (ConfigError)."""

    def bind(self, setting: TrainSetting) -> None:
        """Called once the model is built (load teachers, build a discriminator, find dropout heads)."""

    def forward(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Any:
        """The model's training outputs on a batch, for `loss` (a detector takes the targets too)."""
        return model(x)

    def batch(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch the model sees and its targets (RotNet: every image in each rotation)."""
        return x, targets

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The batch's loss, a scalar (float32)."""
        raise NotImplementedError

    def meta(self, data_classes: list[str]) -> dict[str, Any]:
        """What the checkpoint records about this objective (beside the config)."""
        return {}


class TaskLoss(Objective):
    """The task's own loss, unchanged: the objective of a task without variants."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.task.loss_sum(outputs.float(), targets) / max(len(targets), 1)


class Task(ABC):
    """A kind of output (a class, a value, later a mask, boxes or an image): see the module's docstring."""

    name: str = ""
    score: str = "score"  # the validation metric maximized (metrics.csv: train_<score>, val_<score>)
    output: str = "outputs"  # the exported model's output name
    outputs_are_classes: bool = True  # the model's outputs are the data's classes: evaluation data must have them
    any_size: bool = False  # its models are fully convolutional: exported with a dynamic height and width
    exportable: bool = True  # `cnnkit export` and `cnnkit compress` take its models
    not_yet: tuple[str, ...] = ()  # the commands that do not take its models yet (each refuses them in one line)
    # the most items --val-fraction holds out (None: no cap); the rest of its share goes back to training
    max_val_items: int | None = None
    score_is_fraction: bool = True  # its score is a fraction (accuracy, mIoU, mAP), shown in percent; else format_value

    def check_available(self, command: str) -> None:
        """ConfigError, in one line, when `cnnkit <command>` does not take this task's models yet."""
        if command in self.not_yet:
            raise ConfigError(f"`cnnkit {command}` does not take {self.name} models yet; they train and evaluate "
                              f"(cnnkit train, cnnkit eval)")

    def output_names(self, classes: list[str]) -> list[str]:
        """Names of the model's outputs for data with these classes; the head has one output per name."""
        return classes

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A batch's targets from the loader's images (normalized, augmented) and labels."""
        return labels

    def model_options(self, model: str, options: dict[str, Any], data: Any) -> dict[str, Any]:
        """Options of `model` this task derives from the training set where `options` (the user's) has none
        (detection: anchor sizes from the boxes); recorded with the run like the user's. None by default."""
        return {}

    def data_for(self, data: Any) -> Any:
        """A training or evaluation set as this task reads it (detection: the objects' boxes, not the masks of a
        set that has both); refuses, in one line (ConfigError), a set without this task's targets."""
        return data

    def objective(self, cfg: Any) -> Objective:
        """The objective a training configuration asks for (default: the task's own loss)."""
        return TaskLoss(self)

    def infer(self, model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """The model's outputs on a batch at evaluation time, as `loss_sum`, `score_sum` and `evaluate` take them."""
        return model(x).float()

    def kept(self, outputs: torch.Tensor) -> torch.Tensor:
        """What an evaluation keeps of a batch's `infer` outputs, for `evaluate` and `report` over the whole split
        (default: all of them; segmentation keeps each pixel's predicted class, not K probabilities)."""
        return outputs

    @abstractmethod
    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss summed over a batch (training: on raw outputs; validation: on `infer`'s outputs)."""

    @abstractmethod
    def score_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """What the score is made from, summed over a batch: `score_size` numbers (one: the score summed over the
        images; segmentation: a confusion matrix's counts), added up over batches and processes."""

    def score_counts(self, outputs: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
        """`score_sum` for a model with `classes` outputs: what the trainer and evaluation call. The same as
        `score_sum` unless the counts' size depends on the classes and cannot be read from the outputs
        (detection's)."""
        return self.score_sum(outputs, targets)

    def score_size(self, outputs: int) -> int:
        """How many numbers `score_sum` gives for a model with this many outputs."""
        return 1

    def score_value(self, total: torch.Tensor, images: float) -> float:
        """The score (higher is better) from `score_sum`'s total over `images` images: by default their mean."""
        return float(total.sum()) / max(images, 1.0)

    @abstractmethod
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
        """The task's metrics over a whole split (JSON-ready)."""

    @abstractmethod
    def predictions(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
        """Each image's answer as (name, value) pairs, best first: what `predict` prints and a service sends."""

    def answer(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[dict[str, Any]]]:
        """What a service sends for each image (JSON-ready): `predictions` as {"name", "value"} objects."""
        return [[{"name": n, "value": v} for n, v in pairs] for pairs in self.predictions(outputs, names, topk)]

    def format_value(self, value: float) -> str:
        """One answer's value as a command prints it (classification: a probability in percent)."""
        return f"{value:.4g}"

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The few metrics a command prints after an evaluation (label -> value); default: every number."""
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def report(self, metrics: dict[str, Any], names: list[str], out_dir: Path, stem: str,
               images: torch.Tensor | None = None, outputs: torch.Tensor | None = None,
               targets: torch.Tensor | None = None, meta: dict[str, Any] | None = None) -> dict[str, Path]:
        """Figures written beside an evaluation's metrics (label, as a command prints it -> file); none by default.
        `images` (the split's, uint8 N×C×H×W), `outputs` (`infer`'s) and `targets` are what the metrics came
        from, for figures of examples; `meta` is the checkpoint's metadata (e.g. a segmentation run's palette)."""
        return {}

    def agreement(self, outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """How far another runtime's answers (an exported artifact's outputs on a batch) agree with `reference`,
        the PyTorch model's on the same batch, beyond their largest difference (name -> share, 1 = all agree);
        none by default."""
        return {}

    def example_input(self, in_chans: int, img_size: Sequence[int], batch: int = 2,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch the model accepts, to export or check it with."""
        return torch.randn(batch, in_chans, *img_size, generator=generator)

    def model_inputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What `model` is given for a batch of the data's (normalized) images, e.g. to calibrate int8 with: the
        images themselves by default."""
        return x

    def export_meta(self, model: nn.Module) -> dict[str, Any]:
        """What an exported artifact's sidecar records beyond the checkpoint's metadata; nothing by default."""
        return {}


def refuse_augmentations(augment: Any, refused: Sequence[str], task: str, why: str, use: str) -> None:
    """One line (ConfigError) naming the first of `refused` (AugmentConfig fields) that `augment` turns on."""
    for name in refused:
        value = getattr(augment, name)
        if value not in (0, 0.0, False, None, "none"):
            raise ConfigError(f"--augment {name} is not available for {task} ({why}); use {use}")


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make `task` available by its name to `fit(task=...)`, evaluation, prediction and export."""
    if not task.name:
        raise ValueError("a task needs a name")
    TASKS[task.name] = task
    return task


def get_task(name: str | None) -> Task:
    """The registered task of this name (None: classification, what checkpoints before tasks were); anything
    else, or a name no task has, is refused in one line (ConfigError)."""
    name = name or "classify"
    if not isinstance(name, str):  # e.g. a handed checkpoint's metadata
        raise ConfigError(f"a task is a name (one of {', '.join(sorted(TASKS))}), got a {type(name).__name__}")
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}{close_matches(name, TASKS)}; registered: {', '.join(sorted(TASKS))}")
    return TASKS[name]
