"""Gradient attributions (through Captum): saliency against finite differences, Integrated Gradients'
completeness, and the map conventions."""

from __future__ import annotations

import copy

import pytest
import torch

from cnnkit.explain import explain
from cnnkit.models import create


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    return create("resnet20", num_classes=10, in_chans=1).double().eval()


def test_saliency_equals_a_finite_difference_gradient(model64):
    torch.manual_seed(1)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    grads = explain(model64, x, [3, 8], method="saliency").raw  # float64 model, float64 gradients
    eps = 1e-6
    for b, (i, j) in ((0, (3, 4)), (0, (10, 12)), (1, (7, 7)), (1, (15, 0))):
        up, down = x.clone(), x.clone()
        up[b, 0, i, j] += eps
        down[b, 0, i, j] -= eps
        t = [3, 8][b]
        fd = (model64(up)[b, t] - model64(down)[b, t]) / (2 * eps)
        assert abs(float(fd) - float(grads[b, 0, i, j])) <= 1e-6 + 1e-4 * abs(float(fd))
    maps = explain(model64, x, [3, 8], method="saliency").maps
    assert maps.shape == (2, 16, 16) and (maps >= 0).all()
    assert torch.allclose(maps.amax((1, 2)), torch.ones(2, dtype=maps.dtype))
    g = grads[0, 0].abs()  # one channel: the max |gradient| over channels is |gradient|, then min-max scaled
    assert torch.allclose(maps[0], (g - g.min()) / (g.max() - g.min()))


def test_integrated_gradients_are_complete():
    torch.manual_seed(2)
    m = create("resnet20", num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([0, 4, 9])
    out = explain(m, x, t, method="integrated_gradients", steps=128)
    with torch.no_grad():
        diff = m(x)[torch.arange(3), t] - m(torch.zeros_like(x))[torch.arange(3), t]
    total = out.raw.sum((1, 2, 3))
    assert ((total - diff).abs() <= 0.01 * diff.abs() + 1e-4).all()  # completeness within 1%


@pytest.mark.parametrize("method", ["smoothgrad", "guided_backprop"])
def test_other_gradient_maps(method):
    torch.manual_seed(3)
    m = create("resnet9", num_classes=10, in_chans=1, width=8).eval()
    x = torch.randn(2, 1, 28, 28)
    out = explain(m, x, method=method, **({"samples": 8} if method == "smoothgrad" else {}))
    assert out.raw.shape == (2, 1, 28, 28) and out.maps.shape == (2, 28, 28) and out.layer == "input"
    assert torch.isfinite(out.maps).all() and (out.maps >= 0).all()
    assert torch.equal(out.targets, m(x).argmax(1))
    assert not torch.allclose(out.raw, explain(m, x, method="saliency").raw)  # not plain gradients


def test_guided_backprop_guides_the_cifar_resnet_blocks():
    """The residual blocks' ReLUs are modules, so Guided Backprop reaches them: its input gradient equals a
    hand-written guided backward (gradients clamped at zero at every ReLU)."""
    torch.manual_seed(4)
    m = create("resnet20", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    out = explain(m, x, [3, 5], method="guided_backprop")

    ref = copy.deepcopy(m)
    for mod in ref.modules():
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = False  # full backward hooks cannot wrap in-place ops
            mod.register_full_backward_hook(lambda mod, gin, gout: (gin[0].clamp_min(0),))
    xx = x.clone().requires_grad_(True)
    ref(xx).gather(1, torch.tensor([[3], [5]])).sum().backward()
    assert torch.allclose(out.raw, xx.grad, atol=1e-6)
