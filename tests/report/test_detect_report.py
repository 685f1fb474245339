"""The detection evaluation's report: precision-recall curves by hand, the files and the chosen examples."""

from __future__ import annotations

import numpy as np
import torch

from cnnkit.tasks.detect import DETECT, coco_metrics, match_counts, pr_curves

NAMES = ["background", "a", "b"]


def _rows(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_precision_recall_points_are_cocos_matching_counted_by_hand():
    # one image, two objects of class a; detections: a hit (0.9), a miss-placed box (0.8), a hit (0.7)
    targets = _rows([1, 0, 0, 10, 10], [1, 20, 20, 30, 30])[None]
    outputs = _rows([0, 0, 10, 10, 0.9, 1], [50, 50, 60, 60, 0.8, 1], [20, 20, 30, 30, 0.7, 1])[None]
    curves = pr_curves(match_counts(outputs, targets, 3), 3, NAMES)
    assert set(curves) == {"0.50", "0.75"} and set(curves["0.50"]) == {"a"}  # b has no objects
    points = {tuple(np.round(p, 3)) for p in curves["0.50"]["a"] if p[0] > 0}
    # recall 1/2 at precision 1, then 2/3 once the third detection hits; the envelope lifts the dip at (1/2, 1/2)
    assert points == {(0.5, 1.0), (0.5, 0.667), (1.0, 0.667)}


def test_the_report_has_its_figures_and_shows_the_worst_images(tmp_path):
    g = torch.Generator().manual_seed(0)
    targets = torch.full((6, 3, 5), -1.0)
    outputs = torch.zeros(6, 4, 6)
    outputs[..., 5] = -1
    for i in range(6):
        targets[i, 0] = _rows([1 + i % 2, 8, 8, 30, 30])[0]
        outputs[i, 0] = _rows([8, 8, 30, 30, 0.9, 1 + i % 2])[0]  # every image's object found
    outputs[4, 1] = _rows([40, 40, 60, 60, 0.8, 1])[0]  # image 4: one false positive
    outputs[5, 1:3] = _rows([40, 40, 60, 60, 0.8, 2], [0, 40, 20, 60, 0.7, 1])  # image 5: two
    images = torch.randint(0, 255, (6, 1, 64, 64), dtype=torch.uint8, generator=g)
    metrics = coco_metrics(outputs, targets, NAMES)
    files = DETECT.report(metrics, NAMES, tmp_path, "test", images=images, outputs=outputs, targets=targets, shown=2)
    assert set(files) == {"per-class AP", "precision-recall", "examples", "report"}
    assert all(p.exists() and p.stat().st_size > 0 for p in files.values())
    html = files["report"].read_text()
    assert "Precision-recall" in html
    # the first two by index, then the two with the most errors, worst first
    assert "<td>5</td><td>most errors</td><td>2</td>" in html and "<td>4</td><td>most errors</td><td>1</td>" in html
