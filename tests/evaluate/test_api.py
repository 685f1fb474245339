from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.errors import CheckpointError, DataError
from cnnkit.evaluate import evaluate, predict
from tests.conftest import write_imagefolder


def test_evaluate_writes_json_and_confusion_png(trained_run, tmp_path):
    r = evaluate(trained_run.run_dir, "sample", "test", out_dir=tmp_path)
    m = r.metrics
    assert m["images"] == 1000 and 0.6 < m["top1"] <= m["top5"] <= 1.0
    assert 0 <= m["ece"] <= 1 and len(m["per_class"]) == 10
    assert json.loads(r.json_path.read_text())["top1"] == m["top1"]
    assert r.confusion_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tta = evaluate(trained_run.run_dir, "sample", "test", tta=True)
    assert tta.metrics["top1"] != m["top1"] or not torch.equal(tta.probs, r.probs)


def test_predict_images_of_any_size_and_mode(trained_run, sample_train, tmp_path):
    write_imagefolder(tmp_path, sample_train, per_class=3)
    big = Image.fromarray(np.kron(sample_train.images[1, 0].numpy(), np.ones((8, 8), np.uint8)))
    big.convert("RGB").save(tmp_path / "big.jpg")
    preds = predict(trained_run.run_dir, [tmp_path], topk=3)
    assert len(preds) == 10
    for p in preds:
        assert len(p.top) == 3 and all(c in sample_train.classes for c, _ in p.top)
        probs = [v for _, v in p.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_agrees_with_evaluate_on_the_same_images(trained_run, sample_train, tmp_path):
    from cnnkit.data import load_dataset

    test = load_dataset("sample", "test")
    for i in range(8):
        Image.fromarray(test.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
    preds = predict(trained_run.run_dir, sorted(tmp_path.glob("*.png"), key=lambda p: int(p.stem)), topk=1)
    ev = evaluate(trained_run.run_dir, "sample", "test")
    expected = [sample_train.classes[int(i)] for i in ev.probs[:8].argmax(1)]
    assert [p.top[0][0] for p in preds] == expected


def test_predict_skips_unreadable_files_or_stops_when_strict(trained_run, sample_train, tmp_path):
    Image.fromarray(sample_train.images[0, 0].numpy()).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert len(predict(trained_run.run_dir, [tmp_path])) == 1
    with pytest.raises(DataError, match="bad.png"):
        predict(trained_run.run_dir, [tmp_path], strict=True)
    with pytest.raises(DataError, match="no such file"):
        predict(trained_run.run_dir, [tmp_path / "nope.png"])


def test_evaluate_on_incompatible_data_is_an_error(trained_run, sample_train, tmp_path):
    write_imagefolder(tmp_path, sample_train, per_class=2, mixed=False)
    with pytest.raises(CheckpointError, match="has 3 classes but .* was trained on 10"):
        evaluate(trained_run.run_dir, f"imagefolder:{tmp_path}")


def write_test_split_by_class_name(root, test) -> str:
    """The sample's test split as `root/test/<class name>/NNNN.png` ('/' in a name as '-'): the folders sort
    alphabetically ('Ankle boot' first), not in Fashion-MNIST's order ('T-shirt/top' first)."""
    for i, (image, label) in enumerate(zip(test.images, test.labels.tolist())):
        d = root / "test" / test.classes[label].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), "L").save(d / f"{i:04d}.png")
    return f"imagefolder:{root}"


