"""Training: `fit`, recipes, checkpoints and resume."""

from cnnkit.artifacts import LoadedCheckpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from cnnkit.train.config import RECIPES, TrainConfig, resolve_config
from cnnkit.evaluate.loop import evaluate_loader
from cnnkit.train.budget import parse_budget
from cnnkit.train.fit import EpochEnd, FitResult, fit
from cnnkit.train.lr_find import LrFindResult, lr_find
from cnnkit.train.recipes import FAMILY_RECIPES, family_recipe

__all__ = ["fit", "FitResult", "EpochEnd", "evaluate_loader", "TrainConfig", "RECIPES", "resolve_config",
           "lr_find", "LrFindResult", "parse_budget", "FAMILY_RECIPES", "family_recipe",
           "load_checkpoint", "LoadedCheckpoint", "resolve_checkpoint", "save_checkpoint"]
