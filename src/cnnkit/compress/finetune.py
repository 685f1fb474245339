"""A short fine-tuning loop for compressed models (pruned, fake-quantized, masked): SGD with Nesterov
momentum and a cosine schedule, padded-crop + flip augmentation, optional knowledge distillation from the
uncompressed model (Hinton et al. 2015: KL between temperature-softened outputs, mixed with the label loss),
and an optional hook after each step (to re-apply a sparsity mask)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data import BatchLoader, ImageData, Normalize
from cnnkit.data.settings import AugmentConfig
from cnnkit.tasks.distill import kd_loss  # the one KD loss, shared with training's distillation


def finetune(model: nn.Module, data: ImageData, mean, std, epochs: float = 1.0, lr: float = 0.01,
             batch_size: int = 128, teacher: nn.Module | None = None, kd_alpha: float = 0.7,
             kd_temperature: float = 4.0, weight_decay: float = 5e-4, after_step: Callable[[], None] | None = None,
             seed: int = 0, freeze_bn_after: float | None = None,
             freeze_bn: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Train `model` in place for `epochs` (fractions allowed) over `data`; returns it in eval mode.
    `freeze_bn_after` (a fraction of the run) calls `freeze_bn(model)` then, to stop its BN statistics (QAT).
    Its randomness (order, augmentation, dropout) comes from `seed` alone, whatever ran before in the process:
    a variant of `cnnkit compress` comes out the same alone or after others; the caller's random state is
    left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _finetune(model, data, mean, std, epochs, lr, batch_size, teacher, kd_alpha, kd_temperature,
                         weight_decay, after_step, seed, freeze_bn_after, freeze_bn)


def _finetune(model: nn.Module, data: ImageData, mean, std, epochs: float, lr: float, batch_size: int,
              teacher: nn.Module | None, kd_alpha: float, kd_temperature: float, weight_decay: float,
              after_step: Callable[[], None] | None, seed: int, freeze_bn_after: float | None,
              freeze_bn: Callable[[nn.Module], None] | None) -> nn.Module:
    loader = BatchLoader(data, batch_size, Normalize(mean, std), shuffle=True, seed=seed,
                         augment=AugmentConfig(hflip=True), drop_last=len(data) > batch_size)
    total = max(1, math.ceil(epochs * len(loader)))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if teacher is not None:
        teacher.eval()
    model.train()
    step, epoch = 0, 0
    while step < total:
        loader.set_epoch(epoch)
        for x, y in loader:
            if freeze_bn is not None and freeze_bn_after is not None and step == int(freeze_bn_after * total):
                freeze_bn(model)
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(x)
                loss = kd_loss(out, (t.float() / kd_temperature).softmax(1), y, kd_temperature, kd_alpha)
            else:
                loss = F.cross_entropy(out, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            step += 1
            if step >= total:
                break
        epoch += 1
    return model.eval()
