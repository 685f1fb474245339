"""Grad-CAM and Grad-CAM++ against pytorch-grad-cam (the `grad-cam` package) on the same model, layer and
inputs, and the answers to bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnkit.explain import explain, resolve_layer
from cnnkit.errors import ExplainError
from cnnkit.models import create


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create("resnet20", num_classes=10, in_chans=3).eval()
    for mod in m.modules():  # non-trivial BN statistics, as in a trained network
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def _reference_raw(cls, model, layer, x, targets) -> np.ndarray:
    """pytorch-grad-cam's own per-layer map (before its ReLU, scaling and resizing)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cls(model=model, target_layers=[layer])
    tg = [ClassifierOutputTarget(int(t)) for t in targets]
    cam(input_tensor=x, targets=tg)
    acts = cam.activations_and_grads.activations[0].cpu().numpy()
    grads = cam.activations_and_grads.gradients  # empty for the gradient-free methods
    grads = grads[0].cpu().numpy() if grads else None
    return cam.get_cam_image(x, layer, tg, acts, grads, eigen_smooth=False)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_matches_pytorch_grad_cam(model, method):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    targets = [0, 3, 9, 3, 5, 1]
    ours = explain(model, x, targets, method=method, layer="stages.1")
    theirs = _reference_raw(GradCAM if method == "gradcam" else GradCAMPlusPlus, model,
                            model.get_submodule("stages.1"), x, targets)
    assert ours.raw.shape == (6, 16, 16)  # stages.1 of ResNet-20 at 32 px
    assert np.abs(ours.raw.numpy() - theirs).max() <= 1e-4
    # identical normalization of the layer-resolution map: ReLU, then min-max per image
    pos = np.maximum(theirs, 0)
    ref = (pos - pos.min((1, 2), keepdims=True)) / (pos.max((1, 2), keepdims=True) - pos.min((1, 2), keepdims=True))
    mine = ours.raw.clamp_min(0)
    mine = (mine - mine.amin((1, 2), keepdim=True)) / (mine.amax((1, 2), keepdim=True) - mine.amin((1, 2), keepdim=True))
    assert np.abs(mine.numpy() - ref).max() <= 1e-4


def test_batched_maps_equal_one_image_at_a_time(model):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 32, 32)
    batch = explain(model, x, [1, 2, 3, 4])
    for i in range(4):
        one = explain(model, x[i:i + 1], [i + 1])
        assert torch.allclose(batch.raw[i], one.raw[0], atol=1e-5)
    assert batch.maps.shape == (4, 32, 32) and batch.maps.min() >= 0 and batch.maps.max() <= 1
    assert batch.layer == "stages.2"  # 'auto' is the last stage
    assert torch.equal(explain(model, x).targets, model(x).argmax(1))


def test_all_zero_map_is_reported_not_divided(model):
    dead = create("resnet20", 10, 3).eval()
    torch.nn.init.zeros_(dead.fc.weight)  # no gradient reaches the layer: every map is zero
    out = explain(dead, torch.randn(2, 3, 32, 32), [0, 1])
    assert out.zero_maps == [0, 1] and torch.isfinite(out.maps).all() and out.maps.abs().sum() == 0


def test_bad_explain_input(model):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ExplainError, match=r"unknown layer 'stages\.7'.*stages\.2"):
        explain(model, x, layer="stages.7")
    with pytest.raises(ExplainError, match="not a B×C×H×W feature map"):
        explain(model, x, layer="fc")
    with pytest.raises(ExplainError, match=r"target class 12 is out of range: the model has 10 classes"):
        explain(model, x, targets=[1, 12])
    with pytest.raises(ExplainError, match="expects 3-channel images, got 1"):
        explain(model, torch.randn(2, 1, 32, 32))
    with pytest.raises(ExplainError, match=r"unknown method 'gradcam\+'.*did you mean"):
        explain(model, x, method="gradcam+")
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(ExplainError, match="no convolutional layers"):
        resolve_layer(mlp)


def test_auto_layer_on_timm_models():
    m = create("timm/resnet18", num_classes=4, in_chans=3).eval()
    out = explain(m, torch.randn(2, 3, 64, 64))
    assert out.layer == "layer4" and out.raw.shape == (2, 2, 2)


def test_scorecam_matches_pytorch_grad_cam(model):
    from pytorch_grad_cam import ScoreCAM

    torch.manual_seed(3)
    x = torch.randn(3, 3, 32, 32)
    targets = [2, 7, 7]
    ours = explain(model, x, targets, method="scorecam", layer="stages.2", batch_size=50)
    theirs = _reference_raw(ScoreCAM, model, model.get_submodule("stages.2"), x, targets)
    assert np.abs(ours.raw.numpy() - theirs).max() <= 1e-4


