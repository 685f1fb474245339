"""Class-model images, activation maximization, feature maps and filter grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from PIL import Image

from cnnkit.errors import ExplainError
from cnnkit.explain.visualize import activation_maximization, class_model, feature_maps, first_layer_filters
from cnnkit.models import create
from cnnkit.report.explain_plots import save_filter_grid, save_image_grid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create("resnet20", num_classes=10, in_chans=1).eval()


def test_class_model_raises_its_class_score(trained_run):
    from cnnkit.artifacts import load

    model = load(trained_run.run_dir).model
    imgs = class_model(model, [0, 3, 7], (1, 28, 28), steps=40, lr=0.1)
    logits = model(imgs)
    start = model(0.01 * torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(0))[None])[0]
    for row, t in enumerate([0, 3, 7]):
        assert logits[row, t] > start[t] + 0.3 and logits[row].argmax() == t
    one = class_model(model, [3], (1, 28, 28), steps=40, lr=0.1)
    assert torch.allclose(one[0], imgs[1], atol=1e-5)  # batched over classes = one class at a time
    strong = class_model(model, [3], (1, 28, 28), steps=40, lr=0.1, l2=1.0)
    assert strong.norm() < one.norm()  # the L2 penalty shrinks the image
    reg = class_model(model, [3], (1, 28, 28), steps=20, lr=0.1, jitter=2, blur_every=5)
    assert torch.isfinite(reg).all() and not torch.allclose(reg, one)
    with pytest.raises(ExplainError, match=r"targets must be classes 0–9"):
        class_model(model, [10], (1, 28, 28), steps=1)


def test_activation_maximization_and_its_errors(model):
    imgs = activation_maximization(model, "stages.1", [0, 5], (1, 28, 28), steps=30, lr=0.1)
    _, before = feature_maps(model, 0.01 * torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(0))[None], "stages.1")
    _, after = feature_maps(model, imgs, "stages.1")
    assert after[0, 0].mean() > before[0, 0].mean() and after[1, 5].mean() > before[0, 5].mean()
    with pytest.raises(ExplainError, match=r"has 32 channels \(0–31\)"):
        activation_maximization(model, "stages.1", [32], (1, 28, 28), steps=1)
    with pytest.raises(ExplainError, match="does not give a B×C×H×W feature map"):
        activation_maximization(model, "fc", [0], (1, 28, 28), steps=1)


def test_feature_maps_equal_the_submodule_output(model):
    x = torch.randn(2, 1, 28, 28)
    name, maps = feature_maps(model, x, "stem")
    with torch.no_grad():
        assert name == "stem" and torch.equal(maps, model.stem(x))
    with pytest.raises(ExplainError, match=r"unknown layer 'stem2'"):
        feature_maps(model, x, "stem2")


def test_first_layer_filter_grid(model, tmp_path):
    name, grid = first_layer_filters(model, nrow=4)
    conv = model.get_submodule(name)
    k = conv.kernel_size[0]
    rows = -(-conv.out_channels // 4)
    assert grid.shape == (3, rows * (k + 1) + 1, 4 * (k + 1) + 1)  # make_grid: 1-px padding around tiles
    assert grid.min() >= 0 and grid.max() <= 1
    with pytest.raises(ExplainError, match="no convolutional layers"):
        first_layer_filters(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    for path in (save_filter_grid(grid.numpy(), tmp_path / "f.png", "filters"),
                 save_image_grid(torch.randn(5, 1, 8, 8).numpy(), tmp_path / "g.png", titles=list("abcde"))):
        with Image.open(path) as im:
            assert im.format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "g.png"]
