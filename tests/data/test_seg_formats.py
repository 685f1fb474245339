"""Segmentation data in the user's formats (`masks:DIR`, `voc:DIR`, `coco:FILE.json`), made tiny here with mixed,
non-square sizes: each loads with its masks, classes, palette and original sizes; a run trains and evaluates on
them; bad data is one line and exit 2; image and mask are augmented together as torchvision v2 does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.cli import main
from cnnkit.data import load_dataset
from cnnkit.errors import DataError
from tests.cli.chain import cnnkit, ok

SIZES = [(20, 30), (24, 16)]  # (height, width), alternating
PALETTE = [[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250]]  # not VOC's: read from the masks, not assumed


def _scene(i: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Image i (RGB, dark noise with one bright object) and its mask: the object's class (1..classes) on
    background 0, and the last row 255 (ignored)."""
    h, w = SIZES[i % 2]
    rng = np.random.default_rng(i)
    image = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[top:top + h // 3, left:left + w // 2] = 1 + i % classes
    image[mask > 0] = rng.integers(200, 256, (int((mask > 0).sum()), 3), dtype=np.uint8)
    mask[-1] = 255
    return image, mask


def _index_png(mask: np.ndarray, path: Path, palette: list[list[int]] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask, "P" if palette else "L")
    if palette:
        im.putpalette([v for c in palette for v in c] + [0] * (768 - 3 * len(palette)))
    im.save(path)


def _masks_folder(root: Path, n: int = 8, palette: list[list[int]] | None = PALETTE,
                  classes: list[str] | None = None, folders: tuple[str, ...] = ("",)) -> dict[str, np.ndarray]:
    """`n` images per folder of `folders` (under root), PNG, each with its mask; the masks written, by file stem."""
    written = {}
    for f in folders:
        for i in range(n):
            image, mask = _scene(i if f != "test" else 3 * i)  # test: class 1 only
            (root / f / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / f / "images" / f"{f}{i}.png")
            _index_png(mask, root / f / "masks" / f"{f}{i}.png", palette)
            written[f"{f}{i}"] = mask
    if classes:
        (root / "classes.json").write_text(json.dumps(classes))
    return written


def _voc_folder(root: Path, n: int = 8) -> dict[str, np.ndarray]:
    from cnnkit.tasks.segment import default_palette

    written = {}
    for i in range(n):
        image, mask = _scene(i, classes=20)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "JPEGImages" / f"2007_{i:06d}.jpg")
        _index_png(mask, root / "SegmentationClass" / f"2007_{i:06d}.png", [list(c) for c in default_palette(256)])
        written[f"2007_{i:06d}"] = mask
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"2007_{i:06d}\n" for i in range(n - 2)))
    (lists / "val.txt").write_text("".join(f"2007_{i:06d}\n" for i in range(n - 2, n)))
    return written


