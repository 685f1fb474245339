"""The training chains as a user runs them, each step a process of its own given what the last one wrote: the
model card against the model and settings `train` really uses; pretrain → features → probe; pretrain →
train --init-from (no --model) → eval."""

from __future__ import annotations

import json

import pytest
import yaml

from cnnkit.artifacts import load
from tests.cli.chain import cnnkit, ok


@pytest.fixture(scope="module")
def rot(tmp_path_factory):
    """A folder holding a tiny RotNet run, `rot` (NIN-3 at an eighth of its width, one epoch of 300 images)."""
    folder = tmp_path_factory.mktemp("chain")
    ok(cnnkit("pretrain", "--model", "nin3", "--model-kw", "width=0.125", "--epochs", "1", "--train-images", "300",
              "--batch-size", "64", "--out", "rot", "--quiet", cwd=folder))
    return folder


def card(*args: str, cwd) -> dict:  # noqa: ANN001
    return json.loads(ok(cnnkit("models", "info", *args, "--no-timing", "--json", cwd=cwd)))


def test_models_info_reports_the_model_and_settings_train_uses(tmp_path):
    """`models info resnet9` once described ResNet-9 at width 64 with another recipe's batch and lr: it must
    describe what `train --model resnet9` builds and trains with on the same data."""
    ok(cnnkit("train", "--model", "resnet9", "--data", "sample", "--train-images", "400", "--epochs", "1", "--out",
              "r", "--quiet", cwd=tmp_path))
    shown = card("resnet9", cwd=tmp_path)
    built = load(tmp_path / "r").model
    assert shown["params"] == sum(p.numel() for p in built.parameters())
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    t = shown["training"]
    assert (t["batch_size"], t["lr"], t["warmup_epochs"], t["model_recipe"]) == (
        saved["batch_size"], saved["lr"], saved["warmup_epochs"], saved["model_recipe"])
    assert shown["model_kwargs"] == saved["model_kwargs"] and shown["data"] == saved["data"] == "sample"


def test_probe_measures_the_features_file_as_it_measures_the_network(rot):
    """`features` writes what `probe --features` needs (both splits, pooled as probe pools by default), and
    probing the file scores what probing the network scores, on the same images."""
    ok(cnnkit("features", "--checkpoint", "rot", "--out", "feats.safetensors", "--limit", "200", "--quiet", cwd=rot))
    ok(cnnkit("probe", "--features", "feats.safetensors", "--checkpoint", "rot", "--train-images", "200",
              "--test-images", "200", "--out", "p", "--quiet", cwd=rot))
    rows = json.loads((rot / "p" / "probe.json").read_text())["rows"]
    by = {src: [(r["layer"], r["dims"], r["test_acc"]) for r in rows if r["source"] == src]
          for src in ("rot", "feats.safetensors")}
    assert len(by["rot"]) == 3 and by["feats.safetensors"] == by["rot"]
    assert by["rot"][0][1] == 9 * 12  # avg3 in both: a 3×3 grid of averages of block1's 12 channels


def test_a_pretrained_run_trains_its_own_model_when_no_model_is_given(rot):
    """`train --init-from RUN` once built ResNet-9 and failed on a tensor count: without --model it trains the
    run's model and options, says so, and the run evaluates; its card matches it too."""
    r = cnnkit("train", "--init-from", "rot", "--data", "sample", "--train-images", "400", "--epochs", "1",
               "--batch-size", "100", "--out", "ft", cwd=rot)
    ok(r)
    assert "a nin3 run, trained as its model (--model nin3 --model-kw width=0.125); loaded" in r.stderr
    saved = yaml.safe_load((rot / "ft" / "config.yaml").read_text())
    assert (saved["model"], saved["model_kwargs"], saved["model_recipe"]) == ("nin3", {"width": 0.125}, "nin")
    ok(cnnkit("eval", "--checkpoint", "ft", "--data", "sample", "--quiet", cwd=rot))
    report = json.loads(next((rot / "ft").glob("eval-*.json")).read_text())
    assert report["images"] == 1000
    shown = card("nin3", "--model-kw", "width=0.125", cwd=rot)
    assert shown["params"] == sum(p.numel() for p in load(rot / "ft").model.parameters())
    assert shown["training"]["lr"] == saved["lr"] and shown["training"]["model_recipe"] == "nin"
