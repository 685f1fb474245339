"""The HTML report of a detection evaluation: COCO's summary metrics, AP per class (table and bars), precision-recall
curves per class at IoU 0.50 and 0.75, and predictions drawn against the ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.report.html import image_tag, table, write_report
from cnnkit.report.plots import plt, save_figure, save_iou_bars

SHOWN_SCORE = 0.25  # the predictions drawn: those scoring at least this (cnnkit predict's default threshold)


def save_pr_curves(curves: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """One panel per IoU threshold ("0.50", "0.75"): each class's precision against recall (N×2 arrays)."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.2), squeeze=False)
    for ax, (iou, per_class) in zip(axes[0], curves.items()):
        for name, pr in per_class.items():
            ax.plot(pr[:, 0], pr[:, 1], lw=1.2, label=name)
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"precision-recall at IoU {iou} (interpolated)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save_figure(fig, path)


def save_box_examples(images: np.ndarray, truth: np.ndarray, detections: np.ndarray, titles: list[str],
                      classes: list[str], path: Path) -> Path:
    """A panel per image (N×C×H×W uint8): its ground-truth boxes (green, dashed) and the detections scoring at
    least SHOWN_SCORE (red, labelled class and score)."""
    from matplotlib.patches import Rectangle

    n = len(images)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, im, tgt, det, title in zip(axes.flat, images, truth, detections, titles):
        ax.imshow(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0), cmap="gray" if im.shape[0] == 1 else None)
        for c, x0, y0, x1, y1 in tgt[tgt[:, 0] >= 0]:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2, ls="--"))
        for x0, y0, x1, y1, score, c in det[(det[:, 5] >= 0) & (det[:, 4] >= SHOWN_SCORE)]:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.0))
            ax.text(x0, y0, f"{classes[int(c)]} {score:.2f}", color="white", fontsize=5, va="bottom",
                    bbox={"facecolor": "red", "alpha": 0.7, "pad": 0.5, "lw": 0})
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    return save_figure(fig, path)


def write_detection_report(out_dir: Path, stem: str, metrics: dict[str, Any], classes: list[str],
                           curves: dict[str, dict[str, np.ndarray]] | None = None,
                           examples: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write `eval-<stem>.html` and its figures in `out_dir` (label -> file). `curves`: precision-recall points
    per IoU threshold and class; `examples`: shown `images`, `truth` (N×M×5), `detections` (N×D×6), one
    `titles` entry and one table row in `rows` each, and the `caption` that says how they were chosen."""
    out_dir = Path(out_dir)
    per_class = {n: (None if v < 0 else v) for n, v in metrics["per_class_ap"].items()}
    figures = {"per-class AP": save_iou_bars(per_class, out_dir / f"ap-{stem}.png",
                                             f"AP@[.5:.95] per class (mAP {metrics['map']:.3f})", xlabel="AP")}
    summary = [{"data": metrics.get("data", ""), "split": metrics.get("split", ""), "images": metrics["images"],
                "objects": metrics["objects"], "detections": metrics["detections"], "mAP@[.5:.95]": metrics["map"],
                "AP50": metrics["map_50"], "AP75": metrics["map_75"], "AP small": metrics["map_small"],
                "AP medium": metrics["map_medium"], "AP large": metrics["map_large"], "AR@1": metrics["mar_1"],
                "AR@10": metrics["mar_10"], "AR@100": metrics["mar_100"]}]
    rows = [{"class": n, "AP@[.5:.95]": "n/a (no objects)" if v is None else v} for n, v in per_class.items()]
    sections = [("Summary (COCO's metrics, pycocotools; -1: no objects of that size)", table(summary)),
                ("AP per class", table(rows) + image_tag(figures["per-class AP"], "AP per class", out_dir))]
    if curves:
        figures["precision-recall"] = save_pr_curves(curves, out_dir / f"pr-{stem}.png")
        sections.append(("Precision-recall curves (COCO's matching; precision made non-increasing, as AP reads it)",
                         image_tag(figures["precision-recall"], "precision-recall curves", out_dir)))
    if examples is not None:
        figures["examples"] = save_box_examples(examples["images"], examples["truth"], examples["detections"],
                                                examples["titles"], classes, out_dir / f"boxes-{stem}.png")
        sections.append((f"Predictions against the ground truth ({examples['caption']})",
                         table(examples["rows"]) + image_tag(figures["examples"], "predictions", out_dir)))
    checkpoint = Path(str(metrics.get("checkpoint", "checkpoint"))).name
    figures["report"] = write_report(out_dir / f"eval-{stem}.html", f"cnnkit eval: {checkpoint} (detection)",
                                     sections)
    return figures