def test_eigencam_matches_pytorch_grad_cam_up_to_the_sign_fix(model):
    from pytorch_grad_cam import EigenCAM

    torch.manual_seed(4)
    x = torch.randn(4, 3, 32, 32)
    ours = explain(model, x, method="eigencam", layer="stages.2")
    theirs = _reference_raw(EigenCAM, model, model.get_submodule("stages.2"), x, ours.targets.tolist())
    # Deliberate difference: pytorch-grad-cam keeps the SVD's arbitrary sign; cnnkit flips each map so that it
    # correlates positively with gradient × activation. Up to that sign the maps agree.
    for o, t in zip(ours.raw.numpy(), theirs):
        sign = 1.0 if (o * t).sum() >= 0 else -1.0
        assert np.abs(o - sign * t).max() <= 1e-4
    acts = {}

    def keep(_m, _i, out):
        out.retain_grad()
        acts["a"] = out

    h = model.get_submodule("stages.2").register_forward_hook(keep)
    model(x).gather(1, ours.targets[:, None]).sum().backward()
    h.remove()
    evidence = (acts["a"].grad * acts["a"]).sum(1).detach()
    assert ((ours.raw * evidence).sum((1, 2)) >= 0).all()  # every map points the way its score rises


def test_smooth_gradcam_pp_reduces_to_gradcam_pp_without_noise(model):
    torch.manual_seed(3)
    x = torch.randn(3, 3, 32, 32)
    plain = explain(model, x, [0, 1, 2], method="gradcam++")
    smooth = explain(model, x, [0, 1, 2], method="smoothgradcam++", samples=1, noise=0.0)
    assert torch.allclose(plain.raw, smooth.raw, atol=1e-6)


def test_smooth_gradcam_pp_is_batch_independent_and_restricts_to_subsets(model):
    torch.manual_seed(4)
    x = torch.randn(3, 3, 32, 32)
    batch = explain(model, x, [0, 1, 2], method="smoothgradcam++", samples=6)
    one = explain(model, x[1:2], [1], method="smoothgradcam++", samples=6)
    assert torch.allclose(batch.raw[1], one.raw[0], atol=1e-5)
    # at the last stage a GAP network's gradient does not depend on the input; one stage earlier it does
    a, b = (explain(model, x, [0, 1, 2], method="smoothgradcam++", layer="stages.1", samples=6, seed=s)
            for s in (0, 1))
    assert not torch.allclose(a.raw, b.raw)  # the noise is really there
    part = explain(model, x, [0, 1, 2], method="smoothgradcam++", samples=6, neurons=[(0, 0), (5, 6)],
                   channels=[3, 7])
    off = torch.ones(8, 8, dtype=torch.bool)
    off[0, 0] = off[5, 6] = False
    assert part.raw[:, off].abs().max() == 0 and part.raw[:, ~off].abs().max() > 0
    with pytest.raises(ExplainError, match=r"neuron \(9, 0\) is outside the layer's 8×8 grid"):
        explain(model, x, method="smoothgradcam++", neurons=[(9, 0)])
    with pytest.raises(ExplainError, match="channels must be indices in 0–63"):
        explain(model, x, method="smoothgradcam++", channels=[64])
    with pytest.raises(ExplainError, match="gradcam takes no option 'samples'"):
        explain(model, x, method="gradcam", samples=3)


def test_scorecam_bf16_option_is_close_and_checked(model):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32)
    exact = explain(model, x, [1, 2], method="scorecam")
    fast = explain(model, x, [1, 2], method="scorecam", precision="bf16")
    assert (exact.maps - fast.maps).abs().max() < 0.1
    with pytest.raises(ExplainError, match="precision must be fp32 or bf16"):
        explain(model, x, method="scorecam", precision="fp16")


def test_scorecam_leaves_torchs_thread_count_alone_unless_the_process_is_cnnkits(model):
    """torch's thread count is process-wide: a library call (a service, a notebook) must not change it
    while it runs; the `cnnkit` command, which owns its process, may use per-core workers."""
    from cnnkit.runtime import exclusive_threads

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    threads = torch.get_num_threads()
    seen = []
    handle = model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        torch.set_num_threads(2)
        library = explain(model, x, [1, 2], method="scorecam")
        assert set(seen) == {2}
        with exclusive_threads():
            owned = explain(model, x, [1, 2], method="scorecam")
        assert torch.get_num_threads() == 2
    finally:
        handle.remove()
        torch.set_num_threads(threads)
    assert torch.allclose(library.maps, owned.maps, atol=1e-5)
