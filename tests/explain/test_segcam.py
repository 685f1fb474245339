"""Seg-Grad-CAM: maps equal to pytorch-grad-cam's (the `grad-cam` package, SemanticSegmentationTarget) for the same
layer, class and region; the deletion check against random maps; `cnnkit explain` on a segmentation run and its
one-line refusals. Uses the shared, barely trained `seg_run` (it labels objects mostly as one class, which is
enough for parity and files; the deletion check is asserted on its predicted region, where it holds on every
one of 16 test scenes tried, below every random seed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.artifacts import load
from cnnkit.cli import main
from cnnkit.data import Normalize, load_dataset
from cnnkit.errors import ExplainError
from cnnkit.explain import explain
from cnnkit.explain.segment import box_region, deletion_check, parse_region, segment_targets
from cnnkit.models import create


@pytest.fixture(scope="module")
def scenes():
    """The first four fashion-scenes test images (uint8) and their masks."""
    ds = load_dataset("fashion-scenes", "test")
    return ds.images[:4], ds.masks[:4]


@pytest.fixture(scope="module")
def seg_model(seg_run):
    ckpt = load(seg_run.run_dir, "cpu")
    return ckpt, ckpt.model.eval()


def _grad_cam_reference(model, layer: str, x: torch.Tensor, classes: list[int], regions: torch.Tensor,
                        method: str = "gradcam"):
    """pytorch-grad-cam's maps (ReLU, min-max scaled, resized to the input) and its layer-resolution map."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    cam = (GradCAM if method == "gradcam" else GradCAMPlusPlus)(model=model, target_layers=[model.get_submodule(layer)])
    targets = [SemanticSegmentationTarget(c, r.numpy()) for c, r in zip(classes, regions)]
    maps = cam(input_tensor=x, targets=targets)
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy()
    raw = cam.get_cam_image(x, model.get_submodule(layer), targets, acts, grads, eigen_smooth=False)
    return maps, raw


@pytest.mark.parametrize("layer", ["auto", "down.1"])
def test_seg_gradcam_equals_pytorch_grad_cam_on_predicted_region_and_box(seg_model, scenes, layer):
    ckpt, model = seg_model
    x = Normalize(*ckpt.normalization, torch.device("cpu"))(scenes[0])
    _, tgt, predicted = segment_targets(model, x, None, None, ckpt.classes)
    box = box_region((10, 20, 70, 90), (96, 96)).expand(len(x), -1, -1)
    for regions, classes in ((predicted, tgt), (box, torch.tensor([9, 1, 4, 7]))):
        ours = explain(model, x, classes, layer=layer, region=regions)
        assert ours.layer == ("merge.1" if layer == "auto" else layer)  # auto: the last decoder block
        maps, raw = _grad_cam_reference(model, ours.layer, x, classes.tolist(), regions)
        assert np.abs(ours.raw.numpy() - raw).max() <= 1e-5 * max(1.0, np.abs(raw).max())
        assert np.abs(ours.maps.numpy() - maps).max() <= 1e-4
        assert torch.equal(ours.regions, regions.float())


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_seg_gradcam_on_a_low_resolution_layer_equals_pytorch_grad_cam(method):
    torch.manual_seed(0)
    model = create("deeplab_small", num_classes=5, in_chans=1, width=8, decoder=True).eval()
    x = torch.randn(2, 1, 48, 48)
    region = torch.zeros(2, 48, 48)
    region[:, 8:30, 12:40] = 1
    ours = explain(model, x, [1, 3], method=method, region=region)
    assert ours.layer == "fuse" and ours.raw.shape == (2, 12, 12)  # DeepLabv3+'s decoder, at stride 4
    maps, raw = _grad_cam_reference(model, "fuse", x, [1, 3], region, method)
    assert np.abs(ours.raw.numpy() - raw).max() <= 1e-5 * max(1.0, np.abs(raw).max())
    assert np.abs(ours.maps.numpy() - maps).max() <= 1e-4


