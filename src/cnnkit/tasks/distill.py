"""Knowledge distillation, an objective of classification (`fit(distill=..., teachers=[...])`, `cnnkit distill`).

- `kd` (Hinton, Vinyals and Dean, 2015): the teachers' softmax at temperature T, averaged over the teachers,
  is the soft target; the loss is `α · T² · KL(soft target ‖ student's softmax at T) + (1 − α) · CE(labels)`.
  The T² keeps the soft term's gradients on the scale of the hard term's as T changes.
- `meal-v2` (Shen and Savvides, 2020): the teachers' averaged softmax (T = 1) is the only target, KL as above,
  no one-hot labels anywhere; plus a small discriminator (an MLP on the class-probability vectors, sigmoid
  output) that learns to tell the teachers' outputs from the student's while the student learns to fool it.
  Both play in one backward pass: the discriminator's loss reaches the student through a gradient reversal
  (Ganin and Lempitsky, 2015), scaled by `disc_weight`, so one optimizer step moves the discriminator down
  its loss and the student up it. The discriminator is saved with the training state, so a run resumes exactly.

Teachers are cnnkit checkpoints of any architecture trained on the same classes and input shape; each sees the
student's augmented batch, re-normalized with its own mean and std, in inference mode and without gradients.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CheckpointError, ConfigError
from cnnkit.runtime import autocast
from cnnkit.tasks.base import Objective, TrainSetting


def kd_loss(student_logits: torch.Tensor, teacher_probs_t: torch.Tensor, target: torch.Tensor, temperature: float,
            alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton's loss: α·T²·KL(teacher ‖ student at T) + (1 − α)·CE(student, target); `teacher_probs_t` are the
    (averaged) teachers' probabilities at the same temperature T."""
    log_p = F.log_softmax(student_logits.float() / temperature, 1)
    soft = F.kl_div(log_p, teacher_probs_t, reduction="batchmean") * temperature ** 2
    if alpha >= 1.0:
        return soft
    hard = F.cross_entropy(student_logits.float(), target, label_smoothing=label_smoothing)
    return alpha * soft + (1 - alpha) * hard


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by −scale on the way back."""
    return _Reverse.apply(x, scale)


class Discriminator(nn.Module):
    """MEAL V2's discriminator: class-probability vector -> logit of 'this came from the teachers'."""

    def __init__(self, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_classes, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden // 2),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden // 2, 1))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.net(probs).squeeze(1)


def meal_v2_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, discriminator: Discriminator,
                 disc_weight: float) -> torch.Tensor:
    """KL(teachers ‖ student) plus the discriminator's loss (teachers = 1, student = 0), which reaches the
    student reversed and scaled by `disc_weight`. No labels enter."""
    log_p = F.log_softmax(student_logits.float(), 1)
    similarity = F.kl_div(log_p, teacher_probs, reduction="batchmean")
    if disc_weight <= 0:
        return similarity
    real = discriminator(teacher_probs)
    fake = discriminator(reverse_gradient(log_p.exp(), disc_weight))
    adversarial = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                   + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    return similarity + adversarial


def _trained_on(meta: dict[str, Any]) -> str | None:
    """The dataset a checkpoint's run trained on, as its metadata records it."""
    dataset = meta.get("dataset")
    name = dataset.get("name") if isinstance(dataset, dict) else None
    return name if isinstance(name, str) else None


