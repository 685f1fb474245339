"""Figures shared by every step: confusion matrix, learning curves, prediction grids (PNG, headless)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from cnnkit.artifacts import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Render a figure to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def save_confusion_matrix(matrix: Sequence[Sequence[int]], classes: list[str], path: Path) -> Path:
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2), max(4, 0.6 * n + 1.5)))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=classes).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45, values_format="d")
    ax.set_title("Confusion matrix (rows: true class)")
    return save_figure(fig, path)


def save_learning_curves(history: list[dict[str, float]], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    b.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    if any(not np.isnan(h.get("val_acc", float("nan"))) for h in history):
        a.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
        b.plot(epochs, [h["val_acc"] for h in history], "s-", label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    b.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def save_prediction_grid(images: np.ndarray, true: Sequence[int], pred: Sequence[int], conf: Sequence[float],
                         classes: list[str], path: Path, cols: int = 8) -> Path:
    """Images (N×C×H×W uint8) with predicted class and confidence; wrong ones titled in red."""
    n = len(images)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.75))
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    for ax, im, t, p, c in zip(np.atleast_1d(axes).flat, images, true, pred, conf):
        ax.imshow(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0), cmap="gray" if im.shape[0] == 1 else None)
        ax.set_title(f"{classes[p]}\n{c:.0%}" + ("" if p == t else f" (true: {classes[t]})"),
                     fontsize=6.5, color="black" if p == t else "red")
    return save_figure(fig, path)
