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


@pytest.mark.parametrize("align", [1, 3])
def test_a_large_photograph_gives_no_more_patches_than_a_512_square_one_from_all_over_it(align):
    """A 2000×1500 photograph is cut at a wider stride into at most a 512×512 one's share of patches (on the pairs'
    grid where they have one), still from its top-left to its bottom-right corner; a 512×512 one keeps its half-patch
    stride."""
    from cnnkit.data.photos import balanced_share, patches

    size, stride = (48, 48), (24, 24)
    share = balanced_share(size, stride, align)
    big = torch.arange(2000 * 1500, dtype=torch.int32).view(1, 1500, 2000)
    cut = patches([big], size, stride, align=align, most=share)
    corners = {(int(p[0, 0, 0]) // 2000, int(p[0, 0, 0]) % 2000) for p in cut}
    assert share * 0.7 < len(cut) <= share == 21 * 21  # 512×512: corners at 0, 24, ..., 456 and flush at 464
    assert min(corners) == (0, 0) and max(corners) == ((1500 - 48) // align * align, (2000 - 48) // align * align)
    assert all(t % align == 0 and s % align == 0 for t, s in corners)
    assert len(patches([big[:, :512, :512]], size, stride, align=align, most=share)) == share


def test_the_bundled_photographs_split_by_photograph():
    from cnnkit.data.photos import BUNDLED_TEST, BUNDLED_TRAIN, bundled_photo_files

    files = bundled_photo_files()
    assert not set(BUNDLED_TEST) & set(BUNDLED_TRAIN) and set(files) == set(BUNDLED_TEST) | set(BUNDLED_TRAIN)
    test = load_dataset("photographs", "test")
    assert len(test) == len(BUNDLED_TEST) and test.sizes.tolist()[0] == [512, 512]  # scikit-image's astronaut


def test_espcn_trains_and_evaluates_against_an_independent_bicubic_baseline(tmp_path, monkeypatch):
    """One epoch of ESPCN ×3 on a photo folder through `fit`, validated on at most the task's cap of held-out
    patches (the rest of the validation share trained on); `evaluate` scores each test image whole, with the
    bicubic baseline equal to PIL's shrink-and-enlarge scored by hand (Y, a 3-pixel border)."""
    from cnnkit.data.base import LoadOptions
    from cnnkit.data.photos import load
    from cnnkit.evaluate import evaluate
    from cnnkit.tasks.restore import Restoration
    from cnnkit.train import fit

    monkeypatch.setattr(Restoration, "max_val_items", 3)
    root = _photo_folder(tmp_path / "photos")
    result = fit(data=f"photofolder:{root}", model="espcn", model_kwargs={"scale": 3, "n1": 8, "n2": 8},
                 epochs=1, batch_size=8, img_size=24, out=str(tmp_path / "run"), progress=False)
    assert result.config.task == "restore" and math.isfinite(result.history[-1]["val_psnr"])
    patches = len(load(f"photofolder:{root}", "train", LoadOptions(img_size=24)))
    assert patches * result.config.val_fraction > 3 and (result.val_images, result.train_images) == (3, patches - 3)
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
    best = next(line for line in out.splitlines() if "best val psnr" in line)
    assert best.rstrip(" │").endswith(" dB") and "%" not in out  # PSNR in decibels, not a percentage
    code = main(["eval", "--checkpoint", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 0 and "PSNR (Y, dB)" in out and "gaussian filter σ 1" in out, err
    png = next(root.glob("*.png"))
    for args in (["explain", "--checkpoint", str(run_dir), str(png)],):
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


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    """A ×3 ESPCN trained one epoch on a small photo folder."""
    from cnnkit.train import fit

    tmp = tmp_path_factory.mktemp("sr")
    root = _photo_folder(tmp / "photos")
    fit(data=f"photofolder:{root}", model="espcn", model_kwargs={"scale": 3, "n1": 8, "n2": 8}, epochs=1,
        batch_size=8, img_size=24, out=str(tmp / "run"), progress=False)
    return tmp / "run"


def test_predict_writes_each_image_restored_at_scale_times_its_size_in_any_mode_and_tiles_change_nothing(
        sr_run, tmp_path, capsys):
    """`cnnkit predict` on a grey and an RGBA image writes RGB PNGs three times larger, equal to the network
    applied to the whole image and rounded to 8 bits; tiles of 16 pixels give the same file; --compare writes
    the side-by-side crop; restored.json and --json name the files."""
    import json

    from cnnkit.artifacts import load
    from cnnkit.cli import main

    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((37, 41)) * 255).astype(np.uint8)).save(tmp_path / "grey.png")
    rgba = (rng.random((30, 52, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = 255  # opaque (transparency is composited on white, tested with the image loaders)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    images = [str(tmp_path / "grey.png"), str(tmp_path / "rgba.png")]
    code = main(["predict", "--checkpoint", str(sr_run), *images, "--images-out", str(tmp_path / "tiled"),
                 "--tile", "16", "--compare", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = json.loads(out)
    assert [(r["height"], r["width"]) for r in lines] == [(111, 123), (90, 156)]
    assert lines[0]["restored"].endswith("grey.png") and lines[0]["compare"].endswith("grey-compare.png")
    assert main(["predict", "--checkpoint", str(sr_run), *images, "--images-out", str(tmp_path / "whole"),
                 "--tile", "0"]) == 0
    capsys.readouterr()
    model = load(sr_run).model.eval()
    for name in ("grey", "rgba"):
        tiled = np.asarray(Image.open(tmp_path / "tiled" / f"{name}.png"))
        whole = np.asarray(Image.open(tmp_path / "whole" / f"{name}.png"))
        assert tiled.shape[-1] == 3 and np.abs(tiled.astype(int) - whole).max() <= 1
        x = torch.from_numpy(np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"))).permute(2, 0, 1)
        with torch.no_grad():
            direct = model(x[None].float() / 255)[0].clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy()
        assert np.abs(whole.astype(int) - direct).max() <= 1
    compare = Image.open(tmp_path / "tiled" / "rgba-compare.png")
    assert compare.size == (2 * 156 + 4, 90)
    record = json.loads((tmp_path / "tiled" / "restored.json").read_text())
    assert record["scale"] == 3 and [r["restored"] for r in record["images"]] == ["grey.png", "rgba.png"]


@pytest.mark.parametrize("args, message", [
    (["--compare"], "--compare writes a side-by-side crop beside each restored image: give --images-out too"),
    (["--tile", "5"], "--tile is a tile's side in input pixels, 16 or more"),
    (["--masks-out", "OUT"], "--masks-out are for classification and segmentation|--adapt, --masks-out"),
    (["--strict", "--max-pixels"], "more than cnnkit writes"),
])
def test_bad_restoration_predict_options_are_one_line(sr_run, tmp_path, capsys, monkeypatch, args, message):
    from cnnkit.cli import main

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    if "--max-pixels" in args:  # an image whose restoration would pass the bound
        import cnnkit.evaluate.restore as restore

        monkeypatch.setattr(restore, "MAX_OUTPUT_PIXELS", 20 * 30 * 9 - 1)
        args = ["--strict"]
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    code = main(["predict", "--checkpoint", str(sr_run), str(tmp_path / "a.png"), *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert any(m in err for m in message.split("|")), err


def _pairs(root, roles=("low", "high"), n=4, scale=2, extra=1):
    """`n` pairs: a smooth random clean image (its width `extra` pixels past a multiple of `scale`) and its given
    partner (shrunk by PIL's bicubic, saved as JPEG, for low/high; with noise, for noisy/clean)."""
    rng = np.random.default_rng(0)
    for role in roles:
        (root / role).mkdir(parents=True)
    for i in range(n):
        w, h = 20 * scale + 2 * scale * i + extra, 16 * scale
        clean = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        clean.save(root / roles[1] / f"p{i}.png")
        if roles[0] == "low":
            clean.crop((0, 0, w - extra, h)).resize(((w - extra) // scale, h // scale), Image.BICUBIC).save(
                root / "low" / f"p{i}.jpg", quality=95)
        else:
            noisy = np.asarray(clean).astype(np.float32) + rng.normal(0, 20, (h, w, 3))
            Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8)).save(root / "noisy" / f"p{i}.png")
    return root


def test_low_and_high_pairs_train_as_patches_on_the_scales_grid_and_evaluate_on_the_given_low_images(tmp_path):
    """Pairs matched by name (JPEG low, PNG high, the high one a pixel wider than twice): each training patch's
    given half is the low image's crop at the same place; ESPCN's scale comes from the pairs; eval's bicubic
    baseline enlarges the given low image (PIL's, scored by hand), not one made again from the high one."""
    from cnnkit.evaluate import evaluate
    from cnnkit.train import fit

    root = _pairs(tmp_path / "pairs", n=5)
    train = load_dataset(f"pairfolder:{root}", "train", img_size=16)
    assert train.given_scale == 2 and train.in_chans == 3 and train.images.shape[1:] == (6, 16, 16)
    assert torch.equal(train.images[:, 3:, 1::2, 1::2], train.images[:, 3:, ::2, ::2])  # pixels repeated
    low = {np.asarray(Image.open(p)).tobytes() for p in (root / "low").glob("*.jpg")}
    assert len(low) == 5
    result = fit(data=f"pairfolder:{root}", model="espcn", model_kwargs={"n1": 8, "n2": 8}, epochs=1, batch_size=8,
                 img_size=16, out=str(tmp_path / "run"), progress=False)
    assert result.config.model_kwargs["scale"] == 2
    ev = evaluate(result.run_dir, device="cpu")
    test = load_dataset(f"pairfolder:{root}", "test")
    (h, w), = test.sizes.tolist()
    name = test.images[0, :3, :h, :w]  # the clean image of the one test pair, cropped to twice its partner
    stem = next(p.stem for p in (root / "high").glob("*.png") if Image.open(p).size[1] == h
                and np.array_equal(np.asarray(Image.open(p))[:h, :w], name.permute(1, 2, 0).numpy()))
    up = np.asarray(Image.open(root / "low" / f"{stem}.jpg").convert("RGB").resize((w, h), Image.BICUBIC))
    to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
    expected = float(psnr(to_t(up), to_t(name.permute(1, 2, 0).numpy()), border=2)[0])
    assert ev.metrics["baselines"]["bicubic"]["psnr_y"] == pytest.approx(expected, abs=0.05)


def test_noisy_and_clean_pairs_evaluate_against_the_given_noise(tmp_path):
    from cnnkit.evaluate import evaluate
    from cnnkit.train import fit

    root = _pairs(tmp_path / "pairs", roles=("noisy", "clean"), extra=0)
    result = fit(data=f"pairfolder:{root}", model="dncnn", model_kwargs={"depth": 3, "features": 8}, epochs=1,
                 batch_size=8, img_size=16, out=str(tmp_path / "run"), progress=False)
    ev = evaluate(result.run_dir, device="cpu")
    test = load_dataset(f"pairfolder:{root}", "test")
    (h, w), = test.sizes.tolist()
    clean, noisy = (test.images[:1, c:c + 3, :h, :w].float() / 255 for c in (0, 3))
    assert ev.metrics["baselines"]["noisy input"]["psnr_rgb"] == pytest.approx(float(psnr(noisy, clean, on_y=False)[0]),
                                                                            abs=1e-3)


@pytest.mark.parametrize("case, message", [
    ("missing", "has no partner of the same name in"),
    ("size", "a clean image must be 2, 3 or 4 times its partner's sides"),
    ("scales", "pairs are at different scales"),
    ("model-scale", "pairs are ×2, but the network's scale is 3: give --model-kw scale=2"),
    ("denoiser", "pairs low and high images: train a super-resolution model"),
    ("roles", "needs two sub-folders of images matched by name"),
])
def test_bad_pairs_are_one_line_and_exit_2(tmp_path, capsys, case, message):
    from cnnkit.cli import main

    root = _pairs(tmp_path / "pairs")
    model = ["--model", "espcn", "--model-kw", "n1=4", "--model-kw", "n2=4"]
    if case == "missing":
        (root / "low" / "p1.jpg").unlink()
    elif case == "size":
        Image.new("RGB", (13, 7)).save(root / "low" / "p2.jpg")
    elif case == "scales":
        for i in (0, 1):  # ×4, the others ×2: whichever pair is held out, training reads both scales
            high = Image.open(root / "high" / f"p{i}.png")
            high.resize((high.width // 4, high.height // 4)).save(root / "low" / f"p{i}.jpg")
    elif case == "model-scale":
        model += ["--model-kw", "scale=3"]
    elif case == "denoiser":
        model = ["--model", "dncnn", "--model-kw", "depth=3"]
    elif case == "roles":
        (root / "low").rename(root / "small")
    code = main(["train", "--data", f"pairfolder:{root}", *model, "--img-size", "16", "--epochs", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "best.safetensors").exists()


RESTORERS = [("srcnn", {"scale": 3, "n1": 8, "n2": 4}), ("espcn", {"scale": 2, "n1": 8, "n2": 4}),
             ("edsr", {"scale": 4, "blocks": 2, "features": 8}), ("dncnn", {"depth": 4, "features": 8}),
             ("cbdnet", {"width": 8, "estimator_width": 4})]


def _restore_checkpoint(folder, name, options):
    """An untrained restoration network saved as a run's checkpoint (random weights, as export checks them)."""
    from cnnkit.artifacts import save_checkpoint
    from cnnkit.models import create

    torch.manual_seed(0)
    model = create(name, in_chans=3, **options).eval()
    meta = {"task": "restore", "model": name, "model_kwargs": options, "classes": ["photo"], "in_chans": 3,
            "img_size": [32, 32], "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3},
            "dataset": {"name": "photographs"}}
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.safetensors", model, meta)
    return folder


@pytest.mark.parametrize("name, options", RESTORERS)
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_exports_take_any_height_and_width_and_predict_the_same_images(tmp_path, name, options, fmt):
    """ONNX and torch.export artifacts of every restoration network pass export's parity check at two sizes
    (dynamic height and width), record the network's scale and radius, and `predict` with them, in tiles,
    writes the checkpoint's images (within one 8-bit level)."""
    import json

    from cnnkit.deploy import export_onnx, export_program
    from cnnkit.evaluate import predict

    run = _restore_checkpoint(tmp_path / "run", name, options)
    result = (export_onnx if fmt == "onnx" else export_program)(run, tmp_path / f"model.{fmt}")
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["dynamic_size"] is True and len(sidecar["parity"]) == 2
    scale = options.get("scale", 1)
    assert sidecar["restoration"]["scale"] == scale
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((70, 45, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    for source, out in ((run, "ckpt"), (tmp_path / f"model.{fmt}", "artifact")):
        predict(source, [tmp_path / "a.png"], images_out=tmp_path / out, tile=32, device="cpu")
    a, b = (np.asarray(Image.open(tmp_path / d / "a.png")).astype(int) for d in ("ckpt", "artifact"))
    assert a.shape == (70 * scale, 45 * scale, 3) and np.abs(a - b).max() <= 1


def test_compress_int8_reports_the_psnr_cost_in_db_as_eval_scores_the_artifact(sr_run, tmp_path):
    """`compress int8` on a restoration run: PT2E's and ONNX Runtime's int8 artifacts, calibrated on the degraded
    inputs, their PSNR and its difference from float32 in dB (not percent), the same PSNR `eval` gives the artifact."""
    from cnnkit.artifacts import load
    from cnnkit.compress import compress
    from cnnkit.evaluate import evaluate

    result = compress(sr_run, ["int8"], tmp_path / "out", calibration=32, batch=16, repeats=3)
    rows = {(r["variant"], r["runtime"]): r for r in result.rows}
    int8 = rows[("int8", "onnxruntime int8")]
    base = rows[("float32", "eager")]
    assert 5 < base["psnrydb"] < 100 and int8["psnrydb_delta_db"] == pytest.approx(int8["psnrydb"] - base["psnrydb"])
    scored = evaluate(tmp_path / "out" / int8["file"], device="cpu").metrics["psnr_y"]
    assert int8["psnrydb"] == pytest.approx(scored, abs=1e-6)
    # PT2E's int8 program of the same network, beside the float program it is measured against (the photos
    # keep their own sizes: the program takes any size, compiled for each)
    program, pt2e = rows[("float32", "inductor")], rows[("int8", "inductor int8")]
    assert program["psnrydb"] == pytest.approx(base["psnrydb"], abs=1e-3)
    assert abs(pt2e["psnrydb_delta_db"]) < 1.0  # (this 8-channel ESPCN's file is graph more than weights: no smaller)
    assert load(tmp_path / "out" / pt2e["file"]).meta["restoration"]["scale"] == 3
    assert "Δ dB" in (tmp_path / "out" / "report.html").read_text()


def test_ycbcr_is_matlabs_and_inverts():
    from cnnkit.data.photos import rgb_from_ycbcr, ycbcr

    rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    ycc = ycbcr(rgb)
    assert torch.allclose(ycc[:, :1], luma(rgb)) and torch.allclose(rgb_from_ycbcr(ycc), rgb, atol=1e-10)
    white = ycbcr(torch.ones(1, 3, 1, 1, dtype=torch.float64)).flatten() * 255  # MATLAB: [235 128 128]
    assert torch.allclose(white, torch.tensor([235.0, 128.0, 128.0], dtype=torch.float64), atol=1e-2)


def test_a_luma_network_restores_a_colour_image_through_its_y_and_a_grey_one_as_it_is(tmp_path):
    """Trained with --channels 1, a ×2 network restores a colour photograph's Y; its chroma is enlarged by bicubic
    interpolation and the result is RGB (the papers' practice); a grey image stays one channel."""
    from cnnkit.cli import main
    from cnnkit.data.photos import rgb_from_ycbcr, ycbcr
    from cnnkit.evaluate.restore import restore_tiled
    from cnnkit.models.restore import bicubic

    root = _photo_folder(tmp_path / "photos")
    assert main(["train", "--data", f"photofolder:{root}", "--model", "espcn", "--model-kw", "scale=2",
                 "--model-kw", "n1=4", "--model-kw", "n2=4", "--channels", "1", "--img-size", "24", "--epochs", "1",
                 "--batch-size", "16", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    from cnnkit.artifacts import load

    ckpt = load(tmp_path / "run")
    assert ckpt.in_chans == 1
    rng = np.random.default_rng(2)
    Image.fromarray((rng.random((20, 26, 3)) * 255).astype(np.uint8)).save(tmp_path / "colour.png")
    Image.fromarray((rng.random((20, 26)) * 255).astype(np.uint8)).save(tmp_path / "grey.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "colour.png"),
                 str(tmp_path / "grey.png"), "--images-out", str(tmp_path / "out")]) == 0
    colour = np.asarray(Image.open(tmp_path / "out" / "colour.png")).astype(int)
    grey = np.asarray(Image.open(tmp_path / "out" / "grey.png"))
    assert colour.shape == (40, 52, 3) and grey.shape == (40, 52)
    x = torch.from_numpy(np.asarray(Image.open(tmp_path / "colour.png"))).permute(2, 0, 1)[None].float() / 255
    ycc = ycbcr(x)
    with torch.no_grad():
        y = restore_tiled(ckpt.model.eval(), ycc[:, :1], tile=0)
    want = rgb_from_ycbcr(torch.cat([y, bicubic(ycc[:, 1:], size=(40, 52))], 1)).clamp(0, 1).mul(255).round()
    assert np.abs(colour - want[0].permute(1, 2, 0).numpy()).max() <= 1


def test_camera_noise_follows_its_formula_is_correlated_by_demosaicking_and_jpeg_compressed():
    """CBDNet's noise model on flat grey images: at the red pixels of the Bayer mosaic (kept as sampled), the
    noise's spread is the map's, σ = sqrt(σs²·L + σc²) in irradiance L carried through the gamma curve's slope;
    neighbouring pixels' noise is correlated (demosaicked); with JPEG the result is
    8-bit."""
    from cnnkit.tasks.restore import camera_noise

    g = torch.Generator().manual_seed(0)
    for shot, read in ((0.0, 0.02), (0.05, 0.0)):  # small enough for the slope to carry it (delta method)
        for v in (0.5, 0.8):
            flat = torch.full((16, 3, 64, 64), v)
            noisy, sigma = camera_noise(flat, g, shot=shot, read=read, jpeg=False)
            irradiance = v ** 2.2
            expected = (shot ** 2 * irradiance + read ** 2) ** 0.5 * irradiance ** (1 / 2.2 - 1) / 2.2
            assert float(sigma[0, 0, 0, 0]) == pytest.approx(expected, rel=1e-4)
            measured = float((noisy - flat)[:, 0, 0::2, 0::2].std())
            assert measured == pytest.approx(expected, rel=0.08), (shot, read, v)
    noisy, _ = camera_noise(torch.full((8, 3, 64, 64), 0.5), g, shot=0.1, read=0.02, jpeg=False)
    d = (noisy - 0.5)[:, 1]  # green at the red and blue sites is its neighbours' average: correlated with them
    corr = torch.corrcoef(torch.stack([d[..., :-1].flatten(), d[..., 1:].flatten()]))[0, 1]
    assert corr > 0.2
    compressed, _ = camera_noise(torch.rand(2, 3, 32, 32), g)
    assert torch.equal(compressed, compressed.mul(255).round().div(255))


def test_cbdnet_trains_its_noise_map_with_the_asymmetric_loss():
    """With the camera noise model the training loss adds CBDNet's asymmetric and TV losses on the estimated map
    (gradients reach the estimator only through them and the reconstruction), and evaluation degrades with it."""
    from cnnkit.models import create
    from cnnkit.tasks.restore import RestorationLoss, degrade

    torch.manual_seed(0)
    net = create("cbdnet", in_chans=3, width=8, estimator_width=4)
    assert net.noise_model == "camera"
    objective = RestorationLoss("mse")
    x = torch.rand(2, 3, 24, 24)
    out = objective.forward(net, x, x)
    extra = objective.noise_level
    assert extra is not None and float(extra) > 0
    total = objective.loss(out, x, x)
    assert float(total) == pytest.approx(float(F_mse(out, x) + extra), rel=1e-6) and objective.noise_level is None
    total.backward()
    assert net.estimate[0].weight.grad.abs().sum() > 0
    degraded = degrade(net, x, torch.Generator().manual_seed(0))
    assert degraded.shape == x.shape and torch.equal(degraded, degraded.mul(255).round().div(255))  # camera + JPEG
    gaussian = create("cbdnet", in_chans=3, width=8, estimator_width=4, noise_model="gaussian")
    objective.forward(gaussian, x, x)
    assert objective.noise_level is None


def F_mse(a, b):
    return torch.nn.functional.mse_loss(a.float(), b.float())


def test_bench_times_a_restoration_at_any_size_per_input_and_output_megapixel(tmp_path):
    from cnnkit.deploy.bench import bench_many

    run = _restore_checkpoint(tmp_path / "run", "espcn", {"scale": 3, "n1": 8, "n2": 4})
    row, = bench_many([run], img_size=(20, 30), repeats=3, batch=2, device="cpu")
    assert row["img_size"] == [20, 30] and row["output_size"] == [60, 90]
    assert row["ms_per_megapixel"] == pytest.approx(row["latency_ms_p50"] / (20 * 30 / 1e6))
    assert row["ms_per_output_megapixel"] == pytest.approx(row["ms_per_megapixel"] / 9)


def test_a_photo_folder_of_mixed_modes_and_sizes_reads_as_rgb(tmp_path):
    """Grey, 16-bit grey, palette, RGBA and JPEG photographs of different sizes: RGB patches to train on and whole
    RGB images to test on, each at its own size."""
    rng = np.random.default_rng(3)
    root = tmp_path / "mixed"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    base = lambda h, w: (rng.random((h, w, 3)) * 255).astype(np.uint8)  # noqa: E731
    Image.fromarray(base(40, 50)).convert("L").save(root / "train" / "grey.png")
    Image.fromarray((rng.random((44, 40)) * 65535).astype(np.uint16)).save(root / "train" / "deep.png")
    Image.fromarray(base(36, 60)).convert("P").save(root / "train" / "palette.png")
    Image.fromarray(np.dstack([base(48, 48), np.full((48, 48), 128, np.uint8)])).save(root / "train" / "alpha.png")
    Image.fromarray(base(30, 70)).save(root / "test" / "photo.jpg", quality=90)
    Image.fromarray(base(50, 20)).convert("L").save(root / "test" / "grey.png")
    train = load_dataset(f"photofolder:{root}", "train", img_size=24)
    test = load_dataset(f"photofolder:{root}", "test", img_size=24)
    assert train.images.shape[1:] == (3, 24, 24) and len(train) >= 4 * 4
    assert sorted(map(tuple, test.sizes.tolist())) == [(30, 70), (50, 20)] and test.images.shape[1] == 3


def test_ssim_is_scikit_images_with_the_papers_window():
    """SSIM on Y as `eval` computes it (torchmetrics: 11×11 Gaussian window, σ 1.5) against scikit-image's
    structural_similarity with the same window (Wang et al.'s settings), on a restored image rounded to 8 bits."""
    from skimage.metrics import structural_similarity

    from cnnkit.evaluate.restore import image_scores

    rng = np.random.default_rng(4)
    clean = torch.from_numpy(rng.random((1, 3, 48, 40)).astype(np.float32))
    restored = (clean + 0.05 * torch.from_numpy(rng.standard_normal((1, 3, 48, 40)).astype(np.float32))).clamp(0, 1)
    ours = image_scores(restored, clean, border=3)["ssim_y"]
    a = luma(restored.mul(255).round().div(255))[0, 0, 3:-3, 3:-3].double().numpy()
    b = luma(clean)[0, 0, 3:-3, 3:-3].double().numpy()
    theirs = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False)
    assert ours == pytest.approx(theirs, abs=2e-3)
