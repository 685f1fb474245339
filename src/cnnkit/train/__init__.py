"""Training: `fit`, recipes, checkpoints and resume."""

from cnnkit.train.checkpoint import LoadedCheckpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from cnnkit.train.config import RECIPES, TrainConfig, resolve_config
from cnnkit.train.fit import EpochEnd, FitResult, evaluate_loader, fit

__all__ = ["fit", "FitResult", "EpochEnd", "evaluate_loader", "TrainConfig", "RECIPES", "resolve_config",
           "load_checkpoint", "LoadedCheckpoint", "resolve_checkpoint", "save_checkpoint"]