def teachers_data(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """What a student given no --data trains on: the teachers' dataset (`data`, and the `data_dir` and `img_size`
    their runs read it with, when set and still there). ConfigError, asking for --data, when the teachers were
    trained on different data or one does not record its own."""
    from cnnkit.artifacts import artifact_kind, read_meta, resolve_checkpoint
    from cnnkit.artifacts.kinds import artifact_file

    found = {}
    for path in paths:
        if artifact_kind(path) != "checkpoint":
            raise CheckpointError(f"teacher {path} is an exported artifact; give a cnnkit checkpoint or run")
        meta = read_meta(resolve_checkpoint(artifact_file(path)))  # a run's best, a soup folder's soup
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        found[str(path)] = (_trained_on(meta), config.get("data_dir"), config.get("img_size"))
    unknown = [p for p, (name, _, _) in found.items() if name is None]
    if unknown:
        raise ConfigError(f"teacher {unknown[0]} does not record the data it was trained on; give --data")
    if len({name for name, _, _ in found.values()}) > 1:
        raise ConfigError(f"the teachers were trained on different data "
                          f"({'; '.join(f'{p}: {v[0]}' for p, v in found.items())}); give --data")
    name, data_dir, img_size = next(iter(found.values()))
    values: dict[str, Any] = {"data": name}
    if isinstance(data_dir, str) and Path(data_dir).is_dir():
        values["data_dir"] = data_dir
    if img_size is not None:
        values["img_size"] = img_size
    return values


class Distillation(Objective):
    """Classification learned from teachers: `kd` (Hinton's loss) or `meal-v2` (the teachers' outputs only, and
    a discriminator trained beside the student, saved with the training state)."""

    def __init__(self, method: str, teachers: Sequence[str], temperature: float = 4.0, alpha: float = 0.9,
                 disc_weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()  # the method and the teachers' presence are checked where they enter (TrainConfig)
        self.method, self.paths = method, list(teachers)
        self.temperature, self.alpha, self.disc_weight, self.smoothing = temperature, alpha, disc_weight, label_smoothing
        self.teachers: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self.discriminator: Discriminator | None = None

    def bind(self, setting: TrainSetting) -> None:
        """Load the teachers (each re-normalizing the student's batch for itself) and MEAL V2's discriminator."""
        from cnnkit.artifacts import is_exported, load

        s, device = setting, setting.device
        self.device, self.amp = device, s.amp
        student_mean = torch.tensor(s.mean, device=device).view(1, -1, 1, 1)
        student_std = torch.tensor(s.std, device=device).view(1, -1, 1, 1)
        for path in self.paths:
            ckpt = load(path, device)
            if is_exported(ckpt.model):
                raise CheckpointError(f"teacher {path} is an exported artifact; give a cnnkit checkpoint or run")
            own = _trained_on(ckpt.meta)
            if list(ckpt.classes) != list(s.classes):
                raise ConfigError(f"teacher {path} predicts other classes than --data's ({len(ckpt.classes)} "
                                  f"classes, first {ckpt.classes[0]!r}; the data has {len(s.classes)}, first "
                                  f"{s.classes[0]!r}): it was trained on {own or 'other data'}; leave out --data to "
                                  f"distill on the teachers' data, or give a --data with their classes")
            if (ckpt.in_chans, *ckpt.img_size) != (s.in_chans, *s.img_size):
                raise ConfigError(f"teacher {path} takes {ckpt.in_chans}×{ckpt.img_size[0]}×{ckpt.img_size[1]} "
                                  f"images, --data gives {s.in_chans}×{s.img_size[0]}×{s.img_size[1]}: leave out "
                                  f"--data to distill on the teachers' data ({own or 'unrecorded'}), or use "
                                  f"--img-size to match")
            t_mean, t_std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in ckpt.normalization)
            # the student's normalized batch, re-normalized for this teacher: x·(s_std/t_std) + (s_mean − t_mean)/t_std
            scale, shift = student_std / t_std, (student_mean - t_mean) / t_std
            fmt = torch.channels_last if s.channels_last else torch.contiguous_format
            model = ckpt.model.to(device, memory_format=fmt).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self.teachers.append((model, scale, shift))
        if self.method == "meal-v2":
            self.discriminator = Discriminator(len(s.classes)).to(device)
            self.modules = {"discriminator": self.discriminator}

    @torch.no_grad()
    def teacher_probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The teachers' softmax at `temperature`, averaged over the teachers (float32)."""
        total = None
        with autocast(self.device, self.amp):
            for model, scale, shift in self.teachers:
                p = (model(x * scale + shift).float() / temperature).softmax(1)
                total = p if total is None else total + p
        return total / len(self.teachers)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.method == "kd":
            return kd_loss(outputs, self.teacher_probs(x, self.temperature), targets, self.temperature,
                           self.alpha, self.smoothing)
        return meal_v2_loss(outputs, self.teacher_probs(x), self.discriminator, self.disc_weight)
