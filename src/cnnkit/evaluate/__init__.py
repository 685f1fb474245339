"""Evaluation of a checkpoint on a dataset split, corruption benchmarks, and prediction on image files,
driven by the checkpoint's task (`cnnkit.tasks`)."""

from cnnkit.evaluate.api import (CorruptionResult, EvalResult, Prediction, evaluate, evaluate_corruptions,
                                 predict, task_of)
from cnnkit.evaluate.loop import evaluate_loader, validation_sums

__all__ = ["evaluate", "evaluate_corruptions", "predict", "task_of", "CorruptionResult", "EvalResult", "Prediction",
           "evaluate_loader", "validation_sums"]
