from __future__ import annotations

import pytest

from cnnkit.errors import ConfigError
from cnnkit.train import RECIPES, TrainConfig, resolve_config


def test_recipe_sets_defaults_and_user_options_win():
    cfg = resolve_config({"data": "fashion-mnist", "recipe": "long", "epochs": 3})
    assert cfg.epochs == 3
    assert cfg.ema == RECIPES["long"]["mnist-like"]["ema"]
    assert cfg.augment.crop_padding == RECIPES["long"]["mnist-like"]["augment"]["crop_padding"]
    cfg = resolve_config({"data": "sample", "augment": {"mixup": 0.2}})
    assert cfg.augment.mixup == 0.2 and cfg.augment.hflip  # merged into the recipe's augmentation


def test_recipe_model_options_apply_only_to_the_recipe_model():
    cfg = resolve_config({"data": "sample", "model": "resnet20"})
    assert cfg.model == "resnet20" and cfg.model_kwargs == {}
    assert resolve_config({"data": "sample"}).model_kwargs == RECIPES["fast"]["mnist-like"]["model_kwargs"]


def test_round_trip_through_dict():
    cfg = resolve_config({"data": "cifar10", "recipe": "fast"})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad,match", [
    ({"recipe": "fastest"}, "did you mean: fast"),
    ({"optimizer": "adam"}, "optimizer must be"),
    ({"lr": -1.0}, "learning rate must be positive"),
    ({"ema": 1.0}, "EMA decay"),
    ({"augment": {"policy": "autoaugment"}}, "unknown augmentation policy"),
    ({"epoch": 3}, "unknown training option"),
])
def test_bad_options_are_clear_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(bad)
