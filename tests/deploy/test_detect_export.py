"""Exporting a detector: ONNX with the post-processing inside for each of the four detectors, ONNX Runtime's
detections against PyTorch's on real fashion-scenes images of a briefly trained model (every detection of
either matched by one of the other's of the same class, box IoU >= 0.99, score within 1e-3), one image per
run, a dynamic height and width where the detector allows it; the refusals in one line; the threshold and
NMS IoU a detector is set to; `padded_detections` unchanged in eager mode. The models are trained here for a
few steps on four scenes (a detector that detects nothing would prove nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnkit.artifacts import LoadedCheckpoint, load, save_checkpoint
from cnnkit.cli import main
from cnnkit.deploy import export_onnx
from cnnkit.errors import ConfigError, ExportError, ModelError
from cnnkit.models import create

DETECTORS = ["retinanet_small", "fcos_small", "ssd_small", "fasterrcnn_small"]
# RetinaNet learns with cross-entropy here (focal_gamma 0): under the focal loss a few steps leave every score
# within 1e-3 of its prior, 0.01, where the runtimes' rounding decides which of equal candidates is kept
OPTIONS = {"retinanet_small": {"width": 8, "fpn_channels": 32, "focal_gamma": 0.0},
           "fcos_small": {"width": 8, "fpn_channels": 32}, "ssd_small": {"width": 8},
           "fasterrcnn_small": {"width": 8, "fpn_channels": 32}}
THRESHOLD = {"retinanet_small": 0.001}  # exported with this score threshold (else 0.01): a few steps score low


@pytest.fixture(scope="module")
def scenes():
    return load_scenes()


def load_scenes() -> dict:
    """Eight fashion-scenes images (the first four, which the models are fitted to, and four they never saw),
    the first four's boxes, the classes and a normalization."""
    from cnnkit.data import load_dataset

    train = load_dataset("fashion-scenes", "train")
    mean, std = float(train.images[:256].float().div(255).mean()), float(train.images[:256].float().div(255).std())
    return {"images": train.images[:8], "objects": train.objects[:4].float(), "classes": list(train.classes),
            "normalization": {"mean": [mean], "std": [std]}}


def normalized(images: torch.Tensor, normalization: dict) -> torch.Tensor:
    return (images.float() / 255 - normalization["mean"][0]) / normalization["std"][0]


