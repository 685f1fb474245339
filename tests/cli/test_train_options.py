"""`cnnkit train`'s options are TrainConfig's: one option per field with a help text, with that text, and each
value given on the command line reaches the config as the field's value."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import typer

import cnnkit.train
from cnnkit.cli import app, main
from cnnkit.train.config import TrainConfig

OPTION_FIELDS = [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


def command(name: str):  # noqa: ANN201 - typer's click command
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("verb", ["train", "distill"])
def test_every_option_field_is_an_option_with_its_text(verb):
    options = {p.name: p for p in command(verb).params}
    for f in OPTION_FIELDS:
        assert f.name in options, f"{f.name} is not an option of cnnkit {verb}"
        p = options[f.name]
        assert p.help == f.metadata["help"] and p.default is None
        assert p.opts == [f.metadata.get("option", "--" + f.name.replace("_", "-"))]


def test_pretrain_offers_a_subset_with_the_same_texts():
    """(Its --model and --data are its own: other defaults, nin4 and sample.)"""
    texts = {f.name: f.metadata["help"] for f in OPTION_FIELDS}
    shared = [p for p in command("pretrain").params if p.name in texts and p.name not in ("model", "data")]
    assert {p.name for p in shared} >= {"epochs", "budget", "device", "amp", "out"}
    assert all(p.help == texts[p.name] for p in shared)


def test_each_value_reaches_the_config_as_the_fields_value(tmp_path, monkeypatch, capsys):
    given = {}

    def fit(**kwargs):  # noqa: ANN202 - stands in for cnnkit.train.fit
        given.update(kwargs)
        cfg = SimpleNamespace(model="resnet9", data="sample", distill=None, teachers=[], task="classify", tta=False)
        return SimpleNamespace(history=[{"epoch": 1, "train_acc": 0.5}], config=cfg, run_dir=tmp_path,
                               best_val_acc=None, stopped_early=False, seconds=1.0, best_checkpoint=tmp_path)

    monkeypatch.setattr(cnnkit.train, "fit", fit)
    code = main(["train", "--model", "resnet9", "--model-kw", "width=8", "--budget", "3m", "--img-size", "48x32",
                 "--augment", "hflip=false", "--keep-epoch", "2", "--keep-epoch", "3", "--data-dir", "d",
                 "--no-channels-last", "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert given["model_kwargs"] == {"width": 8} and given["budget"] == 180.0 and given["img_size"] == [48, 32]
    assert given["augment"] == {"hflip": False} and given["keep_epochs"] == [2, 3] and given["data_dir"] == "d"
    assert given["channels_last"] is False and given["out"] == str(tmp_path / "run") and given["device"] == "cpu"
    assert given["progress"] is False and given["resume"] is None
    assert given["epochs"] is None and given["tta"] is None  # not given: the recipe decides
    TrainConfig.from_dict({k: v for k, v in given.items()
                           if v is not None and k not in ("resume", "overwrite", "progress")})


def test_the_help_says_what_each_option_takes():
    from cnnkit.data.corruptions import BENCHMARKS
    from cnnkit.data.settings import BENCHMARK_DATASETS, TRAINING_DATASETS, AugmentConfig
    from cnnkit.data.sources import DATASETS

    # the light list the help is made from (the CLI starts without torch) names the data table's sets
    assert sorted(TRAINING_DATASETS + BENCHMARK_DATASETS) == sorted(DATASETS)
    assert sorted(BENCHMARK_DATASETS) == sorted(BENCHMARKS)
    texts = {p.name: p.help for p in command("train").params}
    assert all(name in texts["data"] for name in TRAINING_DATASETS)
    assert all(f.name in texts["augment"] for f in dataclasses.fields(AugmentConfig))
    assert "default on" not in texts["channels_last"] and "measured" in texts["channels_last"]
    checkpoint = next(p.help for p in command("eval").params if p.name == "checkpoint")
    assert all(kind in checkpoint for kind in (".safetensors", ".onnx", ".pt2", "int8"))
    assert ".ts" not in checkpoint and "TorchScript" not in checkpoint  # refused since int8 became a .pt2


def test_webdataset_validates_on_its_val_shards_and_refuses_another_fraction(tmp_path, capsys):
    from cnnkit.data.settings import DEFAULT_VAL_FRACTION

    code = main(["train", "--data", f"webdataset:{tmp_path}", "--val-fraction", "0.3", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "its val shards are the validation split" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    for fraction in (0.0, DEFAULT_VAL_FRACTION):  # none, or the val shards
        TrainConfig(data=f"webdataset:{tmp_path}", val_fraction=fraction)