def test_the_map_deletes_the_class_faster_than_random_maps(seg_model, scenes):
    ckpt, model = seg_model
    x = Normalize(*ckpt.normalization, torch.device("cpu"))(scenes[0])
    _, tgt, regions = segment_targets(model, x, None, None, ckpt.classes)
    maps = explain(model, x, tgt, region=regions).maps
    check = deletion_check(model, x, maps, tgt, regions, seeds=4, steps=8)
    assert check["random"].shape == (4, 4) and check["curve"].shape == (4, 9)
    # the curve starts at the class's mean probability over the region, before anything is deleted
    with torch.no_grad():
        p = model(x).softmax(1).gather(1, tgt.view(-1, 1, 1, 1).expand(-1, 1, 96, 96))[:, 0]
    assert torch.allclose(check["curve"][:, 0], (p * regions).sum((1, 2)) / regions.sum((1, 2)), atol=1e-5)
    assert (check["map"] < check["random"].mean(1)).all(), (check["map"], check["random"])
    # different seeds give different random orders
    assert check["random"].std(1).min() > 0


def test_deletion_check_by_hand_on_a_per_pixel_model():
    """A model whose class-1 logit at each pixel is 10 × that pixel (class 0's is 0): deleting a pixel (setting it
    to 0) drops its class-1 probability from sigmoid(10) to 1/2, so a map that ranks the region first has a
    deletion curve known by hand, and a random order deletes the region evenly over the whole curve."""
    model = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([0.0, 10.0]).view(2, 1, 1, 1))
        model.bias.zero_()
    x = torch.ones(1, 1, 8, 8)
    region = box_region((2, 2, 6, 6), (8, 8))[None]  # 16 of 64 pixels
    check = deletion_check(model, x, region.clone(), torch.tensor([1]), region, seeds=6, steps=8)
    hi = float(torch.sigmoid(torch.tensor(10.0)))
    curve = [hi, (hi + 0.5) / 2] + [0.5] * 7  # 8 pixels per step: half the region, then all of it
    assert torch.allclose(check["curve"][0], torch.tensor(curve), atol=1e-6)
    assert abs(float(check["map"][0]) - float(np.trapezoid(curve, np.linspace(0, 1, 9)))) < 1e-6
    # a random order deletes about an eighth of the region per step: the curve falls evenly, AUC about (hi + 1/2)/2
    assert (check["random"][0] - (hi + 0.5) / 2).abs().max() < 0.06
    assert float(check["map"][0]) < float(check["random"][0].min())


def test_bad_regions_and_methods_are_refused(seg_model, scenes):
    ckpt, model = seg_model
    x = Normalize(*ckpt.normalization, torch.device("cpu"))(scenes[0][:1])
    assert parse_region("1,2,30,40") == (1, 2, 30, 40) and parse_region(None) is None
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,4,5"):
        with pytest.raises(ExplainError, match="x0,y0,x1,y1"):
            parse_region(bad)
    for box in ((0, 0, 97, 10), (10, 10, 5, 20), (-1, 0, 5, 5)):
        with pytest.raises(ExplainError, match="not a box inside the 96×96 image"):
            box_region(box, (96, 96))
    with pytest.raises(ExplainError, match="scorecam explains a classifier's scores"):
        explain(model, x, [1], method="scorecam")
    with pytest.raises(ExplainError, match="saliency explains a classifier's scores"):
        explain(model, x, [1], method="saliency")
    with pytest.raises(ExplainError, match="region must be H×W or B×H×W"):
        explain(model, x, [1], region=torch.ones(48, 48))
    classifier = create("tinyvgg", num_classes=3, in_chans=1).eval()
    with pytest.raises(ExplainError, match="a region applies to a segmentation model"):
        explain(classifier, torch.randn(1, 1, 64, 64), [0], region=torch.ones(64, 64))


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory, scenes):
    path = tmp_path_factory.mktemp("scenes") / "scene1.png"
    Image.fromarray(scenes[0][1, 0].numpy(), "L").save(path)
    return path


