"""Explanations of a CNN's decisions: `explain(model, images, targets, method, layer)` -> maps."""

from cnnkit.explain.cam import CAM_METHODS, Explanation, explain, resolve_layer
from cnnkit.explain.gradients import GRADIENT_METHODS

__all__ = ["CAM_METHODS", "GRADIENT_METHODS", "Explanation", "explain", "resolve_layer"]
