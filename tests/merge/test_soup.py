"""Model soups: averages are exact, greedy keeps only what does not lower the held-out accuracy (a scrambled
ingredient is left out), BatchNorm statistics are re-measured to those of the data, the held-out images are ones
no ingredient trained on, and the CLI's files, table and one-line refusals."""

from __future__ import annotations

import contextlib
import hashlib
import io

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.test_cli import run

BASE = dict(model="resnet9", model_kwargs={"width": 4}, data="sample", batch_size=64, progress=False)
BN_IMAGES = 300


def _digest(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in images}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base run; three ingredients fine-tuned from it (split seed 0, seeds 1-3); one with another split seed
    (every image of its train split recorded); a scrambled copy of ingredient 3; and the soup of ingredients 1-2
    and the scrambled one, made by the CLI."""
    import cnnkit.train.setup as setup
    from cnnkit.artifacts import load, save_checkpoint
    from cnnkit.train import fit
    root = tmp_path_factory.mktemp("soup")
    trained: dict[str, set[str]] = {}
    real = setup.BatchLoader

    class Recording(real):  # the images each run's training loader holds
        def __init__(self, data, *a, **k):
            super().__init__(data, *a, **k)
            if k.get("shuffle"):
                trained.setdefault(current, set()).update(_digest(data.images))

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setup, "BatchLoader", Recording)
        current = "base"
        out["base"] = fit(**BASE, train_images=1000, epochs=3, out=str(root / "base")).run_dir
        init = str(out["base"] / "best.safetensors")
        for s in (1, 2, 3):
            current = f"ing{s}"
            out[current] = fit(**BASE, train_images=200, epochs=1, lr=0.02, init_from=init, seed=s,
                                      split_seed=0, out=str(root / current)).run_dir
        current = "other-split"  # all of its train split, a few steps: its split seed is what counts here
        out[current] = fit(**BASE, max_steps=2, init_from=init, seed=4, split_seed=1,
                                  out=str(root / current)).run_dir
    ing3 = load(out["ing3"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ing3.model.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=g)].view_as(p))
    (root / "scrambled").mkdir()
    save_checkpoint(root / "scrambled" / "best.safetensors", ing3.model, ing3.meta)
    out["scrambled"] = root / "scrambled"
    out["trained"] = trained
    out["root"] = root
    return out


@pytest.fixture(scope="module")
def cli_soup(runs):
    """`cnnkit soup` of ingredients 1 and 2 and the scrambled one: (exit code, stdout, stderr, out folder)."""
    from cnnkit.cli import main

    soup = runs["root"] / "soup"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["soup", str(runs["ing1"]), str(runs["ing2"]), str(runs["scrambled"]), "--method", "both",
                     "--out", str(soup), "--bn-images", str(BN_IMAGES), "--quiet"])
    return code, out.getvalue(), err.getvalue(), soup


def _states(*paths):
    from cnnkit.artifacts import resolve_checkpoint

    return [load_file(str(resolve_checkpoint(p))) for p in paths]


def test_cli_writes_both_soups_and_the_table(cli_soup):
    code, out, err, soup = cli_soup
    assert code == 0, err
    assert err == ""  # one initialization, one architecture: nothing to warn about
    for name in ("soup-uniform.safetensors", "soup-greedy.safetensors", "soup-uniform.json", "soup.csv", "soup.md"):
        assert (soup / name).is_file(), name
    rows = (soup / "soup.csv").read_text().splitlines()
    assert rows[0].startswith("name,kind,heldout_acc,test_acc,in_greedy_soup")
    assert [r.split(",")[0] for r in rows[1:]] == ["ing1", "ing2", "scrambled", "uniform soup", "greedy soup"]
    md = (soup / "soup.md").read_text()
    assert "| scrambled |" in md and "| greedy soup |" in md and "left out" in md
    for word in ("ing1", "ing2", "scrambled", "uniform soup", "greedy soup", "held-out acc", "held-out images"):
        assert word in out


def test_the_table_says_how_every_row_was_scored(cli_soup):
    """Accuracies in percent; whether TTA was used (the ingredients' training validated with it, and the soup
    says so); each soup's BatchNorm statistics re-measured, the ingredients' as trained; the images named."""
    import csv

    code, out, err, soup = cli_soup
    rows = list(csv.DictReader((soup / "soup.csv").open()))
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 5}
    for r in rows:
        cells = [c.strip() for c in lines[r["name"]].split("│")[1:-1]]
        assert cells[1:4] == [f"{100 * float(r['heldout_acc']):.2f}%", f"{100 * float(r['test_acc']):.2f}%",
                              "as trained" if r["kind"] == "ingredient" else "re-measured"], cells
        assert r["tta"] == "none" and r["batchnorm"] == cells[3]
    assert "without flip TTA" in out and "their best val acc is a TTA figure; --tta to compare" in out
    assert f"re-measured on {BN_IMAGES} training images" in out and "ingredients: as trained" in out
    assert "500 validation images of sample that no ingredient trained on" in out
    md = (soup / "soup.md").read_text()
    assert "| BatchNorm |" in md and "| as trained |" in md and "%" in md


def test_with_tta_an_ingredient_scores_what_its_training_validated(runs, tmp_path):
    """The ingredients' recipe validates with flip TTA: scored so, on the same held-out images (the whole
    validation split, one split seed), an ingredient's held-out accuracy is its run's validation accuracy."""
    from cnnkit.artifacts import read_meta
    from cnnkit.merge import make_soup

    said: list[tuple] = []
    with_tta = make_soup([runs["ing1"], runs["ing2"]], "uniform", bn_images=0, out=tmp_path / "tta", tta=True,
                         progress=lambda *parts: said.append(parts))
    plain = make_soup([runs["ing1"], runs["ing2"]], "uniform", bn_images=0, out=tmp_path / "plain", progress=False)
    assert with_tta.tta and with_tta.trained_with_tta and not plain.tta
    for name in ("ing1", "ing2"):
        val_acc = read_meta(runs[name] / "best.safetensors")["metrics"]["val_acc"]
        assert with_tta.row(name).heldout_acc == pytest.approx(val_acc, abs=0.004)
    assert any(r.heldout_acc != p.heldout_acc for r, p in zip(with_tta.rows, plain.rows))
    # progress lines come in pieces, accuracies as fractions, for the caller to show in its unit
    assert any(p[0] == "  ing1 (as trained): held-out " and p[1] == with_tta.row("ing1").heldout_acc for p in said)
    assert read_meta(with_tta.paths["uniform"])["soup"]["tta"] is True


def test_uniform_soup_weights_are_the_mean_of_the_ingredients(runs, cli_soup):
    from cnnkit.artifacts import read_meta

    soup = load_file(str(cli_soup[3] / "soup-uniform.safetensors"))
    ings = _states(runs["ing1"], runs["ing2"], runs["scrambled"])
    recomputed = 0
    for k, v in soup.items():
        if k.endswith(("running_mean", "running_var")):  # re-measured on the data, not averaged
            recomputed += not torch.allclose(v, torch.stack([s[k] for s in ings]).mean(0))
        elif v.is_floating_point():
            assert torch.equal(v, torch.stack([s[k].double() for s in ings]).mean(0).float()), k
        else:
            assert torch.equal(v, ings[0][k]), k  # num_batches_tracked: the first's
    assert recomputed > 0
    meta = read_meta(cli_soup[3] / "soup-uniform.safetensors")
    assert meta["soup"]["method"] == "uniform" and len(meta["soup"]["ingredients"]) == 3
    assert meta["model_kwargs"] == {"width": 4} and "train_state" not in meta


def test_greedy_never_keeps_an_ingredient_that_lowers_heldout_accuracy(runs, cli_soup):
    from cnnkit.artifacts import read_meta
    from cnnkit.data import Normalize
    from cnnkit.data.compat import load_checkpoint_data
    from cnnkit.merge import Scorer, average_states, bn_subset, held_out_indices, load_ingredients, recompute_bn

    record = read_meta(cli_soup[3] / "soup-greedy.safetensors")["soup"]
    steps = record["steps"]
    assert steps[0]["kept"] and steps[0]["before"] is None
    assert [s["name"] for s in steps][-1] == "scrambled"  # the worst held out, so tried last
    kept_accs = [s["heldout_acc"] for s in steps if s["kept"]]
    assert kept_accs == sorted(kept_accs) and kept_accs[-1] == record["heldout_acc"]
    for s in steps[1:]:
        assert s["kept"] == (s["heldout_acc"] >= s["before"])
    assert not steps[-1]["kept"] and "scrambled" not in record["names"]
    # the scrambled ingredient, cooked again independently, does lower the soup it was offered to
    ings = load_ingredients([runs["ing1"], runs["ing2"], runs["scrambled"]])
    by_name = {i.name: i for i in ings}
    before = [s["name"] for s in steps[:-1] if s["kept"]]
    train = load_checkpoint_data(ings[0].ckpt, None, "train")
    held = held_out_indices(ings, train.labels, train.name)
    best = by_name[steps[0]["name"]].ckpt
    model = best.model
    model.load_state_dict(average_states([by_name[n].state for n in before + ["scrambled"]]))
    recompute_bn(model, train.subset(bn_subset(len(train), held, BN_IMAGES), "bn"), Normalize(*best.normalization), 512)
    acc = Scorer(train.subset(held, "held-out"), torch.device("cpu"), 512)(model, best.normalization)
    assert acc == pytest.approx(steps[-1]["heldout_acc"], abs=1e-9) and acc < steps[-1]["before"]
    assert record["heldout_acc"] > acc + 0.05


def test_a_soup_of_identical_checkpoints_is_that_checkpoint(runs, tmp_path):
    from cnnkit.artifacts import load
    from cnnkit.data import Normalize, load_dataset
    from cnnkit.merge import make_soup, recompute_bn
    from cnnkit.merge import average_states

    r = make_soup([runs["ing1"], runs["ing1"]], method="both", bn_images=0, out=tmp_path / "same", progress=False)
    (ing,) = _states(runs["ing1"])
    for method in ("uniform", "greedy"):  # without BatchNorm re-measuring: the very same network
        soup = load_file(str(r.paths[method]))
        assert soup.keys() == ing.keys() and all(torch.equal(soup[k], ing[k]) for k in ing)
        assert r.row(f"{method} soup").heldout_acc == r.row("ing1").heldout_acc
        assert r.row(f"{method} soup").test_acc == r.row("ing1").test_acc
    assert [row.name for row in r.rows[:2]] == ["ing1", "ing1 #2"]
    # with it: the checkpoint with its BatchNorm statistics re-measured on the same images, bit for bit
    a, b = load(runs["ing1"]), load(runs["ing1"])
    b.model.load_state_dict(average_states([ing, ing, ing]))
    images = load_dataset("sample", "train").subset(torch.arange(200), "bn")
    for m in (a.model, b.model):
        recompute_bn(m, images, Normalize(*a.normalization), 64)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = Normalize(*a.normalization)(images.images[:64])
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))


def test_bn_recompute_gives_the_statistics_of_the_data(runs):
    import copy

    from cnnkit.artifacts import load
    from cnnkit.data import Normalize, load_dataset
    from cnnkit.merge import recompute_bn
    from cnnkit.merge import batchnorms

    ckpt = load(runs["ing1"])
    model, norm = ckpt.model, Normalize(*ckpt.normalization)
    images = load_dataset("sample", "train").subset(torch.arange(250), "bn")  # batches of 64, 64, 64, 58
    bns = batchnorms(model)
    first, deep = bns[0], bns[-1]
    # the reference: each layer's inputs in training mode over the same batches, pooled per channel
    ref = copy.deepcopy(model).train()
    seen: dict[str, list[torch.Tensor]] = {"first": [], "deep": []}
    ref_bns = batchnorms(ref)
    ref_bns[0].register_forward_pre_hook(lambda m, i: seen["first"].append(i[0].detach()))
    ref_bns[-1].register_forward_pre_hook(lambda m, i: seen["deep"].append(i[0].detach()))
    with torch.no_grad():
        for s in range(0, len(images), 64):
            ref(norm(images.images[s:s + 64]))
    momentum = first.momentum
    assert recompute_bn(model, images, norm, batch_size=64) == len(bns)
    for layer, key in ((first, "first"), (deep, "deep")):
        x = torch.cat(seen[key]).double().transpose(0, 1).flatten(1)  # C × (N·H·W)
        assert torch.allclose(layer.running_mean.double(), x.mean(1), rtol=1e-4, atol=1e-5)
        assert torch.allclose(layer.running_var.double(), x.var(1), rtol=1e-4, atol=1e-5)
    assert first.momentum == momentum and not model.training and not any(m.training for m in model.modules())
    assert recompute_bn(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()), images, norm) == 0


def test_held_out_images_are_ones_no_ingredient_trained_on(runs, tmp_path):
    from cnnkit.artifacts import load, save_checkpoint
    from cnnkit.data import load_dataset
    from cnnkit.errors import ConfigError
    from cnnkit.merge import held_out_indices, load_ingredients

    train = load_dataset("sample", "train")
    trained = runs["trained"]
    same = load_ingredients([runs["ing1"], runs["ing2"], runs["ing3"]])
    held = held_out_indices(same, train.labels, "sample")
    assert len(held) == 500  # one split seed: the whole validation split (10% of 5,000)
    with pytest.warns(UserWarning, match="only .* held out by every ingredient"):
        mixed = load_ingredients([runs["ing1"], runs["ing2"], runs["other-split"]])
        held_mixed = held_out_indices(mixed, train.labels, "sample")
    assert 0 < len(held_mixed) < 100 and torch.isin(held_mixed, held).all()
    assert all(trained[name] for name in ("base", "ing1", "ing2", "ing3", "other-split"))
    assert not _digest(train.images[held]) & (trained["base"] | trained["ing1"] | trained["ing2"] | trained["ing3"])
    everyone = trained["base"] | trained["ing1"] | trained["ing2"] | trained["other-split"]
    assert len(_digest(train.images[held]) & trained["other-split"]) > 300  # what the intersection removed
    assert not _digest(train.images[held_mixed]) & everyone
    # an ingredient that held out nothing leaves nothing to choose on: one line saying what to do
    c = load(runs["ing2"])
    c.meta["config"]["val_fraction"] = 0.0
    (tmp_path / "all").mkdir()
    save_checkpoint(tmp_path / "all" / "best.safetensors", c.model, c.meta)
    with pytest.raises(ConfigError, match="val-fraction above 0 and the same --split-seed"):
        held_out_indices(load_ingredients([runs["ing1"], tmp_path / "all"]), train.labels, "sample")


def test_ingredients_without_a_shared_initialization_are_warned_about(runs):
    from cnnkit.merge import load_ingredients

    with pytest.warns(UserWarning, match="do not share an initialization .*base records no initialization"):
        load_ingredients([runs["base"], runs["ing1"]])


def test_bad_ingredients_are_one_line_and_exit_2(runs, tmp_path, capsys):
    from cnnkit.artifacts import load, save_checkpoint
    from cnnkit.models import create

    c = load(runs["ing1"])
    wide = create("resnet9", num_classes=10, in_chans=1, width=8)
    (tmp_path / "wide").mkdir()
    save_checkpoint(tmp_path / "wide" / "best.safetensors", wide, {**c.meta, "model_kwargs": {"width": 8}})
    (tmp_path / "notes.safetensors").write_text("not a checkpoint")
    cases = [
        ([runs["ing1"], tmp_path / "wide"], "model options differ ({'width': 4} vs {'width': 8})"),
        ([runs["ing1"]], "at least 2 ingredients"),
        ([runs["ing1"], tmp_path / "missing"], "no such checkpoint or run directory"),
        ([runs["ing1"], tmp_path / "notes.safetensors"], "not a readable safetensors file"),
        ([runs["ing1"], runs["ing2"], "--method", "soupiest"], "--method must be greedy, uniform or both"),
    ]
    for args, message in cases:
        code, out, err = run(capsys, "soup", *map(str, args), "--out", str(tmp_path / "s"), "--quiet")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err and not (tmp_path / "s").exists()  # refused before anything is written
    assert str(tmp_path / "wide") in run(capsys, "soup", str(runs["ing1"]), str(tmp_path / "wide"))[2]
