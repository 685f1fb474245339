"""Training: `fit`, recipes, the run's phases (setup, loop, checkpoints, budgets), resume and lr_find."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnkit.lazy import lazy_getattr

# name -> the module that defines it; imported on first use, so that `import cnnkit.<package>.<module>`
# of a light module (the CLI's start-up) does not import torch
_EXPORTS = {
    "parse_budget": "cnnkit.train.budget",
    "RECIPES": "cnnkit.train.config",
    "TrainConfig": "cnnkit.train.config",
    "resolve_config": "cnnkit.train.config",
    "EpochEnd": "cnnkit.train.trainer",
    "FitResult": "cnnkit.train.trainer",
    "fit": "cnnkit.train.trainer",
    "LrFindResult": "cnnkit.train.range_test",
    "lr_find": "cnnkit.train.range_test",
    "FAMILY_RECIPES": "cnnkit.train.recipes",
    "family_recipe": "cnnkit.train.recipes",
    "prepare_run": "cnnkit.train.setup",
}

if TYPE_CHECKING:  # what static tools (type checkers, the API reference) read
    from cnnkit.train.budget import parse_budget
    from cnnkit.train.config import RECIPES, TrainConfig, resolve_config
    from cnnkit.train.trainer import EpochEnd, FitResult, fit
    from cnnkit.train.range_test import LrFindResult, lr_find
    from cnnkit.train.recipes import FAMILY_RECIPES, family_recipe
    from cnnkit.train.setup import prepare_run

__all__ = ["parse_budget", "RECIPES", "TrainConfig", "resolve_config", "EpochEnd", "FitResult", "fit",
           "LrFindResult", "lr_find", "FAMILY_RECIPES", "family_recipe", "prepare_run"]


__getattr__ = lazy_getattr(globals(), _EXPORTS)
