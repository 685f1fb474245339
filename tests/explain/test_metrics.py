"""Faithfulness and localization metrics on hand-built cases with known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from scipy.stats import spearmanr

from cnnkit.errors import ExplainError
from cnnkit.explain import explain
from cnnkit.explain.metrics import (box_iou, centre_maps, deletion_insertion, localization_iou, map_boxes,
                                    pointing_game, randomization_check, spearman)
from cnnkit.models import create


def _box_map(boxes, size=16):
    maps = torch.zeros(len(boxes), size, size)
    for m, (x0, y0, x1, y1) in zip(maps, boxes):
        m[y0:y1, x0:x1] = 1.0
    return maps


def test_pointing_game_hits_misses_and_tolerance():
    boxes = torch.tensor([[2, 3, 6, 8], [10, 10, 14, 14]])
    maps = _box_map(boxes.tolist())
    assert pointing_game(maps, boxes).tolist() == [1.0, 1.0]  # a perfect map always hits
    assert pointing_game(maps.flip(0), boxes).tolist() == [0.0, 0.0]
    off = torch.zeros(1, 16, 16)
    off[0, 3, 8] = 1  # pixel centre (8.5, 3.5): 2.5 px right of the box's edge at x=6
    assert pointing_game(off, boxes[:1]).item() == 0 and pointing_game(off, boxes[:1], tolerance=3).item() == 1
    assert pointing_game(torch.zeros(1, 16, 16), boxes[:1]).item() == 0  # an all-zero map points nowhere
    assert pointing_game(centre_maps(1, (16, 16)), torch.tensor([[6, 6, 10, 10]])).item() == 1
    with pytest.raises(ExplainError, match="boxes must be 2×4"):
        pointing_game(maps, boxes[:1])


def test_box_iou_and_map_boxes():
    assert box_iou(torch.tensor([[0, 0, 4, 4]]), torch.tensor([[2, 2, 6, 6]])).item() == pytest.approx(4 / 28)
    boxes = torch.tensor([[2, 3, 6, 8], [1, 1, 15, 5]])
    maps = _box_map(boxes.tolist())
    maps[0, 12:14, 12:14] = 0.5  # a smaller second blob: not the largest region
    assert torch.equal(map_boxes(maps), boxes.float())
    assert localization_iou(maps, boxes).tolist() == [1.0, 1.0]
    assert map_boxes(torch.zeros(1, 16, 16)).tolist() == [[0, 0, 0, 0]]
    assert localization_iou(torch.zeros(1, 16, 16), boxes[:1]).item() == 0


class _Ink(nn.Module):
    """Class 0's logit grows with the ink inside a fixed square: a model whose right explanation is known."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x):
        inside = self.conv(x)[:, 0, 4:12, 4:12].mean((1, 2)) * 8 - 4
        return torch.stack([inside, torch.zeros_like(inside)], 1)


def test_deletion_and_insertion_rank_a_right_map_above_a_reversed_one():
    model = _Ink().eval()
    x = torch.zeros(3, 1, 16, 16)
    x[:, :, 4:12, 4:12] = torch.rand(3, 1, 8, 8) + 0.5  # ink only where the model looks
    right = _box_map([[4, 4, 12, 12]] * 3) + 0.01 * torch.rand(3, 16, 16)
    wrong = 1 - right
    t = torch.zeros(3, dtype=torch.long)
    good, bad = deletion_insertion(model, x, right, t, steps=16), deletion_insertion(model, x, wrong, t, steps=16)
    assert (good["deletion"] < bad["deletion"]).all() and (good["insertion"] > bad["insertion"]).all()
    assert good["deletion_curve"].shape == (3, 17)
    # the curve's end points: the intact image first, the fully deleted (zero) image last
    p_full = torch.softmax(model(x), 1)[:, 0]
    assert torch.allclose(good["deletion_curve"][:, 0], p_full) and torch.allclose(good["deletion_curve"][:, -1],
                                                                                   torch.full((3,), 1 / (1 + torch.e ** 4)))
    with pytest.raises(ExplainError, match="do not match images"):
        deletion_insertion(model, x, right[:2], t)


def test_spearman_matches_scipy():
    a, b = torch.randn(3, 40), torch.randn(3, 40)
    b[0] = a[0] * 2 + 1
    a[2, :10] = 0  # ties
    mine = spearman(a, b)
    ref = [spearmanr(a[i], b[i]).statistic for i in range(3)]
    assert torch.allclose(mine, torch.tensor(ref, dtype=torch.float32), atol=1e-6) and mine[0] == pytest.approx(1)
    assert spearman(torch.ones(1, 5), torch.randn(1, 5)).item() == 0


def test_randomization_check_decorrelates_gradcam_maps():
    torch.manual_seed(0)
    model = create("resnet20", num_classes=10, in_chans=1).eval()
    x = torch.randn(4, 1, 28, 28)
    targets = model(x).argmax(1)

    def maps(m):
        return explain(m, x, targets, method="gradcam").maps

    rows = randomization_check(model, x, maps, depth=2)
    assert [r["randomized_through"] for r in rows] == ["classifier", "stages.2"]
    assert all(-1 <= r["spearman"] <= 1 for r in rows) and rows[-1]["spearman"] < 0.9
    assert torch.equal(maps(model), maps(model))  # the model itself was not touched
