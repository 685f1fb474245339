"""The learning-rate range test (Smith 2017): a falling-then-climbing curve and a proposal below the blow-up."""

from __future__ import annotations

import math

from cnnkit.train import lr_find
from cnnkit.train.range_test import _propose
from tests.conftest import TINY


def test_the_proposal_sits_where_the_loss_still_falls_below_where_it_blows_up():
    lrs = [1e-5 * 10 ** (i / 10) for i in range(60)]  # 1e-5 .. ~1
    # flat until 1e-3, falling until 1e-1, then climbing steeply
    smoothed = [2.3 if lr < 1e-3 else 2.3 - 0.6 * math.log10(lr / 1e-3) if lr < 1e-1 else
                1.1 + 8 * math.log10(lr / 1e-1) for lr in lrs]
    r = _propose(lrs, smoothed, smoothed, stopped=True)
    assert math.isclose(r.min_loss_lr, 1e-1, rel_tol=0.3)
    assert 1e-3 <= r.steepest <= 1e-1
    assert math.isclose(r.suggestion, 1e-2, rel_tol=0.3)  # a tenth of the rate at the minimum


def test_range_test_on_the_sample_writes_its_curve_and_proposes_a_sane_rate(tmp_path):
    out = tmp_path / "lrf"
    r = lr_find(**TINY, steps=60, start=1e-4, end=100.0, out=str(out))
    assert len(r.lrs) <= 60 and r.lrs == sorted(r.lrs)
    assert min(r.smoothed) < 0.9 * r.smoothed[0]  # the loss fell along the way ...
    assert r.stopped_early and r.lrs[-1] < 100.0  # ... and blew up at rates far too high, which ended the test
    assert 1e-4 < r.suggestion < 1.0
    assert (out / "lr_find.csv").read_text().startswith("step,lr,loss,smoothed_loss\n")
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "last.safetensors").exists()  # a test run, not a training run
