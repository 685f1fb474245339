"""Explaining a detection: LayerCAM equal to pytorch-grad-cam's (the `grad-cam` package) per layer, the detectors'
scores differentiable in eval mode, D-RISE and the deletion/insertion check on a toy detector whose detections are
known functions of the input, and `cnnkit explain` on a tiny detection run with its one-line refusals.

The tiny run (retinanet_small at width 8, one epoch on 32 scenes) is built once for the module: barely trained, it
scores nothing above RetinaNet's threshold of 0.05, so the CLI cases pass `--score-threshold 0` (every candidate,
up to its 100 detections)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from cnnkit.cli import main
from cnnkit.data import load_dataset
from cnnkit.errors import ExplainError
from cnnkit.explain.detect import (RiseMasks, choose_detections, default_layers, deletion_check, drise, layercam,
                                   score_threshold, similarity)
from cnnkit.models import create

pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def scenes() -> torch.Tensor:
    """Two fashion-scenes test images, normalized with the scenes' usual statistics (any will do here)."""
    return (load_dataset("fashion-scenes", "test").images[:2].float() / 255 - 0.18) / 0.2


def _detector(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create(name, num_classes=5, in_chans=1, img_size=(96, 96), width=8).eval()


# -- LayerCAM ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["retinanet_small", "fcos_small", "ssd_small", "fasterrcnn_small"])
def test_every_detectors_scores_have_gradients_at_its_backbone_stages(name, scenes):
    model = _detector(name)
    with score_threshold(model, 0.0), torch.no_grad():
        out = model(scenes)
    with score_threshold(model, 0.0):
        rows = choose_detections(out, 1, None, [str(c) for c in range(5)])
        r = layercam(model, scenes, rows, targets=out[torch.arange(2), rows])
    strides = (4, 8, 16, 32) if name == "ssd_small" else (8, 16, 32)  # the maps each detector's head reads
    assert r.layers == default_layers(model) and len(r.layers) == len(strides) and r.layers[-1].endswith("extra")
    h, w = scenes.shape[-2:]
    assert [tuple(r.raw[n].shape[-2:]) for n in r.layers] == [(h // s, w // s) for s in strides]
    # every detection's score reaches the first stage; through an FPN (all but SSD) every stage
    reached = [n for n in r.layers if all(r.raw[n][i].abs().amax() > 0 for i in range(2))]
    assert reached == (r.layers[:len(reached)] if name == "ssd_small" else r.layers) and reached, reached
    assert r.zero_layers == {n: ([] if n in reached else [0, 1]) for n in r.layers} or name == "ssd_small"
    assert r.maps.shape == (2, 96, 96) and r.maps.amin() == 0 and torch.allclose(r.maps.amax((1, 2)), torch.ones(2))


def test_layercam_equals_pytorch_grad_cams_per_layer(scenes):
    from pytorch_grad_cam import LayerCAM

    model = _detector("retinanet_small")
    layers = [*default_layers(model), "net.backbone.fpn.layer_blocks.1"]
    with score_threshold(model, 0.0):
        with torch.no_grad():
            out = model(scenes)
        rows = choose_detections(out, None, 3, [str(c) for c in range(5)])  # the best detection of class 3
        assert torch.equal(out[torch.arange(2), rows, 5], torch.tensor([3.0, 3.0]))
        ours = layercam(model, scenes, rows, layers)
        for layer in layers:
            with LayerCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
                maps = cam(input_tensor=scenes, targets=[lambda o, k=int(k): o[k, 4] for k in rows])
                acts = cam.activations_and_grads.activations[0].numpy()
                grads = cam.activations_and_grads.gradients[0].numpy()
                raw = cam.get_cam_image(scenes, None, None, acts, grads, False)
            scale = max(1e-12, float(np.abs(raw).max()))
            assert np.abs(ours.raw[layer].numpy() - raw).max() <= 1e-5 * scale, layer
            # its map is scaled at the layer's resolution, then resized; ours resized, then scaled: close
            assert np.abs(ours.per_layer[layer].numpy() - maps).mean() < 0.02, layer
    # the combination: the mean of the layers' scaled maps, scaled again
    mean = torch.stack([ours.per_layer[n] for n in layers]).mean(0)
    lo, hi = mean.amin((1, 2), keepdim=True), mean.amax((1, 2), keepdim=True)
    assert torch.allclose(ours.maps, (mean - lo) / (hi - lo), atol=1e-6)


# -- D-RISE and the deletion/insertion check on a toy detector -------------------------------------------------

A = (20, 30, 50, 60)  # x0, y0, x1, y1: the box both toy detections report
B = (60, 5, 90, 25)  # where the second one's evidence lies


class ToyDetector(nn.Module):
    """Two detections with the same box A: class 1 scored by the image's mean over A, class 2 by its mean over
    region B (each clamped to [0, 1]), and a padding row. Only the class tells them apart."""

    task = "detect"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x[:, 0, A[1]:A[3], A[0]:A[2]].mean((1, 2)).clamp(0, 1)
        b = x[:, 0, B[1]:B[3], B[0]:B[2]].mean((1, 2)).clamp(0, 1)
        box = torch.tensor(A, dtype=x.dtype).expand(len(x), 4)
        one, two = torch.ones_like(a), torch.full_like(a, 2.0)
        pad = x.new_tensor([0, 0, 0, 0, 0, -1]).expand(len(x), 6)
        return torch.stack([torch.cat([box, a[:, None], one[:, None]], 1),
                            torch.cat([box, b[:, None], two[:, None]], 1), pad], 1)


def _region(box) -> torch.Tensor:
    m = torch.zeros(96, 96, dtype=torch.bool)
    m[box[1]:box[3], box[0]:box[2]] = True
    return m


@pytest.fixture(scope="module")
def toy():
    """The toy, an image that is 1 over A and B and 0 elsewhere, its two detections, and D-RISE of each."""
    model = ToyDetector()
    x = (_region(A) | _region(B)).float()[None, None]
    with torch.no_grad():
        out = model(x)
    targets = out[0, :2]  # both score 1
    maps = [drise(model, x, targets[k:k + 1], masks=1000, grid=8, seed=0, batch_size=100) for k in range(2)]
    return model, x, targets, maps


def test_similarity_is_iou_times_same_class_times_score():
    t = torch.tensor([[0.0, 0, 10, 10, 0.9, 2]])
    dets = torch.tensor([[[0.0, 0, 10, 10, 0.5, 1], [0, 0, 10, 20, 0.8, 2], [5, 5, 15, 15, 0.9, 2], [0, 0, 10, 10, 1, -1]]])
    assert torch.allclose(similarity(t, dets), torch.tensor([max(0.5 * 0.8, 25 / 175 * 0.9)]))
    assert similarity(t, dets[:, :1]).item() == 0.0  # only another class: no match


def test_drise_weights_are_the_similarities_and_the_map_lights_the_evidence(toy):
    model, x, targets, (map_a, map_b) = toy
    rise = RiseMasks(1000, 8, 0.5, (96, 96), seed=0)
    masks = rise.batch(0, 1000)
    assert masks.shape == (1000, 96, 96) and 0.45 < float(masks.mean()) < 0.55
    # detection A (class 1) is scored by A's mean; the class-2 detection with the same box never counts for it
    assert torch.allclose(map_a.weights[0], masks[:, _region(A)].mean(1), atol=1e-6)
    assert torch.allclose(map_b.weights[0], masks[:, _region(B)].mean(1), atol=1e-6)
    for m, inside, other in ((map_a.maps[0], _region(A), _region(B)), (map_b.maps[0], _region(B), _region(A))):
        top = m.flatten().argsort(descending=True)[:int(inside.sum())]
        assert float(inside.flatten()[top].float().mean()) > 0.8  # the brightest pixels are the evidence's
        assert float(m[inside].mean()) > float(m[other].mean()) + 0.3
        assert float(m[inside].mean()) > float(m[~(inside | other)].mean()) + 0.3
    # seeded: the same masks however they are batched (the sums only in another order), another seed others
    again = drise(model, x, targets[:1], masks=1000, grid=8, seed=0, batch_size=64)
    assert torch.equal(again.weights, map_a.weights) and torch.allclose(again.maps, map_a.maps, atol=1e-5)
    assert not torch.allclose(drise(model, x, targets[:1], masks=64, seed=1).weights,
                              drise(model, x, targets[:1], masks=64, seed=2).weights)


def test_deleting_the_evidence_first_kills_the_detection_first(toy):
    model, x, targets, (map_a, _) = toy
    region = _region(A).float()[None]
    check = deletion_check(model, x, {"drise": map_a.maps, "box": region}, targets[:1], seeds=4)
    d, r = check["drise"], check["random"]
    assert r["deletion"].shape == (1, 4) and r["deletion_curve"].shape == (1, 4, 17)
    assert float(d["deletion"][0]) < float(r["deletion"][0].min())
    assert float(d["insertion"][0]) > float(r["insertion"][0].max())
    # by hand for the map that ranks A first: 576 pixels per step (of 9,216), A has 900 whose value is 1: the
    # detection's score, its similarity with itself, falls to 324/900, then to 0 (deleted pixels are 0)
    curve = [1.0, 324 / 900] + [0.0] * 15
    assert torch.allclose(check["box"]["deletion_curve"][0], torch.tensor(curve), atol=1e-6)
    assert abs(float(check["box"]["deletion"][0]) - float(np.trapezoid(curve, np.linspace(0, 1, 17)))) < 1e-6
    ins = check["box"]["insertion_curve"][0]  # A revealed on a blurred copy: whole from the second step on
    assert float(ins[0]) < 1 and torch.allclose(ins[2:], torch.ones(15), atol=1e-6)


def test_choosing_a_detection_and_one_line_refusals():
    out = torch.tensor([[[0, 0, 5, 5, 0.9, 1], [0, 0, 6, 6, 0.8, 2], [0, 0, 7, 7, 0.7, 1], [0, 0, 0, 0, 0, -1]],
                        [[0, 0, 5, 5, 0.6, 2], [0, 0, 6, 6, 0.5, 1], [0, 0, 0, 0, 0, -1], [0, 0, 0, 0, 0, -1]]])
    names = ["bg", "a", "b"]
    assert choose_detections(out, None, None, names).tolist() == [0, 0]
    assert choose_detections(out, 1, None, names).tolist() == [1, 1]
    assert choose_detections(out, None, 1, names).tolist() == [0, 1]  # the best of class a
    assert choose_detections(out[:1], 1, 1, names).tolist() == [2]  # the second of class a
    with pytest.raises(ExplainError, match=r"--detection 2 is out of range: image 2 has 2 detections \(0–1\)"):
        choose_detections(out, 2, None, names)
    with pytest.raises(ExplainError, match="x.png has no detection of class 'bg'; its detections are of: a, b"):
        choose_detections(out[:1], None, 0, names, ["x.png"])
    with pytest.raises(ExplainError, match="has no detections"):
        choose_detections(out[:, 3:], None, None, names)


# -- the command -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def box_run(tmp_path_factory):
    from cnnkit.train import fit

    return fit(model="retinanet_small", model_kwargs={"width": 8}, data="fashion-scenes", epochs=1, train_images=32,
               val_fraction=0.02, batch_size=16, out=str(tmp_path_factory.mktemp("runs") / "boxes"), progress=False,
               amp="off", channels_last=False)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "scene.png"
    Image.fromarray(load_dataset("fashion-scenes", "test").images[0, 0].numpy(), "L").save(path)
    return path


def _detections(run_dir, scene_file) -> tuple[list[str], torch.Tensor]:
    """The run's classes and its detections of the scene with every candidate kept."""
    from cnnkit.artifacts import load
    from cnnkit.data import Normalize
    from cnnkit.data.images import load_model_inputs

    ckpt = load(run_dir, "cpu")
    raw, _ = load_model_inputs([scene_file], 1, ckpt.img_size)
    with score_threshold(ckpt.model, 0.0), torch.no_grad():
        return ckpt.classes, ckpt.model.eval()(Normalize(*ckpt.normalization, torch.device("cpu"))(raw))[0]


def test_cli_explains_a_detection_with_both_methods_and_the_check(box_run, scene_file, tmp_path, capsys):
    out = tmp_path / "ex"
    code = main(["explain", str(scene_file), "--checkpoint", str(box_run.run_dir), "--score-threshold", "0",
                 "--masks", "48", "--seeds", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "deletion AUC" in captured.out and "insertion AUC" in captured.out and "layercam,drise" in captured.out
    with Image.open(out / "scene.png") as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1]  # the detection, then two maps
    report = json.loads((out / "explain.json").read_text())
    assert report["task"] == "detect" and report["methods"] == ["layercam", "drise"] and report["score_threshold"] == 0
    rec = report["images"][0]
    classes, det = _detections(box_run.run_dir, scene_file)
    assert rec["detection"]["index"] == 0 and rec["detection"]["class"] == classes[int(det[0, 5])]
    assert rec["detection"]["box"] == pytest.approx(det[0, :4].tolist(), abs=0.01) and rec["detections"] == 100
    assert rec["methods"]["layercam"]["layers"] == ["net.backbone.body.body.stages.1", "net.backbone.body.body.stages.2",
                                                    "net.backbone.body.body.extra"]  # the maps the head reads
    assert rec["methods"]["drise"]["masks"] == 48 and rec["methods"]["drise"]["grid"] == 8
    for m in ("layercam", "drise"):
        r = rec["methods"][m]
        assert r["random_deletion_auc"]["seeds"] == 2 and 0 <= r["deletion_auc"] and 0 <= r["insertion_auc"]
        assert r["random_insertion_auc"]["min"] <= r["random_insertion_auc"]["mean"] <= r["random_insertion_auc"]["max"]
        assert r["faithful"] == (r["deletion_auc"] < r["random_deletion_auc"]["mean"]
                                 and r["insertion_auc"] > r["random_insertion_auc"]["mean"])
    assert not list(out.glob(".*.tmp*"))


def test_cli_chooses_by_class_and_index_and_takes_fpn_layers(box_run, scene_file, tmp_path):
    classes, det = _detections(box_run.run_dir, scene_file)
    cls = int(det[0, 5])
    second = int((det[:, 5] == cls).nonzero().flatten()[1])
    assert main(["explain", str(scene_file), "--checkpoint", str(box_run.run_dir), "--score-threshold", "0",
                 "--class", classes[cls], "--detection", "1", "--method", "layercam", "--layer",
                 "net.backbone.fpn.layer_blocks.0,net.backbone.fpn.layer_blocks.2", "--seeds", "1",
                 "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "explain.json").read_text())["images"][0]
    assert rec["detection"]["index"] == second and rec["detection"]["class"] == classes[cls]
    assert list(rec["methods"]) == ["layercam"]
    assert rec["methods"]["layercam"]["layers"] == ["net.backbone.fpn.layer_blocks.0", "net.backbone.fpn.layer_blocks.2"]


@pytest.mark.parametrize("args, message", [
    (["--score-threshold", "1"], "has no detections (none scores above the detector's threshold)"),
    (["--score-threshold", "1.5"], "--score-threshold is a fraction from 0 to 1, got 1.5"),
    (["--detection", "100"], "--detection 100 is out of range"),
    (["--class", "Bags"], "unknown target class 'Bags'"),
    (["--class", "ABSENT"], "has no detection of class"),
    (["--method", "gradcam"], "gradcam explains a classifier; a detection run is explained by layercam"),
    (["--method", "drisee"], "unknown method 'drisee' (did you mean: drise?)"),
    (["--region", "0,0,10,10"], "--region explains a segmentation model over a box; this run detects objects"),
    (["--layer", "net.backbone.body.body.stages.7"], "unknown layer 'net.backbone.body.body.stages.7'"),
    (["--layer", "net.backbone.fpn"], "gives OrderedDict, not a B×C×H×W feature map"),
    (["--grid", "97"], "--grid must be from 1 to the image's side (96)"),
    (["--keep-prob", "0"], "--keep-prob is a fraction above 0"),
    (["--masks", "0"], "Invalid value for '--masks'"),
    (["--benchmark"], "--benchmark measures classifiers on boxes; explain a detection run"),
])
def test_cli_bad_input_is_one_line(box_run, scene_file, tmp_path, capsys, args, message):
    if "ABSENT" in args:
        classes, det = _detections(box_run.run_dir, scene_file)
        absent = sorted(set(range(len(classes))) - {int(c) for c in det[:, 5] if c >= 0})
        if not absent:
            pytest.skip("every class is among the 100 detections")
        args = ["--class", classes[absent[0]]]
    if args != ["--benchmark"]:  # small and quick; every candidate kept unless the case sets the threshold
        args = ["--masks", "8", "--seeds", "1", *args, *([] if "--score-threshold" in args else
                                                         ["--score-threshold", "0"])]
    code = main(["explain", str(scene_file), "--checkpoint", str(box_run.run_dir), "--out", str(tmp_path / "o"),
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "explain.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--detection", "1"], "--detection applies to detection runs; this run classifies images"),
    (["--masks", "64"], "--masks applies to detection runs; this run classifies images"),
    (["--method", "drise"], "drise explains a detector's detections (a detection run)"),
])
def test_detection_options_on_a_classification_run_are_one_line(tmp_path, capsys, sample_train, args, message):
    from cnnkit.train import fit

    run = fit(model="resnet9", model_kwargs={"width": 4}, data="sample", epochs=1, train_images=64, batch_size=64,
              out=str(tmp_path / "cls"), progress=False, amp="off", channels_last=False)
    image = tmp_path / "shirt.png"
    Image.fromarray(sample_train.images[0, 0].numpy(), "L").save(image)
    code = main(["explain", str(image), "--checkpoint", str(run.run_dir), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
