"""`cnnkit predict` with a detection model: boxes at each image's own size, thresholds, drawings."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from cnnkit.cli import main
from cnnkit.evaluate.boxes import COLOURS, scaled_answer


def test_boxes_are_scaled_to_the_images_own_size_and_thresholded():
    det = torch.tensor([[10.0, 20.0, 40.0, 60.0, 0.9, 2.0],
                        [0.0, 0.0, 96.0, 96.0, 0.2, 1.0],  # under the threshold
                        [90.0, 5.0, 100.0, 30.0, 0.5, 1.0],  # past the input's right edge: clipped to the image
                        [0.0, 0.0, 0.0, 0.0, 0.0, -1.0]])
    answer = scaled_answer(det, ["background", "a", "b"], (96, 96), (48, 192), 0.25)  # half as high, twice as wide
    assert answer == [{"class": "b", "score": 0.9, "box": [20.0, 10.0, 80.0, 30.0]},
                      {"class": "a", "score": 0.5, "box": [180.0, 2.5, 192.0, 15.0]}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from cnnkit.data import load_dataset
    from cnnkit.train import fit

    root = tmp_path_factory.mktemp("boxes")
    result = fit(model="retinanet_small", model_kwargs={"width": 8}, data="fashion-scenes", epochs=1,
                 train_images=64, val_fraction=0.02, batch_size=16, out=str(root / "run"), progress=False,
                 amp="off", channels_last=False)
    scene = load_dataset("fashion-scenes", "test").images[0, 0].numpy()
    Image.fromarray(scene, "L").resize((150, 120), Image.NEAREST).save(root / "scene.png")  # not the model's size
    return result.run_dir, root / "scene.png"


def test_predict_answers_every_detection_over_the_threshold_at_the_images_size(run, tmp_path, capsys):
    from torchvision.transforms.v2 import functional as TF

    from cnnkit.artifacts import load
    from cnnkit.data import Normalize

    run_dir, scene = run
    assert main(["predict", str(scene), "--checkpoint", str(run_dir), "--json", "--score-threshold", "0.01",
                 "--nms-iou", "0.3", "--boxes-out", str(tmp_path / "drawn")]) == 0
    line = json.loads(capsys.readouterr().out)[0]
    assert (line["height"], line["width"]) == (120, 150) and line["top"]  # a 1-epoch detector still scores > 0.01
    # the same detections by hand: the whole image stretched to the model's size, the detector at those settings,
    # the boxes scaled back by each side's own factor
    ckpt = load(run_dir)
    ckpt.model.set_postprocess(score_threshold=0.01, nms_iou=0.3)
    stretched = TF.resize(TF.pil_to_tensor(Image.open(scene).convert("L")), list(ckpt.img_size), antialias=True)
    x = Normalize(*ckpt.normalization)(stretched[None])
    with torch.no_grad():
        det = ckpt.model.eval()(x)[0]
    det = det[(det[:, 5] >= 0) & (det[:, 4] >= 0.01)]
    assert len(line["top"]) == len(det)
    expected = det[:, :4] * torch.tensor([150 / 96, 120 / 96] * 2)
    got = torch.tensor([a["box"] for a in line["top"]])
    assert torch.allclose(got, expected.clamp_min(0).minimum(torch.tensor([150.0, 120, 150, 120])), atol=0.01)
    # the drawing: the image at its own size, each box's outline in its class's colour; boxes.json holds the answer
    record = json.loads((tmp_path / "drawn" / "boxes.json").read_text())
    assert record["images"][0]["detections"] == line["top"] and record["score_threshold"] == 0.01
    drawn = Image.open(tmp_path / "drawn" / "scene.png").convert("RGB")
    assert drawn.size == (150, 120)
    best = line["top"][0]
    x0, y0, x1, y1 = (int(v) for v in best["box"])
    colour = COLOURS[record["classes"].index(best["class"]) % len(COLOURS)]
    edge = drawn.getpixel((min(x0 + (x1 - x0) // 2, 149), min(y1, 119)))  # the bottom edge's middle
    assert "#%02x%02x%02x" % edge == colour
    # the checkpoint's own settings are untouched afterwards, and the default threshold answers fewer
    assert main(["predict", str(scene), "--checkpoint", str(run_dir), "--json"]) == 0
    default = json.loads(capsys.readouterr().out)[0]["top"]
    assert all(a["score"] >= 0.25 for a in default) and len(default) <= len(line["top"])


@pytest.mark.parametrize("argv, message", [
    (["--score-threshold", "1.5"], "--score-threshold is a fraction from 0 to 1"),
    (["--nms-iou", "-0.1"], "--nms-iou is a fraction from 0 to 1"),
    (["--masks-out", "m"], "a detector sees each image at its training size"),
])
def test_bad_detection_options_are_one_line(run, tmp_path, capsys, argv, message):
    run_dir, scene = run
    assert main(["predict", str(scene), "--checkpoint", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_detection_options_are_refused_for_a_classifier(trained_run, tmp_path, capsys):
    from cnnkit.data import load_dataset

    image = tmp_path / "x.png"
    Image.fromarray(load_dataset("sample", "test").images[0, 0].numpy(), "L").save(image)
    assert main(["predict", str(image), "--checkpoint", str(trained_run.run_dir), "--boxes-out",
                 str(tmp_path / "b")]) == 2
    assert "--boxes-out is for detection models" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
