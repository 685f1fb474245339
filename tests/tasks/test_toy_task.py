"""A task added from outside the package: regression of an image's mean pixel. Registered here, in a test
file, it trains, validates, evaluates, predicts, resumes and exports through cnnkit's own trainer, evaluation
and export, with nothing under cnnkit/train/ knowing about it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from cnnkit.artifacts import load
from cnnkit.data import BatchLoader, Normalize, load_dataset
from cnnkit.errors import ConfigError
from cnnkit.tasks import TASKS, Task, register_task
from cnnkit.train import TrainConfig, fit
from tests.train.test_fit import stop_after


class MeanPixel(Task):
    """The target is the mean of the (normalized) image; the model has one output."""

    name = "mean-pixel"
    score = "neg_mae"
    output = "mean"
    outputs_are_classes = False  # any images will do: the target comes from the image itself

    def output_names(self, classes):
        return ["mean"]

    def targets(self, x, labels):
        return x.float().mean((1, 2, 3))

    def infer(self, model, x, tta=False):
        return model(x).float().reshape(-1)

    def loss_sum(self, outputs, targets):
        return F.mse_loss(outputs.reshape(-1), targets, reduction="sum")

    def score_sum(self, outputs, targets):
        return -(outputs.reshape(-1) - targets).abs().sum()

    def evaluate(self, outputs, targets, names):
        return {"images": len(targets), "mae": float((outputs - targets).abs().mean()),
                "rmse": float((outputs - targets).pow(2).mean().sqrt())}

    def predictions(self, outputs, names, topk=5):
        return [[("mean", float(v))] for v in outputs]


TOY = dict(task="mean-pixel", model="tinyvgg", data="sample", train_images=400, batch_size=32, lr=0.01,
           amp="off", channels_last=False, threads=1, progress=False, deterministic=True,
           augment={"hflip": False, "crop_padding": 0})


@pytest.fixture(scope="module")
def toy():
    register_task(MeanPixel())
    yield TASKS["mean-pixel"]
    del TASKS["mean-pixel"]


@pytest.fixture(scope="module")
def toy_run(toy, tmp_path_factory):
    return fit(**TOY, epochs=3, out=str(tmp_path_factory.mktemp("toy") / "run"))


def test_the_toy_task_trains_and_learns(toy_run):
    """metrics.csv names the task's score; validation MAE ends well below predicting the targets' mean."""
    header = (toy_run.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train_neg_mae" in header and "val_neg_mae" in header and "val_acc" not in header
    ckpt = load(toy_run.best_checkpoint)
    assert ckpt.meta["task"] == "mean-pixel" and ckpt.classes == ["mean"]
    data = load_dataset("sample", "test")
    mean, std = ckpt.normalization
    x = torch.cat([xb for xb, _ in BatchLoader(data, 256, Normalize(mean, std))])
    target = x.mean((1, 2, 3))
    baseline = float((target - target.mean()).abs().mean())  # the best constant's error, about
    assert -toy_run.history[-1]["val_neg_mae"] < 0.5 * baseline
    assert toy_run.best_val_acc == max(r["val_neg_mae"] for r in toy_run.history)  # best by the task's score


def test_evaluate_and_predict_use_the_task(toy_run, tmp_path):
    from cnnkit.evaluate import evaluate, predict

    ckpt = load(toy_run.best_checkpoint)
    data = load_dataset("sample", "test")
    mean, std = ckpt.normalization
    with torch.no_grad():
        x = torch.cat([xb for xb, _ in BatchLoader(data, 256, Normalize(mean, std))])
        expect = ckpt.model.eval()(x).reshape(-1)
    result = evaluate(toy_run.run_dir, device="cpu", out_dir=tmp_path)
    assert result.metrics["mae"] == pytest.approx(float((expect - x.mean((1, 2, 3))).abs().mean()), abs=1e-5)
    assert "top1" not in result.metrics and result.figures == {} and result.json_path.exists()

    image = data.images[0].numpy()[0]
    Image.fromarray(image).save(tmp_path / "one.png")
    [pred] = predict(toy_run.run_dir, [tmp_path / "one.png"], device="cpu")
    assert pred.top[0][0] == "mean" and pred.top[0][1] == pytest.approx(float(expect[0]), abs=1e-4)
    assert pred.shown == [f"mean {pred.top[0][1]:.4g}"]  # the task's format, not a probability's


def test_a_toy_run_resumes_exactly(toy, tmp_path):
    straight = fit(**TOY, epochs=2, out=str(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        fit(**TOY, epochs=2, out=str(tmp_path / "cut"), callbacks=[stop_after(1)])
    resumed = fit(resume=tmp_path / "cut", progress=False)
    a, b = load_file(str(straight.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_neg_mae"] for r in straight.history] == [r["val_neg_mae"] for r in resumed.history]


def test_a_toy_model_exports_and_its_artifact_answers_alike(toy_run, tmp_path):
    from cnnkit.deploy import export_onnx
    from cnnkit.evaluate import predict

    exported = export_onnx(toy_run.run_dir, tmp_path / "toy.onnx")
    data = load_dataset("sample", "test")
    Image.fromarray(data.images[1].numpy()[0]).save(tmp_path / "two.png")
    [eager] = predict(toy_run.run_dir, [tmp_path / "two.png"], device="cpu")
    [onnx] = predict(exported.path, [tmp_path / "two.png"], device="cpu")
    assert onnx.top[0][0] == "mean" and onnx.top[0][1] == pytest.approx(eager.top[0][1], abs=1e-4)


def test_an_unknown_task_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="unknown task 'segmnt'.*registered: .*classify"):
        TrainConfig(task="segmnt")


@pytest.mark.parametrize("name", [["classify"], 3, {"name": "classify"}])
def test_a_task_that_is_not_a_name_is_refused_in_one_line(name):
    from cnnkit.tasks import get_task

    with pytest.raises(ConfigError, match="a task is a name"):
        get_task(name)
