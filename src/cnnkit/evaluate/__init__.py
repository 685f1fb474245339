"""Evaluation metrics and prediction on image files."""

from cnnkit.evaluate.api import (CorruptionResult, EvalResult, Prediction, evaluate, evaluate_corruptions,
                                 predict)
from cnnkit.evaluate.metrics import classification_report, expected_calibration_error, topk_accuracy

__all__ = ["evaluate", "evaluate_corruptions", "predict", "CorruptionResult", "EvalResult", "Prediction", "classification_report",
           "expected_calibration_error", "topk_accuracy"]
