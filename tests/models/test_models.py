from __future__ import annotations

import pytest
import timm
import torch

from cnnkit.errors import ModelError
from cnnkit.models import create, list_models


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,millions", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66),
                                           ("resnet56", 0.85), ("resnet110", 1.7)])
def test_cifar_resnet_parameter_counts_match_he_et_al_2016(name, millions):
    model = create(name, num_classes=10, in_chans=3)
    assert round(n_params(model) / 1e6, 2 if millions < 1 else 1) == millions


def test_cifar_resnet_depth_and_shapes():
    m = create("resnet56", 10, 3)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) + 1 == 56  # 55 convolutions + the classifier
    feats = m.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 64, 8, 8)
    assert create("resnet20", 10, 1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_tinyvgg_matches_cnn_explainer():
    m = create("tinyvgg", num_classes=10, in_chans=3, img_size=64)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [10, 10, 10, 10] and all(c.padding == (0, 0) for c in convs)
    assert m.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 10, 13, 13)
    assert m.fc.in_features == 1690
    assert create("tinyvgg", 10, 1, img_size=28)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet9_width_and_surface():
    m = create("resnet9", 7, 1, width=16)
    x = torch.randn(2, 1, 28, 28)
    assert m.forward_features(x).shape == (2, 128, 3, 3)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 128)
    assert m(x).shape == (2, 7) and m.num_classes == 7
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)


def test_resnet9_pool_first_is_the_same_function_where_pooling_commutes_with_bn():
    """Max-pool commutes with a per-channel increasing map (BN in eval mode with positive scale, then ReLU), so
    the pool-first ordering with the same weights computes the same outputs there; its BN then sees pooled maps."""
    torch.manual_seed(0)
    orig, fast = create("resnet9", 10, 1, width=8), create("resnet9", 10, 1, width=8, pool_first=True)
    assert [type(m).__name__ for m in fast.layer1[0]] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    with torch.no_grad():
        for m in orig.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0), m.bias.normal_(), m.running_mean.normal_(), m.running_var.uniform_(0.5, 2)
    renamed = {}
    for k, v in orig.state_dict().items():
        parts = k.split(".")
        if parts[0] in ("layer1", "layer2", "layer3"):
            if parts[1] == "0" and parts[2] == "1":  # the down-sampling BN moves behind the pool
                parts[2] = "2"
            elif parts[1] == "2":  # the residual pair moves up one: no separate pool module
                parts[1] = "1"
        renamed[".".join(parts)] = v
    fast.load_state_dict(renamed)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(fast.eval()(x), orig.eval()(x), rtol=1e-5, atol=1e-5)
    # in training the batch statistics are those of the pooled map, so the two differ: a different model
    assert not torch.allclose(fast.train()(x), orig.train()(x), atol=1e-3)
    with pytest.raises(ModelError, match="pool_first=1 is not valid: give true or false"):
        create("resnet9", pool_first=1)


def test_timm_passthrough_and_listing():
    m = create("timm/resnet18", num_classes=5, in_chans=1)
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    assert n_params(m) == n_params(timm.create_model("resnet18", num_classes=5, in_chans=1))
    assert "resnet20" in list_models() and "timm/resnet18" in list_models("resnet18", include_timm=True)


def test_bad_model_input():
    with pytest.raises(ModelError, match="did you mean: .*resnet20"):
        create("resnet2O")
    with pytest.raises(ModelError, match="unknown timm model 'resnet1800'.*did you mean"):
        create("timm/resnet1800")
    with pytest.raises(ModelError, match="does not support option.*depth.*accepts: width"):
        create("resnet9", depth=3)
    with pytest.raises(ModelError, match="at least 16×16"):
        create("tinyvgg", img_size=12)
