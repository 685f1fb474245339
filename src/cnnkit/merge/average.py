"""Averaging weights, and BatchNorm statistics measured again for the averaged network (the average of several
networks' running statistics is not the statistics of the averaged network's activations)."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.data import ImageData, Normalize


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of float tensors (accumulated in float64, so that a soup of identical weights is
    those weights exactly); integer tensors (BatchNorm's num_batches_tracked) are the first's."""
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            acc = torch.zeros(v.shape, dtype=torch.float64)
            for s in states:
                acc += s[k].to(torch.float64)
            out[k] = (acc / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None]


@torch.no_grad()
def recompute_bn(model: nn.Module, data: ImageData, normalize: Normalize, batch_size: int = 256) -> int:
    """Replace every BatchNorm layer's running mean and variance by the statistics of its inputs over `data`
    (in batches of `batch_size`, in order), as training mode computes them: each BatchNorm normalizes with its
    batch's statistics meanwhile, everything else (dropout, stochastic depth) runs as at inference. The
    statistics are pooled exactly over all images (Chan's parallel mean and variance, float64; the variance
    unbiased, as BatchNorm keeps it), which is what a cumulative moving average (`momentum=None`) approximates
    batch by batch. Momentum, num_batches_tracked and modes are restored and the model is left in eval mode.
    Returns the number of BatchNorm layers updated (0: none, nothing done)."""
    layers = batchnorms(model)
    if not layers or len(data) < 2:
        return 0
    stats: dict[nn.Module, list] = {m: [0, None, None] for m in layers}  # count, mean, M2 per channel

    def take(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().to(torch.float64)
        dims = [d for d in range(x.ndim) if d != 1]
        nb = x.numel() // x.shape[1]
        mb = x.mean(dims)
        m2b = ((x - mb.view(1, -1, *[1] * (x.ndim - 2))) ** 2).sum(dims)
        s = stats[m]
        if s[1] is None:
            s[:] = [nb, mb, m2b]
            return
        na, ma, m2a = s
        n = na + nb
        delta = mb - ma
        s[:] = [n, ma + delta * (nb / n), m2a + m2b + delta * delta * (na * nb / n)]

    hooks = [m.register_forward_pre_hook(take) for m in layers]
    momenta = [m.momentum for m in layers]
    tracked = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in layers]
    model.eval()
    for m in layers:
        m.momentum = None
        m.train()
    try:
        n = len(data)
        starts = list(range(0, n, batch_size))
        if n - starts[-1] == 1 and len(starts) > 1:  # a batch of one image has no batch statistics: left out
            starts = starts[:-1]
            n -= 1
        for s in starts:
            model(normalize(data.images[s:min(s + batch_size, n)]))
    finally:
        for h in hooks:
            h.remove()
        for m, mom, count in zip(layers, momenta, tracked):
            m.momentum = mom
            if count is not None:  # training mode counted the batches: the count stays the ingredients'
                m.num_batches_tracked.copy_(count)
        model.eval()
    for m in layers:
        count, mean, m2 = stats[m]
        if mean is None:  # a layer the forward pass does not reach
            continue
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_((m2 / max(count - 1, 1)).to(m.running_var.dtype))
    return len(layers)
