"""The `cnnkit` command end to end on the bundled sample, and its answers to bad input."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from PIL import Image

from cnnkit.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_eval_predict_end_to_end(tmp_path, capsys, sample_train):
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--model", "resnet9", "--model-kw", "width=8", "--data", "sample",
                         "--epochs", "2", "--batch-size", "128", "--train-images", "1000", "--out", str(run_dir),
                         "--quiet")
    assert code == 0, err
    assert "best val acc" in out and (run_dir / "best.safetensors").exists()

    code, out, err = run(capsys, "eval", "--checkpoint", str(run_dir), "--data", "sample", "--tta")
    assert code == 0, err
    assert "top-1" in out and "Ankle boot" in out
    assert (run_dir / "eval-run-sample-test.json").exists() and (run_dir / "confusion-run-sample-test.png").exists()

    for i in range(3):
        Image.fromarray(sample_train.images[i, 0].numpy()).resize((100, 80)).convert("RGB").save(tmp_path / f"{i}.jpg")
    code, out, err = run(capsys, "predict", "--checkpoint", str(run_dir / "best.safetensors"), "--topk", "2",
                         str(tmp_path / "0.jpg"), str(tmp_path / "1.jpg"), str(tmp_path / "2.jpg"))
    assert code == 0, err
    assert out.count(".jpg") == 3 and "%" in out

    code, out, err = run(capsys, "train", "--resume", str(run_dir), "--epochs", "3", "--quiet")
    assert code == 0, err
    assert len((run_dir / "metrics.csv").read_text().strip().splitlines()) == 4


def test_demo_writes_report_that_references_its_images(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--quiet")
    assert code == 0, err
    report = tmp_path / "demo" / "report.html"
    assert str(report.resolve()) in out
    html = report.read_text()
    sources = re.findall(r'<img alt="[^"]*" src="([^"]+)"', html)
    assert len(sources) == 3
    for src in sources:
        png = report.parent / src
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert "Confusion matrix" in html and "Learning curves" in html and "top-1" in html


def test_models_list(capsys):
    code, out, _ = run(capsys, "models", "list", "resnet")
    assert code == 0 and "resnet56" in out and "He et al. 2016" in out


@pytest.mark.parametrize("args,message", [
    (["train", "--model", "resnet2O", "--epochs", "1"], "unknown model 'resnet2O' (did you mean: "),
    (["train", "--data", "fashion-mnst"], "unknown dataset 'fashion-mnst' (did you mean: fashion-mnist"),
    (["train", "--data", "cifar10", "--data-dir", "/nonexistent"], "cifar10: missing /nonexistent/cifar-10-batches-py"),
    (["train", "--recipe", "quick"], "unknown recipe 'quick'"),
    (["train", "--model-kw", "width"], "expected key=value"),
    (["eval", "--checkpoint", "/nonexistent/run"], "no such checkpoint or run directory"),
])
def test_bad_input_is_one_line_and_nonzero(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_empty_class_folder_and_corrupt_images(tmp_path, capsys, sample_train):
    from tests.conftest import write_imagefolder

    write_imagefolder(tmp_path / "imgs", sample_train, per_class=6, mixed=False)
    (tmp_path / "imgs" / "Trouser" / "bad.png").write_bytes(b"\x89PNG broken")
    code, out, err = run(capsys, "train", "--data", f"imagefolder:{tmp_path / 'imgs'}", "--model", "resnet9",
                         "--model-kw", "width=4", "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet")
    assert code == 0, err
    assert "bad.png" in err and "skipped 1 unreadable" in err
    code, out, err = run(capsys, "train", "--data", f"imagefolder:{tmp_path / 'imgs'}", "--strict",
                         "--epochs", "1", "--out", str(tmp_path / "r2"), "--quiet")
    assert code == 2 and "bad.png" in err and "Traceback" not in err
    (tmp_path / "imgs" / "Empty").mkdir()
    code, out, err = run(capsys, "train", "--data", f"imagefolder:{tmp_path / 'imgs'}", "--epochs", "1",
                         "--out", str(tmp_path / "r3"), "--quiet")
    assert code == 2 and "Empty has no PNG or JPEG images" in err


def test_checkpoint_for_other_classes_is_rejected(trained_run, tmp_path, capsys, sample_train):
    from tests.conftest import write_imagefolder

    write_imagefolder(tmp_path, sample_train, per_class=2, mixed=False)
    code, out, err = run(capsys, "eval", "--checkpoint", str(trained_run.run_dir), "--data", f"imagefolder:{tmp_path}")
    assert code == 2 and "has 3 classes" in err


def test_real_process_exit_code_and_debug_traceback(tmp_path):
    env_cmd = [sys.executable, "-m", "cnnkit", "train", "--model", "nope", "--epochs", "1", "--out", str(tmp_path)]
    plain = subprocess.run(env_cmd, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "unknown model 'nope'" in plain.stderr
    debug = subprocess.run(env_cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("args,message", [(["bogus"], "No such command 'bogus'"),
                                          (["train", "--epochs", "0"], "Invalid value for '--epochs'")])
def test_usage_errors_exit_2_without_traceback(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2 and message in err + out and "Traceback" not in err + out


def test_help_exits_zero(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "train" in out and "predict" in out


def test_train_lr_find_proposes_a_rate_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "lrf"
    code, stdout, err = run(capsys, "train", "--lr-find", "--model", "resnet9", "--model-kw", "width=8", "--data",
                            "sample", "--batch-size", "32", "--out", str(out), "--quiet")
    assert code == 0, err
    proposed = re.search(r"--lr (\S+)", stdout)
    assert proposed and 1e-4 < float(proposed.group(1)) < 1.0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["lr_find.csv", "lr_find.png"]


def test_models_info_shows_the_family_recipe(capsys):
    code, out, err = run(capsys, "models", "info", "convnext_mini", "--no-timing")
    assert code == 0, err
    assert "default training recipe (convnext family" in out and "batch 128, adamw, lr 0.0015, weight decay 0.05" in out
    assert "Liu et al. 2022" in out


@pytest.mark.parametrize("signum, status, said", [(2, 130, "interrupted"), (15, 143, "stopped by SIGTERM")])
def test_a_real_training_process_stopped_by_a_signal_exits_with_its_status(tmp_path, signum, status, said):
    """Ctrl-C (SIGINT) and SIGTERM end `cnnkit train` with 128 + the signal, one line on how to continue, and the
    last completed epoch's checkpoint in place: `cnnkit train ... && next` never carries on after them."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cnnkit", "train", "--model", "resnet9", "--model-kw", "width=8",
           "--data", "sample", "--epochs", "200", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    try:
        for line in proc.stderr:  # wait for the first epoch to end (its checkpoint is written before the line)
            lines.append(line)
            if line.startswith("epoch 1/"):
                break
        time.sleep(0.5)
        proc.send_signal(signum)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, "".join(lines) + rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith(said) and f"cnnkit train --resume {out}" in last, rest
    assert "Traceback" not in rest
    assert (out / "last.safetensors").is_file()


