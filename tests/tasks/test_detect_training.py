"""A detector through the trainer's budget, resume and torchrun paths: the plan, the resumed history, and the
validation mAP that two processes sum (their counts all-reduced) equal to one process's count of the same images."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.train.test_budget import fake_pace  # noqa: F401  (the fixture: a measured pace of 0.4 s per step)
from tests.train.test_fit import stop_after

pytestmark = pytest.mark.slow

CONFIG = dict(model="retinanet_small", model_kwargs={"width": 8, "anchor_sizes": [12, 24, 48]},
              data="fashion-scenes", train_images=64, batch_size=16, epochs=1, val_fraction=0.02, amp="off",
              channels_last=False, augment={"hflip": False, "crop_padding": 0}, seed=3, threads=1)


def _validation_map(run_dir, val_fraction: float, split_seed: int) -> float:
    """The run's best checkpoint scored on its validation images in one process, by hand."""
    from cnnkit.artifacts import load
    from cnnkit.data import Normalize, load_dataset, train_val_split
    from cnnkit.tasks.detect import DETECT, match_counts

    ckpt = load(run_dir)
    full = load_dataset("fashion-scenes", "train")
    _, val = train_val_split(full.labels, val_fraction, split_seed)
    normalize = Normalize(*ckpt.normalization)
    total = 0
    with torch.no_grad():
        for part in val.split(64):
            out = ckpt.model.eval()(normalize(full.images[part]))
            total = total + match_counts(out, full.objects[part], len(ckpt.classes))
    return DETECT.score_value(total, len(val))


def test_two_processes_sum_the_same_validation_map_as_one(tmp_path):
    from tests.train.test_distributed import _torchrun

    out = tmp_path / "run"
    _torchrun(tmp_path, out, CONFIG)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    recorded = float(rows[-1]["val_map"])
    assert 0 <= recorded <= 1
    assert abs(recorded - _validation_map(out, CONFIG["val_fraction"], CONFIG["seed"])) < 1e-9


def test_a_budgeted_detection_run_resumes_with_its_plan(tmp_path, fake_pace):  # noqa: F811
    import yaml

    from cnnkit.train import fit

    config = {**CONFIG, "epochs": None, "threads": 0}
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(**config, budget=10, out=str(out), progress=False, callbacks=[stop_after(1)])
    planned = yaml.safe_load((out / "config.yaml").read_text())
    assert fake_pace == [10] and planned["epochs"] >= 2 and planned["task"] == "detect"
    fake_pace.clear()
    result = fit(resume=out, progress=False)
    assert fake_pace == [] and result.config.max_steps == planned["max_steps"]
    assert len(result.history) == planned["epochs"] and all(0 <= h["val_map"] <= 1 for h in result.history)


def test_a_detection_run_measures_its_own_pace_for_a_budget(tmp_path):
    """The budget's pace is measured with the detector's own losses (it takes the targets in training mode)."""
    from cnnkit.train import fit

    result = fit(**{**CONFIG, "epochs": None}, budget=25, lr=3e-4, out=str(tmp_path / "run"), progress=False)
    assert result.config.max_steps > 0 and result.history and result.best_checkpoint.exists()
