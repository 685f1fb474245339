from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.errors import CheckpointError, DataError
from cnnkit.evaluate import evaluate, predict
from tests.conftest import write_imagefolder


def test_evaluate_writes_json_and_confusion_png(trained_run, tmp_path):
    r = evaluate(trained_run.run_dir, "sample", "test", out_dir=tmp_path)
    m = r.metrics
    assert m["images"] == 1000 and 0.6 < m["top1"] <= m["top5"] <= 1.0
    assert 0 <= m["ece"] <= 1 and len(m["per_class"]) == 10
    assert json.loads(r.json_path.read_text())["top1"] == m["top1"]
    assert r.confusion_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tta = evaluate(trained_run.run_dir, "sample", "test", tta=True)
    assert tta.metrics["top1"] != m["top1"] or not torch.equal(tta.probs, r.probs)


def test_predict_images_of_any_size_and_mode(trained_run, sample_train, tmp_path):
    write_imagefolder(tmp_path, sample_train, per_class=3)
    big = Image.fromarray(np.kron(sample_train.images[1, 0].numpy(), np.ones((8, 8), np.uint8)))
    big.convert("RGB").save(tmp_path / "big.jpg")
    preds = predict(trained_run.run_dir, [tmp_path], topk=3)
    assert len(preds) == 10
    for p in preds:
        assert len(p.top) == 3 and all(c in sample_train.classes for c, _ in p.top)
        probs = [v for _, v in p.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_agrees_with_evaluate_on_the_same_images(trained_run, sample_train, tmp_path):
    from cnnkit.data import load_dataset

    test = load_dataset("sample", "test")
    for i in range(8):
        Image.fromarray(test.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
    preds = predict(trained_run.run_dir, sorted(tmp_path.glob("*.png"), key=lambda p: int(p.stem)), topk=1)
    ev = evaluate(trained_run.run_dir, "sample", "test")
    expected = [sample_train.classes[int(i)] for i in ev.probs[:8].argmax(1)]
    assert [p.top[0][0] for p in preds] == expected


def test_predict_skips_unreadable_files_or_stops_when_strict(trained_run, sample_train, tmp_path):
    Image.fromarray(sample_train.images[0, 0].numpy()).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert len(predict(trained_run.run_dir, [tmp_path])) == 1
    with pytest.raises(DataError, match="bad.png"):
        predict(trained_run.run_dir, [tmp_path], strict=True)
    with pytest.raises(DataError, match="no such file"):
        predict(trained_run.run_dir, [tmp_path / "nope.png"])


def test_evaluate_on_incompatible_data_is_an_error(trained_run, sample_train, tmp_path):
    write_imagefolder(tmp_path, sample_train, per_class=2, mixed=False)
    with pytest.raises(CheckpointError, match="has 3 classes but .* was trained on 10"):
        evaluate(trained_run.run_dir, f"imagefolder:{tmp_path}")
