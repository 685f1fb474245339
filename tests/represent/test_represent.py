"""RotNet pretraining (exact rotations, whole batches of them, resume), Network-in-Network, frozen features
(batched = unbatched, every family's blocks) and probes (a separable toy set is separated), the few-label
options, and the CLI's errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cnnkit.models import create
from cnnkit.tasks.rotnet import rotate_batch
from tests.cli.test_cli import run

ROT = dict(model="nin3", model_kwargs={"width": 0.125}, data="sample", train_images=300, batch_size=64,
           pretext="rotnet", progress=False)


@pytest.fixture(scope="module")
def rotnet_run(tmp_path_factory):
    from cnnkit.train import fit

    return fit(**ROT, epochs=1, out=str(tmp_path_factory.mktemp("rot") / "run"))


def test_rotations_are_exact_and_labelled_in_order():
    x = torch.randn(3, 2, 5, 5)
    r, y = rotate_batch(x, 4)
    assert r.shape == (12, 2, 5, 5) and y.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for k in range(4):  # turned back, every image is the original, bit for bit
        back = torch.rot90(r[3 * k:3 * (k + 1)], -k, dims=(2, 3))
        assert torch.equal(back, x)
    assert torch.equal(r[3:6, 0, 0, :], x[:, 0, :, -1])  # 90°: counter-clockwise, the last column on top
    r2, y2 = rotate_batch(torch.randn(2, 1, 4, 6), 2)  # 0/180° also on non-square images
    assert r2.shape == (4, 1, 4, 6) and y2.tolist() == [0, 0, 1, 1]
    cl = x.contiguous(memory_format=torch.channels_last)
    assert rotate_batch(cl)[0].is_contiguous(memory_format=torch.channels_last)


def test_each_batch_holds_every_rotation_of_each_image(monkeypatch, tmp_path):
    import cnnkit.tasks.rotnet as rotnet
    from cnnkit.train import fit

    seen = []
    real = rotnet.rotate_batch

    def spy(x, rotations=4):
        out, y = real(x, rotations)
        seen.append((x.clone(), out, y))
        return out, y

    monkeypatch.setattr(rotnet, "rotate_batch", spy)
    fit(**{**ROT, "train_images": 130}, epochs=1, val_fraction=0.0, out=str(tmp_path / "r"))
    x, out, y = seen[0]
    assert len(out) == 4 * len(x) and torch.bincount(y).tolist() == [len(x)] * 4
    assert all(torch.equal(out[k * len(x):(k + 1) * len(x)], torch.rot90(x, k, (2, 3))) for k in range(4))


def test_nin_blocks_as_in_the_paper():
    m = create("nin4", num_classes=4, in_chans=3)
    assert m.stage_names() == [f"blocks.block{i}" for i in range(1, 5)]
    convs = [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in m.blocks.block1.modules()
             if isinstance(c, torch.nn.Conv2d)]
    assert convs == [(3, 192, 5), (192, 160, 1), (160, 96, 1)]
    assert isinstance(m.blocks.pool1, torch.nn.MaxPool2d) and isinstance(m.blocks.pool2, torch.nn.AvgPool2d)
    assert all(isinstance(u[1], torch.nn.BatchNorm2d) and isinstance(u[2], torch.nn.ReLU)
               for b in ("block1", "block3") for u in getattr(m.blocks, b))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert len(create("nin5", 10, 1).stage_names()) == 5
    assert create("nin3", 10, 1, width=0.25).blocks.block2[0][0].out_channels == 48


def test_pretraining_writes_a_rotation_run(rotnet_run):
    from cnnkit.artifacts import load

    ckpt = load(rotnet_run.run_dir)
    assert ckpt.classes == ["0°", "90°", "180°", "270°"] and ckpt.meta["pretext"]["rotations"] == 4
    assert ckpt.meta["pretext"]["data_classes"][0] == "T-shirt/top"
    h = rotnet_run.history[-1]
    assert 0.0 <= h["val_acc"] <= 1.0 and h["train_loss"] > 0
    assert ckpt.model(torch.zeros(1, 1, 28, 28)).shape == (1, 4)


def test_resumed_pretraining_continues_exactly(tmp_path):
    from cnnkit.train import fit
    from tests.train.test_fit import stop_after

    opts = dict(ROT, epochs=2, deterministic=True, seed=3, val_fraction=0.1, train_images=150)
    straight = fit(**opts, out=str(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        fit(**opts, out=str(tmp_path / "b"), callbacks=[stop_after(1)])
    resumed = fit(resume=tmp_path / "b", progress=False)
    a, b = load_file(str(straight.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.history[-1]["val_acc"] == resumed.history[-1]["val_acc"]


def test_resumed_pretraining_reports_the_saved_runs_settings(tmp_path, capsys):
    """`pretrain --resume` continues the saved run: what it prints is that run's model, data and rotations,
    not the command's defaults."""
    out = tmp_path / "rot2"
    code, _, err = run(capsys, "pretrain", "--model", "nin3", "--model-kw", "width=0.125", "--rotations", "2",
                       "--epochs", "1", "--train-images", "100", "--batch-size", "50", "--out", str(out), "--quiet")
    assert code == 0, err
    code, printed, err = run(capsys, "pretrain", "--resume", str(out), "--epochs", "2", "--quiet")
    assert code == 0, err
    assert "rotnet, 2 rotations" in printed and "nin3" in printed and "nin4" not in printed


