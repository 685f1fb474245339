"""`predict` for segmentation models: each image's mask at the image's own size, equal to the argmax of the
model's own output computed here (the model called directly, the probabilities resized with F.interpolate), at
the training size or the image's own; the mask PNG with the run's palette, the overlay and areas.json that
`cnnkit predict --masks-out` writes, and bad input refused in one line. Uses the shared `seg_run` (barely
trained: enough for parity, shapes and files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> dict[str, Path]:
    """Three fashion-scenes test images saved as files: at the training size (96×96), larger and non-square
    (300×200, RGB), and smaller and non-square (150×90)."""
    from cnnkit.data import load_dataset

    scenes = load_dataset("fashion-scenes", "test")
    folder = tmp_path_factory.mktemp("scenes")
    out = {}
    for i, (name, size, mode) in enumerate((("square", (96, 96), "L"), ("large", (300, 200), "RGB"),
                                            ("wide", (150, 90), "L"))):
        out[name] = folder / f"{name}.png"
        Image.fromarray(scenes.images[i, 0].numpy(), "L").resize(size).convert(mode).save(out[name])
    return out


def model_and_input(run_dir: Path, image: Path, size: tuple[int, int] | None,
                    pad_to: int = 1) -> tuple[torch.nn.Module, torch.Tensor]:
    """The run's model and the image as its input, made by hand: gray, resized to `size` (None: its own size,
    zero-padded after normalization to a multiple of `pad_to`), normalized."""
    from cnnkit.artifacts import load

    ckpt = load(run_dir, "cpu")
    (mean,), (std,) = ckpt.normalization
    t = torch.from_numpy(np.array(Image.open(image).convert("L"))).unsqueeze(0)
    if size is not None:
        t = TF.resize(t, list(size), antialias=True)
    x = ((t.float() / 255 - mean) / std).unsqueeze(0)
    return ckpt.model.eval(), F.pad(x, (0, -x.shape[-1] % pad_to, 0, -x.shape[-2] % pad_to))


def at_image_size(p: torch.Tensor, image: Path) -> torch.Tensor:
    """1×K×h×w probabilities resized bilinearly to the image's size: K×H×W."""
    width, height = Image.open(image).size
    return F.interpolate(p, size=(height, width), mode="bilinear", align_corners=False)[0]


def reference_probs(run_dir: Path, image: Path, size: tuple[int, int] | None, pad_to: int = 1) -> torch.Tensor:
    """K×H×W probabilities at the image's size computed directly: the model called on `model_and_input`'s
    input, softmax, the padding cropped, bilinear interpolation back to the image's size."""
    model, x = model_and_input(run_dir, image, size, pad_to)
    width, height = Image.open(image).size
    with torch.no_grad():
        p = model(x).softmax(1)
    return at_image_size(p if size is not None else p[..., :height, :width], image)


def assert_mask_is_argmax(mask: torch.Tensor, probs: torch.Tensor) -> None:
    """`mask` is `probs`' argmax wherever the top two classes are not tied to within float rounding."""
    assert mask.shape == probs.shape[1:]
    top2 = probs.topk(2, 0).values
    differ = mask.long() != probs.argmax(0)
    assert bool((top2[0] - top2[1])[differ].lt(1e-4).all()), f"{int(differ.sum())} pixels differ, not at ties"
    assert differ.float().mean() < 1e-3


def test_masks_at_the_image_size_equal_the_models_argmax_at_the_training_size(seg_run, scene_files):
    from cnnkit.artifacts import load
    from cnnkit.evaluate import predict

    classes = load(seg_run.run_dir, "cpu").classes
    preds = predict(seg_run.run_dir, list(scene_files.values()), device="cpu")
    assert [p.path for p in preds] == list(scene_files.values())
    assert len({c for p in preds for c in p.areas}) > 1  # the masks are not one class throughout
    for p in preds:
        im = Image.open(p.path)
        assert p.size == (im.height, im.width) and p.mask.shape == (im.height, im.width)
        assert_mask_is_argmax(p.mask, reference_probs(seg_run.run_dir, p.path, (96, 96)))
        counts = np.bincount(p.mask.numpy().ravel(), minlength=len(classes))
        assert {c: a["pixels"] for c, a in p.areas.items()} == {classes[i]: int(counts[i])
                                                                for i in np.nonzero(counts)[0]}
        assert sum(a["pixels"] for a in p.areas.values()) == im.height * im.width
        assert sum(a["share"] for a in p.areas.values()) == pytest.approx(1.0)
        assert [c for c, _ in p.top] == list(p.areas)[:5]


def test_native_size_pads_to_the_models_stride_and_large_images_are_scaled_down(seg_run, scene_files, monkeypatch):
    from cnnkit.artifacts import load
    from cnnkit.evaluate import masks, predict

    for name in ("large", "wide"):  # U-Net of depth 2: sides padded to a multiple of 4 (90 -> 92, 150 -> 152)
        [p] = predict(seg_run.run_dir, [scene_files[name]], device="cpu", input_size="native")
        assert_mask_is_argmax(p.mask, reference_probs(seg_run.run_dir, p.path, None, pad_to=4))
    seen = []
    monkeypatch.setattr(masks, "NATIVE_MAX_PIXELS", 6_000)
    ckpt = load(seg_run.run_dir, "cpu")
    ckpt.model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    [p] = predict(ckpt, [scene_files["large"]], device="cpu", input_size="native")
    assert p.mask.shape == (200, 300)  # the mask at the image's size, the model at fewer pixels
    (h, w), = seen
    assert h * w <= 6_000 * 1.1 and h % 4 == 0 and w % 4 == 0 and w > h


