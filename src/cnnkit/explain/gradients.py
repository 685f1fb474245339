"""Gradient attributions through Captum (not re-written here): vanilla saliency (Simonyan et al. 2013),
SmoothGrad (Smilkov et al. 2017), Integrated Gradients (Sundararajan et al. 2017) and Guided Backprop
(Springenberg et al. 2015).

Each returns the input-shaped attribution (B×C×H×W) and a B×H×W map: the largest absolute value over
channels for the gradient maps (as Simonyan et al. take it), the absolute channel sum for Integrated
Gradients, whose attributions are signed and sum to the score difference.

Guided Backprop changes the backward pass of `nn.ReLU` modules only (every cnnkit model uses modules); a
ReLU called as a function inside some other model's forward passes plain gradients.

LRP (`relevance.py`) is signed; its map is the positive part of the channel sum, the evidence for the class.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

GRADIENT_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "guided_backprop", "lrp")


def attribute(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str, samples: int = 25,
              noise: float = 0.15, steps: int = 64, baseline: float = 0.0, rule: str = "epsilon",
              epsilon: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(attributions B×C×H×W, map B×H×W, extra per-image figures) of `method` for the `targets` logits."""
    from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency

    if method == "lrp":
        from cnnkit.explain.relevance import lrp

        attr, delta = lrp(model, x, targets.tolist(), rule=rule, epsilon=epsilon)
        return attr, attr.sum(1).clamp_min(0), {"conservation_error": delta.tolist()}
    x = x.detach().clone().requires_grad_(True)
    t = targets.tolist()
    if method == "saliency":
        attr = Saliency(model).attribute(x, target=t, abs=False)
    elif method == "smoothgrad":  # noise σ as a fraction of each image's value range, as in the paper
        span = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).detach()
        attr = NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=samples,
                                                      stdevs=float(noise * span.mean()), target=t, abs=False,
                                                      nt_samples_batch_size=max(1, 256 // len(x)))
    elif method == "integrated_gradients":
        attr = IntegratedGradients(model).attribute(x, baselines=baseline, target=t, n_steps=steps,
                                                    method="gausslegendre",
                                                    internal_batch_size=max(len(x), 256))  # bounded memory
    elif method == "guided_backprop":
        with warnings.catch_warnings():  # Captum's notice that its ReLU hooks are temporary: nothing to act on
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            attr = GuidedBackprop(model).attribute(x, target=t)
    else:
        raise ValueError(method)
    attr = attr.detach()
    heat = attr.sum(1).abs() if method == "integrated_gradients" else attr.abs().amax(1)
    return attr, heat, {}
