"""cluttered-fashion-mnist: deterministic, boxes that hug the object, clutter that stays out of the box,
a cache that survives corruption, and a dataset `fit` trains on."""

from __future__ import annotations

import pytest
import torch

from cnnkit.data import ImageData, load_dataset
from cnnkit.data.cluttered import INK, _tight_boxes, make_cluttered
from cnnkit.errors import DataError


@pytest.fixture(scope="module")
def source():
    d = load_dataset("sample", "test")
    return d.subset(torch.arange(300), "test")


def test_same_seed_same_bytes_other_seed_other_layout(source):
    a, b, c = make_cluttered(source, 5), make_cluttered(source, 5), make_cluttered(source, 6)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (300, 1, 64, 64) and a.images.dtype == torch.uint8
    assert torch.equal(a.labels, source.labels) and a.classes == source.classes


def test_boxes_hug_the_scaled_object_and_clutter_stays_out(source):
    clean, clut = make_cluttered(source, 3, fragments=0), make_cluttered(source, 3)
    assert torch.equal(clean.boxes, clut.boxes)  # placement does not depend on the clutter
    b = clut.boxes
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all() and (b[:, 2:] > b[:, :2]).all()
    own = _tight_boxes(source.images[:, 0].float(), torch.zeros(len(source), 4))  # box in the 28×28 original
    ratio_w = (b[:, 2] - b[:, 0]) / (own[:, 2] - own[:, 0])
    ratio_h = (b[:, 3] - b[:, 1]) / (own[:, 3] - own[:, 1])
    slack = 2.5 / (own[:, 2:] - own[:, :2]).min(1).values  # a pixel of rounding at each edge
    assert ((ratio_w >= 0.8 - slack) & (ratio_w <= 1.6 + slack)).all()
    assert ((ratio_h >= 0.8 - slack) & (ratio_h <= 1.6 + slack)).all()
    assert ratio_w.min() < 1.0 < ratio_w.max()  # both shrinking and growing happen
    inside = torch.zeros(300, 64, 64, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(b.long().tolist()):
        inside[i, y0:y1, x0:x1] = True
    ink = clean.images[:, 0].float()
    assert (ink * inside).sum() >= 0.99 * ink.sum()  # the object is in its box
    assert (clean.images[:, 0][~inside] <= INK).all()
    assert torch.equal(clean.images[:, 0][inside], clut.images[:, 0][inside])  # clutter never enters the box
    assert (clut.images[:, 0][~inside].float().sum() > 10 * clean.images[:, 0][~inside].float().sum())


def test_registered_dataset_is_cached_and_survives_a_corrupt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path))
    first = load_dataset("cluttered-sample", "test")
    files = list((tmp_path / "cluttered").glob("*.pt"))
    assert len(files) == 1 and not [p for p in (tmp_path / "cluttered").iterdir() if p.name.startswith(".")]
    again = load_dataset("cluttered-sample", "test")
    assert torch.equal(first.images, again.images) and torch.equal(first.boxes, again.boxes)
    files[0].write_bytes(b"not a tensor file")
    healed = load_dataset("cluttered-sample", "test")
    assert torch.equal(first.images, healed.images)
    train = load_dataset("cluttered-sample", "train")
    assert train.boxes.shape == (len(train), 4) and train.img_size == (64, 64)
    sub = first.subset(torch.tensor([3, 1]), "x")
    assert torch.equal(sub.boxes, first.boxes[[3, 1]])


def test_boxes_are_validated():
    with pytest.raises(DataError, match=r"boxes must be 2×4"):
        ImageData(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), ["a"], "x", "test",
                  boxes=torch.zeros(3, 4))


def test_fit_trains_on_the_cluttered_set(tmp_path):
    from cnnkit.train import fit

    res = fit(data="cluttered-sample", model="resnet9", model_kwargs={"width": 8}, epochs=1, train_images=512,
              batch_size=128, out=str(tmp_path / "run"), progress=False)
    assert res.config.data == "cluttered-sample" and res.best_checkpoint.exists()
