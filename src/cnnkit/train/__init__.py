"""Training: `fit`, recipes, checkpoints and resume."""

from cnnkit.artifacts import LoadedCheckpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from cnnkit.train.config import RECIPES, TrainConfig, resolve_config
from cnnkit.evaluate.loop import evaluate_loader
from cnnkit.train.fit import EpochEnd, FitResult, fit

__all__ = ["fit", "FitResult", "EpochEnd", "evaluate_loader", "TrainConfig", "RECIPES", "resolve_config",
           "load_checkpoint", "LoadedCheckpoint", "resolve_checkpoint", "save_checkpoint"]
