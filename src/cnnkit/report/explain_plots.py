"""Figures of explanations: the image and each method's overlay with a colour bar; image grids for
class-model images, activation maximization and feature maps; the first layer's filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnkit.report.plots import mask_image, mask_patches, plt, save_figure


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """C×H×W (uint8 or float) -> what imshow takes, each image scaled to [0, 1] on its own."""
    im = np.asarray(image, dtype=np.float32)
    lo, hi = float(im.min()), float(im.max())
    im = (im - lo) / (hi - lo) if hi > lo else np.zeros_like(im)
    if im.ndim == 3 and im.shape[0] == 3:
        return im.transpose(1, 2, 0), None
    return (im[0] if im.ndim == 3 else im), "gray"


def _draw_box(ax, box) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", lw=1.2))


def save_explanation_figure(image: np.ndarray, overlays: dict[str, np.ndarray], path: Path, classes: list[str],
                            pred: int, target: int, box=None, scores: dict[str, str] | None = None) -> Path:
    """One row: the image, then each method's map (H×W in [0, 1]) over it with a colour bar."""
    base, cmap = _display(image)
    n = 1 + len(overlays)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 0.4, 2.9))
    axes = np.atleast_1d(axes)
    axes[0].imshow(base, cmap=cmap)
    axes[0].set_title("image", fontsize=8)
    for ax, (method, m) in zip(axes[1:], overlays.items()):
        ax.imshow(base, cmap=cmap)
        im = ax.imshow(np.asarray(m, dtype=np.float32), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
        ax.set_title(method + (f"\n{scores[method]}" if scores and method in scores else ""), fontsize=8)
    for ax in axes:
        ax.axis("off")
        if box is not None:
            _draw_box(ax, box)
    fig.suptitle(f"predicted: {classes[pred]} · explained: {classes[target]}", fontsize=9)
    return save_figure(fig, Path(path))


def save_image_grid(images: np.ndarray, path: Path, titles: list[str] | None = None, cols: int = 8,
                    title: str | None = None) -> Path:
    """N×C×H×W images in a grid, each scaled to [0, 1] on its own (gray for one channel, RGB for three)."""
    images = np.asarray(images)
    n = len(images)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.75 * rows + (0.3 if title else 0)))
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    for i, ax in enumerate(list(np.atleast_1d(axes).flat)[:n]):
        im, cmap = _display(images[i])
        ax.imshow(im, cmap=cmap)
        if titles:
            ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, Path(path))


def save_filter_grid(grid: np.ndarray, path: Path, title: str) -> Path:
    """A 3×H×W grid (as `first_layer_filters` returns) as one image."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(np.asarray(grid, dtype=np.float32).transpose(1, 2, 0), interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, Path(path))


def save_segmentation_explanation(image: np.ndarray, predicted: np.ndarray, overlays: dict[str, np.ndarray],
                                  region: np.ndarray, path: Path, classes: list[str],
                                  palette: list[tuple[int, int, int]], target: int,
                                  scores: dict[str, str] | None = None) -> Path:
    """One row: the image, the predicted mask (palette colours, with a legend), then each method's map over
    the image with the explained region outlined in white."""
    base, cmap = _display(image)
    n = 2 + len(overlays)
    fig, axes = plt.subplots(1, n, figsize=(2.8 * n + 1.0, 3.0))
    axes[0].imshow(base, cmap=cmap)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(mask_image(predicted, palette), interpolation="nearest")
    axes[1].set_title("predicted mask", fontsize=8)
    axes[1].legend(handles=mask_patches([predicted], classes, palette), fontsize=6, loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    for ax, (method, m) in zip(axes[2:], overlays.items()):
        ax.imshow(base, cmap=cmap)
        im = ax.imshow(np.asarray(m, dtype=np.float32), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.contour(np.asarray(region, dtype=np.float32), levels=[0.5], colors="white", linewidths=0.8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
        ax.set_title(method + (f"\n{scores[method]}" if scores and method in scores else ""), fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"Seg-Grad-CAM of {classes[target]} over the outlined region", fontsize=9)
    return save_figure(fig, Path(path))
