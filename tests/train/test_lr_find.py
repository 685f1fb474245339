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
    said: list[str] = []
    r = lr_find(**TINY, steps=60, start=1e-4, end=100.0, out=str(out), say=said.append)
    assert said == ["lr-find: resnet9 on sample: training a copy from its initialization for up to 60 steps, the "
                    "learning rate growing from 0.0001 to 100; it stops early where the loss diverges"]
    assert len(r.lrs) <= 60 and r.lrs == sorted(r.lrs)
    assert min(r.smoothed) < 0.9 * r.smoothed[0]  # the loss fell along the way ...
    assert r.stopped_early and r.lrs[-1] < 100.0  # ... and blew up at rates far too high, which ended the test
    assert r.steps_planned == 60 and r.stopped_because.startswith(("the loss diverged at lr", "the loss became"))
    assert (r.lr, r.model_recipe) == (0.2, "fast:mnist-like")  # the rate this model and data train with now
    assert 1e-4 < r.suggestion < 1.0
    assert (out / "lr_find.csv").read_text().startswith("step,lr,loss,smoothed_loss\n")
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "last.safetensors").exists()  # a test run, not a training run


def test_the_summary_says_why_the_test_stopped_and_shows_the_rate_in_use(monkeypatch, capsys):
    """A test that ended before its last step says why (the loss diverged), and the proposal stands beside the
    rate the run would train with: the recipe's, or the --lr given."""
    import cnnkit.train
    from cnnkit.train.range_test import LrFindResult
    from tests.cli.test_cli import run

    def fake(say=None, **options):
        if say is not None:
            say("lr-find: what it is doing")
        lrs = [1e-6 * 1.2 ** i for i in range(84)]
        return LrFindResult(lrs, [2.0] * 84, [2.0] * 84, 0.05, 0.1, 0.5, True, steps_planned=100,
                            stopped_because="the loss diverged at lr 2.1 (smoothed, 9.2 against its lowest 1.9: "
                                            "more than 4×)", lr=options["lr"] or 0.2, model_recipe="fast:mnist-like")

    monkeypatch.setattr(cnnkit.train, "lr_find", fake)
    code, out, err = run(capsys, "train", "--lr-find", "--data", "sample")
    assert code == 0, err
    assert "84 of 100; stopped early: the loss diverged at lr 2.1" in out
    assert "--lr 0.05" in out and "--lr 0.2 (the fast:mnist-like recipe's)" in out
    assert err == "lr-find: what it is doing\n"  # what the minute of steps is doing, on stderr
    code, out, err = run(capsys, "train", "--lr-find", "--data", "sample", "--lr", "0.3", "--quiet")
    assert code == 0 and "--lr 0.3 (given)" in out and err == ""
