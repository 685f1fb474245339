"""The linear decomposition of a piecewise-linear network's logits (eval mode; ReLU, max-pooling, batch
norm): around an input x the network is affine, logits = A_x·x + b_x, with A_x the input Jacobian.

b_x is not taken as logits − A_x·x (that would reproduce the logits by construction). It is computed on
its own, from Euler's theorem: inside one linear region the logits are jointly homogeneous of degree one
in the input and every additive constant of the network, so b_x = Σ ∂f/∂c · c over the convolution and
linear biases and each batch norm's shift β − γμ/√(σ²+ε). `max_error` (|A_x·x + b_x − logits|) is then
a real check: it is at round-off level exactly when the network is piecewise linear, and large for
networks with smooth activations, attention gates or layer norms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.func import functional_call, jacrev, vmap

from cnnkit.errors import ExplainError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class LinearDecomposition:
    """Per image and class: `contributions` A_x ⊙ x (B×K×C×H×W, summing to `linear` = A_x·x), `bias` b_x
    (B×K), the `logits`, `bias_share` = |b_x| / (|A_x·x| + |b_x|), and the largest reconstruction error."""

    contributions: torch.Tensor
    linear: torch.Tensor
    bias: torch.Tensor
    logits: torch.Tensor
    bias_share: torch.Tensor
    max_error: float


def _constants(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{parameter name: (the parameter, the additive constant it carries)} for every bias and BN shift."""
    out = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, _BN):
            if not m.affine or m.running_mean is None:
                raise ExplainError(f"batch norm {name!r} has no affine shift or running statistics; the linear "
                                   f"decomposition needs eval-mode BN with affine=True")
            shift = m.bias - m.weight * m.running_mean / torch.sqrt(m.running_var + m.eps)
            out[prefix + "bias"] = (m.bias, shift.detach())
        elif getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
            out[prefix + "bias"] = (m.bias, m.bias.detach())
    return out


def linear_decomposition(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> LinearDecomposition:
    """Decompose `model`'s logits on `images` (B×C×H×W) into A_x·x + b_x; see the module docstring."""
    from cnnkit.explain.cam import check_inputs, model_dtype

    check_inputs(model, images, None)
    was_training = model.training
    model.eval()
    consts = _constants(model)
    state = {k: v.detach() for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}
    names = list(consts)

    def f(biases: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**state, **dict(zip(names, biases))}, (x[None],))[0]

    per_image = vmap(jacrev(f, argnums=(0, 1)), in_dims=(None, 0))
    parts = []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].detach().to(model_dtype(model))
            biases = tuple(state[n] for n in names)
            d_bias, d_x = per_image(biases, x)
            with torch.no_grad():
                logits = model(x)
            contrib = d_x * x[:, None]
            b = sum(((d * consts[n][1]).flatten(2).sum(2) for n, d in zip(names, d_bias)),
                    torch.zeros_like(logits))
            parts.append((contrib.detach(), b.detach(), logits))
    except RuntimeError as e:
        raise ExplainError(f"cannot differentiate {type(model).__name__} per image: "
                           f"{str(e).splitlines()[0][:160]}") from None
    finally:
        model.train(was_training)
    contrib, bias, logits = (torch.cat(t) for t in zip(*parts))
    linear = contrib.flatten(2).sum(2)
    share = bias.abs() / (linear.abs() + bias.abs()).clamp_min(1e-12)
    return LinearDecomposition(contrib, linear, bias, logits, share,
                               float((linear + bias - logits).abs().max()))
