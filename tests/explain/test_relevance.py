"""LRP through Captum on BN-folded, fx-prepared copies, checked against gradient × input (LRP-ε with ε → 0
equals it on ReLU networks); the linear decomposition; BN folding."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cnnkit.errors import ExplainError
from cnnkit.explain import explain
from cnnkit.explain.linear import linear_decomposition
from cnnkit.explain.relevance import lrp
from cnnkit.models import create
from cnnkit.models.fold import fold_batchnorm


def _trained_like(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    m = create(name, num_classes=10, in_chans=1, **kw).eval()
    for mod in m.modules():  # BN statistics and affine terms away from the identity, as after training
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


def _grad_x_input(model, x, targets):
    x = x.clone().requires_grad_(True)
    model(x).gather(1, torch.tensor(targets)[:, None]).sum().backward()
    return (x.grad * x).detach()


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20", "vgg8_bn_mini", "inception_resnet_v2_mini"])
def test_lrp_epsilon_zero_equals_gradient_times_input(name):
    """Covers BN folding, residual additions split by Captum's Addition_Module, the option-A shortcut's
    slicing and padding, concatenations and residual scalings."""
    model = _trained_like(name).double()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    rel, _ = lrp(model, x, [1, 2, 3], epsilon=1e-12)
    ref = _grad_x_input(model, x, [1, 2, 3])
    assert (rel - ref).abs().max() <= 1e-6 * ref.abs().max()


def test_lrp_conserves_relevance_without_biases_and_zplus_is_positive():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, bias=False),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3, bias=False)).eval()
    x = torch.rand(4, 1, 16, 16)  # non-negative inputs, as z+ assumes
    logits = net(x)
    target = logits.argmax(1).tolist()
    for rule in ("epsilon", "zplus"):
        rel, delta = lrp(net, x, target, rule=rule, epsilon=1e-9)
        assert torch.allclose(rel.flatten(1).sum(1), logits.gather(1, torch.tensor(target)[:, None])[:, 0],
                              rtol=1e-4) and delta.abs().max() < 1e-4
    # z+ passes only positive contributions, so every input relevance has the sign of the explained logit
    sign = logits.gather(1, torch.tensor(target)[:, None]).sign()
    assert (rel.flatten(1) * sign >= 0).all()


@pytest.mark.parametrize("name, size", [("mobilenet_v2_mini", 28), ("timm/resnet18", 64)])
def test_lrp_on_relu6_and_timm_networks_equals_gradient_times_input(name, size):
    """timm's BatchNormAct2d is split and folded in the model's own dtype (it once fell back to float32)."""
    torch.manual_seed(0)
    model = create(name, num_classes=10, in_chans=1).double()
    for m in model.modules():  # statistics of real activations: at init this MobileNet's output barely
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # depends on its input
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.randn(16, 1, size, size, dtype=torch.float64))
    model.eval()
    x = torch.randn(2, 1, size, size, dtype=torch.float64)
    folded, n = fold_batchnorm(model)
    assert n > 0 and (folded(x) - model(x)).abs().max() < 1e-10
    rel, _ = lrp(model, x, [1, 2], epsilon=1e-12)
    ref = _grad_x_input(model, x, [1, 2])
    assert (rel - ref).abs().max() <= 1e-6 * ref.abs().max()


def test_lrp_through_explain_and_its_errors():
    model = _trained_like("resnet20")
    x = torch.randn(2, 1, 28, 28)
    out = explain(model, x, method="lrp")
    assert out.maps.shape == (2, 28, 28) and out.raw.shape == (2, 1, 28, 28)
    assert len(out.extra["conservation_error"]) == 2
    with pytest.raises(ExplainError, match="LRP has no rule for .*LayerNorm"):
        explain(create("convnext_mini", num_classes=10, in_chans=1).eval(), x, method="lrp")
    with pytest.raises(ExplainError, match="unknown LRP rule 'gamma'"):
        explain(model, x, method="lrp", rule="gamma")


def test_fold_batchnorm_preserves_outputs_and_leaves_the_source_alone():
    model = _trained_like("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, n = fold_batchnorm(model)
    x = torch.randn(4, 1, 28, 28)
    assert n == 19 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert (folded(x) - model(x)).abs().max() <= 1e-5
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20", "tinyvgg"])
def test_linear_decomposition_reproduces_the_logits(name):
    model = _trained_like(name)
    size = 64 if name == "tinyvgg" else 28
    x = torch.randn(5, 1, size, size)
    d = linear_decomposition(model, x, batch_size=2)
    assert d.contributions.shape == (5, 10, 1, size, size)
    assert (d.linear + d.bias - model(x)).abs().max() <= 1e-4 and d.max_error <= 1e-4
    assert ((d.bias_share >= 0) & (d.bias_share <= 1)).all()
    # A_x·x is the Jacobian-vector product along x: check one class by autograd
    xx = x.clone().requires_grad_(True)
    model(xx)[:, 3].sum().backward()
    assert torch.allclose((xx.grad * x).flatten(1).sum(1), d.linear[:, 3], atol=1e-5)


def test_linear_decomposition_flags_networks_that_are_not_piecewise_linear():
    torch.manual_seed(0)
    smooth = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    d = linear_decomposition(smooth.eval(), torch.randn(3, 1, 8, 8))
    assert d.max_error > 1e-3
    no_bias = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3, bias=False))
    d = linear_decomposition(no_bias.eval(), torch.randn(3, 1, 8, 8))
    assert d.bias.abs().max() == 0 and d.max_error <= 1e-5
