"""Detection data in the user's formats (`yolo:`, `voc-boxes:`, `coco-boxes:`), made tiny here with images of
mixed sizes and modes: boxes and classes read exactly (YOLO's normalized boxes, VOC's 1-based inclusive pixels,
COCO's [x, y, w, h]) and scaled with the resize; splits and class names; each bad box one line naming its file
(exit 2 through the CLI) unless --drop-bad-boxes drops and counts it; a DOCTYPE refused; a run end to end."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnkit.cli import main
from cnnkit.data import load_dataset
from cnnkit.errors import DataError


def _image(path: Path, w: int, h: int, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (200, 40, 40), "L": 120, "P": 3, "RGBA": (10, 200, 10, 128)}[mode]
    Image.new(mode, (w, h), colour).save(path)
    return path


def _rows(data, i: int) -> list[list[float]]:
    """Image i's object rows (class, x0, y0, x1, y1), padding left out."""
    rows = data.objects[i]
    return [[round(v, 4) for v in r] for r in rows[rows[:, 0] >= 0].tolist()]


# -- yolo ---------------------------------------------------------------------------------------------------------

def _yolo(root: Path, yaml: str | None = "names: {0: cat, 1: dog}\ntrain: images/train\nval: images/val\n") -> Path:
    """Four training images (RGB PNG, gray JPEG, palette PNG without labels, RGBA PNG with an empty label file)
    and one validation image; class ids 0 (cat) and 1 (dog)."""
    _image(root / "images/train/a.png", 40, 30)
    _image(root / "images/train/b.jpg", 48, 32, "L")
    _image(root / "images/train/c.png", 32, 32, "P")
    _image(root / "images/train/d.png", 40, 40, "RGBA")
    _image(root / "images/val/e.png", 40, 30)
    (root / "labels/train").mkdir(parents=True)
    (root / "labels/val").mkdir(parents=True)
    (root / "labels/train/a.txt").write_text("0 0.5 0.5 0.5 0.4\n1 0.25 0.25 0.2 0.2\n")
    (root / "labels/train/b.txt").write_text("1 0.5 0.5 1.0 1.0\n")
    (root / "labels/train/d.txt").write_text("")
    (root / "labels/val/e.txt").write_text("\n0 0.5 0.5 0.5 0.5\n")
    if yaml is not None:
        (root / "data.yaml").write_text(yaml)
    return root


def test_yolo_boxes_are_denormalized_and_scaled_with_the_resize(tmp_path):
    root = _yolo(tmp_path / "y")
    train = load_dataset(f"yolo:{root}", "train", img_size=(32, 48))
    assert train.classes == ["background", "cat", "dog"] and train.split == "train"
    assert train.images.shape == (4, 3, 32, 48) and train.sizes.tolist() == [[30, 40], [32, 48], [32, 32], [40, 40]]
    # a.png, 40×30: cat (cx 20, cy 15, 20×12) = (10, 9, 30, 21), dog (10, 7.5, 8×6) = (6, 4.5, 14, 10.5) in its
    # pixels; resized to 48×32, x × 1.2 and y × 32/30
    assert _rows(train, 0) == [[1, 12.0, 9.6, 36.0, 22.4], [2, 7.2, 4.8, 16.8, 11.2]]
    assert _rows(train, 1) == [[2, 0.0, 0.0, 48.0, 32.0]]  # the whole 48×32 image, not resized
    assert _rows(train, 2) == [] and _rows(train, 3) == []  # no label file; an empty one
    assert train.labels.tolist() == [1, 2, 0, 0]  # the largest object's class, 0 without objects
    test = load_dataset(f"yolo:{root}", "test", img_size=(32, 48))
    assert test.split == "val" and _rows(test, 0) == [[1, 12.0, 8.0, 36.0, 24.0]]
    # the default size: the median height and width of all images, rounded to a multiple of 16
    assert load_dataset(f"yolo:{root / 'data.yaml'}", "test").img_size == (32, 32)


def test_yolo_class_names_from_the_yaml_a_class_file_or_numbered(tmp_path):
    listed = _yolo(tmp_path / "list", yaml="names: [cat, dog, bird]\npath: .\ntrain: images/train\ntest: images/val\n")
    assert load_dataset(f"yolo:{listed}", "train").classes == ["background", "cat", "dog", "bird"]
    plain = _yolo(tmp_path / "plain", yaml=None)  # images/train and images/val, no yaml
    assert load_dataset(f"yolo:{plain}", "train").classes == ["background", "class0", "class1"]
    assert load_dataset(f"yolo:{plain}", "test").split == "val"
    (plain / "classes.txt").write_text("cat\ndog\n")
    assert load_dataset(f"yolo:{plain}", "train").classes == ["background", "cat", "dog"]


