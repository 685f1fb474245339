"""Errors a user can cause. The CLI prints their message alone and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnkitError(Exception):
    """Base class: the message says what went wrong and what to do."""

    exit_code = 2


class DataError(CnnkitError):
    """A dataset, image or folder cannot be used."""


class ModelError(CnnkitError):
    """A model name, option or input shape is not valid."""


class ExplainError(CnnkitError):
    """A method, layer, target or image that cannot be explained."""


class ExportError(CnnkitError):
    """An export that failed or did not reproduce the model's outputs."""


class CompressError(CnnkitError):
    """Quantization or pruning cannot run as asked (bad ratio, too little calibration data, untraceable model)."""


class CheckpointError(CnnkitError):
    """A checkpoint is missing, incomplete or does not match the model."""


class ConfigError(CnnkitError):
    """A training or evaluation option is not valid."""


class TrainingDiverged(CnnkitError):
    """The loss became NaN or infinite."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean: a, b?)' suffix naming the closest choices, or ''."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


def error_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type's name), for one-line error messages."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
