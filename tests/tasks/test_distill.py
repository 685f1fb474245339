"""Distillation: Hinton's loss against a hand computation, MEAL V2 without labels and its adversarial game in
one backward pass, teachers re-normalized and averaged, exact resume with the discriminator, and the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from cnnkit.artifacts import load
from cnnkit.errors import ConfigError
from cnnkit.tasks.base import TrainSetting
from cnnkit.tasks.distill import Discriminator, Distillation, kd_loss, meal_v2_loss, reverse_gradient
from tests.cli.test_cli import run
from tests.train.test_fit import stop_after

STUDENT = dict(model="resnet9", model_kwargs={"width": 4}, data="sample", train_images=256, batch_size=64,
               val_fraction=0.1, progress=False)


def test_kd_loss_is_hintons_by_hand():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    t_logits = torch.tensor([[1.0, 1.5, -0.5], [0.5, 0.0, 2.0]])
    y = torch.tensor([0, 2])
    T, a = 3.0, 0.7

    def softmax(row, temp):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    soft = hard = 0.0
    for i in range(2):
        pt, ps = softmax(t_logits[i].tolist(), T), softmax(s[i].tolist(), T)
        soft += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
        hard -= math.log(softmax(s[i].tolist(), 1.0)[int(y[i])])
    expect = a * T ** 2 * soft / 2 + (1 - a) * hard / 2
    got = kd_loss(s, (t_logits / T).softmax(1), y, T, a)
    assert float(got) == pytest.approx(expect, rel=1e-5)
    assert float(kd_loss(s, (t_logits / T).softmax(1), y, T, 1.0)) == pytest.approx(T ** 2 * soft / 2, rel=1e-5)


def test_gradient_reversal_and_the_adversarial_game():
    x = torch.randn(4, 3, requires_grad=True)
    (reverse_gradient(x, 0.5) * torch.arange(3.0)).sum().backward()
    assert torch.equal(x.grad, -0.5 * torch.arange(3.0).expand(4, 3))

    torch.manual_seed(0)
    disc = Discriminator(3)
    student = torch.randn(8, 3, requires_grad=True)
    teachers = torch.randn(8, 3).softmax(1)
    meal_v2_loss(student, teachers, disc, 0.3).backward()
    full = student.grad.clone()
    d_grads = [p.grad.clone() for p in disc.parameters()]
    # the same pieces by hand: KL's gradient, minus 0.3 × the discriminator loss's gradient through the student
    student.grad = None
    disc.zero_grad()
    log_p = student.log_softmax(1)
    kl = torch.nn.functional.kl_div(log_p, teachers, reduction="batchmean")
    fake = disc(log_p.exp())
    d_fake = torch.nn.functional.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    g_kl = torch.autograd.grad(kl, student, retain_graph=True)[0]
    g_d = torch.autograd.grad(d_fake, student)[0]
    assert torch.allclose(full, g_kl - 0.3 * g_d, atol=1e-6)
    # and the discriminator descends its own loss (teachers real, student fake)
    real = disc(teachers)
    d_loss = (torch.nn.functional.binary_cross_entropy_with_logits(real, torch.ones_like(real))
              + torch.nn.functional.binary_cross_entropy_with_logits(disc(student.softmax(1).detach()),
                                                                     torch.zeros_like(real)))
    by_hand = torch.autograd.grad(d_loss, list(disc.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(d_grads, by_hand))


@pytest.fixture(scope="module")
def teacher(trained_run):
    return load(trained_run.best_checkpoint)


def _distiller(teacher, method, mean=(0.2,), std=(0.5,), teachers=None, classes=None, in_chans=1):
    objective = Distillation(method, teachers or [str(teacher.path)], 4.0, 0.9, 1.0)
    objective.bind(TrainSetting(torch.nn.Identity(), classes or teacher.classes, in_chans, (28, 28), mean, std,
                                torch.device("cpu")))
    return objective


def test_teachers_see_the_students_batch_in_their_own_normalization(teacher):
    raw = torch.rand(5, 1, 28, 28)
    d = _distiller(teacher, "kd", teachers=[str(teacher.path), str(teacher.path)])
    x = (raw - 0.2) / 0.5  # the student's normalization
    mean, std = teacher.normalization
    with torch.no_grad():
        expect = (teacher.model.eval()((raw - mean[0]) / std[0]) / 4.0).softmax(1)
    assert torch.allclose(d.teacher_probs(x, 4.0), expect, atol=1e-5)  # two copies of one teacher: its output


def test_meal_v2_uses_no_labels(teacher):
    d = _distiller(teacher, "meal-v2")
    x, logits = torch.randn(6, 1, 28, 28), torch.randn(6, 10)
    y = torch.arange(6)
    assert torch.equal(d.loss(logits, y, x), d.loss(logits, y[torch.randperm(6)], x))
    assert torch.equal(d.loss(logits, y, x), d.loss(logits, torch.zeros(6, dtype=torch.long), x))
    kd = _distiller(teacher, "kd")
    assert not torch.equal(kd.loss(logits, y, x), kd.loss(logits, y.flip(0), x))  # kd does use them


def test_teachers_must_fit_the_data(teacher):
    with pytest.raises(ConfigError, match="predicts other classes"):
        _distiller(teacher, "kd", classes=[f"c{i}" for i in range(10)])
    with pytest.raises(ConfigError, match="takes 1×28×28 images"):
        _distiller(teacher, "kd", (0, 0, 0), (1, 1, 1), in_chans=3)
    with pytest.raises(ConfigError, match="--teacher RUN"):
        from cnnkit.train.config import TrainConfig

        TrainConfig(distill="kd")


def test_meal_v2_run_resumes_exactly_with_its_discriminator(trained_run, tmp_path):
    from cnnkit.train import fit

    opts = dict(STUDENT, epochs=2, deterministic=True, distill="meal-v2", teachers=[str(trained_run.run_dir)])
    straight = fit(**opts, out=str(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        fit(**opts, out=str(tmp_path / "resumed"), callbacks=[stop_after(1)])
    resumed = fit(resume=tmp_path / "resumed", progress=False)
    a, b = load_file(str(straight.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = load_file(str(next((tmp_path / "resumed").glob("state-e*.safetensors"))))
    assert any(k.startswith("module/discriminator/") for k in state)
    assert resumed.config.teachers == [str(trained_run.run_dir)]


def test_cli_distill(trained_run, tmp_path, capsys):
    code, out, err = run(capsys, "distill", "--teacher", str(trained_run.run_dir), "--model", "resnet9",
                         "--model-kw", "width=4", "--data", "sample", "--train-images", "256", "--batch-size", "64",
                         "--epochs", "1", "--temperature", "2", "--alpha", "0.5", "--out", str(tmp_path / "kd"),
                         "--quiet")
    assert code == 0, err
    assert "distill" in out and "kd" in out and (tmp_path / "kd" / "best.safetensors").exists()
    saved = load(tmp_path / "kd").meta["config"]
    assert (saved["distill"], saved["kd_temperature"], saved["kd_alpha"]) == ("kd", 2.0, 0.5)
    for args, message in [([], "give the student's teacher(s)"),
                          (["--teacher", str(tmp_path / "nope")], "does not exist"),
                          (["--teacher", str(trained_run.run_dir), "--method", "fitnets"], "must be kd or meal-v2"),
                          (["--teacher", str(trained_run.run_dir), "--alpha", "1.5"], "must lie in [0, 1]")]:
        code, out, err = run(capsys, "distill", "--data", "sample", "--epochs", "1", "--out", str(tmp_path / "x"),
                             *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
