"""The HTML report `cnnkit eval` writes for a segmentation run: mIoU, a per-class IoU row for every class (values
from the metrics JSON), the confusion matrix and overlays of predictions against the ground truth for the first
images and the worst by per-image mIoU (checked against a hand computation). Uses the shared `seg_run`, evaluated
on its 200 held-out validation scenes."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
from PIL import Image

from cnnkit.evaluate import evaluate


@pytest.fixture(scope="module")
def evaluated(seg_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return evaluate(seg_run.run_dir, split="val", out_dir=out, device="cpu"), out


def _hand_miou(predicted: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """The mean IoU over the classes present in one image's labelled pixels or its prediction."""
    keep = truth != 255
    ious = []
    for c in range(classes):
        p, t = (predicted == c) & keep, (truth == c) & keep
        union = (p | t).sum()
        if union:
            ious.append((p & t).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def test_eval_writes_an_html_report_with_every_class_iou_and_overlays(evaluated):
    r, out = evaluated
    page = r.figures["report"].read_text()
    metrics = json.loads(r.json_path.read_text())
    assert r.figures["report"] == r.json_path.with_suffix(".html")  # beside the JSON, named alike
    for name, iou in metrics["per_class_iou"].items():  # one row per class, its IoU as the JSON records it
        value = "n/a (neither present nor predicted)" if iou is None else f"{iou:.4f}"
        assert f"<tr><td>{html.escape(name)}</td><td>{value}</td>" in page
    assert f"<td>{metrics['miou']:.4f}</td>" in page
    for label in ("per-class IoU", "confusion matrix", "overlays"):
        png = r.figures[label]
        assert png.parent == out and f'src="{png.name}"' in page
        with Image.open(png) as im:
            assert im.format == "PNG"
    with Image.open(r.figures["overlays"]) as im:
        assert im.size[1] > im.size[0]  # a row per image shown: the image, its ground truth, the prediction


def test_overlays_show_the_first_images_and_the_worst_by_per_image_miou(evaluated):
    r, _ = evaluated
    page = r.figures["report"].read_text()
    shown = [(int(i), kind, float(v)) for i, kind, v in
             re.findall(r"<tr><td>(\d+)</td><td>(first|worst)</td><td>([0-9.]+)</td></tr>", page)]
    predicted, truth = r.probs.numpy(), r.labels.numpy()  # what evaluation keeps: each pixel's predicted class
    assert predicted.shape == truth.shape
    hand = np.array([_hand_miou(p, t, len(r.data.classes)) for p, t in zip(predicted, truth)])
    assert [i for i, kind, _ in shown if kind == "first"] == [0, 1, 2, 3]
    worst = [(i, v) for i, kind, v in shown if kind == "worst"]
    assert len(worst) == 4
    for i, v in worst:
        assert abs(v - hand[i]) < 1e-4
    assert np.allclose(sorted(v for _, v in worst), np.sort(hand[4:])[:4], atol=1e-4)
    for i, kind, v in shown:
        assert abs(v - hand[i]) < 1e-4


def test_report_without_examples_has_no_overlays(evaluated, tmp_path):
    from cnnkit.tasks import get_task

    r, _ = evaluated
    figures = get_task("segment").report(r.metrics, r.data.classes, tmp_path, "bare")
    assert set(figures) == {"per-class IoU", "confusion matrix", "report"}
    assert "against the ground truth" not in figures["report"].read_text()