def test_window_runs_the_training_size_over_the_image_and_averages_where_windows_overlap(seg_run, scene_files):
    from cnnkit.evaluate import predict

    [p] = predict(seg_run.run_dir, [scene_files["wide"]], device="cpu", input_size="window")
    # by hand: the 150×90 image padded to 152×92 (U-Net's stride 4); windows 96 wide overlapping by a third
    # (stride 64) at columns 0 and 56 (the last flush with the edge); 92 rows fit one window
    model, x = model_and_input(seg_run.run_dir, scene_files["wide"], None, pad_to=4)
    assert x.shape[-2:] == (92, 152)
    total, count = torch.zeros(1, 11, 92, 152), torch.zeros(1, 1, 92, 152)
    with torch.no_grad():
        for left in (0, 56):
            total[..., left:left + 96] += model(x[..., left:left + 96]).softmax(1)
            count[..., left:left + 96] += 1
    assert_mask_is_argmax(p.mask, (total / count)[0, :, :90, :150])


def test_resizing_in_strips_equals_interpolating_the_whole_map(monkeypatch):
    from cnnkit.evaluate import masks

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 17, 23, generator=g).softmax(0)
    monkeypatch.setattr(masks, "STRIP_VALUES", 5 * 203 * 7)  # strips of 7 rows
    for size in ((101, 203), (9, 11), (17, 23)):  # up, down, the same
        whole = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        got = masks.mask_at(probs, size)
        assert got.dtype == torch.uint8
        assert_mask_is_argmax(got, whole)


def test_masks_out_writes_palette_pngs_overlays_and_areas(seg_run, scene_files, tmp_path):
    from cnnkit.artifacts import load
    from cnnkit.evaluate import predict

    ckpt = load(seg_run.run_dir, "cpu")
    palette = [[(37 * i) % 256, 255 - 20 * i, 9 * i] for i in range(len(ckpt.classes))]
    ckpt.meta["palette"] = palette  # a run that recorded its data's palette
    out = tmp_path / "masks"
    preds = predict(ckpt, list(scene_files.values()), device="cpu", masks_out=out)
    areas = json.loads((out / "areas.json").read_text())
    assert areas["classes"] == ckpt.classes and areas["palette"] == palette
    assert [r["image"] for r in areas["images"]] == [str(f.absolute()) for f in scene_files.values()]
    for p, record in zip(preds, areas["images"]):
        im = Image.open(p.path)
        mask = Image.open(out / f"{p.path.stem}.png")
        assert mask.mode == "P" and mask.size == im.size and record["mask"] == f"{p.path.stem}.png"
        assert mask.getpalette()[:3 * len(palette)] == [v for c in palette for v in c]
        indices = np.array(mask)
        assert np.array_equal(indices, p.mask.numpy())
        counts = np.bincount(indices.ravel(), minlength=len(ckpt.classes))
        assert record["areas"] == {c: {"share": counts[i] / indices.size, "pixels": int(counts[i])}
                                   for c, i in ((c, ckpt.classes.index(c)) for c in record["areas"])}
        assert sorted(record["areas"]) == sorted(ckpt.classes[i] for i in np.nonzero(counts)[0])
        assert sum(a["share"] for a in record["areas"].values()) == pytest.approx(1.0)
        overlay = np.array(Image.open(out / record["overlay"]), dtype=np.int16)
        rgb = np.array(im.convert("RGB"), dtype=np.int16)
        background = indices == 0
        assert overlay.shape == rgb.shape and np.array_equal(overlay[background], rgb[background])
        colours = np.array(palette, dtype=np.int16)[indices[~background]]
        assert np.abs(overlay[~background] - (rgb[~background] + colours) / 2).max() <= 1  # alpha 0.5


def test_cli_masks_out_refuses_a_users_file_writes_nothing_and_json_has_the_areas(seg_run, scene_files, tmp_path,
                                                                                  capsys):
    from cnnkit.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "wide-overlay.png").write_bytes(b"mine")
    files = [str(f) for f in scene_files.values()]
    assert main(["predict", *files, "--checkpoint", str(seg_run.run_dir), "--masks-out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cnnkit did not write it" in err and "--masks-out" in err
    assert sorted(p.name for p in out.iterdir()) == ["wide-overlay.png"]  # nothing written, the file kept
    (out / "wide-overlay.png").unlink()
    for _ in range(2):  # the second call replaces the files the first wrote
        assert main(["predict", *files, "--checkpoint", str(seg_run.run_dir), "--masks-out", str(out),
                     "--json", "--topk", "2"]) == 0
        rows = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".cnnkit-files.json", "areas.json"] + [f"{n}{s}.png" for n in scene_files for s in ("", "-overlay")])
    row = rows[2]
    assert row["image"] == files[2] and (row["height"], row["width"]) == (90, 150) and len(row["top"]) <= 2
    assert row["mask"] == str(out / "wide.png") and row["overlay"] == str(out / "wide-overlay.png")
    assert sum(a["pixels"] for a in row["areas"].values()) == 90 * 150
    assert [t["class"] for t in row["top"]] == list(row["areas"])[:len(row["top"])]


def test_bad_input_is_one_line_and_exit_2(seg_run, scene_files, tmp_path, capsys):
    from cnnkit.cli import main

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run = str(seg_run.run_dir)
    for args in (["predict", str(broken), "--checkpoint", run],
                 ["predict", str(scene_files["wide"]), "--checkpoint", run, "--input-size", "huge"],
                 ["predict", str(scene_files["wide"]), "--checkpoint", run, "--masks-out", str(broken)]):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    # an unreadable image among readable ones is skipped with a warning
    with pytest.warns(UserWarning, match="broken.png"):
        from cnnkit.evaluate import predict

        preds = predict(seg_run.run_dir, [scene_files["wide"], broken], device="cpu")
    assert [p.path for p in preds] == [scene_files["wide"]]
