"""Test-time adaptation: alpha-bn's ends are the source model and prediction-time BN, BN equals torch's own
train-mode BatchNorm, tent updates only BatchNorm's affine parameters online, the checkpoint is never changed,
and the corruption benchmark's report through the API and the CLI."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from cnnkit.artifacts import load
from cnnkit.data import BatchLoader, Normalize, load_dataset
from cnnkit.errors import CheckpointError, ConfigError
from cnnkit.evaluate import evaluate, evaluate_corruptions, predict
from cnnkit.evaluate.adapt import BatchNormAdapter
from tests.cli.test_cli import run


@pytest.fixture(scope="module")
def shifted(trained_run):
    """Normalized batches of the sample's test images under a strong contrast shift."""
    ckpt = load(trained_run.best_checkpoint)
    cell = load_dataset("sample-c:contrast:4", "test")
    x, y = next(iter(BatchLoader(cell, 64, Normalize(*ckpt.normalization))))
    return ckpt, x, y


def test_alpha_ends_are_the_source_model_and_prediction_time_bn(shifted):
    ckpt, x, _ = shifted
    model = ckpt.model.eval()
    with torch.no_grad():
        source = model(x)
        reference = __import__("copy").deepcopy(model)
        for m in reference.modules():  # torch's own BatchNorm with batch statistics: train mode, no dropout
            if isinstance(m, torch.nn.BatchNorm2d):
                m.train()
        batch_stats = reference(x)
    assert torch.allclose(BatchNormAdapter(model, "alpha-bn", alpha=0.0)(x), source, atol=1e-5)
    assert torch.allclose(BatchNormAdapter(model, "alpha-bn", alpha=1.0)(x), batch_stats, atol=1e-4)
    assert torch.allclose(BatchNormAdapter(model, "bn")(x), batch_stats, atol=1e-4)
    mid = BatchNormAdapter(model, "alpha-bn", alpha=0.5)(x)
    assert not torch.allclose(mid, source, atol=1e-3) and not torch.allclose(mid, batch_stats, atol=1e-3)
    with torch.no_grad():
        assert torch.equal(model(x), source)  # the model handed in is untouched


