from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cnnkit.errors import CheckpointError, ConfigError, TrainingDiverged
from cnnkit.artifacts import load
from cnnkit.train import fit
from cnnkit.artifacts import read_meta, save_checkpoint
from tests.conftest import TINY


def test_run_directory_contents(trained_run):
    run = trained_run.run_dir
    for name in ("config.yaml", "metrics.csv", "best.safetensors", "best.json", "last.safetensors", "last.json"):
        assert (run / name).exists(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert len(list(run.glob("state-e*.safetensors"))) == 1
    from cnnkit.artifacts import FILE_MODE

    assert (run / "best.safetensors").stat().st_mode & 0o777 == FILE_MODE  # not mkstemp's private 0600
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "resnet9" and cfg["model_kwargs"] == {"width": 8} and cfg["epochs"] == 3
    side = json.loads((run / "best.json").read_text())
    for key in ("model", "model_kwargs", "classes", "in_chans", "img_size", "normalization", "dataset",
                "cnnkit_version"):
        assert key in side
    assert side["dataset"]["fingerprint"] and side["img_size"] == [28, 28] and len(side["classes"]) == 10
    assert side == read_meta(run / "best.safetensors")
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch,train_loss")


def test_training_learns(trained_run):
    h = trained_run.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert trained_run.best_val_acc > 0.6  # 10 classes: chance is 0.1


def test_weight_decay_spares_norms_and_biases():
    from timm.optim import create_optimizer_v2

    from cnnkit.models import create

    model = create("resnet9", 10, 1, width=4)
    opt = create_optimizer_v2(model, opt="nesterov", lr=0.1, weight_decay=5e-4, filter_bias_and_bn=True)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name


def stop_after(epoch: int):
    """A callback that interrupts the run after `epoch`, as Ctrl-C would."""

    def callback(end):
        if end.epoch == epoch:
            raise KeyboardInterrupt

    return callback


def _weights(path):
    return load_file(str(path))


def test_resume_reproduces_uninterrupted_run_exactly(tmp_path):
    opts = dict(TINY, epochs=4, deterministic=True, seed=7, ema=0.9, val_fraction=0.1, train_images=1000,
                augment={"crop_padding": 2, "hflip": True, "erasing": 0.3, "mixup": 0.2}, progress=False)
    straight = fit(**opts, out=str(tmp_path / "straight"))

    with pytest.raises(KeyboardInterrupt):
        fit(**opts, out=str(tmp_path / "resumed"), callbacks=[stop_after(2)])
    assert read_meta(tmp_path / "resumed" / "last.safetensors")["epoch"] == 2
    resumed = fit(resume=tmp_path / "resumed", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for name in ("last.safetensors", "best.safetensors"):
        a, b = _weights(straight.run_dir / name), _weights(resumed.run_dir / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert straight.history[-1]["val_acc"] == resumed.history[-1]["val_acc"]


def test_deterministic_mode_repeats_exactly(tmp_path):
    a = fit(**TINY, epochs=1, deterministic=True, out=str(tmp_path / "a"), progress=False)
    b = fit(**TINY, epochs=1, deterministic=True, out=str(tmp_path / "b"), progress=False)
    wa, wb = _weights(a.last_checkpoint), _weights(b.last_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poison(end):
        with torch.no_grad():
            for p in end.model.parameters():
                p.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2"):
        fit(**TINY, epochs=3, out=str(tmp_path / "run"), callbacks=[poison], progress=False)
    ckpt = load(tmp_path / "run" / "last.safetensors")
    assert ckpt.meta["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt.model.state_dict().values())


def test_existing_run_needs_resume_or_new_out(trained_run):
    with pytest.raises(ConfigError, match="already holds a run; continue it"):
        fit(**TINY, epochs=1, out=str(trained_run.run_dir), progress=False)


def test_resume_refuses_changed_options_and_finished_runs(trained_run):
    with pytest.raises(ConfigError, match="cannot change: lr"):
        fit(resume=trained_run.run_dir, lr=0.5, progress=False)
    with pytest.raises(ConfigError, match="already finished 3 epoch"):
        fit(resume=trained_run.run_dir, epochs=2, progress=False)
    done = fit(resume=trained_run.run_dir, progress=False)  # a finished run: resuming does nothing
    assert len(done.history) == 3
    with pytest.raises(CheckpointError, match="cannot resume"):
        fit(resume=trained_run.run_dir / "nope", progress=False)


def test_interrupted_checkpoint_write_leaves_previous_file_intact(trained_run, tmp_path, monkeypatch):
    import shutil

    import cnnkit.artifacts.files as ck

    target = tmp_path / "best.safetensors"
    shutil.copy(trained_run.best_checkpoint, target)
    before = target.read_bytes()
    ckpt = load(target)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the bytes are written, before the rename

    monkeypatch.setattr(ck.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, ckpt.model, ckpt.meta)
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    load(target)


def test_early_stopping_stops_when_validation_stalls(tmp_path):
    # A learning rate this small leaves the weights as they are: validation accuracy stops improving
    # once batch-norm statistics settle, and patience 2 ends the run well before 12 epochs.
    r = fit(**TINY, epochs=12, lr=1e-9, early_stopping=2, train_images=1000, out=str(tmp_path / "r"),
            progress=False)
    assert r.stopped_early and len(r.history) < 12


def test_resume_re_points_a_moved_image_folder_and_stores_paths_absolute(tmp_path, sample_train, monkeypatch):
    # (SIGKILL at chosen and random moments: tests/train/test_fault_drills.py)
    import shutil

    from tests.conftest import write_imagefolder

    monkeypatch.chdir(tmp_path)
    write_imagefolder(tmp_path / "imgs", sample_train, per_class=10, mixed=False)
    opts = dict(model="resnet9", model_kwargs={"width": 4}, data="imagefolder:imgs", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        fit(**opts, out="run", progress=False, callbacks=[stop_after(1)])
    saved = read_meta(tmp_path / "run" / "last.safetensors")["config"]
    assert saved["data"] == f"imagefolder:{tmp_path / 'imgs'}" and saved["out"] == str(tmp_path / "run")
    shutil.move(tmp_path / "imgs", tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")  # resumed from another folder, with the data elsewhere
    with pytest.raises(ConfigError, match="re-point it"):
        fit(resume=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="cannot change data"):
        fit(resume=tmp_path / "run", data="sample", progress=False)
    r = fit(resume=tmp_path / "run", data=f"imagefolder:{tmp_path / 'moved'}", progress=False)
    assert len(r.history) == 2 and r.config.data == f"imagefolder:{tmp_path / 'moved'}"


def test_resume_follows_a_moved_run_directory(tmp_path):
    import shutil

    with pytest.raises(KeyboardInterrupt):
        fit(**TINY, epochs=2, out=str(tmp_path / "a"), progress=False, callbacks=[stop_after(1)])
    shutil.move(tmp_path / "a", tmp_path / "b")
    r = fit(resume=tmp_path / "b", progress=False)
    assert r.run_dir == tmp_path / "b" and len(r.history) == 2 and not (tmp_path / "a").exists()


def test_resume_refuses_changed_training_data(tmp_path, sample_train):
    from PIL import Image

    from tests.conftest import write_imagefolder

    write_imagefolder(tmp_path / "imgs", sample_train, per_class=10, mixed=False)
    opts = dict(model="resnet9", model_kwargs={"width": 4}, data=f"imagefolder:{tmp_path / 'imgs'}", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        fit(**opts, out=str(tmp_path / "run"), progress=False, callbacks=[stop_after(1)])
    Image.fromarray(sample_train.images[0, 0].numpy()).save(tmp_path / "imgs" / "Trouser" / "new.png")
    with pytest.raises(ConfigError, match="training data changed"):
        fit(resume=tmp_path / "run", progress=False)


def test_a_loss_that_climbs_far_above_its_start_stops_the_run(tmp_path):
    """A learning rate far too high makes the loss climb without going NaN (here to ~75 in the first epoch,
    then 1e18): the run stops with one line that says so and suggests a lower rate, keeping what it had."""
    with pytest.raises(TrainingDiverged, match=r"loss climbed from .* try --lr 2\b"):
        fit(model="resnet9", model_kwargs={"width": 8}, data="sample", train_images=2000, batch_size=64,
            lr=20.0, epochs=3, out=str(tmp_path / "r"), progress=False)
