"""Corruption benchmarks: deterministic per seed, shape and range kept, the building blocks against scipy and
Pillow, severities that grow, the cache, and the benchmark names' errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data.corruptions import (CORRUPTIONS, PARAMS, _disk_kernel, _motion_kernels, cached_cell, corrupt,
                                     gaussian_blur, parse_benchmark)
from cnnkit.errors import DataError


@pytest.fixture(scope="module")
def images(sample_train):
    return sample_train.images[:48]


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corruption_is_deterministic_and_keeps_shape_and_range(images, corruption):
    rgb = images[:8].expand(-1, 3, -1, -1).contiguous()
    for x in (images, rgb):
        a = corrupt(x, corruption, 3, seed=5)
        assert a.shape == x.shape and a.dtype == torch.uint8
        assert torch.equal(a, corrupt(x, corruption, 3, seed=5))  # same seed, same images
        assert not torch.equal(a, x)
    random_ones = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost",
                   "fog", "elastic_transform"}
    if corruption in random_ones:
        assert not torch.equal(corrupt(images, corruption, 3, seed=5), corrupt(images, corruption, 3, seed=6))


@pytest.mark.parametrize("corruption", ["gaussian_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog",
                                        "brightness", "contrast", "jpeg_compression"])
def test_severity_grows(images, corruption):
    change = [float((corrupt(images, corruption, s, seed=1).float() - images.float()).abs().mean())
              for s in (1, 3, 5)]
    assert change[0] < change[1] < change[2]


def test_gaussian_blur_matches_scipy(images):
    from scipy.ndimage import gaussian_filter

    x = images[:4].float() / 255
    for sigma in (0.4, 1.0, 2.5):
        ours = gaussian_blur(x, sigma)
        ref = np.stack([gaussian_filter(im[0].numpy(), sigma, mode="nearest", truncate=4.0) for im in x])
        np.testing.assert_allclose(ours[:, 0].numpy(), ref, atol=1e-5)


def test_simple_corruptions_are_their_formulas(images):
    x = images.float() / 255
    c = PARAMS["contrast"][2]
    mean = x.mean((2, 3), keepdim=True)
    expect = (((x - mean) * c + mean).clamp(0, 1) * 255).round()
    assert torch.equal(corrupt(images, "contrast", 3).float(), expect)
    b = PARAMS["brightness"][4]  # on grey images HSV's value is the pixel: add and clip
    bright = corrupt(images, "brightness", 5).float() - ((x + b).clamp(0, 1) * 255).round()
    assert float(bright.abs().max()) <= 1  # up to rounding
    rgb = torch.tensor([[[[200]], [[100]], [[50]]]], dtype=torch.uint8)  # hue and saturation kept
    out = corrupt(rgb, "brightness", 5)[0, :, 0, 0].float()
    assert abs(out[0] / out[1] - 2.0) < 0.03 and abs(out[0] / out[2] - 4.0) < 0.1 and out[0] > 200


def test_pixelate_and_jpeg_match_pillow(images):
    for severity in (1, 5):
        c = PARAMS["pixelate"][severity - 1]
        ref = []
        for im in images[:8]:
            p = Image.fromarray(im[0].numpy())
            p = p.resize((int(28 * c), int(28 * c)), Image.BOX).resize((28, 28), Image.NEAREST)
            ref.append(np.asarray(p))
        diff = np.abs(corrupt(images[:8], "pixelate", severity)[:, 0].numpy().astype(float) - np.stack(ref))
        assert diff.max() <= 1  # up to rounding
    import cv2  # an independent JPEG codec build (OpenCV's), at the table's quality

    q = PARAMS["jpeg_compression"][4]
    ref = [cv2.imdecode(cv2.imencode(".jpg", im[0].numpy(), [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_GRAYSCALE)
           for im in images[:8]]
    ours = corrupt(images[:8], "jpeg_compression", 5)[:, 0].numpy().astype(float)
    assert np.abs(ours - np.stack(ref)).mean() < 1.0
    assert np.abs(ours - images[:8, 0].numpy()).mean() > 2  # and it did compress


def test_kernels_are_normalized_and_point_the_right_way():
    for radius, alias in PARAMS["defocus_blur"]:
        k = _disk_kernel(radius, alias)
        assert abs(float(k.sum()) - 1) < 1e-5 and torch.equal(k, k.flip(0)) and torch.equal(k, k.T)
    k = _motion_kernels(2, 6, 2.0, torch.tensor([0.0, 90.0]))
    assert torch.allclose(k.sum((1, 2)), torch.ones(2))
    centre = k.shape[-1] // 2
    assert float(k[0, centre, centre:].sum()) > 0.99  # 0°: the pixel and a trail along its row, to one side
    assert float(k[1, :centre + 1, centre].sum()) > 0.99  # 90°: along its column
    assert float(k[0, centre, centre]) == float(k.amax((1, 2))[0])  # heaviest at the pixel itself


def test_cells_are_cached_and_a_damaged_cache_is_remade(sample_train, tmp_path):
    from cnnkit.data import load_dataset

    clean = load_dataset("sample", "test").subset(torch.arange(64), "test")
    a = cached_cell(clean, "fog", 2, tmp_path, "sample-c")
    files = list(tmp_path.glob("sample-c-fog-2-*.pt"))
    assert len(files) == 1 and a.name == "sample-c:fog:2" and torch.equal(a.labels, clean.labels)
    assert torch.equal(cached_cell(clean, "fog", 2, tmp_path, "sample-c").images, a.images)
    files[0].write_bytes(b"truncated")
    assert torch.equal(cached_cell(clean, "fog", 2, tmp_path, "sample-c").images, a.images)


def test_benchmark_names():
    assert parse_benchmark("fashion-mnist") is None
    base, cs, ss = parse_benchmark("fashion-mnist-c")
    assert base == "fashion-mnist" and len(cs) == 15 and ss == [1, 2, 3, 4, 5]
    assert parse_benchmark("mnist-c:fog,snow:1,5")[1:] == (["fog", "snow"], [1, 5])
    with pytest.raises(DataError, match="unknown corruption 'fgo'.*fog"):
        parse_benchmark("sample-c:fgo")
    with pytest.raises(DataError, match="severities must be 1 to 5"):
        parse_benchmark("sample-c:fog:6")
    from cnnkit.data import load_dataset

    with pytest.raises(DataError, match="corruption benchmark for evaluation"):
        load_dataset("sample-c", "train")
    cell = load_dataset("sample-c:contrast:5", "test")
    assert cell.name == "sample-c:contrast:5" and len(cell) == len(load_dataset("sample", "test"))