def test_a_folder_of_the_same_classes_in_another_order_is_scored_by_name(trained_run, tmp_path, capsys):
    from cnnkit.cli import main
    from cnnkit.data import load_dataset

    test = load_dataset("sample", "test")
    folder = write_test_split_by_class_name(tmp_path / "photos", test)
    assert load_dataset(folder, "test").classes[0] == "Ankle boot"  # not the checkpoint's class 0
    own = evaluate(trained_run.run_dir, "sample").metrics["top1"]
    with pytest.warns(UserWarning, match=r"mapped to the model's classes by name .*'Ankle boot' is class 0 in the "
                                         r"data, 'Ankle boot' class 9 in the model"):
        r = evaluate(trained_run.run_dir, folder)
    assert r.metrics["images"] == 1000 and abs(r.metrics["top1"] - own) < 0.005  # the same 28×28 images
    assert r.data.classes == test.classes and torch.equal(r.data.labels.sort().values, test.labels.sort().values)
    with pytest.warns(UserWarning, match="by name"):  # the option pairs other names; these are the same ones
        assert evaluate(trained_run.run_dir, folder, ignore_class_names=True).metrics["top1"] == r.metrics["top1"]
    # the command says so in one line, and scores the same
    assert main(["eval", "--checkpoint", str(trained_run.run_dir), "--data", folder, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "warning:" in err and "by name" in err, err
    assert f"{100 * r.metrics['top1']:.2f}%" in out


def test_reports_of_two_checkpoints_in_one_folder_are_both_kept(trained_run, tmp_path):
    import shutil

    from cnnkit.artifacts import load, save_checkpoint

    other = tmp_path / "elsewhere" / trained_run.run_dir.name  # another run of the same name
    ckpt = load(trained_run.run_dir)
    with torch.no_grad():
        next(ckpt.model.parameters()).mul_(0.5)
    other.mkdir(parents=True)
    save_checkpoint(other / "best.safetensors", ckpt.model, ckpt.meta)
    shutil.copy(trained_run.run_dir / "best.safetensors", tmp_path / "copy.safetensors")
    out = tmp_path / "reports"
    paths = [evaluate(c, "sample", out_dir=out).json_path
             for c in (trained_run.run_dir, other, tmp_path / "copy.safetensors", trained_run.run_dir)]
    assert paths[0] == paths[3] == out / f"eval-{trained_run.run_dir.name}-sample-test.json"  # its own: replaced
    assert paths[1] == out / f"eval-{trained_run.run_dir.name}-sample-test-2.json"  # another's: kept
    assert paths[2] == out / "eval-copy-sample-test.json"
    assert sorted(p.name for p in out.glob("eval-*.json")) == sorted({p.name for p in paths})
    recorded = [json.loads(p.read_text())["checkpoint"] for p in paths[:3]]
    assert recorded == [str((trained_run.run_dir / "best.safetensors").absolute()), str(other / "best.safetensors"),
                        str(tmp_path / "copy.safetensors")]
    assert all((out / f"confusion-{p.stem.removeprefix('eval-')}.png").exists() for p in paths)
    folder = tmp_path / "imgs"
    write_imagefolder(folder, load_dataset_sample_test(), classes=range(10), per_class=2, mixed=False)
    with pytest.warns(UserWarning, match="by name"):  # its class folders sort alphabetically
        r = evaluate(trained_run.run_dir, f"imagefolder:{folder}", out_dir=out)
    assert r.json_path.name == f"eval-{trained_run.run_dir.name}-imagefolder-imgs-test.json"
    assert json.loads(r.json_path.read_text())["data"] == f"imagefolder:{folder}"  # the whole name


def load_dataset_sample_test():
    from cnnkit.data import load_dataset

    return load_dataset("sample", "test")


def test_predict_json_and_csv_give_full_paths_and_fractions(trained_run, sample_train, tmp_path, capsys,
                                                            monkeypatch):
    import csv
    import io

    from cnnkit.cli import main

    for i in range(2):
        Image.fromarray(sample_train.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    args = ["predict", "0.png", "1.png", "--checkpoint", str(trained_run.run_dir), "--topk", "2"]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    top = rows[0]["top"]
    assert len(top) == 2 and top[0]["class"] in sample_train.classes and 0 < top[1]["probability"] <= \
        top[0]["probability"] <= 1
    assert main([*args, "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["image"], r["rank"], r["class"]) for r in table][:2] == [(str(tmp_path / "0.png"), "1", top[0]["class"]),
                                                                         (str(tmp_path / "0.png"), "2", top[1]["class"])]
    assert float(table[0]["probability"]) == pytest.approx(top[0]["probability"])
    assert main(args) == 0  # the table: each probability as a percentage with two decimals
    assert f"{top[0]['class']} {100 * top[0]['probability']:.2f}%" in capsys.readouterr().out
    assert main([*args, "--json", "--csv"]) == 2
    assert "--json or --csv" in capsys.readouterr().err


def test_a_subset_of_the_split_is_stratified_recorded_and_refused_where_it_means_nothing(trained_run, tmp_path,
                                                                                         capsys):
    """`images=N` scores N images of the split, every class in its share, and says so in the JSON; the full split
    holds them (the same predictions image for image); --images on a corruption benchmark and bench's
    --test-images without --data are one line each."""
    from cnnkit.cli import main

    whole = evaluate(trained_run.run_dir, "sample", "test", device="cpu")
    part = evaluate(trained_run.run_dir, "sample", "test", device="cpu", images=200, out_dir=tmp_path)
    assert part.metrics["images"] == 200 and "200 of the split's 1000 images" in part.metrics["subset"]
    assert json.loads(part.json_path.read_text())["subset"] == part.metrics["subset"]
    counts = torch.bincount(part.labels, minlength=10)
    assert counts.min() >= 18 and counts.max() <= 22  # 1,000 test images, 100 per class: ~20 of each
    rows = [int(torch.nonzero((whole.data.images == im).flatten(1).all(1))[0]) for im in part.data.images[:5]]
    assert torch.allclose(part.probs[:5], whole.probs[rows], atol=1e-5)
    assert "subset" not in whole.metrics and whole.metrics["images"] == 1000
    assert main(["eval", "--checkpoint", str(trained_run.run_dir), "--data", "sample-c", "--images", "10"]) == 2
    assert "--images-per-cell" in capsys.readouterr().err
    assert main(["bench", str(trained_run.run_dir), "--test-images", "10"]) == 2
    assert "give --data too" in capsys.readouterr().err