def briefly_trained(name: str, scenes: dict, folder: Path, steps: int | None = None) -> LoadedCheckpoint:
    """`name` at a small width fitted for `steps` AdamW steps to the first four scenes, saved as the run
    directory `folder` (its best.safetensors)."""
    steps = steps if steps is not None else 12 if name == "retinanet_small" else 6
    torch.manual_seed(0)
    model = create(name, num_classes=len(scenes["classes"]), in_chans=1, img_size=(96, 96), **OPTIONS[name])
    x = normalized(scenes["images"][:4], scenes["normalization"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = sum(model(x, scenes["objects"]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = {"task": "detect", "model": name, "model_kwargs": OPTIONS[name], "classes": scenes["classes"],
            "in_chans": 1, "img_size": [96, 96], "normalization": scenes["normalization"],
            "dataset": {"name": "fashion-scenes"}}
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.safetensors", model.eval(), meta)
    return load(folder)


def unmatched(a: torch.Tensor, b: torch.Tensor, threshold: float) -> tuple[int, int]:
    """(how many of `a`'s detections scoring clearly above `threshold` have no detection in `b` of the same
    class, box IoU >= 0.99 (or the same box to 0.01 pixel: a box too small for its IoU to tell) and score
    within 1e-3, how many were looked at). Where `b`'s list of detections is full, those of `a` scoring about
    as low as `b`'s lowest are not looked at (a top-k cut may drop either)."""
    from torchvision.ops import box_iou

    missing = compared = 0
    for da, db in zip(a, b):
        db = db[db[:, 5] >= 0]
        floor = threshold + 1e-4
        if len(db) == b.shape[1]:
            floor = max(floor, float(db[:, 4].min()) + 1e-4)
        for d in da[(da[:, 5] >= 0) & (da[:, 4] >= floor)]:
            compared += 1
            same = db[(db[:, 5] == d[5]) & ((db[:, 4] - d[4]).abs() <= 1e-3)]
            iou = box_iou(d[None, :4], same[:, :4]).nan_to_num(0) if len(same) else torch.zeros(1, 0)
            identical = (same[:, :4] - d[:4]).abs().amax(1) <= 1e-2 if len(same) else torch.zeros(0, dtype=bool)
            if not (bool((iou >= 0.99).any()) or bool(identical.any())):
                missing += 1
    return missing, compared


@pytest.mark.parametrize("name", DETECTORS)
def test_onnx_runtime_finds_pytorchs_detections_on_real_images(name, scenes, tmp_path):
    import onnxruntime as ort

    threshold = THRESHOLD.get(name, 0.01)
    ckpt = briefly_trained(name, scenes, tmp_path / "run")
    r = export_onnx(ckpt, tmp_path / "d.onnx", score_threshold=threshold)
    side = json.loads(r.sidecar.read_text())
    assert side["task"] == "detect" and side["batch"] == 1 and side["score_threshold"] == threshold
    assert side["exporter"].startswith("torch.onnx.export(dynamo=False)") and side["opset"] >= 11
    assert side["dynamic_size"] is (name != "ssd_small")  # SSD's default boxes are fixed at the traced size
    assert all(c["detection_agreement"] == 1.0 for c in r.checks)
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    assert [i.name for i in sess.get_inputs()] == ["images"] and [o.name for o in sess.get_outputs()] == ["detections"]
    assert shape[:2] == [1, 1] and (shape[2:] == [96, 96]) is (name == "ssd_small")

    model = ckpt.model.set_postprocess(score_threshold=threshold)
    art = load(r.path).model  # cnnkit's runner: a batch of 8 runs image by image
    sizes = [(96, 96)] + ([] if name == "ssd_small" else [(80, 112)])  # the second: a size the export never saw
    for size in sizes:
        images = torch.nn.functional.interpolate(scenes["images"].float(), size=size, mode="bilinear")
        x = normalized(images.round(), scenes["normalization"])
        with torch.no_grad():
            want, got = model(x), art(x)
        assert got.shape == want.shape == (8, 100, 6)
        assert (want[..., 5] >= 0).sum() > 100  # detections to compare, on the unseen scenes too
        assert (want[4:, :, 5] >= 0).sum() > 20
        missing, compared = unmatched(want, got, threshold)
        assert compared > 100 and missing == 0, (size, missing, compared)
        missing, compared = unmatched(got, want, threshold)
        assert compared > 100 and missing == 0, (size, missing, compared)
    one = np.asarray(sess.run(None, {"images": x[:1].numpy()})[0])  # the graph itself: one image a run
    assert np.array_equal(one, got[:1].numpy())
    from cnnkit.deploy.bench import input_size

    if name == "ssd_small":  # `bench --img-size` refuses another size for a graph that takes one
        with pytest.raises(ConfigError, match="takes 96x96 images only"):
            input_size(load(r.path), (64, 128))
    else:
        assert input_size(load(r.path), (64, 128)) == (64, 128)


def test_torch_export_and_compress_are_refused_in_one_line(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    briefly_trained("ssd_small", scenes, run, steps=1)
    capsys.readouterr()
    for argv, words in (
            (["export", "--checkpoint", str(run), "--format", "torch-export", "--out", str(tmp_path / "d.pt2")],
             "export it as ONNX"),
            (["export", "--checkpoint", str(run), "--score-threshold", "1.5", "--out", str(tmp_path / "d.onnx")],
             "--score-threshold is a fraction from 0 to 1"),
            (["export", "--checkpoint", str(run), "--format", "torch-export", "--nms-iou", "0.5"], "--format onnx"),
            (["compress", "--checkpoint", str(run), "--recipe", "int8", "--out", str(tmp_path / "c")],
             "not available")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written


def test_an_onnx_graph_whose_detections_move_is_not_written(scenes, tmp_path):
    from cnnkit.deploy.detect import detector_parity
    from cnnkit.deploy.export import export_artifact

    ckpt = briefly_trained("ssd_small", scenes, tmp_path / "run", steps=1)

    def shifted(model, example, tmp, task):  # boxes 2 pixels to the right: same classes and scores
        return lambda x: (model(x) + torch.tensor([2.0, 0, 2, 0, 0, 0])).numpy()

    with pytest.raises(ExportError, match=r"detection agreement with PyTorch is 0\.\d+ \(same class, box IoU"):
        export_artifact(ckpt, tmp_path / "d.onnx", ".onnx", "onnx", 1e-4, 0, shifted, model=ckpt.model,
                        compare=detector_parity(0.01), any_size=False,
                        extra={"parity_rule": "same class, box IoU >= 0.99, score within 0.001"})
    assert not (tmp_path / "d.onnx").exists() and not (tmp_path / "d.onnx.json").exists()


def test_match_detections_counts_what_either_side_misses():
    from cnnkit.deploy.detect import match_detections

    rows = torch.tensor([[10.0, 10, 40, 40, 0.9, 1], [50, 50, 80, 90, 0.5, 2], [0, 0, 30, 30, 0.5, 3],
                         [0, 0, 0, 0, 0, -1]])[None]
    swapped = rows[:, [0, 2, 1, 3]]  # tied scores in another order: the same detections
    assert match_detections(swapped, rows)["detection_agreement"] == 1.0
    lost = rows.clone()
    lost[0, 2] = torch.tensor([0, 0, 0, 0, 0, -1])
    m = match_detections(lost, rows)
    assert m["detections_compared"] == 5 and m["detection_agreement"] == pytest.approx(4 / 5)
    other = rows.clone()
    other[0, 1, 5] = 4  # the same box given another class
    assert match_detections(other, rows)["detection_agreement"] == pytest.approx(4 / 6)
    nudged = rows.clone()
    nudged[0, 0, 4] += 2e-3  # a score off by more than 1e-3
    assert match_detections(nudged, rows)["detection_agreement"] < 1
    assert match_detections(rows, rows, min_score=0.6)["detections_compared"] == 2  # above the threshold only


def test_set_postprocess_maps_to_each_detectors_own_settings_and_refuses_bad_values():
    for name in DETECTORS:
        model = create(name, num_classes=3, in_chans=1, img_size=(64, 64), **OPTIONS[name])
        holder = model.net.roi_heads if name == "fasterrcnn_small" else model.net
        assert model.set_postprocess(score_threshold=0.3, nms_iou=0.4) is model
        assert (holder.score_thresh, holder.nms_thresh) == (0.3, 0.4)
        assert model.postprocess == {"score_threshold": 0.3, "nms_iou": 0.4}
        model.set_postprocess(nms_iou=0.6)  # None leaves the other as it is
        assert model.postprocess == {"score_threshold": 0.3, "nms_iou": 0.6}
        for bad in ({"score_threshold": 1.5}, {"nms_iou": -0.1}, {"score_threshold": float("nan")},
                    {"nms_iou": True}, {"score_threshold": "0.5"}):
            with pytest.raises(ModelError, match="must be a number from 0 to 1") as e:
                model.set_postprocess(**bad)
            assert "\n" not in str(e.value)
        assert model.postprocess == {"score_threshold": 0.3, "nms_iou": 0.6}  # a refused call changes nothing


def test_padded_detections_keeps_the_best_first_and_pads_to_the_limit():
    from cnnkit.models.detect import padded_detections

    many = {"boxes": torch.rand(7, 4) * 50, "scores": torch.tensor([0.2, 0.9, 0.5, 0.9, 0.1, 0.7, 0.3]),
            "labels": torch.arange(7)}
    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    out = padded_detections([many, none], 5)
    assert out.shape == (2, 5, 6)
    assert out[0, :, 4].tolist() == pytest.approx([0.9, 0.9, 0.7, 0.5, 0.3])
    assert out[0, :, 5].tolist() == [1, 3, 5, 2, 6]  # ties keep their order
    assert torch.equal(out[0, 0, :4], many["boxes"][1])
    assert torch.equal(out[1], torch.tensor([[0.0, 0, 0, 0, 0, -1]]).expand(5, 6))
    assert padded_detections([], 3).shape == (0, 3, 6)
