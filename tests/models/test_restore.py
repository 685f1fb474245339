"""Restoration networks against their papers: layer definitions, parameter counts, sizes, the residual paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnkit.errors import ModelError
from cnnkit.models import create
from cnnkit.models.restore import bicubic, noise_level_loss


def weights_and_biases(model: torch.nn.Module) -> tuple[int, int]:
    """Parameters of convolutions' kernels (as the papers count them) and everything else trainable."""
    kernels = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 4)
    return kernels, sum(p.numel() for p in model.parameters()) - kernels


def test_srcnn_has_the_papers_8032_weights_for_9_1_5_and_57184_for_9_5_5():
    # Dong et al. 2016, section 4.3: 9-1-5 has 8,032 parameters (weights; 64 and 32 filters, one channel),
    # 9-5-5 has 57,184
    assert weights_and_biases(create("srcnn", in_chans=1)) == (8032, 64 + 32 + 1)
    assert weights_and_biases(create("srcnn", in_chans=1, f2=5))[0] == 57184


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_espcn_is_three_convolutions_and_a_sub_pixel_shuffle(scale):
    model = create("espcn", in_chans=1, scale=scale)
    kernels, biases = weights_and_biases(model)
    assert kernels == 5 * 5 * 64 + 3 * 3 * 64 * 32 + 3 * 3 * 32 * scale ** 2
    assert biases == 64 + 32 + scale ** 2
    y = model(torch.rand(2, 1, 13, 17))
    assert y.shape == (2, 1, 13 * scale, 17 * scale)
    # the shuffle's arrangement: output pixel (r*i + a, r*j + b) is channel a*r + b of the last convolution at (i, j)
    features = model.body(torch.rand(1, 1, 5, 6))
    out = model.shuffle(features)
    assert torch.equal(out[0, 0, scale * 2 + 1, scale * 3 + 0], features[0, scale * 1 + 0, 2, 3])


@pytest.mark.parametrize("scale, count", [(2, 1_369_859), (3, 1_554_499), (4, 1_517_571)])
def test_edsr_baseline_counts_about_the_papers_1_5_million(scale, count):
    """Lim et al. 2017, table 1: the baseline has 1.5M parameters (×4 as two ×2 sub-pixel stages); the count here
    is the layers' own arithmetic: head 3·64·9+64, 16 blocks of two 64→64 3×3 convolutions, a body convolution,
    the upsampler, a tail 64→3."""
    conv = 64 * 64 * 9 + 64
    up = {2: 64 * 256 * 9 + 256, 3: 64 * 576 * 9 + 576, 4: 2 * (64 * 256 * 9 + 256)}[scale]
    assert (3 * 64 * 9 + 64) + 32 * conv + conv + up + (64 * 3 * 9 + 3) == count
    model = create("edsr", in_chans=3, scale=scale)
    assert sum(p.numel() for p in model.parameters()) == count and round(count / 1e6, 1) in (1.4, 1.5, 1.6)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # EDSR removes BN
    assert model(torch.rand(1, 3, 10, 7)).shape == (1, 3, 10 * scale, 7 * scale)


def test_edsr_large_has_the_papers_43_million_and_residual_scaling():
    model = create("edsr", in_chans=3, scale=4, blocks=32, features=256, res_scale=0.1)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 43
    # with every convolution zero the network adds the mean back to nothing: the mean shift round-trips
    zero = create("edsr", in_chans=3, scale=2, blocks=2, features=8)
    for p in zero.parameters():
        torch.nn.init.zeros_(p)
    out = zero(torch.rand(1, 3, 4, 4))
    assert torch.allclose(out, zero.mean.expand_as(out))


def test_dncnn_has_556k_parameters_and_learns_the_residual():
    """Zhang et al. 2017: 17 layers (conv+ReLU, 15 conv+BN+ReLU, conv), 64 channels: 556,096 trainable numbers
    for grey images (BN's scale and shift included); 20 layers for the blind DnCNN-B. With residual learning the
    network's last layer gives the noise: zeroed, the output is the input; without, the output is zero."""
    assert sum(p.numel() for p in create("dncnn", in_chans=1).parameters()) == 556_096
    assert sum(p.numel() for p in create("dncnn", in_chans=1, depth=20).parameters()) == 556_096 + 3 * (36_864 + 128)
    x = torch.rand(2, 1, 11, 9)
    for residual, expected in ((True, x), (False, torch.zeros_like(x))):
        model = create("dncnn", in_chans=1, depth=5, features=8, residual=residual).eval()
        torch.nn.init.zeros_(model.body[-1].weight)
        assert torch.allclose(model(x), expected)