def _rle(region: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a 0/1 array, by hand: run lengths in column-major order, starting with 0s."""
    flat = region.flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    return runs + [count]


def _coco_file(root: Path, n: int = 6) -> Path:
    """A COCO instances file of `n` images (the first beside it, the rest in images/) with, on each, a dog polygon,
    a cat RLE drawn over part of it and a crowd region; category ids 7 (cat) and 3 (dog), listed out of order."""
    images, annotations = [], []
    for i in range(n):
        h, w = SIZES[i % 2]
        name = f"{i}.png" if i == 0 else f"images/{i}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_scene(i)[0]).save(root / name)
        images.append({"id": 100 + i, "file_name": Path(name).name, "height": h, "width": w})
        cat, crowd = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
        cat[10:16, 6:12] = 1
        crowd[h - 2:, :] = 1
        annotations += [
            {"id": 3 * i, "image_id": 100 + i, "category_id": 3, "iscrowd": 0,
             "segmentation": [[2, 3, 10, 3, 10, 15, 2, 15]]},  # pixels [3:15, 2:10]: 96, the polygon's area
            {"id": 3 * i + 1, "image_id": 100 + i, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [h, w], "counts": _rle(cat)}},
            {"id": 3 * i + 2, "image_id": 100 + i, "category_id": 7, "iscrowd": 1,
             "segmentation": {"size": [h, w], "counts": _rle(crowd)}}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}))
    return path


def _expected_coco_mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[3:15, 2:10] = 1  # dog (id 3: class 1)
    mask[10:16, 6:12] = 2  # cat (id 7: class 2), drawn over the dog
    mask[h - 2:] = 255  # crowd
    return mask


def _upsampled(mask: np.ndarray, k: int = 2) -> np.ndarray:
    return np.repeat(np.repeat(mask, k, 0), k, 1)


def _default_side(values: list[int]) -> int:
    """The documented default: the median (lower) side rounded to a multiple of 16, at least 16."""
    return max(16, 16 * round(sorted(values)[(len(values) - 1) // 2] / 16))


def test_masks_folder_gives_its_masks_classes_palette_and_original_sizes(tmp_path):
    classes = ["background", "cat", "dog", "bird"]
    written = _masks_folder(tmp_path, classes=classes)
    train = load_dataset(f"masks:{tmp_path}", "train", img_size=(48, 32))
    test = load_dataset(f"masks:{tmp_path}", "test", img_size=(48, 32))
    assert (len(train), len(test)) == (6, 2)  # a seeded 20% of 8 held out
    for ds in (train, test):
        assert ds.classes == classes and ds.palette == PALETTE and ds.masks.shape[1:] == (48, 32)
        assert ds.images.shape[1:] == (3, 48, 32)
    sizes = torch.cat([train.sizes, test.sizes]).tolist()
    assert sorted(map(tuple, sizes)) == sorted(SIZES[i % 2] for i in range(8))
    # a 24×16 mask resized to 48×32 nearest is each pixel doubled (255 kept); every written mask is there once
    loaded = [m.numpy() for ds in (train, test) for m, s in zip(ds.masks, ds.sizes.tolist()) if s == [24, 16]]
    expected = [_upsampled(m) for m in written.values() if m.shape == (24, 16)]
    assert sorted(m.tobytes() for m in loaded) == sorted(m.tobytes() for m in expected)
    assert all(int(y) == int(np.bincount(m.ravel(), minlength=256)[1:4].argmax()) + 1
               for y, m in zip(train.labels, train.masks.numpy()))  # the label: the object class covering most
    # default size: the median height and width, each rounded to a multiple of 16, alike for both splits
    default = load_dataset(f"masks:{tmp_path}", "test")
    side = (_default_side([h for h, _ in sizes]), _default_side([w for _, w in sizes]))
    assert default.img_size == side and load_dataset(f"masks:{tmp_path}", "train").img_size == side


def test_an_exif_turned_photo_is_read_as_stored_so_its_mask_still_fits(tmp_path):
    _masks_folder(tmp_path, n=4, folders=("train", "test"))
    image, _ = _scene(0)  # 20×30; saved with EXIF orientation 3 (turned 180° when shown)
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(image).save(tmp_path / "train" / "images" / "train0.png", exif=exif)
    train = load_dataset(f"masks:{tmp_path}", "train", img_size=(20, 30))
    first = [i for i, s in enumerate(train.sizes.tolist()) if s == [20, 30]][0]
    assert torch.equal(train.images[first], torch.from_numpy(image).permute(2, 0, 1))  # the stored pixels


def test_masks_folder_without_a_class_list_counts_classes_from_every_split(tmp_path):
    _masks_folder(tmp_path, n=4, palette=None, folders=("train", "test"))
    train, test = (load_dataset(f"masks:{tmp_path}", s, img_size=(24, 16)) for s in ("train", "test"))
    assert int(test.masks[test.masks != 255].max()) == 1  # test holds class 1 only ...
    assert train.classes == test.classes == ["class0", "class1", "class2", "class3"]  # ... and names all four
    assert (train.split, test.split) == ("train", "test") and train.palette is None and train.in_chans == 3


def test_voc_layout_gives_vocs_classes_and_palette_and_val_as_test(tmp_path):
    from cnnkit.tasks.segment import default_palette

    written = _voc_folder(tmp_path)
    test = load_dataset(f"voc:{tmp_path}", "test", img_size=(24, 16))
    assert len(test) == 2 and test.split == "val" and len(test.classes) == 21
    assert test.classes[0] == "background" and test.classes[15] == "person"
    assert test.palette == [list(c) for c in default_palette(21)]
    assert torch.equal(test.masks[1], torch.from_numpy(written["2007_000007"]))  # 24×16 at its own size
    assert test.sizes.tolist() == [[20, 30], [24, 16]]


def test_coco_masks_draw_later_annotations_over_earlier_and_crowds_as_ignored(tmp_path):
    path = _coco_file(tmp_path)
    train, test = (load_dataset(f"coco:{path}", s, img_size=(24, 16)) for s in ("train", "test"))
    assert train.classes == ["background", "dog", "cat"] and train.palette is None
    assert len(train) + len(test) == 6 and len(test) >= 1
    native = [m.numpy() for ds in (train, test) for m, s in zip(ds.masks, ds.sizes.tolist()) if s == [24, 16]]
    assert len(native) == 3 and all(np.array_equal(m, _expected_coco_mask(24, 16)) for m in native)


def test_voc_trains_and_evaluates_end_to_end_through_the_cli(tmp_path):
    _voc_folder(tmp_path / "voc")
    run, reports = tmp_path / "run", tmp_path / "eval"
    ok(cnnkit("train", "--data", f"voc:{tmp_path / 'voc'}", "--epochs", 1, "--model", "unet_small", "--model-kw",
              "width=4", "--model-kw", "depth=2", "--batch-size", 4, "--no-channels-last", "--out", run, "--quiet"))
    from cnnkit.artifacts import load
    from cnnkit.tasks.segment import default_palette, run_palette

    meta = load(run / "best.safetensors").meta
    assert meta["task"] == "segment" and meta["classes"][20] == "tvmonitor"  # the task came from the data
    assert run_palette(meta, 21) == default_palette(21) and meta["palette"] is not None
    ok(cnnkit("eval", "--checkpoint", run, "--out", reports))
    result = json.loads(next(reports.glob("eval-*.json")).read_text())
    assert result["split"] == "val" and 0.0 <= result["miou"] <= 1.0 and len(result["per_class_iou"]) == 21


def test_coco_trains_and_evaluates_at_a_non_square_size_and_refuses_other_classes(tmp_path, capsys):
    from cnnkit.evaluate import evaluate
    from cnnkit.train import fit

    path = _coco_file(tmp_path / "coco", n=8)
    run = fit(model="unet_small", model_kwargs={"width": 4, "depth": 2}, data=f"coco:{path}", img_size=[16, 32],
              epochs=1, batch_size=4, channels_last=False, tta=False, out=str(tmp_path / "run"), progress=False)
    assert run.config.task == "segment" and run.train_images + run.val_images == 6  # 8, less the 20% held out
    result = evaluate(run.best_checkpoint, out_dir=tmp_path / "eval")
    assert result.data.img_size == (16, 32) and result.data.classes == ["background", "dog", "cat"]
    assert len(result.data) == 2 and 0.0 <= result.metrics["miou"] <= 1.0
    # scored at each image's own size: the model's probabilities resized to each mask as its file holds it
    from cnnkit.artifacts import load
    from cnnkit.data import Normalize
    from cnnkit.tasks.segment_metrics import segmentation_report

    ds, ckpt = result.data, load(run.best_checkpoint)
    assert result.metrics["resolution"].startswith("native") and result.metrics["images"] == 2
    assert {tuple(m.shape) for m in ds.native_masks} != {(16, 32)}
    with torch.no_grad():
        probs = ckpt.model.eval()(Normalize(*ckpt.normalization)(ds.images)).softmax(1)
    pred = [torch.nn.functional.interpolate(p[None], size=tuple(m.shape), mode="bilinear")[0].argmax(0).flatten()
            for p, m in zip(probs, ds.native_masks)]
    by_hand = segmentation_report(torch.cat(pred)[None], torch.cat([m.flatten() for m in ds.native_masks])[None],
                                  ds.classes)
    assert result.metrics["miou"] == pytest.approx(by_hand["miou"]) and result.metrics["pixels"] == by_hand["pixels"]
    _masks_folder(tmp_path / "other", n=4, classes=["background", "dog", "bird"])  # not the model's classes
    code = main(["eval", "--checkpoint", str(run.best_checkpoint), "--data", f"masks:{tmp_path / 'other'}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "'bird'" in lines[0], lines


def _bad_masks(root: Path, what: str) -> str:
    """A masks folder with one fault; the file the error must name."""
    _masks_folder(root, n=4, classes=["background", "cat", "dog", "bird"])
    if what == "no mask":
        (root / "masks" / "1.png").unlink()
        return "1.png"
    if what == "mask size":
        _index_png(np.zeros((5, 5), np.uint8), root / "masks" / "2.png", PALETTE)
        return "2.png"
    if what == "class index":
        (root / "classes.json").write_text(json.dumps(["background", "cat"]))  # masks hold 1..3
        return "images"
    Image.new("RGB", (30, 20)).save(root / "masks" / "0.png")  # an RGB mask
    return "0.png"


def _bad_coco(root: Path, what: str) -> str:
    path = _coco_file(root, n=3)
    coco = json.loads(path.read_text())
    if what == "category":
        coco["annotations"][4]["category_id"] = 42
    elif what == "huge size":  # a mask that size would be drawn before the image is read: refused from the entry
        coco["images"][1].update(height=10**6, width=10**6)
    else:
        (root / "images" / "2.png").unlink()
    path.write_text(json.dumps(coco))
    return {"category": "annotation 4", "huge size": coco["images"][1]["file_name"]}.get(what, "2.png")


@pytest.mark.parametrize("source,what", [("masks", "no mask"), ("masks", "mask size"), ("masks", "class index"),
                                         ("masks", "RGB mask"), ("voc", "missing image"), ("coco", "category"),
                                         ("coco", "missing image"), ("coco", "huge size")])
def test_bad_data_is_one_line_naming_the_file_and_exit_2(source, what, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    if source == "masks":
        named, data = _bad_masks(root, what), f"masks:{root}"
    elif source == "voc":
        _voc_folder(root)
        (root / "JPEGImages" / "2007_000003.jpg").unlink()
        named, data = "2007_000003.jpg", f"voc:{root}"
    else:
        named, data = _bad_coco(root, what), f"coco:{root / 'instances.json'}"
    code = main(["train", "--data", data, "--epochs", "1", "--model", "unet_small", "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines


def test_an_unreadable_image_is_skipped_unless_strict(tmp_path):
    _masks_folder(tmp_path, n=6)
    (tmp_path / "images" / "3.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning) as caught:
        splits = [load_dataset(f"masks:{tmp_path}", s, test_fraction=0.5) for s in ("train", "test")]
    assert [str(w.message) for w in caught if "3.png" in str(w.message) or "skipped 1" in str(w.message)]
    assert sum(map(len, splits)) == 5 and splits[0].skipped + splits[1].skipped == [str(tmp_path / "images" / "3.png")]
    with pytest.raises(DataError, match="3.png"):
        [load_dataset(f"masks:{tmp_path}", s, test_fraction=0.5, strict=True) for s in ("train", "test")]


def test_crop_and_flip_move_image_and_mask_as_torchvision_v2_does_with_mask_tv_tensors(tmp_path):
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    from cnnkit.data.settings import AugmentConfig
    from cnnkit.data.transforms import BatchAugment

    _masks_folder(tmp_path, n=8)
    data = load_dataset(f"masks:{tmp_path}", "train", img_size=(20, 30), test_fraction=0.25)
    native = (data.sizes == torch.tensor([20, 30])).all(1)  # at their own size: ink exactly where the object is
    images, masks = data.images[native], data.masks[native]
    pad = 4
    torch.manual_seed(5)
    out, out_masks = BatchAugment(AugmentConfig(crop_padding=pad, hflip=True), 4).geometric_with_masks(images, masks)
    torch.manual_seed(5)  # the same draws, in the loader's order: top offsets, left offsets, flips
    n = len(images)
    tops, lefts, flips = torch.randint(0, 2 * pad + 1, (n, 1)), torch.randint(0, 2 * pad + 1, (n, 1)), torch.rand(n, 1)
    for i in range(n):
        image, mask = tv_tensors.Image(images[i]), tv_tensors.Mask(masks[i][None])
        image, mask = (TF.crop(TF.pad(t, [pad]), int(tops[i]), int(lefts[i]), 20, 30) for t in (image, mask))
        if flips[i] < 0.5:
            image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
        assert torch.equal(out[i], image) and torch.equal(out_masks[i], mask[0])
    assert not torch.equal(out_masks, masks)  # something moved
    objects = (out_masks > 0) & (out_masks != 255)
    assert torch.equal(out.min(1).values >= 200, objects)  # every mask still covers its object's ink, and only it


def test_a_coco_train_and_val_pair_gives_all_of_val_as_the_test_split(tmp_path, capsys):
    """`coco:TRAIN.json,VAL.json`: every image of the first file trains, every image of the second is the test
    split (named val), with the same classes; a pair whose categories differ is one line and exit 2."""
    train = _coco_file(tmp_path / "train", n=6)
    val = _coco_file(tmp_path / "val", n=4)
    name = f"coco:{train},{val}"
    tr, te = load_dataset(name, "train"), load_dataset(name, "test")
    assert (len(tr), len(te)) == (6, 4) and tr.classes == te.classes == ["background", "dog", "cat"]
    assert te.split.startswith("val") and te.native_masks is not None
    for i, m in enumerate(te.native_masks):
        assert np.array_equal(m.numpy(), _expected_coco_mask(*SIZES[i % 2]))
    other = json.loads(val.read_text())
    other["categories"][0]["name"] = "lion"
    val.write_text(json.dumps(other))
    code = main(["train", "--data", name, "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "lists other categories than" in err and len(err.strip().splitlines()) == 1


def test_a_run_on_a_moved_masks_folder_resumes_once_re_pointed(tmp_path, capsys):
    """The masks folder moves between two runs of the same training: resuming names the way out in one line,
    and resumes with the new path (the data's content is the same, so its fingerprint is)."""
    _masks_folder(tmp_path / "m", n=6, classes=["background", "cat", "dog", "bird"])
    run = str(tmp_path / "run")
    assert main(["train", "--data", f"masks:{tmp_path / 'm'}", "--model", "unet_small", "--model-kw", "width=4",
                 "--model-kw", "depth=2", "--batch-size", "4", "--epochs", "1", "--no-channels-last", "--out", run,
                 "--quiet"]) == 0
    (tmp_path / "m").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--resume", run, "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is gone" in err and "--data masks:NEW_PATH" in err
    assert main(["train", "--resume", run, "--epochs", "2", "--data", f"voc:{tmp_path / 'moved'}", "--quiet"]) == 2
    assert "cannot change data" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--epochs", "2", "--data", f"masks:{tmp_path / 'moved'}", "--quiet"]) == 0
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3


def test_resized_crops_move_image_and_mask_as_torchvision_v2_does(tmp_path):
    """--augment resized_crop=S on a segmentation set: each image and its mask get the same crop and resize,
    exactly torchvision's v2.RandomResizedCrop on an Image and a Mask (nearest for the mask, so it holds only
    the classes it held), one draw per image; the streamed set draws the same way."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from cnnkit.data.settings import AugmentConfig
    from cnnkit.data.transforms import BatchAugment

    _masks_folder(tmp_path, n=8)
    data = load_dataset(f"masks:{tmp_path}", "train", img_size=(20, 30), test_fraction=0.25)
    torch.manual_seed(7)
    out, out_masks = BatchAugment(AugmentConfig(resized_crop=0.3), 4).geometric_with_masks(data.images, data.masks)
    torch.manual_seed(7)
    crop = v2.RandomResizedCrop((20, 30), scale=(0.3, 1.0), antialias=True)
    for i in range(len(data.images)):
        image, mask = crop(tv_tensors.Image(data.images[i]), tv_tensors.Mask(data.masks[i][None]))
        assert torch.equal(out[i], image) and torch.equal(out_masks[i], mask[0])
        assert set(out_masks[i].unique().tolist()) <= set(data.masks[i].unique().tolist())
    assert not torch.equal(out_masks, data.masks)
