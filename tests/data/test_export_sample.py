"""`cnnkit data export-sample`: the bundled sample as an image folder that `imagefolder:` reads back with the
sample's classes (names and order), written into a folder of cnnkit's own."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cnnkit.cli import main
from cnnkit.data import FASHION_MNIST_CLASSES, load_dataset
from cnnkit.data.bundled import class_folder_names, export_sample
from cnnkit.errors import DataError
from tests.cli.chain import cnnkit, ok


def test_export_train_and_evaluate_chain(tmp_path):
    """export-sample -> train on the image folder -> eval on it: the run's classes are the sample's, by name and
    in order, so its labels mean what the sample's mean."""
    ok(cnnkit("data", "export-sample", "photos", "--limit", "20", cwd=tmp_path))
    assert (tmp_path / "photos/test/T-shirt_top/00019.png").is_file()
    assert (tmp_path / "photos/test/Sneaker/00000.png").is_file()  # the names the README's examples use
    ok(cnnkit("train", "--model", "resnet9", "--model-kw", "width=8", "--data", "imagefolder:photos", "--epochs",
              "1", "--batch-size", "50", "--quiet", "--out", "run", cwd=tmp_path))
    ok(cnnkit("eval", "--checkpoint", "run", "--data", "imagefolder:photos", cwd=tmp_path))
    report = json.loads(next((tmp_path / "run").glob("eval-*imagefolder*-test.json")).read_text())
    assert [c["class"] for c in report["per_class"]] == FASHION_MNIST_CLASSES
    assert [c["support"] for c in report["per_class"]] == [20] * 10


def test_the_folder_reads_back_as_the_sample(tmp_path):
    export_sample(tmp_path / "s", split="test", limit=3)
    back, sample = load_dataset(f"imagefolder:{tmp_path / 's'}", "test"), load_dataset("sample", "test")
    assert back.classes == sample.classes
    for c in range(len(sample.classes)):  # the first 3 of each class, in the sample's order, pixel for pixel
        assert torch.equal(back.images[back.labels == c], sample.images[sample.labels == c][:3])


def test_class_folders_are_safe_everywhere_and_distinct():
    assert class_folder_names(FASHION_MNIST_CLASSES)[0] == "T-shirt_top"
    assert class_folder_names(FASHION_MNIST_CLASSES)[1:] == FASHION_MNIST_CLASSES[1:]
    assert class_folder_names(["a/b", "a:b", "A_B", "con", ".hidden", "end. ", "..", "x\ty"]) == [
        "a_b", "a_b-2", "A_B-3", "_con", "hidden", "end", "class-6", "x_y"]


def test_a_class_file_names_and_orders_the_classes(tmp_path):
    export_sample(tmp_path / "ref", split="test", limit=1)
    for split, classes in (("train", ("b", "a")), ("test", ("a",))):  # the test split lacks class "b"
        for c in classes:
            (tmp_path / "d" / split / c).mkdir(parents=True)
            shutil.copy(tmp_path / "ref/test/Bag/00000.png", tmp_path / "d" / split / c / "0.png")
    (tmp_path / "d/classes.json").write_text(json.dumps(
        {"classes": [{"folder": "b", "name": "B/b"}, {"folder": "a", "name": "A/a"}]}))
    test = load_dataset(f"imagefolder:{tmp_path / 'd'}", "test")
    assert test.classes == ["B/b", "A/a"] and test.labels.tolist() == [1]  # "a" keeps its label
    (tmp_path / "d/test/c").mkdir()
    with pytest.raises(DataError, match="does not list: c"):
        load_dataset(f"imagefolder:{tmp_path / 'd'}", "test")
    (tmp_path / "d/classes.json").write_text('{"classes": ["a", "b"]}')
    with pytest.raises(DataError, match="is not a class list"):
        load_dataset(f"imagefolder:{tmp_path / 'd'}", "train")


@pytest.mark.parametrize("args,message", [
    (["DIR"], "DIR is a file; give a folder"),
    (["new", "--split", "val"], "--split must be train, test or both, got 'val'"),
    (["new", "--limit", "0"], "--limit must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").write_text("a file")
    assert main(["data", "export-sample", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def test_a_second_export_replaces_only_its_own_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "export-sample", "photos", "--limit", "3"]) == 0
    mine = tmp_path / "photos/train/Bag/mine.png"
    (tmp_path / "photos/train/Bag/00002.png").rename(mine)  # the user's own image, and a note
    (tmp_path / "photos/notes.txt").write_text("mine")
    assert main(["data", "export-sample", "photos", "--limit", "2", "--split", "train"]) == 0
    assert sorted(p.name for p in (tmp_path / "photos/train/Bag").iterdir()) == ["00000.png", "00001.png",
                                                                                 "mine.png"]
    assert sorted(p.name for p in (tmp_path / "photos/train/Coat").iterdir()) == ["00000.png", "00001.png"]
    assert not (tmp_path / "photos/test").exists()  # the earlier export's test split: its files and folders
    assert mine.is_file() and (tmp_path / "photos/notes.txt").read_text() == "mine"
    # a file of the user's under a name the export writes is refused, and nothing is written
    (tmp_path / "other/test/Bag").mkdir(parents=True)
    (tmp_path / "other/test/Bag/00000.png").write_bytes(mine.read_bytes())
    capsys.readouterr()
    assert main(["data", "export-sample", "other"]) == 2
    assert "refusing to replace other/test/Bag/00000.png" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "other").rglob("*")] == ["test", "Bag", "00000.png"]


def test_a_class_file_beyond_its_bound_is_refused_unread(tmp_path, monkeypatch):
    import cnnkit.data.imagefolder as imagefolder
    from cnnkit.data import load_imagefolder
    from cnnkit.errors import DataError

    (tmp_path / "a").mkdir()
    (tmp_path / "classes.json").write_text('{"classes": [{"folder": "a", "name": "A"}]}' + " " * 200)
    monkeypatch.setattr(imagefolder, "MAX_CLASS_FILE_BYTES", 100)
    with pytest.raises(DataError, match="is not a class list"):
        load_imagefolder(tmp_path, "train")