def test_tent_updates_only_batchnorm_affine_online(shifted):
    ckpt, x, _ = shifted
    model = ckpt.model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tent = BatchNormAdapter(model, "tent", lr=1e-2)
    first = tent(x)
    assert torch.allclose(first, BatchNormAdapter(model, "bn")(x), atol=1e-4)  # predicted before its update

    def entropy(logits):
        return float(-(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean())

    second = tent(x)
    assert entropy(second) < entropy(first)  # the step lowered the entropy on the batch
    changed = {n for n, p in tent.model.named_parameters() if not torch.equal(p, before[n])}
    norms = {n for n, m in tent.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert changed and all(n.rsplit(".", 1)[0] in norms and n.endswith(("weight", "bias")) for n in changed)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    tent.reset()
    assert torch.allclose(tent(x), first, atol=1e-5)


def test_adaptation_helps_under_shift_and_checkpoint_is_unchanged(trained_run, tmp_path):
    ckpt_file = trained_run.best_checkpoint
    digest = hashlib.sha256(ckpt_file.read_bytes()).hexdigest()
    plain = evaluate_corruptions(ckpt_file, "sample-c:contrast,fog:5", batch_size=200)
    bn = evaluate_corruptions(ckpt_file, "sample-c:contrast,fog:5", batch_size=200, adapt="bn")
    tent = evaluate_corruptions(ckpt_file, "sample-c:contrast,fog:5", batch_size=200, adapt="tent",
                                out_dir=tmp_path)
    assert bn.mean_corruption_error < plain.mean_corruption_error - 0.05
    assert tent.mean_corruption_error < plain.mean_corruption_error - 0.05
    saved = json.loads(tent.json_path.read_text())
    assert saved["adapt"]["method"] == "tent" and set(saved["errors"]) == {"contrast", "fog"}
    assert saved["mean_corruption_error"] == pytest.approx((saved["errors"]["contrast"]["5"]
                                                            + saved["errors"]["fog"]["5"]) / 2)
    r = evaluate(ckpt_file, "sample", adapt="alpha-bn", alpha=0.2, batch_size=100)
    assert r.metrics["adapt"] == {"method": "alpha-bn", "batch_size": 100, "alpha": 0.2}
    assert hashlib.sha256(ckpt_file.read_bytes()).hexdigest() == digest


def test_bad_adaptation_requests(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="nothing to adapt"):
        from cnnkit.models import create

        BatchNormAdapter(create("convnext_mini", num_classes=10, in_chans=1, img_size=(28, 28)), "bn")
    with pytest.raises(ConfigError, match="--tta and --adapt"):
        evaluate(trained_run.best_checkpoint, "sample", adapt="bn", tta=True)
    with pytest.raises(ConfigError, match="--alpha must lie between"):
        evaluate(trained_run.best_checkpoint, "sample", adapt="alpha-bn", alpha=1.5)
    with pytest.raises(ConfigError, match="corruption benchmark of many test sets"):
        evaluate(trained_run.best_checkpoint, "sample-c")


def test_cli_eval_on_a_corruption_benchmark_and_predict_with_adaptation(trained_run, sample_train, tmp_path,
                                                                         capsys):
    code, out, err = run(capsys, "eval", "--checkpoint", str(trained_run.run_dir), "--data", "sample-c:snow:1,5",
                         "--adapt", "alpha-bn", "--alpha", "0.5", "--images-per-cell", "200", "--out", str(tmp_path))
    assert code == 0, err
    assert "snow" in out and "mean corruption error" in out and "alpha-bn (batch 512, alpha 0.5)" in out
    saved = json.loads((tmp_path / f"eval-{trained_run.run_dir.name}-sample-c-snow-1+5-alpha-bn.json").read_text())
    assert saved["images_per_cell"] == 200 and set(saved["errors"]["snow"]) == {"1", "5"}
    # progress on stderr: what runs, the clean images, then a line per corruption; the table's errors in percent
    lines = err.strip().splitlines()
    assert lines[0].startswith("sample-c:snow:1,5: 1 corruption(s) × 2 severities of 200 images of the test split"), err
    assert lines[1].startswith("clean: top-1 error ") and len(lines) == 3
    snow = saved["errors"]["snow"]
    assert lines[2] == f"snow (1/1): top-1 error by severity 1: {100 * snow['1']:.2f}%, 5: {100 * snow['5']:.2f}%"
    assert f"{100 * saved['mean_corruption_error']:.2f}%" in out
    code, out, err = run(capsys, "eval", "--checkpoint", str(trained_run.run_dir), "--data", "sample-c:snow:1",
                         "--images-per-cell", "50", "--out", str(tmp_path), "--quiet")
    assert code == 0 and err == "" and "snow" in out
    from PIL import Image

    for i in range(6):
        Image.fromarray(sample_train.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
    files = sorted(tmp_path.glob("*.png"))
    preds = predict(trained_run.run_dir, files, adapt="bn", batch_size=6)
    assert len(preds) == 6
    code, out, err = run(capsys, "predict", str(tmp_path / "0.png"), "--checkpoint", str(trained_run.run_dir),
                         "--adapt", "tent")
    assert code == 0, err
    for args, message in [(["--data", "sample-c:fgo"], "unknown corruption 'fgo'"),
                          (["--data", "sample-c", "--tta"], "corrupts the test split"),
                          (["--data", "sample-c", "--split", "train"], "use --split test or val"),
                          (["--split", "bogus"], "split must be train, val"),
                          (["--data", "sample", "--adapt", "bnn"], "--adapt must be one of"),
                          (["--data", "sample", "--alpha", "0.3"], "give it with --adapt alpha-bn"),
                          (["--data", "sample", "--adapt", "tent", "--tent-lr", "-1"], "--tent-lr must be a positive number"),
                          (["--data", "sample", "--images-per-cell", "5"], "applies to corruption benchmarks")]:
        code, out, err = run(capsys, "eval", "--checkpoint", str(trained_run.run_dir), *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    code, out, err = run(capsys, "train", "--data", "sample-c", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert code == 2 and "corruption benchmark for evaluation" in err


def test_validation_split_is_the_runs_held_out_images_clean_and_corrupted(trained_run, tmp_path, capsys):
    """`split="val"`: the images the run validated on (its recorded best validation accuracy comes back), and
    corruption cells made from them, where an adaptation setting can be chosen without reading the test split."""
    val = evaluate(trained_run.run_dir, "sample", "val", batch_size=100)
    assert val.metrics["split"] == "val" and val.metrics["images"] == trained_run.val_images > 0
    assert val.metrics["top1"] == pytest.approx(trained_run.best_val_acc, abs=0.015)
    cells = evaluate_corruptions(trained_run.best_checkpoint, "sample-c:fog:5", split="val", batch_size=100,
                                 out_dir=tmp_path)
    assert cells.metrics["split"] == "val"
    assert cells.clean_error == pytest.approx(1 - val.metrics["top1"], abs=1e-6)
    test = evaluate_corruptions(trained_run.best_checkpoint, "sample-c:fog:5", batch_size=100, out_dir=tmp_path)
    assert test.json_path != cells.json_path and test.json_path.exists() and cells.json_path.exists()
    assert test.clean_error == pytest.approx(1 - evaluate(trained_run.run_dir, "sample", batch_size=100).metrics["top1"],
                                             abs=1e-6)
    code, out, err = run(capsys, "eval", "--checkpoint", str(trained_run.run_dir), "--data", "sample-c:fog:5",
                         "--split", "val", "--adapt", "alpha-bn", "--alpha", "0.1", "--out", str(tmp_path / "cli"))
    assert code == 0, err
    assert "validation images" in out and "sample-c:fog:5" in out  # the name as given, not rich's fog emoji
    assert err.splitlines()[0].startswith("sample-c:fog:5: 1 corruption(s) × 1 severity of ")
    saved = json.loads((tmp_path / "cli" / f"eval-{trained_run.run_dir.name}-sample-c-fog-5-val-alpha-bn.json")
                       .read_text())
    assert saved["split"] == "val" and saved["adapt"]["alpha"] == 0.1
    with pytest.raises(ConfigError, match="not that data"):  # another dataset has no such validation split
        evaluate(trained_run.run_dir, "cluttered-sample", "val", ignore_class_names=True)
    bad = load(trained_run.best_checkpoint)
    bad.meta["config"]["val_fraction"] = "a tenth"
    with pytest.raises(CheckpointError, match="cannot read"):
        evaluate(bad, "sample", "val")
    no_val = load(trained_run.best_checkpoint)
    no_val.meta["config"]["val_fraction"] = 0.0
    for call in (lambda: evaluate(no_val, "sample", "val"),
                 lambda: evaluate_corruptions(no_val, "sample-c:fog:5", split="val")):
        with pytest.raises(ConfigError, match="held out no validation images"):
            call()


@pytest.mark.parametrize("call", [lambda: evaluate("/nonexistent/run", tta=True, adapt="bn"),
                                  lambda: predict("/nonexistent/run", ["/nonexistent/x.png"], tta=True, adapt="bn")])
def test_tta_with_adapt_is_refused_before_anything_is_loaded(call):
    with pytest.raises(ConfigError, match="--tta and --adapt do not combine"):
        call()  # no checkpoint, no data: the options alone are refused