def test_few_labels_fine_tune_from_rotnet(rotnet_run, tmp_path):
    from cnnkit.artifacts import load
    from cnnkit.train import fit

    r = fit(model="nin3", model_kwargs={"width": 0.125}, data="sample", train_images_per_class=5, epochs=1,
            val_fraction=0.0, init_from=str(rotnet_run.best_checkpoint), out=str(tmp_path / "few"), progress=False,
            batch_size=16)
    assert r.train_images == 50  # 5 of each of the 10 classes
    ckpt = load(r.run_dir)
    assert len(ckpt.classes) == 10
    src = load_file(str(rotnet_run.best_checkpoint))
    # one step of fine-tuning has moved them, but they started from RotNet's weights, not a fresh init
    fresh = create("nin3", 10, 1, width=0.125).state_dict()
    key = "blocks.block3.0.0.weight"
    moved = (ckpt.model.state_dict()[key] - src[key]).abs().mean()
    assert moved < (fresh[key] - src[key]).abs().mean() / 5


def test_features_are_the_same_batched_and_one_by_one(rotnet_run):
    from cnnkit.artifacts import load
    from cnnkit.data import Normalize
    from cnnkit.represent.features import extract, load_features_data

    ckpt = load(rotnet_run.run_dir)
    ds = load_features_data(ckpt, "sample", "test", limit=40)
    norm = Normalize(*ckpt.normalization)
    layers = ["blocks.block1", "blocks.block3"]
    big = extract(ckpt.model, ds, norm, layers, "avg", batch_size=64)
    one = extract(ckpt.model, ds, norm, layers, "avg", batch_size=1)
    for n in layers:
        assert big[n].shape == (40, ckpt.model.blocks.block1[2][0].out_channels if n.endswith("1") else 24)
        torch.testing.assert_close(big[n], one[n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["resnet20", "preact_resnet20", "vgg8_bn_mini", "tinyvgg", "mobilenet_v2_mini",
                                    "inception_v4_mini", "convnext_mini", "inception_next_mini", "nin3"])
def test_features_of_every_block_of_every_small_family(family):
    from cnnkit.represent.features import block_names, extract, pool_features
    from cnnkit.data import ImageData, Normalize

    model = create(family, num_classes=10, in_chans=1, img_size=(32, 32)).eval()
    ds = ImageData(torch.randint(0, 255, (6, 1, 32, 32), dtype=torch.uint8), torch.arange(6) % 3,
                   ["a", "b", "c"], "toy", "test")
    blocks = block_names(model)
    feats = extract(model, ds, Normalize([0.5], [0.25]), blocks, "avg3", batch_size=4)
    assert len(blocks) >= 2 and all(f.shape[0] == 6 and f.ndim == 2 for f in feats.values())
    assert pool_features(torch.ones(2, 3, 5, 5), "avg3").shape == (2, 27)


@pytest.mark.parametrize("head", ["linear", "svm", "knn", "mlp", "conv"])
def test_probes_separate_a_linearly_separable_toy_set(head):
    from cnnkit.represent.probe import fit_head

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4

    def make(n):
        y = torch.arange(n) % 3
        return centres[y] + 0.3 * torch.randn(n, 16, generator=g), y

    (xtr, ytr), (xte, yte) = make(150), make(60)
    if head == "conv":  # the same vectors as 16-channel 3×3 maps
        xtr, xte = xtr[:, :, None, None].expand(-1, -1, 3, 3), xte[:, :, None, None].expand(-1, -1, 3, 3)
    s = fit_head(head, xtr, ytr, xte, yte, epochs=15)
    assert s.test_acc == 1.0, s
    # the per-image predictions behind the accuracy, for paired comparisons of two probes on the same images
    assert len(s.test_pred) == len(yte) and (torch.as_tensor(s.test_pred) == yte).float().mean().item() == s.test_acc


def test_probe_table_has_the_baselines_and_the_cli_writes_it(rotnet_run, tmp_path, capsys):
    code, out, err = run(capsys, "probe", "--checkpoint", str(rotnet_run.run_dir), "--data", "sample",
                         "--head", "linear,knn", "--train-images", "200", "--test-images", "100", "--random-init",
                         "--pixels", "--out", str(tmp_path / "p"), "--quiet")
    assert code == 0, err
    import json

    rows = json.loads((tmp_path / "p" / "probe.json").read_text())["rows"]
    sources = {r["source"] for r in rows}
    assert "pixels" in sources and "random init of nin3" in sources and len(rows) == 2 * 3 * 2 + 2
    assert all(0 <= r["test_acc"] <= 1 for r in rows) and "blocks.block2" in out


def test_features_cli_writes_a_file_and_keeps_other_files(rotnet_run, tmp_path, capsys):
    from cnnkit.represent import load_features

    out = tmp_path / "f.safetensors"
    code, _, err = run(capsys, "features", "--checkpoint", str(rotnet_run.run_dir), "--data", "sample",
                       "--limit", "30", "--out", str(out), "--quiet")
    assert code == 0, err
    f = load_features(out)
    assert set(f.layers) == {"blocks.block1", "blocks.block2", "blocks.block3"} and len(f.labels) == 30
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"not features")
    code, _, err = run(capsys, "features", "--checkpoint", str(rotnet_run.run_dir), "--out", str(mine), "--quiet")
    assert code == 2 and "not a cnnkit features file" in err and mine.read_bytes() == b"not features"
    code, _, err = run(capsys, "features", "--checkpoint", str(rotnet_run.run_dir), "--quiet",
                       "--out", str(mine / "under-a-file.safetensors"))
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err


