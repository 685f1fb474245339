"""Training from streamed image folders and WebDataset shards, and resuming a run mid-epoch."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cnnkit.artifacts import read_meta
from cnnkit.train import fit
from tests.conftest import write_imagefolder

FAST = dict(model="tinyvgg", batch_size=16, epochs=2, amp="off", channels_last=False, threads=1, progress=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_train):
    return write_imagefolder(tmp_path_factory.mktemp("scale") / "photos", sample_train, per_class=16)


def test_streamed_and_in_memory_training_give_the_same_weights(photos, tmp_path):
    # the same images in the same order (no augmentation); only the mean/std differ in how they are measured
    # (a sample of up to 2,000 images when streaming: here all of them), so the weights agree to rounding
    runs = {}
    for mode in ("memory", "stream"):
        runs[mode] = fit(data=f"imagefolder:{photos}", img_size=28, data_mode=mode, workers=2,
                         augment={"hflip": False, "crop_padding": 0}, out=str(tmp_path / mode), **FAST)
    chosen = yaml.safe_load((runs["stream"].run_dir / "config.yaml").read_text())
    assert chosen["data_mode"] == "stream"
    a, b = (load_file(str(r.last_checkpoint)) for r in runs.values())
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_training_from_webdataset_shards_and_evaluating_their_test_split(photos, tmp_path):
    from cnnkit.data.shards import write_shards
    from cnnkit.evaluate import evaluate

    shards = tmp_path / "shards"
    write_shards(f"imagefolder:{photos}", shards, shard_size=20_000, img_size=28, workers=0)
    run = fit(data=f"webdataset:{shards}", out=str(tmp_path / "run"), **FAST)
    assert len(run.history) == 2 and run.best_val_acc is not None
    result = evaluate(run.run_dir, f"webdataset:{shards}", "test", device="cpu")
    assert 0.0 <= result.metrics["top1"] <= 1.0 and len(result.labels) == 9


def test_a_run_stopped_mid_epoch_resumes_from_its_last_saved_step(tmp_path, monkeypatch):
    config = dict(data="sample", train_images=320, checkpoint_every=3, augment={"hflip": True, "crop_padding": 2},
                  **FAST)
    whole = fit(out=str(tmp_path / "whole"), **config)
    steps_per_epoch = 320 // 16
    loop = sys.modules["cnnkit.train.loop"]
    step = loop._step
    taken = [0]

    def stop_at_step_25(run, loss):  # a kill during the 25th step: the state saved after step 24 is the last
        taken[0] += 1
        if taken[0] == 25:
            raise KeyboardInterrupt
        step(run, loss)

    monkeypatch.setattr(loop, "_step", stop_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        fit(out=str(tmp_path / "cut"), **config)
    meta = read_meta(tmp_path / "cut" / "last.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 24 - steps_per_epoch)
    monkeypatch.setattr(loop, "_step", step)
    resumed = fit(resume=str(tmp_path / "cut"), progress=False)
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same batches, augmentation and schedule, bit for bit
    assert [r["train_loss"] for r in whole.history] == pytest.approx([r["train_loss"] for r in resumed.history])
    assert sorted(p.name for p in (tmp_path / "cut").glob("state-*")) == ["state-e0002.safetensors"]
