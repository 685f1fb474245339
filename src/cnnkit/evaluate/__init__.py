"""Evaluation metrics and prediction on image files."""

from cnnkit.evaluate.api import EvalResult, Prediction, evaluate, predict
from cnnkit.evaluate.metrics import classification_report, expected_calibration_error, topk_accuracy

__all__ = ["evaluate", "predict", "EvalResult", "Prediction", "classification_report",
           "expected_calibration_error", "topk_accuracy"]
