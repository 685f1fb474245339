from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from cnnkit.tasks import classification_report, expected_calibration_error, topk_accuracy


def test_ece_matches_hand_computed_value():
    # Two bins used: conf 0.9 (3 samples, 2 right) and conf 0.6 (2 samples, both right).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 0, 0, 1])
    expected = 3 / 5 * abs(0.9 - 2 / 3) + 2 / 5 * abs(0.6 - 1.0)
    assert abs(expected_calibration_error(probs, labels) - expected) < 1e-6


def test_perfectly_calibrated_one_hot_has_zero_ece():
    labels = torch.arange(10)
    assert expected_calibration_error(torch.eye(10), labels) == 0.0


def test_topk_and_per_class_match_sklearn():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200, 6, generator=g).softmax(1)
    labels = torch.randint(0, 6, (200,), generator=g)
    r = classification_report(probs, labels, [f"c{i}" for i in range(6)])
    pred = probs.argmax(1).numpy()
    assert abs(r["top1"] - float((pred == labels.numpy()).mean())) < 1e-6
    ranks = (probs > probs.gather(1, labels[:, None])).sum(1)
    assert abs(topk_accuracy(probs, labels, 5) - float((ranks < 5).float().mean())) < 1e-6
    np.testing.assert_allclose([c["precision"] for c in r["per_class"]],
                               precision_score(labels, pred, average=None, zero_division=0))
    np.testing.assert_allclose([c["recall"] for c in r["per_class"]], recall_score(labels, pred, average=None))
    np.testing.assert_allclose([c["f1"] for c in r["per_class"]], f1_score(labels, pred, average=None))
    assert np.asarray(r["confusion_matrix"]).sum() == 200