def test_a_flat_yolo_folder_holds_out_a_seeded_test_split(tmp_path):
    root = tmp_path / "flat"
    for i in range(6):
        _image(root / f"images/{i}.png", 32, 24)
        (root / "labels").mkdir(exist_ok=True)
        (root / f"labels/{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.5 0.5\n")
    train, test = (load_dataset(f"yolo:{root}", s, test_fraction=0.34, seed=1) for s in ("train", "test"))
    assert (len(train), len(test)) == (4, 2) and "held out" in test.split
    again = load_dataset(f"yolo:{root}", "test", test_fraction=0.34, seed=1)
    assert torch.equal(again.objects, test.objects)


# -- voc-boxes ----------------------------------------------------------------------------------------------------

def _voc_xml(objects: list[tuple[str, tuple, int]], w: int = 40, h: int = 30, extra: str = "") -> str:
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    return (f"{extra}<annotation><filename>x.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{body}</annotation>")


def _voc(root: Path) -> Path:
    """Three JPEGs: two listed in train.txt, one in val.txt."""
    for i, (w, h, mode) in enumerate([(40, 30, "RGB"), (36, 28, "L"), (40, 30, "RGB")]):
        _image(root / f"JPEGImages/im{i}.jpg", w, h, mode)
    (root / "Annotations").mkdir()
    (root / "Annotations/im0.xml").write_text(_voc_xml([("dog", (11, 6, 30, 20), 0),
                                                        ("person", (1, 1, 40, 30), 1)]))  # difficult, kept
    (root / "Annotations/im1.xml").write_text(_voc_xml([("cat", (2, 3, 10, 12), 0)], 36, 28))
    (root / "Annotations/im2.xml").write_text(_voc_xml([("car", (5, 5, 15, 15), 0)]))
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "ImageSets/Main/train.txt").write_text("im0\nim1\n")
    (root / "ImageSets/Main/val.txt").write_text("im2\n")
    return root


def test_voc_boxes_turn_one_based_inclusive_pixels_into_pixel_edges(tmp_path):
    root = _voc(tmp_path / "voc")
    train = load_dataset(f"voc-boxes:{root}", "train", img_size=(30, 40))
    assert train.classes[0] == "background" and train.classes[12] == "dog" and len(train.classes) == 21
    # xmin 11..xmax 30 covers pixels 10..29: edges 10 and 30; the difficult person, the whole image, kept
    assert _rows(train, 0) == [[12, 10.0, 5.0, 30.0, 20.0], [15, 0.0, 0.0, 40.0, 30.0]]
    # im1 is 36×28, resized to 40×30: x × 40/36, y × 30/28
    assert _rows(train, 1) == [[8, round(1 * 40 / 36, 4), round(2 * 30 / 28, 4), round(10 * 40 / 36, 4),
                                round(12 * 30 / 28, 4)]]
    test = load_dataset(f"voc-boxes:{root}", "test", img_size=(30, 40))
    assert test.split == "val" and _rows(test, 0) == [[7, 4.0, 4.0, 15.0, 15.0]]
    (root / "classes.json").write_text(json.dumps(["cat", "dog", "person", "car"]))
    mine = load_dataset(f"voc-boxes:{root}", "train", img_size=(30, 40))
    assert mine.classes == ["background", "cat", "dog", "person", "car"] and _rows(mine, 0)[0][0] == 2


def test_voc_with_test_txt_trains_on_trainval(tmp_path):
    root = _voc(tmp_path / "voc")
    (root / "ImageSets/Main/trainval.txt").write_text("im0\nim2\n")
    (root / "ImageSets/Main/test.txt").write_text("im1\n")
    train, test = (load_dataset(f"voc-boxes:{root}", s) for s in ("train", "test"))
    assert (train.split, len(train), test.split, len(test)) == ("trainval", 2, "test", 1)


# -- coco-boxes ---------------------------------------------------------------------------------------------------