HOSTILE = ["[link=http://evil.example]T-shirt[/link]", "\x1b]8;;http://evil.example\x1b\\Trouser", "[/i]",
           "\x1b[2J\x1b[31mPullover", "Dress\x07", "Coat\u202e", "[bold]Sandal", "Shirt", "Sneaker", "Bag"]


def test_hostile_class_and_file_names_are_shown_never_acted_on(trained_run, tmp_path, capsys, sample_train,
                                                                monkeypatch):
    """Class names from a checkpoint and file names from a folder reach the terminal as text: rich markup shown
    literally (it used to crash `predict` on `[/i].png` and render `[link=...]` as a link), control characters
    (escape sequences, bells, bidi overrides) as visible escapes."""
    from cnnkit.artifacts import load, save_checkpoint

    from cnnkit import cli

    monkeypatch.setattr(cli.stdout, "width", 500)  # no wrapping inside the names
    ckpt = load(trained_run.run_dir)
    hostile = tmp_path / "hostile.safetensors"
    save_checkpoint(hostile, ckpt.model, {**ckpt.meta, "classes": HOSTILE})
    images = tmp_path / "images"
    (images / "[").mkdir(parents=True)  # so that the path reads .../[/i].png
    for name in ("[/i].png", "\x1b]8;;evil.example\x1b\\a.png", "[link=evil.example]b.png"):
        Image.fromarray(sample_train.images[0, 0].numpy(), "L").save(images / name)
    for args in (["predict", "--checkpoint", str(hostile), str(images)],
                 ["eval", "--checkpoint", str(hostile), "--data", "sample", "--ignore-class-names"]):
        code, out, err = run(capsys, *args)
        assert code == 0, err
        for text in (out, err):
            assert not any(c in text for c in "\x1b\x07\u202e"), repr(text[:300])
        shown = "[/i].png", "[link=evil.example]b.png", "\\x1b]8;;evil.example\\x1b\\a.png"
        assert all(s in out for s in shown) if args[0] == "predict" else "[link=http://evil.example]" in out, out