def test_cbdnet_takes_any_size_and_exposes_its_noise_map():
    model = create("cbdnet", in_chans=3, width=8, estimator_width=8).eval()
    for h, w in ((17, 23), (32, 32), (5, 6)):
        x = torch.rand(1, 3, h, w)
        assert model(x).shape == x.shape and model.noise_map.shape == x.shape
        assert float(model.noise_map.min()) >= 0  # a noise level is never negative (the estimator ends in ReLU)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len([m for m in model.estimate if isinstance(m, torch.nn.Conv2d)]) == 5 and len(convs) == 5 + 16 + 1


def test_cbdnet_asymmetric_loss_weighs_under_estimates_more():
    """α = 0.3: an estimate 0.1 below the truth costs (1 − α)·0.01, 0.1 above α·0.01 (a flat map has no total
    variation); the paper's weights 0.5 and 0.05."""
    truth = torch.full((1, 1, 4, 4), 0.2)
    under, over = noise_level_loss(truth - 0.1, truth), noise_level_loss(truth + 0.1, truth)
    assert float(under) == pytest.approx(0.5 * 0.7 * 0.01) and float(over) == pytest.approx(0.5 * 0.3 * 0.01)
    bumpy = truth.clone()
    bumpy[..., 0, 0] += 0.4
    assert float(noise_level_loss(bumpy, truth)) > 0.5 * 0.3 * 0.16 / 16


def test_bicubic_is_pils_keys_cubic():
    """The enlargement SRCNN starts from is PIL's bicubic (the Keys kernel at a = -0.5, MATLAB's), not torch's
    default bicubic (a = -0.75)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.random((9, 11)).astype(np.float32)
    theirs = np.asarray(Image.fromarray(small, mode="F").resize((33, 27), Image.BICUBIC))
    ours = bicubic(torch.from_numpy(small)[None, None], 3)[0, 0].numpy()
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize("name, options, message", [
    ("srcnn", {"scale": 5}, "scale must be one of 2, 3, 4"),
    ("srcnn", {"f1": 8}, "f1 must be odd"),
    ("espcn", {"n1": 0}, "n1=0 is not valid: give a positive integer"),
    ("edsr", {"res_scale": 1.5}, "res_scale must be a number in"),
    ("edsr", {"in_chans": 3, "mean": [0.5]}, "mean must give one value per channel"),
    ("dncnn", {"depth": 2}, "depth must be at least 3"),
    ("dncnn", {"residual": "yes"}, "residual='yes' is not valid: give true or false"),
    ("dncnn", {"noise": [30, 10]}, "noise is the Gaussian noise's standard deviation"),
    ("cbdnet", {"noise": "high"}, "noise is the Gaussian noise's standard deviation"),
])
def test_bad_options_are_one_line(name, options, message):
    with pytest.raises(ModelError, match=message):
        create(name, **options)


SMALL = [("srcnn", {"scale": 3, "n1": 8, "n2": 4}), ("srcnn", {"scale": 2, "n1": 8, "n2": 4, "f2": 5}),
         ("espcn", {"scale": 3, "n1": 8, "n2": 4}), ("edsr", {"scale": 4, "blocks": 2, "features": 8}),
         ("edsr", {"scale": 3, "blocks": 3, "features": 8}), ("dncnn", {"depth": 5, "features": 8}),
         ("cbdnet", {"width": 8, "estimator_width": 4})]


def reach(model: torch.nn.Module, channels: int, side: int) -> int:
    """How far, in input pixels, the centre output pixel's gradient reaches from the centre (float64, random
    weights and input)."""
    torch.manual_seed(0)
    model = model.double().eval()
    x = torch.rand(1, channels, side, side, dtype=torch.float64, requires_grad=True)
    y = model(x)
    s = model.scale
    c = side // 2
    y[..., c * s, c * s].sum().backward()
    rows, cols = (x.grad.abs().sum((0, 1)) > 0).nonzero(as_tuple=True)
    return int(max((rows - c).abs().max(), (cols - c).abs().max()))


@pytest.mark.parametrize("name, options", SMALL)
def test_the_radius_tiles_are_run_with_bounds_what_an_output_pixel_sees(name, options):
    """`radius` (the margin tiles are run with) covers the gradient's reach and is not far beyond it."""
    model = create(name, in_chans=3, **options)
    seen = reach(model, 3, 2 * (model.radius + 8) + 1)
    assert seen <= model.radius <= seen + max(4, model.align + 3), (seen, model.radius)