@pytest.mark.parametrize("args,says", [
    (["pretrain", "--method", "jigsaw"], "unknown pretraining method"),
    (["pretrain", "--rotations", "3"], "--rotations must be 2"),
    (["features", "--checkpoint", "{run}", "--layer", "blocks.nope", "--out", "{tmp}/x.safetensors"], "no layer"),
    (["features", "--checkpoint", "{run}", "--pool", "median", "--out", "{tmp}/x.safetensors"], "--pool must be"),
    (["probe", "--checkpoint", "{run}", "--head", "forest"], "unknown probe head"),
    (["train", "--train-images-per-class", "0"], "greater than or equal to 1"),
])
def test_representation_commands_refuse_bad_input_in_one_line(rotnet_run, tmp_path, capsys, args, says):
    code, _, err = run(capsys, *[a.format(run=rotnet_run.run_dir, tmp=tmp_path) for a in args])
    assert code == 2 and says in err and err.strip().count("\n") == 0 and "Traceback" not in err


def test_a_rotnet_run_can_be_explored_with_its_data_in_the_gallery(rotnet_run):
    """Its head predicts rotations, not the data's classes: the gallery shows the test images, unmarked."""
    from cnnkit.serve import load_models
    from cnnkit.serve.explore import Explorer

    ex = Explorer(load_models([f"rot={rotnet_run.run_dir}"], device="cpu", measure_layout=False)["rot"])
    g = ex.gallery()
    assert len(g["images"]) == 24 and g["classes"][0] == "T-shirt/top"
    assert all(i["correct"] is None for i in g["images"])
    ov = ex.overview(g["images"][0]["id"])
    assert len(ov["probabilities"]) == 4  # the rotation head


