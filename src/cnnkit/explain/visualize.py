"""What a trained network has learnt, without an input image to explain:

- class-model images (Simonyan, Vedaldi & Zisserman 2013): gradient ascent on the input from a (near-)zero
  image to maximize the unnormalized class score S_c(I) − λ‖I‖², with the regularizers of Yosinski et al. 2015
  (random jitter each step, a Gaussian blur every few steps) available;
- activation maximization: the same ascent on the mean activation of one channel of a layer;
- feature maps of any layer for given images;
- the first convolution's filters as an image grid.

Optimized images live in the model's input space (normalized), batched over classes or channels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from cnnkit.errors import ExplainError
from cnnkit.explain.cam import check_inputs, model_dtype, resolve_layer


def _ascend(model: nn.Module, objective: Callable[[torch.Tensor], torch.Tensor], count: int,
            shape: tuple[int, int, int], steps: int, lr: float, l2: float, jitter: int, blur_every: int,
            blur_sigma: float, seed: int, init_std: float) -> torch.Tensor:
    """Gradient ascent on `count` images of `shape`, from near zero, maximizing objective(x) (one value per image)
    − l2·‖x‖²; Adam steps, optional jitter (random roll) and periodic blur."""
    from torchvision.transforms.functional import gaussian_blur

    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    # Simonyan et al. start from the zero image; a little noise (init_std) keeps a ReLU network whose zero
    # input gives all-zero activations (no biases yet, as at initialization) off that stationary point.
    x = (init_std * torch.randn(shape, generator=gen)).expand(count, *shape).clone().to(model_dtype(model))
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    try:
        for step in range(steps):
            dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist() if jitter else (0, 0))
            shifted = torch.roll(x, (dy, dx), dims=(2, 3))
            loss = -(objective(shifted) - l2 * x.pow(2).flatten(1).sum(1)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                with torch.no_grad():
                    k = max(3, int(4 * blur_sigma) | 1)
                    x.copy_(gaussian_blur(x, [k, k], [blur_sigma, blur_sigma]))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return x.detach()


def class_model(model: nn.Module, targets: list[int] | torch.Tensor, shape: tuple[int, int, int],
                steps: int = 200, lr: float = 0.05, l2: float = 1e-3, jitter: int = 0, blur_every: int = 0,
                blur_sigma: float = 0.5, seed: int = 0, init_std: float = 0.01) -> torch.Tensor:
    """Class-model images, one per target (T×C×H×W), by regularized gradient ascent on the class score."""
    tgt = torch.as_tensor(targets, dtype=torch.long).flatten()
    check_inputs(model, torch.zeros(1, *shape), None)
    with torch.no_grad():
        n_classes = model(torch.zeros(1, *shape, dtype=model_dtype(model))).shape[1]
    if len(tgt) == 0 or int(tgt.min()) < 0 or int(tgt.max()) >= n_classes:
        raise ExplainError(f"targets must be classes 0–{n_classes - 1}, got {tgt.tolist()}")
    return _ascend(model, lambda x: model(x).gather(1, tgt[:, None])[:, 0], len(tgt), shape, steps, lr, l2,
                   jitter, blur_every, blur_sigma, seed, init_std)


def activation_maximization(model: nn.Module, layer: str, channels: list[int], shape: tuple[int, int, int],
                            steps: int = 200, lr: float = 0.05, l2: float = 1e-3, jitter: int = 0,
                            blur_every: int = 0, blur_sigma: float = 0.5, seed: int = 0,
                            init_std: float = 0.01) -> torch.Tensor:
    """Images (one per channel) that maximize the mean activation of `channels` of `layer`."""
    name, module = resolve_layer(model, layer)
    ch = torch.as_tensor(channels, dtype=torch.long).flatten()
    width = feature_maps(model, torch.zeros(1, *shape, dtype=model_dtype(model)), name)[1].shape[1]
    if len(ch) == 0 or int(ch.min()) < 0 or int(ch.max()) >= width:
        raise ExplainError(f"layer {name!r} has {width} channels (0–{width - 1}); got {ch.tolist()}")
    store: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda _m, _i, out: store.__setitem__("out", out))
    try:
        def objective(x):
            model(x)
            return store["out"][torch.arange(len(ch)), ch].mean((1, 2))

        return _ascend(model, objective, len(ch), shape, steps, lr, l2, jitter, blur_every, blur_sigma, seed, init_std)
    finally:
        handle.remove()


def feature_maps(model: nn.Module, images: torch.Tensor, layer: str = "auto") -> tuple[str, torch.Tensor]:
    """(layer name, its B×C×h×w output) for `images`."""
    check_inputs(model, images, None)
    name, module = resolve_layer(model, layer)
    store: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda _m, _i, out: store.__setitem__("out", out))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images.to(model_dtype(model)))
    finally:
        handle.remove()
        model.train(was_training)
    out = store["out"]
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise ExplainError(f"layer {name!r} does not give a B×C×H×W feature map")
    return name, out


def first_layer_filters(model: nn.Module, nrow: int | None = None) -> tuple[str, torch.Tensor]:
    """(name, 3×H×W grid in [0, 1]) of the first convolution's filters, each min-max scaled on its own.
    Filters over three input channels are shown in colour; others as their mean over input channels."""
    from torchvision.utils import make_grid

    conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ExplainError(f"{type(model).__name__} has no convolutional layers")
    name, m = conv
    w = m.weight.detach().float()
    w = w if w.shape[1] == 3 else w.mean(1, keepdim=True)
    lo, hi = w.amin((1, 2, 3), keepdim=True), w.amax((1, 2, 3), keepdim=True)
    w = torch.where(hi > lo, (w - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(w))
    n = len(w)
    return name, make_grid(w, nrow=nrow or max(1, int(n ** 0.5 + 0.999)), padding=1, pad_value=1.0)
