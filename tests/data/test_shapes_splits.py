"""Shapes and splits end to end: non-square images through every step, the held-out test split of flat
image folders, and the one compatibility check (channels, H×W, classes and their names) every step uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.artifacts import LoadedCheckpoint, load, save_checkpoint
from cnnkit.cli import main, parse_img_size
from cnnkit.data import load_dataset, load_imagefolder, to_model_input
from cnnkit.data.compat import check_compatible, checkpoint_data_source
from cnnkit.data.base import image_size
from cnnkit.data.splits import held_out_test
from cnnkit.errors import CheckpointError, ConfigError, DataError

H, W = 20, 12  # taller than wide
CLASSES = ("bars", "blobs", "stripes")


def write_nonsquare_folder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """Class folders of H×W gray PNGs with a class-specific pattern under noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    patterns = [(yy % 4 < 2), ((yy - H / 2) ** 2 + (xx - W / 2) ** 2 < 16), (xx % 4 < 2)]
    for name, pattern in zip(CLASSES, patterns):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            arr = np.clip(pattern * 180 + rng.normal(40, 25, (H, W)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "L").save(d / f"{j:02d}.png")
    return root


@pytest.fixture(scope="module")
def nonsquare(tmp_path_factory):
    """A flat 3-class folder of 20×12 images and a 1-epoch run on it."""
    from cnnkit.train import fit

    root = tmp_path_factory.mktemp("shapes")
    folder = write_nonsquare_folder(root / "imgs")
    result = fit(model="resnet9", model_kwargs={"width": 8}, data=f"imagefolder:{folder}", epochs=1,
                 out=str(root / "run"), progress=False, val_fraction=0.2, batch_size=16)
    return folder, result


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_nonsquare_run_goes_through_every_step(nonsquare, tmp_path, capsys):
    folder, run = nonsquare
    ckpt = load(run.run_dir)
    assert ckpt.img_size == (H, W) and ckpt.in_chans == 1
    assert ckpt.meta["dataset"]["test_fraction"] == 0.2 and ckpt.meta["dataset"]["split_seed"] == 0

    # eval: defaults to the checkpoint's own folder and evaluates on its held-out test split
    assert main(["eval", "--checkpoint", str(run.run_dir), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "held out 20%" in out
    report = json.loads(next((tmp_path / "eval").glob("eval-*.json")).read_text())
    assert report["data"] == f"imagefolder:{folder}" and report["split"] == "test (held out 20%, seed 0)"
    assert report["images"] == 3 * 2  # round(12 × 0.2) per class

    assert main(["predict", str(folder / "bars"), "--checkpoint", str(run.run_dir)]) == 0
    assert main(["explain", str(folder / "blobs" / "00.png"), "--checkpoint", str(run.run_dir),
                 "--method", "gradcam", "--out", str(tmp_path / "explained")]) == 0
    assert (tmp_path / "explained" / "00.png").exists()
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(run.run_dir), "--out", str(onnx)]) == 0
    assert main(["bench", str(onnx), "--data", f"imagefolder:{folder}", "--repeats", "3",
                 "--out", str(tmp_path / "bench.json")]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())  # the ONNX sidecar carries the split settings
    assert rows[0]["split"] == "test (held out 20%, seed 0)" and 0 <= rows[0]["top1"] <= 1
    capsys.readouterr()
    assert main(["compress", "--checkpoint", str(run.run_dir), "--recipe", "int8", "--calibration", "64",
                 "--no-onnx", "--repeats", "3", "--out", str(tmp_path / "c")]) == 0
    summary = json.loads((tmp_path / "c" / "compress.json").read_text())
    assert summary["split"] == "test (held out 20%, seed 0)"
    assert [(r["variant"], r["runtime"]) for r in summary["rows"]] == \
        [("float32", "eager"), ("float32", "inductor"), ("int8", "inductor int8")]  # the int8 program and its baseline

    # explain --benchmark reloads the data at 20×12: it passes the shape check and stops only for want of boxes
    capsys.readouterr()
    assert main(["explain", "--benchmark", "--checkpoint", str(run.run_dir), "--data", f"imagefolder:{folder}",
                 "--out", str(tmp_path / "b")]) == 2
    assert "has no ground-truth boxes" in one_line_error(capsys)


def test_flat_folder_test_split_is_held_out_stratified_and_seeded(tmp_path):
    folder = write_nonsquare_folder(tmp_path / "imgs", per_class=10)
    name = f"imagefolder:{folder}"
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.split.startswith("train (") and test.split == "test (held out 20%, seed 0)"
    assert len(train) + len(test) == 30 and test.labels.bincount().tolist() == [2, 2, 2]
    rows = {tuple(x.flatten().tolist()) for x in train.images}
    assert not rows & {tuple(x.flatten().tolist()) for x in test.images}  # disjoint (the images all differ)
    again = load_dataset(name, "test")
    assert torch.equal(again.images, test.images)
    other = load_dataset(name, "test", seed=1)
    assert not torch.equal(other.images, test.images) and other.split == "test (held out 20%, seed 1)"
    assert len(load_dataset(name, "test", test_fraction=0.5)) == 15
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        load_dataset(name, "test", test_fraction=1.0)


def test_held_out_test_depends_only_on_names_fraction_and_seed():
    files = [f"c{c}/{i}.png" for c in range(3) for i in range(9)]
    labels = [c for c in range(3) for _ in range(9)]
    picked = held_out_test(files, labels, 0.25, seed=7)
    assert [sum(p for p, lab in zip(picked, labels) if lab == c) for c in range(3)] == [2, 2, 2]
    assert held_out_test(files, labels, 0.25, seed=7) == picked
    # an image added to one class moves no other image between the splits
    grown = held_out_test(files + ["c0/new.png"], labels + [0], 0.25, seed=7)
    assert [g for g, f in zip(grown, files) if not f.startswith("c0/")] == \
           [p for p, f in zip(picked, files) if not f.startswith("c0/")]
    # a class of one image stays in train; no class loses all its images
    few = held_out_test(["a.png", "b/1.png", "b/2.png"], [0, 1, 1], 0.9, seed=0)
    assert few[0] is False and sum(few[1:]) == 1


def test_train_and_test_subfolders_are_their_own_splits(tmp_path):
    write_nonsquare_folder(tmp_path / "train", per_class=5)
    write_nonsquare_folder(tmp_path / "val", per_class=2, seed=1)
    train, test = load_dataset(f"imagefolder:{tmp_path}", "train"), load_dataset(f"imagefolder:{tmp_path}", "test")
    assert (len(train), train.split, len(test), test.split) == (15, "train", 6, "test")
    only_test = tmp_path / "only"
    write_nonsquare_folder(only_test / "test", per_class=2)
    assert len(load_dataset(f"imagefolder:{only_test}", "test")) == 6
    with pytest.raises(DataError, match="no train/"):
        load_dataset(f"imagefolder:{only_test}", "train")


def test_image_sizes_int_or_height_width(tmp_path):
    folder = write_nonsquare_folder(tmp_path / "imgs", per_class=3)
    assert load_imagefolder(folder).img_size == (H, W)
    assert load_imagefolder(folder, img_size=(16, 10)).img_size == (16, 10)
    assert load_imagefolder(folder, img_size=[10, 16]).img_size == (10, 16)
    assert load_imagefolder(folder, img_size=8).img_size == (8, 8)
    assert image_size(None) is None
    for bad in (0, -3, (4,), (4, 0), (4.0, 4), "8", True):
        with pytest.raises(DataError, match="positive side N or a pair"):
            image_size(bad)
    # a square image resized to a non-square size covers it: cropped, never padded
    white = Image.new("L", (30, 30), 255)
    assert to_model_input(white, 1, (20, 12)).min() == 255
    assert tuple(to_model_input(white, 1, (12, 20)).shape) == (1, 12, 20)


def test_cli_img_size_and_test_fraction(tmp_path, capsys):
    assert parse_img_size("48x32") == [48, 32] and parse_img_size("32") == 32 and parse_img_size("9X7") == [9, 7]
    assert parse_img_size(None) is None
    for bad in ("0", "-4", "48x", "x32", "4x4x4", "big", "0x8", "3.5"):
        with pytest.raises(ConfigError, match="e.g. 32 or 48x32"):
            parse_img_size(bad)
    folder = write_nonsquare_folder(tmp_path / "imgs", per_class=8)
    base = ["train", "--data", f"imagefolder:{folder}", "--model", "resnet9", "--model-kw", "width=4",
            "--epochs", "1", "--batch-size", "16", "--quiet"]
    assert main([*base, "--img-size", "0x8", "--out", str(tmp_path / "bad")]) == 2
    assert "48x32" in one_line_error(capsys)
    assert main([*base, "--test-fraction", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "--test-fraction must be strictly between 0 and 1" in one_line_error(capsys)
    assert main([*base, "--img-size", "16x10", "--test-fraction", "0.25", "--seed", "3",
                 "--out", str(tmp_path / "run")]) == 0
    ckpt = load(tmp_path / "run")
    assert ckpt.img_size == (16, 10)
    assert (ckpt.meta["dataset"]["test_fraction"], ckpt.meta["dataset"]["split_seed"]) == (0.25, 3)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "held out 25%, seed 3" in out


def test_checkpoint_data_source_reads_what_the_checkpoint_recorded():
    meta = {"dataset": {"name": "mnist", "test_fraction": 0.3, "split_seed": 5}, "config": {"data_dir": "/d"}}
    ck = LoadedCheckpoint(torch.nn.Identity(), meta, Path("x.safetensors"))
    src = checkpoint_data_source(ck)
    assert (src.name, src.data_dir, src.test_fraction, src.seed) == ("mnist", "/d", 0.3, 5)
    other = checkpoint_data_source(ck, "cifar10")
    assert (other.name, other.data_dir) == ("cifar10", None)  # the recorded data_dir belongs to mnist
    assert checkpoint_data_source(ck, None, "/e").data_dir == "/e"
    bare = checkpoint_data_source(LoadedCheckpoint(torch.nn.Identity(), {}, Path("x")))
    assert (bare.name, bare.data_dir, bare.test_fraction, bare.seed) == ("sample", None, 0.2, 0)


MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
                 "8 - eight", "9 - nine"]


def save_digits_checkpoint(path: Path, side: int = 28) -> Path:
    """An (untrained) checkpoint as if trained on MNIST digits: 10 classes of 1×side×side, digit names."""
    from cnnkit.models import create

    model = create("resnet9", num_classes=10, in_chans=1, img_size=(side, side), width=8)
    meta = {"model": "resnet9", "model_kwargs": {"width": 8}, "classes": MNIST_CLASSES, "in_chans": 1,
            "img_size": [side, side], "normalization": {"mean": [0.286], "std": [0.353]},
            "dataset": {"name": "mnist", "fingerprint": "0" * 16, "train_images": 60000}}
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def mnist_named(tmp_path_factory) -> Path:
    """A digits checkpoint with the sample's shape and class count, and other class names."""
    return save_digits_checkpoint(tmp_path_factory.mktemp("mnist-named") / "digits.safetensors")


def test_class_name_mismatch_is_one_line_and_can_be_overridden(mnist_named, tmp_path, capsys, monkeypatch):
    code = main(["eval", "--checkpoint", str(mnist_named), "--data", "sample"])
    err = one_line_error(capsys)
    assert code == 2 and "'T-shirt/top'" in err and "'0 - zero'" in err and "--ignore-class-names" in err
    assert main(["eval", "--checkpoint", str(mnist_named), "--data", "sample", "--ignore-class-names"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["compress", "--recipe", "int8", "--no-onnx", "--out", str(tmp_path / "c"), "--data", "sample",
                 "--checkpoint", str(mnist_named)]) == 2
    assert "--ignore-class-names" in one_line_error(capsys)
    # explain --benchmark on a stand-in for the cluttered sample (64×64 canvases with boxes, Fashion-MNIST's
    # classes), so the test need not generate the real one
    from cnnkit.data import FASHION_MNIST_CLASSES, ImageData

    canvases = ImageData(torch.randint(0, 256, (8, 1, 64, 64), dtype=torch.uint8), torch.arange(8),
                         FASHION_MNIST_CLASSES, "cluttered-sample", "test",
                         boxes=torch.tensor([[16, 16, 40, 40]] * 8))
    monkeypatch.setattr("cnnkit.explain.workflows.load_checkpoint_data", lambda *a, **k: canvases)
    digits64 = save_digits_checkpoint(tmp_path / "digits64.safetensors", side=64)
    bench = ["explain", "--benchmark", "--data", "cluttered-sample", "--checkpoint", str(digits64),
             "--method", "eigencam", "--limit", "8", "--out", str(tmp_path / "b")]
    assert main(bench) == 2
    assert "--ignore-class-names" in one_line_error(capsys)
    assert main([*bench, "--ignore-class-names"]) == 0
    assert (tmp_path / "b" / "explain-benchmark.csv").exists()


def test_check_compatible_python_api(mnist_named, sample_train, tmp_path):
    from cnnkit.evaluate import evaluate

    ckpt = load(mnist_named)
    with pytest.raises(CheckpointError, match=r"names classes that .* does not \('T-shirt/top', 'Trouser', "
                                              r"'Pullover' in the data; '0 - zero', '1 - one', '2 - two' in the model\)"):
        check_compatible(ckpt, sample_train)
    assert check_compatible(ckpt, sample_train, ignore_class_names=True) is sample_train  # paired by position
    small = sample_train.subset(torch.arange(4), "train")
    small.images = small.images[:, :, :20, :12].contiguous()
    with pytest.raises(CheckpointError, match="gives 1×20×12 images but .* expects 1×28×28"):
        check_compatible(ckpt, small, ignore_class_names=True)
    r = evaluate(mnist_named, "sample", ignore_class_names=True)
    assert r.metrics["split"] == "test" and r.metrics["images"] == len(r.labels)
    with pytest.raises(CheckpointError, match="--ignore-class-names"):
        evaluate(mnist_named, "sample")
    # compress loads its calibration data through the same check, and the same override
    from cnnkit.compress import Context, Settings
    from cnnkit.data.compat import load_source_split

    source = checkpoint_data_source(ckpt, "sample")
    train = load_source_split(ckpt, source, "train", ignore_class_names=True)
    ctx = Context(ckpt, tmp_path, train, Settings(calibration=64), print)
    assert ctx.calib.shape == (64, 1, 28, 28)
    with pytest.raises(CheckpointError, match="--ignore-class-names"):
        load_source_split(ckpt, source, "train")


def _with_classes(ckpt: LoadedCheckpoint, classes: list[str]) -> LoadedCheckpoint:
    return LoadedCheckpoint(ckpt.model, {**ckpt.meta, "classes": classes}, ckpt.path)


def test_the_same_classes_in_another_order_are_renumbered_by_name(mnist_named, sample_train):
    ckpt = load(mnist_named)
    shuffled = [sample_train.classes[i] for i in (9, 0, 1, 2, 3, 4, 5, 6, 7, 8)]  # 'Ankle boot' first
    model = _with_classes(ckpt, shuffled)
    with pytest.warns(UserWarning, match=r"mapped to the model's classes by name \('T-shirt/top' is class 0 in "
                                         r"the data, 'T-shirt/top' class 1 in the model\)"):
        mapped = check_compatible(model, sample_train)
    assert mapped.classes == shuffled and mapped is not sample_train and torch.equal(mapped.images, sample_train.images)
    assert [shuffled[y] for y in mapped.labels[:50]] == [sample_train.classes[y] for y in sample_train.labels[:50]]
    assert sample_train.classes[0] == "T-shirt/top" and sample_train.labels.max() == 9  # the loaded set untouched
    # with --ignore-class-names too: these are the same names, and pairing them by position would be wrong
    with pytest.warns(UserWarning, match="by name"):
        assert torch.equal(check_compatible(model, sample_train, ignore_class_names=True).labels, mapped.labels)
    # a folder cannot name a class 'T-shirt/top': names equal up to case and punctuation are the same class
    folder_names = [c.replace("/", "_").lower() for c in sample_train.classes]
    as_folder = sample_train.subset(torch.arange(len(sample_train)), "test")
    as_folder.classes = sorted(folder_names)
    as_folder.labels = torch.tensor([as_folder.classes.index(folder_names[y]) for y in sample_train.labels])
    ckpt = _with_classes(ckpt, list(sample_train.classes))
    with pytest.warns(UserWarning, match=r"by name \(ignoring case and punctuation\)"):
        back = check_compatible(ckpt, as_folder)
    assert torch.equal(back.labels, sample_train.labels) and back.classes == sample_train.classes
    # in the same order, nothing to say and nothing copied
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_compatible(ckpt, sample_train) is sample_train


def test_ignore_class_names_warns_of_a_name_at_another_position(mnist_named, sample_train):
    import warnings

    ckpt = load(mnist_named)
    names = list(MNIST_CLASSES)
    names[3] = sample_train.classes[0]  # 'T-shirt/top' is the data's class 0 and the model's class 3
    with pytest.warns(UserWarning, match=r"has 'T-shirt/top' as class 0 and .* as class 3: the scores are against "
                                         r"the model's class 0 for those images"):
        assert check_compatible(_with_classes(ckpt, names), sample_train, ignore_class_names=True) is sample_train
    names[3] = "3 - three"
    names[0] = sample_train.classes[0]  # at the same position: other names paired by position, as asked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_compatible(_with_classes(ckpt, names), sample_train, ignore_class_names=True) is sample_train
