"""Restoration as a task: the degradations, the metrics against hand computations and independent code (PIL),
training and evaluating through the same commands, photographs as data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import load_dataset
from cnnkit.errors import DataError
from cnnkit.tasks.restore import add_noise, luma, psnr, shrink


def test_luma_is_matlabs_rgb2ycbcr():
    """MATLAB's rgb2ycbcr on 0..1 RGB: Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255; black 16, white 235."""
    rgb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.4, 0.6]]).T.reshape(1, 3, 1, 4)
    y = luma(rgb)[0, 0, 0] * 255
    expected = [16.0, 235.0, 16 + 65.481, 16 + 65.481 * 0.2 + 128.553 * 0.4 + 24.966 * 0.6]
    assert y.tolist() == pytest.approx(expected, abs=1e-4)


def test_psnr_by_hand_on_rgb_and_on_y_with_a_border():
    clean = torch.zeros(1, 3, 10, 10)
    restored = clean.clone()
    restored[..., 2:8, 2:8] = 0.1  # the error lies inside a 2-pixel border
    mse = 36 * 0.01 / 100
    assert float(psnr(restored, clean, on_y=False)[0]) == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)
    y_step = 0.1 * (65.481 + 128.553 + 24.966) / 255  # Y moves by this for a grey step of 0.1
    assert float(psnr(restored, clean, border=2)[0]) == pytest.approx(-20 * math.log10(y_step), abs=1e-4)
    assert float(psnr(clean, clean)[0]) == 100.0  # an exact image: capped, not infinite
    restored[..., 0, 0] = 5.0  # clipped to 1 first, as a saved image would be
    assert float(psnr(restored, clean, on_y=False)[0]) == pytest.approx(
        10 * math.log10(1 / ((36 * 0.01 + 1) / 100)), abs=1e-4)


def test_shrinking_is_pils_antialiased_bicubic_rounded_to_8_bits():
    rng = np.random.default_rng(1)
    big = rng.random((36, 48)).astype(np.float32)
    theirs = np.asarray(Image.fromarray(big, mode="F").resize((16, 12), Image.BICUBIC))
    theirs = np.round(np.clip(theirs, 0, 1) * 255) / 255
    ours = shrink(torch.from_numpy(big)[None, None], 3)[0, 0].numpy()
    assert ours.shape == (12, 16) and np.abs(ours - theirs).max() <= 1 / 255 + 1e-6
    assert np.mean(np.abs(ours - theirs) > 1e-6) < 0.02  # the same 8-bit value almost everywhere


def test_noise_has_the_sigma_asked_and_repeats_with_its_seed():
    x = torch.full((4, 1, 64, 64), 0.5)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    noisy = add_noise(x, (25.0, 25.0), g())
    assert float((noisy - x).std()) * 255 == pytest.approx(25.0, rel=0.03)
    assert torch.equal(noisy, add_noise(x, (25.0, 25.0), g()))
    blind = add_noise(x, (0.0, 55.0), g())
    per_image = (blind - x).flatten(1).std(1) * 255
    assert per_image.min() >= 0 and per_image.max() <= 57 and len(set(per_image.round().tolist())) > 1


