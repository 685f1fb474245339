"""Segmentation trained as classification is: a run stopped mid-epoch resumes bit for bit, and two torchrun
processes validate on the confusion matrix summed over both (the mIoU of the whole split, not a mean of halves)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnkit.artifacts import read_meta
from cnnkit.train import fit

# a narrow U-Net on 96 scenes: 6 steps of 16 per epoch; flips and padded crops move masks with the images
SEG = dict(model="unet_small", model_kwargs={"width": 4, "depth": 2}, data="fashion-scenes", train_images=96,
           batch_size=16, epochs=2, val_fraction=0.04, amp="off", channels_last=False, threads=1, tta=False,
           augment={"hflip": True, "crop_padding": 4}, progress=False)


def test_a_segmentation_run_stopped_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    config = dict(SEG, checkpoint_every=2)
    whole = fit(out=str(tmp_path / "whole"), **config)
    loop = sys.modules["cnnkit.train.loop"]
    step = loop._step
    taken = [0]

    def stop_at_step_9(run, loss):  # killed during the 9th step: the state saved after step 8 is the last
        taken[0] += 1
        if taken[0] == 9:
            raise KeyboardInterrupt
        step(run, loss)

    monkeypatch.setattr(loop, "_step", stop_at_step_9)
    with pytest.raises(KeyboardInterrupt):
        fit(out=str(tmp_path / "cut"), **config)
    assert read_meta(tmp_path / "cut" / "last.safetensors")["step_in_epoch"] >= 1  # saved mid-epoch
    monkeypatch.setattr(loop, "_step", step)
    resumed = fit(resume=str(tmp_path / "cut"), progress=False)
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same batches, crops, flips and schedule
    assert [r["val_miou"] for r in whole.history] == pytest.approx([r["val_miou"] for r in resumed.history])


SCRIPT = textwrap.dedent('''
    import json, sys
    from cnnkit.train import fit
    fit(out=sys.argv[1], **json.loads(sys.argv[2]))
''')


@pytest.mark.slow
def test_two_processes_validate_on_the_summed_confusion_matrix(tmp_path):
    from cnnkit.evaluate import evaluate

    script = tmp_path / "ddp_seg.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    config = dict(SEG, epochs=1, augment={"hflip": False, "crop_padding": 0})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(out), json.dumps(config)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = float((out / "metrics.csv").read_text().splitlines()[1].split(",")[4])  # epoch 1's val_miou
    # the saved model on the whole validation split, in one process: the mIoU the two ranks' summed counts give
    whole = evaluate(out / "last.safetensors", split="val", device="cpu")
    assert logged == pytest.approx(whole.metrics["miou"], abs=1e-9)
