"""Test-time adaptation of BatchNorm to the data being predicted, on a copy of the model (the checkpoint is
never changed):

- `bn`: prediction-time BatchNorm (Schneider et al., NeurIPS 2020; Nado et al., 2020): each batch is
  normalized with its own mean and variance instead of the training set's running statistics.
- `alpha-bn` (You, Li and Zhao, 2021): the statistics used are `(1 − α)·source + α·batch` for the mean and
  the variance, so α = 0 is the source model and α = 1 is `bn`. Here α weighs the *test batch* (the paper
  writes the same mixture with α on the source side; its recommended 0.9 on the source is α = 0.1 here).
  With a small α the source statistics anchor the estimate, which is why it holds up at batch size 1.
- `tent` (Wang et al., ICLR 2021): BatchNorm normalizes with the batch's statistics, and after each batch one
  gradient step minimizes the mean entropy of its predictions, updating only the BatchNorm scales and shifts
  (Adam, lr 1e-3, as the paper's CIFAR runs). Online: each batch's predictions come from the forward pass made
  before its update, and the updates carry over to the next batches until `reset()`.

Only BatchNorm layers over images (N×C×H×W inputs) adapt; a BatchNorm over vectors after global pooling keeps
its source statistics (one image has no variance across a batch of one). A model without BatchNorm has
nothing to adapt, and says so.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from cnnkit.errors import ConfigError
from cnnkit.runtime import autocast

ADAPT_METHODS = ("bn", "alpha-bn", "tent")
DEFAULT_ALPHA = 0.1
DEFAULT_TENT_LR = 1e-3


def _image_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, nn.BatchNorm1d) and m.track_running_stats and m.running_mean is not None]


def check_adapt(method: str | None, alpha: float | None = None, lr: float = DEFAULT_TENT_LR) -> None:
    """ConfigError unless `method` is a known adaptation, α (for alpha-bn only) lies in [0, 1] and tent's
    learning rate is a positive number."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--tent-lr must be a positive number, got {lr}")
    if method is None:
        if alpha is not None:
            raise ConfigError("--alpha sets alpha-bn's mixture; give it with --adapt alpha-bn")
        return
    if method not in ADAPT_METHODS:
        raise ConfigError(f"--adapt must be one of {', '.join(ADAPT_METHODS)}, got {method!r}")
    if alpha is not None and method != "alpha-bn":
        raise ConfigError(f"--alpha sets alpha-bn's mixture; --adapt {method} does not use it")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must lie between 0 (the source statistics) and 1 (the batch's), got {alpha}")


class BatchNormAdapter:
    """Calls a copy of `model` on batches, adapting it as `method` says (see the module docstring)."""

    def __init__(self, model: nn.Module, method: str, alpha: float | None = None, lr: float = DEFAULT_TENT_LR,
                 device: torch.device | str = "cpu", amp: torch.dtype | None = None) -> None:
        check_adapt(method, alpha, lr)
        if not _image_norms(model):
            raise ConfigError(f"--adapt {method} adapts BatchNorm layers, and this model has none over images "
                              f"(it normalizes otherwise, e.g. LayerNorm): there is nothing to adapt")
        self.method, self.device, self.amp, self.lr = method, torch.device(device), amp, lr
        self.alpha = 1.0 if method == "bn" else (DEFAULT_ALPHA if alpha is None else float(alpha))
        self.source = model
        self.reset()

    def reset(self) -> None:
        """Back to the source model (tent's updates and optimizer state are dropped)."""
        self.model = copy.deepcopy(self.source).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.norms = _image_norms(self.model)
        if self.method == "tent":
            params = []
            for m in self.norms:  # batch statistics, with gradients through them; no running averages kept
                m.train()
                m.track_running_stats = False
                m.running_mean = m.running_var = None
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.requires_grad_(True)
                        params.append(p)
            self.optimizer = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999))
        else:
            self._source_stats = [(m.running_mean.clone(), m.running_var.clone()) for m in self.norms]
            for m, stats in zip(self.norms, self._source_stats):
                m.register_forward_pre_hook(self._mixer(stats))

    def _mixer(self, stats: tuple[torch.Tensor, torch.Tensor]):
        mean_s, var_s, a = stats[0], stats[1], self.alpha

        def mix(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if x.ndim < 3:  # vectors: keep the source statistics
                return
            dims = [0, *range(2, x.ndim)]
            xf = x.detach().float()
            var_t, mean_t = torch.var_mean(xf, dim=dims, correction=0)
            module.running_mean.copy_((1 - a) * mean_s + a * mean_t)
            module.running_var.copy_((1 - a) * var_s + a * var_t)
        return mix

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the batch `x` (float32), from the model as adapted to it."""
        if self.method != "tent":
            with torch.no_grad(), autocast(self.device, self.amp):
                return self.model(x).float()
        with torch.enable_grad(), autocast(self.device, self.amp):
            logits = self.model(x).float()
        log_p = logits.log_softmax(1)
        entropy = -(log_p.exp() * log_p).sum(1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        entropy.backward()
        self.optimizer.step()
        return logits.detach()


def adapted_probs(adapter: BatchNormAdapter, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and labels over a loader, adapting batch by batch in the loader's order."""
    probs, labels = [], []
    for x, y in loader:
        probs.append(adapter(x).softmax(1))
        labels.append(y)
    return torch.cat(probs).cpu(), torch.cat(labels).cpu()