def _photo_folder(root, n: int = 6, size=(60, 75)):
    """Smooth random colour images (a low-resolution noise field enlarged), saved as PNGs."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n):
        small = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size[1] + 3 * i, size[0]), Image.BICUBIC).save(root / f"p{i}.png")
    return root


def test_a_photo_folder_gives_patches_to_train_on_and_whole_images_to_test(tmp_path):
    root = _photo_folder(tmp_path / "photos")
    train = load_dataset(f"photofolder:{root}", "train", img_size=24)
    test = load_dataset(f"photofolder:{root}", "test", img_size=24)
    assert train.images.shape[1:] == (3, 24, 24) and len(train) > 5 * 5
    assert len(test) == 1 and test.sizes.tolist()[0][0] == 60  # 20% of 6 files, whole
    with pytest.raises(DataError, match="needs at least 2"):
        load_dataset(f"photofolder:{_photo_folder(tmp_path / 'one', n=1)}", "train")


def test_the_bundled_photographs_split_by_photograph():
    from cnnkit.data.photos import BUNDLED_TEST, BUNDLED_TRAIN, bundled_photo_files

    files = bundled_photo_files()
    assert not set(BUNDLED_TEST) & set(BUNDLED_TRAIN) and set(files) == set(BUNDLED_TEST) | set(BUNDLED_TRAIN)
    test = load_dataset("photographs", "test")
    assert len(test) == len(BUNDLED_TEST) and test.sizes.tolist()[0] == [512, 512]  # scikit-image's astronaut


def test_espcn_trains_and_evaluates_against_an_independent_bicubic_baseline(tmp_path):
    """One epoch of ESPCN ×3 on a photo folder through `fit`; `evaluate` scores each test image whole, with the
    bicubic baseline equal to PIL's shrink-and-enlarge scored by hand (Y, a 3-pixel border)."""
    from cnnkit.evaluate import evaluate
    from cnnkit.train import fit

    root = _photo_folder(tmp_path / "photos")
    result = fit(data=f"photofolder:{root}", model="espcn", model_kwargs={"scale": 3, "n1": 8, "n2": 8},
                 epochs=1, batch_size=8, img_size=24, out=str(tmp_path / "run"), progress=False)
    assert result.config.task == "restore" and math.isfinite(result.history[-1]["val_psnr"])
    ev = evaluate(result.run_dir, device="cpu")
    assert ev.metrics["images"] == 1 and ev.metrics["border"] == 3
    test = load_dataset(f"photofolder:{root}", "test")
    h, w = test.sizes[0].tolist()
    clean = test.images[0, :, :h - h % 3, :w - w % 3].permute(1, 2, 0).numpy()
    small = Image.fromarray(clean).resize((clean.shape[1] // 3, clean.shape[0] // 3), Image.BICUBIC)
    up = np.asarray(small.resize((clean.shape[1], clean.shape[0]), Image.BICUBIC))
    to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
    expected = float(psnr(to_t(up), to_t(clean), border=3)[0])
    assert ev.metrics["baselines"]["bicubic"]["psnr_y"] == pytest.approx(expected, abs=0.05)


def test_the_commands_train_and_evaluate_a_restoration_run_and_refuse_the_others_in_one_line(tmp_path, capsys):
    from cnnkit.cli import main

    root = _photo_folder(tmp_path / "photos")
    run_dir = tmp_path / "run"
    code = main(["train", "--data", f"photofolder:{root}", "--model", "dncnn", "--model-kw", "depth=3",
                 "--model-kw", "features=8", "--model-kw", "noise=[0,50]", "--img-size", "24", "--epochs", "1",
                 "--batch-size", "16", "--out", str(run_dir), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    code = main(["eval", "--checkpoint", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 0 and "PSNR (Y, dB)" in out and "gaussian filter σ 1" in out, err
    png = next(root.glob("*.png"))
    for args in (["explain", "--checkpoint", str(run_dir), str(png)], ["export", "--checkpoint", str(run_dir)]):
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and "restore models" in err and len(err.strip().splitlines()) == 1, (args, err)


def test_the_layout_measurement_times_a_super_resolution_network_on_the_input_it_is_given():
    """`fit` picks the memory layout by timing training steps: a ×3 network is timed on the patch shrunk three
    times (what training gives it), its output against the patch, not on the patch itself."""
    from cnnkit.models import create
    from cnnkit.train import layout

    model = create("espcn", in_chans=3, scale=3, n1=8, n2=8)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append((tuple(args[0].shape), tuple(out.shape))))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    layout._step(model, opt, torch.rand(2, 3, 48, 50), torch.zeros(2, dtype=torch.long), torch.device("cpu"), None)
    assert seen == [((2, 3, 16, 16), (2, 3, 48, 48))]


@pytest.mark.parametrize("name, options", [
    ("srcnn", {"scale": 3, "n1": 8, "n2": 4}), ("espcn", {"scale": 2, "n1": 8, "n2": 4}),
    ("edsr", {"scale": 4, "blocks": 2, "features": 8}), ("dncnn", {"depth": 5, "features": 8}),
    ("cbdnet", {"width": 8, "estimator_width": 4})])
def test_tiles_put_together_equal_the_whole_image_and_a_margin_too_small_shows_seams(name, options):
    """Restored in tiles of 32 input pixels (the image's sides not multiples of it), each run with the network's
    radius as margin, the image equals the image restored whole; without the margin the tiles' edges differ."""
    from cnnkit.evaluate.restore import restore_tiled
    from cnnkit.models import create

    torch.manual_seed(0)
    model = create(name, in_chans=3, **options).eval()
    h, w = 45 + 2 * model.radius, 38 + 2 * model.radius  # some tiles run on less than the whole image
    x = torch.rand(1, 3, h, w)
    whole = restore_tiled(model, x, tile=0)
    assert whole.shape[-2:] == (h * model.scale, w * model.scale)
    assert torch.allclose(restore_tiled(model, x, tile=32), whole, atol=1e-5)
    assert (restore_tiled(model, x, tile=32, margin=0) - whole).abs().max() > 1e-3
    as_bytes = restore_tiled(model, x, tile=32, dtype=torch.uint8)
    assert (as_bytes.float() - whole.clamp(0, 1).mul(255).round()).abs().max() <= 1
