"""Segmentation folders streamed (`--data-mode stream`): workers decode, resize and augment image and mask
together; the pixels are those the in-memory set holds, a run trains and resumes on them, and a bad mask met
mid-training stops it with one line naming the file."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from cnnkit.data.base import LoadOptions
from cnnkit.data.loader import Normalize
from cnnkit.data.segfolders import MaskFileSet, load, open_training
from cnnkit.data.settings import AugmentConfig
from cnnkit.data.stream import StreamLoader
from tests.cli.chain import cnnkit, ok
from tests.data.test_seg_formats import PALETTE, _index_png, _masks_folder


def _streamed(root, workers: int = 0, augment: AugmentConfig | None = None, batch: int = 4):
    files = open_training(f"masks:{root}", LoadOptions(), "stream", 1, True).full
    assert isinstance(files, MaskFileSet)
    unit = Normalize([0.0] * files.in_chans, [1 / 255] * files.in_chans)  # x as its uint8 values, in float
    return files, StreamLoader(files, batch, unit, augment=augment, workers=workers, seed=3)


def test_streamed_pixels_and_masks_are_the_in_memory_sets(tmp_path):
    """Without augmentation, the workers' batches hold exactly the images and masks the in-memory loader decodes
    (same resize: bilinear with antialiasing for images, nearest for masks), in the set's order."""
    _masks_folder(tmp_path / "m", n=6)
    memory = load(f"masks:{tmp_path / 'm'}", "train", LoadOptions())
    files, loader = _streamed(tmp_path / "m", workers=1)
    try:
        xs, ms = zip(*loader)
    finally:
        loader.close()
    assert files.palette == memory.palette and files.classes == memory.classes
    assert torch.equal(torch.cat(xs).round().to(torch.uint8), memory.images)
    assert torch.equal(torch.cat(ms).to(torch.uint8), memory.masks)


def _moved(t: torch.Tensor, dy: int, dx: int, flip: bool, pad: int) -> torch.Tensor:
    """`t` (…×H×W) flipped, then cropped from its `pad`-padded self at offset (dy, dx): random_crop_flip's moves."""
    h, w = t.shape[-2:]
    t = torch.nn.functional.pad(t.flip(-1) if flip else t, (pad,) * 4)
    return t[..., dy:dy + h, dx:dx + w]


def test_streamed_crop_and_flip_move_image_and_mask_alike(tmp_path):
    """With a padded crop and flips, each streamed image is some crop and flip of the in-memory image, and its
    mask is the same crop and flip of the in-memory mask; the same epoch draws the same moves again."""
    _masks_folder(tmp_path / "m", n=6)
    memory = load(f"masks:{tmp_path / 'm'}", "train", LoadOptions())
    _, loader = _streamed(tmp_path / "m", augment=AugmentConfig(crop_padding=4, hflip=True), batch=6)
    loader.set_epoch(1)
    (x1, m1), = list(loader)
    loader.set_epoch(1)
    (x2, m2), = list(loader)
    assert torch.equal(x1, x2) and torch.equal(m1, m2)
    x1 = x1.round().to(torch.uint8)
    moves = set()
    for i in range(len(memory.images)):
        found = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                 if torch.equal(_moved(memory.images[i], dy, dx, f, 4), x1[i])]
        assert found, f"image {i} is no crop and flip of its in-memory pixels"
        assert any(torch.equal(_moved(memory.masks[i], *move, 4), m1[i]) for move in found), f"mask {i} moved apart"
        moves.add(found[0])
    assert len(moves) > 1  # drawn per image


def test_a_streamed_run_trains_resumes_and_records_the_palette(tmp_path):
    _masks_folder(tmp_path / "m", n=8, classes=["background", "cat", "dog", "bird"], folders=("train", "test"))
    run = tmp_path / "run"
    args = ("train", "--data", f"masks:{tmp_path / 'm'}", "--data-mode", "stream", "--workers", 1, "--model",
            "unet_small", "--model-kw", "width=4", "--model-kw", "depth=2", "--batch-size", 4, "--no-channels-last",
            "--augment", "hflip=true", "--out", run, "--quiet")
    ok(cnnkit(*args, "--epochs", 1))
    ok(cnnkit("train", "--resume", run, "--epochs", 2, "--quiet"))
    from cnnkit.artifacts import load as load_artifact

    meta = load_artifact(run / "last.safetensors").meta
    assert meta["task"] == "segment" and meta["classes"] == ["background", "cat", "dog", "bird"]
    assert meta["palette"][:4] == PALETTE
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header, epoch 1, epoch 2 (resumed)
    ok(cnnkit("eval", "--checkpoint", run, "--out", tmp_path / "eval"))
    assert 0.0 <= json.loads(next((tmp_path / "eval").glob("eval-*.json")).read_text())["miou"] <= 1.0


def test_a_bad_mask_met_while_streaming_is_one_line_and_exit_2(tmp_path):
    """Listing a streamed set reads no mask (with a class list): a mask that does not fit its image is found by
    the worker that reads it, and training stops with the in-memory check's line, naming the file."""
    _masks_folder(tmp_path / "m", n=8, classes=["background", "cat", "dog", "bird"])
    _index_png(np.zeros((5, 5), np.uint8), tmp_path / "m" / "masks" / "5.png", PALETTE)
    Image.open(tmp_path / "m" / "masks" / "5.png").verify()
    r = cnnkit("train", "--data", f"masks:{tmp_path / 'm'}", "--data-mode", "stream", "--workers", 1, "--model",
               "unet_small", "--model-kw", "width=4", "--model-kw", "depth=2", "--batch-size", 4, "--epochs", 1,
               "--val-fraction", 0, "--no-channels-last", "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "5.png" in lines[0] and "must match its image pixel for pixel" in lines[0]


def test_streamed_resized_crops_are_drawn_per_image_and_epoch(tmp_path):
    """--augment resized_crop while streaming: the same epoch gives the same crops again, another epoch others,
    and each mask keeps only the classes its file holds (nearest-neighbour resizing)."""
    _masks_folder(tmp_path / "m", n=6)
    memory = load(f"masks:{tmp_path / 'm'}", "train", LoadOptions())
    _, loader = _streamed(tmp_path / "m", augment=AugmentConfig(resized_crop=0.3), batch=6)
    draws = []
    for epoch in (1, 1, 2):
        loader.set_epoch(epoch)
        draws.append(next(iter(loader)))
    assert torch.equal(draws[0][1], draws[1][1]) and not torch.equal(draws[0][1], draws[2][1])
    for m, ref in zip(draws[0][1], memory.masks):
        assert set(m.unique().tolist()) <= set(ref.unique().tolist())
