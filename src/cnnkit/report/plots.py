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


def save_confusion_matrix(matrix: Sequence[Sequence[int]], classes: list[str], path: Path,
                          normalize: bool = False) -> Path:
    """The confusion matrix as counts, or with `normalize` each row as shares of its true class (for counts
    too large to read, such as pixels)."""
    n = len(classes)
    m = np.asarray(matrix)
    if normalize:
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2), max(4, 0.6 * n + 1.5)))
    ConfusionMatrixDisplay(m, display_labels=classes).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45, values_format=".2f" if normalize else "d")
    ax.set_title("Confusion matrix (rows: true class" + (", shares of its pixels)" if normalize else ")"))
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


def mask_image(mask: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """An H×W class mask as an H×W×3 RGB image in [0, 1] in the palette's colours (255, ignored: white)."""
    colours = np.full((256, 3), 255, dtype=np.uint8)
    colours[:len(palette)] = np.asarray(palette, dtype=np.uint8)
    return colours[np.asarray(mask, dtype=np.uint8)].astype(np.float32) / 255.0


def mask_patches(masks: list[np.ndarray], classes: list[str], palette: list[tuple[int, int, int]]) -> list:
    """Legend entries for the classes present in any of the masks, in their palette colours."""
    from matplotlib.patches import Patch

    present = sorted({int(v) for m in masks for v in np.unique(m) if int(v) < len(classes)})
    return [Patch(color=np.asarray(palette[c]) / 255.0, label=classes[c]) for c in present]


def save_iou_bars(per_class_iou: dict[str, float | None], path: Path, title: str, xlabel: str = "IoU") -> Path:
    """A horizontal bar per class of its IoU, or the score `xlabel` names (None: no bar, marked n/a)."""
    names = list(per_class_iou)
    values = [np.nan if v is None else float(v) for v in per_class_iou.values()]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
    ax.barh(range(len(names)), np.nan_to_num(values), color="tab:blue")
    for i, v in enumerate(values):
        ax.text(0.01 if np.isnan(v) else v + 0.01, i, "n/a" if np.isnan(v) else f"{v:.2f}", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.1), xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def save_mask_overlays(images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, titles: Sequence[str],
                       classes: list[str], palette: list[tuple[int, int, int]], path: Path) -> Path:
    """A row per image (N×C×H×W uint8): the image, its ground-truth mask and the predicted mask over it (palette
    colours, half transparent), titled; a legend of the classes shown."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.4 * n), squeeze=False)
    for row, im, t, p, title in zip(axes, images, truth, predicted, titles):
        base = im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)
        cmap = "gray" if im.shape[0] == 1 else None
        for ax, mask, what in zip(row, (None, t, p), ("image", "ground truth", "prediction")):
            ax.imshow(base, cmap=cmap)
            if mask is not None:
                ax.imshow(mask_image(mask, palette), alpha=0.55, interpolation="nearest")
            ax.set_title(f"{title}: {what}" if what == "image" else what, fontsize=7)
            ax.axis("off")
    fig.legend(handles=mask_patches(list(truth) + list(predicted), classes, palette), fontsize=7,
               loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save_figure(fig, path)