def test_cli_writes_the_figure_and_the_deletion_check(seg_run, scene_file, tmp_path, capsys):
    out = tmp_path / "ex"
    code = main(["explain", str(scene_file), "--checkpoint", str(seg_run.run_dir), "--class", "Bag", "--region",
                 "20,0,80,45", "--seeds", "3", "--method", "gradcam,gradcam++", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "deletion AUC" in captured.out and "random maps" in captured.out
    with Image.open(out / "scene1.png") as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1]  # image, mask and two maps in a row
    rec = json.loads((out / "explain.json").read_text())["images"][0]
    assert rec["target"] == "Bag" and rec["region"] == [20, 0, 80, 45] and rec["region_pixels"] == 60 * 45
    for m in ("gradcam", "gradcam++"):
        r = rec["methods"][m]
        rnd = r["random_deletion_auc"]
        assert r["layer"] == "merge.1" and rnd["seeds"] == 3 and rnd["min"] <= rnd["mean"] <= rnd["max"]
        assert r["faithful"] == (r["deletion_auc"] < rnd["mean"]) and 0 <= r["deletion_auc"] <= 1


def test_cli_default_is_the_largest_predicted_class_over_its_pixels(seg_run, seg_model, scene_file, tmp_path):
    ckpt, model = seg_model
    assert main(["explain", str(scene_file), "--checkpoint", str(seg_run.run_dir), "--seeds", "2",
                 "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "explain.json").read_text())["images"][0]
    from cnnkit.data.images import load_image_file, to_model_input

    image = to_model_input(load_image_file(scene_file), 1, (96, 96))[None]
    x = Normalize(*ckpt.normalization, torch.device("cpu"))(image)
    with torch.no_grad():
        counts = torch.bincount(model(x).argmax(1).flatten(), minlength=len(ckpt.classes))
    counts[0] = -1 if counts[1:].sum() > 0 else counts[0]  # the background only when nothing else is predicted
    assert rec["region"] == "predicted" and rec["target"] == ckpt.classes[int(counts.argmax())]
    assert rec["region_pixels"] == int(counts.max())


@pytest.mark.parametrize("args, message", [
    (["--class", "Bags"], "unknown target class 'Bags'"),
    (["--region", "0,0,100,50"], "is not a box inside the 96×96 image"),
    (["--region", "0,0,10"], "--region takes a box as x0,y0,x1,y1"),
    (["--method", "scorecam"], "scorecam explains a classifier"),
    (["--method", "lrp"], "lrp explains a classifier"),
    (["--benchmark"], "--benchmark measures classifiers"),
    (["--layer", "merge.7"], "unknown layer 'merge.7'"),
])
def test_cli_bad_options_are_one_line(seg_run, scene_file, tmp_path, capsys, args, message):
    code = main(["explain", str(scene_file), "--checkpoint", str(seg_run.run_dir), "--out", str(tmp_path / "o"),
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "explain.json").exists()


def test_cli_class_predicted_nowhere_needs_a_region(seg_run, seg_model, scene_file, tmp_path, capsys):
    ckpt, model = seg_model
    from cnnkit.data.images import load_image_file, to_model_input

    image = to_model_input(load_image_file(scene_file), 1, (96, 96))[None]
    x = Normalize(*ckpt.normalization, torch.device("cpu"))(image)
    with torch.no_grad():
        counts = torch.bincount(model(x).argmax(1).flatten(), minlength=len(ckpt.classes))
    absent = ckpt.classes[int((counts == 0).nonzero()[0])]
    code = main(["explain", str(scene_file), "--checkpoint", str(seg_run.run_dir), "--class", absent,
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"is predicted as {absent!r}; give --region" in err and len(err.strip().splitlines()) == 1