@pytest.fixture(scope="module")
def feature_files(rotnet_run, tmp_path_factory):
    """Features of the RotNet run: both splits (30 images each), its test split alone, and both pooled avg."""
    from cnnkit.represent import feature_splits, save_features

    folder = tmp_path_factory.mktemp("feats")
    both = feature_splits(rotnet_run.run_dir, device="cpu", data="sample", limit=30)
    paths = {"both": save_features(both, folder / "both.safetensors"),
             "test": save_features(both[1], folder / "test.safetensors"),
             "avg": save_features(feature_splits(rotnet_run.run_dir, device="cpu", data="sample", limit=30,
                                                 pool="avg"), folder / "avg.safetensors")}
    return paths


def test_a_features_file_holds_both_splits_pooled_as_probe_pools(feature_files):
    from cnnkit.represent import DEFAULT_POOL, load_feature_splits, load_features

    splits = load_feature_splits(feature_files["both"])
    assert set(splits) == {"train", "test"} and DEFAULT_POOL == "avg3"
    assert all(f.pool == "avg3" and len(f.labels) == 30 for f in splits.values())
    assert splits["train"].layers["blocks.block1"].shape[1] == 9 * 12  # a 3×3 grid of averages of 12 channels
    assert torch.equal(load_features(feature_files["both"]).labels, splits["test"].labels)  # test by default
    assert load_features(feature_files["test"]).split == "test"


def test_probe_of_a_features_file_is_the_probe_of_its_checkpoint(rotnet_run, feature_files):
    """The stored features are the representation: probed as they are, they score what extracting them again
    from the checkpoint scores, on the same images."""
    from cnnkit.represent import probe

    kw = dict(data="sample", heads=["linear"], train_limit=30, test_limit=30, device="cpu")
    from_file = probe([], features=[str(feature_files["both"])], **kw)
    from_net = probe([str(rotnet_run.run_dir)], **kw)
    assert [(r.layer, r.test_acc, r.dims) for r in from_file] == [(r.layer, r.test_acc, r.dims) for r in from_net]
    assert {r.source for r in from_file} == {str(feature_files["both"])}


@pytest.mark.parametrize("args,says", [
    (["--checkpoint", "{both}"], "is a features file (`cnnkit features` wrote it), not a checkpoint: probe it "
                                 "with --features"),
    (["--features", "{test}"], "holds no train features"),
    (["--features", "{both}", "--data", "mnist"], "holds features of sample, not of mnist"),
    (["--features", "{avg}", "--pool", "avg3"], "pooled avg; they cannot be pooled avg3"),
    (["--features", "{both}", "--layer", "blocks.nope"], "no layer 'blocks.nope'"),
    (["--features", "{both}", "--random-init"], "--random-init needs a --checkpoint"),
    (["--features", "{both}", "--checkpoint", "{run}"], "its test features are of other images"),
    ([], "give at least one --checkpoint or --features"),
])
def test_probe_refuses_features_it_cannot_score_honestly_in_one_line(rotnet_run, feature_files, capsys, args,
                                                                     says):
    names = {k: str(v) for k, v in feature_files.items()}
    code, _, err = run(capsys, "probe", *[a.format(run=rotnet_run.run_dir, **names) for a in args], "--quiet")
    assert code == 2 and says in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
