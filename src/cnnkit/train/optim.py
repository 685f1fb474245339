"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2

from cnnkit.train.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimizer (timm's), weight decay on weights only (never on norms and biases)."""
    opt = {"sgd": "nesterov", "adamw": "adamw", "rmsprop": "rmsproptf"}[cfg.optimizer]
    extra = {"eps": cfg.opt_eps} if cfg.opt_eps is not None else {}
    return create_optimizer_v2(model, opt=opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               filter_bias_and_bn=True, **extra)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int, done_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: one-cycle (warm-up = its rising phase) or linear warm-up then cosine decay;
    `done_steps` fast-forwards it past the steps a run has already taken (a resumed or re-planned run)."""
    sched = _schedule(cfg, optimizer, total_steps, steps_per_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a schedule without an optimizer step: on purpose here
        for _ in range(min(done_steps, total_steps - 1)):
            sched.step()
    return sched


def _schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int,
              steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total_steps // 2)
    if total_steps < 4:  # too short to shape: constant learning rate
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=max(warmup, 2) / total_steps,  # >= 2 steps:
            # with one, torch's OneCycleLR divides by a zero-length warm-up phase
            anneal_strategy="linear", cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
    sched = torch.optim.lr_scheduler
    cosine = sched.CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup, 1), eta_min=cfg.lr * 1e-3)
    if warmup == 0:
        return cosine
    linear = sched.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