def _coco(root: Path, n: int = 5, name: str = "instances.json", annotations: list | None = None) -> Path:
    """`n` images (RGB and gray PNGs of two sizes) with a dog and a cat box each and a crowd box; category
    ids 3 (cat) and 1 (dog), listed out of order."""
    images, anns = [], []
    for i in range(n):
        w, h = (40, 30) if i % 2 else (32, 32)
        _image(root / f"images/{name}{i}.png", w, h, "L" if i % 2 else "RGB")
        images.append({"id": i, "file_name": f"{name}{i}.png", "height": h, "width": w})
        anns += [{"id": 10 * i, "image_id": i, "category_id": 1, "bbox": [4, 5, 10, 8], "iscrowd": 0},
                 {"id": 10 * i + 1, "image_id": i, "category_id": 3, "bbox": [0.5, 1.5, 20, 20.5]},
                 {"id": 10 * i + 2, "image_id": i, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 1}]
    path = root / name
    path.write_text(json.dumps({"images": images, "annotations": anns if annotations is None else annotations,
                                "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}]}))
    return path


def test_coco_boxes_are_xywh_with_categories_in_id_order_and_crowds_left_out(tmp_path):
    path = _coco(tmp_path / "coco")
    train, test = (load_dataset(f"coco-boxes:{path}", s, img_size=32) for s in ("train", "test"))
    assert train.classes == ["background", "dog", "cat"] and len(train) + len(test) == 5 and len(test) == 1
    both = {tuple(s): _rows(d, i) for d in (train, test) for i, s in enumerate(d.sizes.tolist())}
    assert both[(32, 32)] == [[1, 4.0, 5.0, 14.0, 13.0], [2, 0.5, 1.5, 20.5, 22.0]]  # no crowd row
    assert both[(30, 40)] == [[1, 3.2, round(5 * 32 / 30, 4), 11.2, round(13 * 32 / 30, 4)],
                              [2, 0.4, 1.6, 16.4, round(22 * 32 / 30, 4)]]
    assert set(train.labels.tolist()) == {2}  # the cat box is the larger


def test_a_coco_train_and_val_pair(tmp_path):
    first, second = _coco(tmp_path, 3, "train.json"), _coco(tmp_path, 2, "val.json")
    train, test = (load_dataset(f"coco-boxes:{first},{second}", s) for s in ("train", "test"))
    assert (len(train), len(test)) == (3, 2) and test.split.startswith("val")


# -- bad boxes ----------------------------------------------------------------------------------------------------

def _bad(kind: str, fault: str, root: Path) -> tuple[str, str]:
    """A set of `kind` with one fault; its --data name and what the error must name (file and line/object)."""
    if kind == "yolo":
        _yolo(root)
        line = {"malformed": "0 0.5 0.5 0.2", "unknown class": "5 0.5 0.5 0.2 0.2",
                "outside": "0 0.95 0.5 0.5 0.2", "no area": "1 0.5 0.5 0 0.2"}[fault]
        (root / "labels/train/b.txt").write_text(f"1 0.5 0.5 1.0 1.0\n{line}\n")
        return f"yolo:{root}", "b.txt, line 2"
    if kind == "voc-boxes":
        _voc(root)
        obj = {"malformed": ("dog", (1, 1, "abc", 5), 0), "unknown class": ("unicorn", (1, 1, 5, 5), 0),
               "outside": ("dog", (1, 1, 50, 5), 0), "no area": ("dog", (5, 5, 4, 9), 0)}[fault]
        (root / "Annotations/im2.xml").write_text(_voc_xml([("car", (5, 5, 15, 15), 0), obj]))
        return f"voc-boxes:{root}", "im2.xml, object 2"
    ann = {"id": 77, "image_id": 1, "category_id": 1, "bbox": {"malformed": [1, 2, 3], "unknown class": [1, 1, 5, 5],
                                                               "outside": [30, 1, 15, 5], "no area": [1, 1, 0, 5]}[fault]}
    if fault == "unknown class":
        ann["category_id"] = 9
    path = _coco(root, 3)
    coco = json.loads(path.read_text())
    coco["annotations"].append(ann)
    path.write_text(json.dumps(coco))
    return f"coco-boxes:{path}", "instances.json, annotation 77"


FAULTS = ["malformed", "unknown class", "outside", "no area"]


@pytest.mark.parametrize("kind", ["yolo", "voc-boxes", "coco-boxes"])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_box_is_one_error_naming_its_file(kind, fault, tmp_path):
    data, named = _bad(kind, fault, tmp_path / "d")
    with pytest.raises(DataError) as e:
        load_dataset(data, "train")
    line = str(e.value)
    assert "\n" not in line and named in line and "--drop-bad-boxes" in line, line


@pytest.mark.parametrize("kind", ["yolo", "voc-boxes", "coco-boxes"])
def test_the_cli_says_a_bad_box_in_one_line_with_exit_2(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, named = _bad(kind, "outside", tmp_path / "d")
    code = main(["train", "--data", data, "--epochs", "1", "--model-kw", "width=8", "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines


def test_drop_bad_boxes_drops_them_and_counts_them_by_kind(tmp_path):
    root = _yolo(tmp_path / "y")
    (root / "labels/train/b.txt").write_text("1 0.5 0.5 1.0 1.0\n0 0.5\n0 0.95 0.5 0.5 0.2\n7 0.5 0.5 0.1 0.1\n"
                                             "1 0.5 0.5 0 0.2\n0 0.5 0.5 0.2 nan\n")
    with pytest.warns(UserWarning, match="dropped 5 bad box") as caught:
        train = load_dataset(f"yolo:{root}", "train", img_size=(32, 48), bad_boxes="drop")
    message = next(str(w.message) for w in caught if "dropped" in str(w.message))
    assert "2 malformed" in message and "1 outside the image" in message and "1 unknown class" in message
    assert "1 no area" in message and "b.txt" in message
    assert _rows(train, 1) == [[2, 0.0, 0.0, 48.0, 32.0]]  # the good box kept
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_dataset(f"yolo:{root}", "test", bad_boxes="drop")
    assert not [w for w in caught if "dropped" in str(w.message)]  # the test split has no bad box


def test_a_box_within_a_pixel_of_the_edge_is_clipped(tmp_path):
    path = _coco(tmp_path, 1, annotations=[{"id": 1, "image_id": 0, "category_id": 1, "bbox": [-0.8, 2, 33.5, 30.9]}])
    data = load_dataset(f"coco-boxes:{path},{path}", "train", img_size=32)
    assert _rows(data, 0) == [[1, 0.0, 2.0, 32.0, 32.0]]


def test_a_voc_annotation_with_a_doctype_is_refused_even_when_dropping(tmp_path):
    root = _voc(tmp_path / "voc")
    bomb = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]>'
    (root / "Annotations/im1.xml").write_text(_voc_xml([("cat", (2, 3, 10, 12), 0)], 36, 28, extra=bomb))
    for bad_boxes in ("error", "drop"):
        with pytest.raises(DataError, match=r"im1\.xml declares a DOCTYPE"):
            load_dataset(f"voc-boxes:{root}", "test", bad_boxes=bad_boxes)


@pytest.mark.parametrize("fault", ["coco size", "yaml", "yaml names", "voc image", "xml"])
def test_a_bad_file_is_one_error_naming_it_even_when_dropping(fault, tmp_path):
    if fault == "coco size":
        path = _coco(tmp_path, 3)
        coco = json.loads(path.read_text())
        coco["images"][2]["width"] = 50  # the file is 32 wide
        path.write_text(json.dumps(coco))
        data, named = f"coco-boxes:{path}", "instances.json2.png is 50×32 pixels, but the file is 32×32"
    elif fault.startswith("yaml"):
        root = _yolo(tmp_path / "y", yaml="names: [cat\ntrain: images/train\n" if fault == "yaml" else
                     "names: {0: cat, 2: dog}\ntrain: images/train\n")
        data, named = f"yolo:{root}", "data.yaml"
    else:
        root = _voc(tmp_path / "voc")
        if fault == "xml":
            (root / "Annotations/im1.xml").write_text("<annotation><object>")
        else:
            (root / "JPEGImages/im1.jpg").unlink()
        data, named = f"voc-boxes:{root}", "im1"
    for bad_boxes in ("error", "drop"):
        with pytest.raises(DataError, match=named.replace(".", r"\.")) as e:
            load_dataset(data, "train", bad_boxes=bad_boxes)
        assert "\n" not in str(e.value)


def test_streaming_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _yolo(tmp_path / "y")
    code = main(["train", "--data", f"yolo:{root}", "--data-mode", "stream", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "loaded in memory" in lines[0], lines


# -- end to end ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["yolo", "voc-boxes", "coco-boxes"])
def test_a_detector_trains_evaluates_and_predicts_on_each_layout(kind, tmp_path, capsys, monkeypatch):
    """With one bad box and --drop-bad-boxes: eval --checkpoint RUN reloads the data as the run did (dropping)."""
    monkeypatch.chdir(tmp_path)
    data, _ = _bad(kind, "outside", tmp_path / "d")
    run = tmp_path / "run"
    code = main(["train", "--data", data, "--model", "retinanet_small", "--model-kw", "width=8", "--epochs", "1",
                 "--batch-size", "4", "--no-channels-last", "--amp", "off", "--drop-bad-boxes", "--val-fraction", "0",
                 "--threads", "1", "--out", str(run), "--quiet"])  # one thread: no stalls on a shared CPU
    assert code == 0, capsys.readouterr().err
    from cnnkit.artifacts import load

    meta = load(run / "best.safetensors").meta
    assert meta["task"] == "detect" and meta["classes"][0] == "background" and meta["config"]["drop_bad_boxes"]
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0, capsys.readouterr().err
    result = json.loads(next((tmp_path / "eval").glob("eval-*.json")).read_text())
    assert 0.0 <= result["map"] <= 1.0 and result["objects"] >= 1
    image = next(p for p in (tmp_path / "d").rglob("*") if p.suffix in (".png", ".jpg"))
    assert main(["predict", "--checkpoint", str(run), str(image), "--json"]) == 0, capsys.readouterr().err
