"""The HTML report of a segmentation evaluation: mIoU and the other summary metrics, per-class IoU (table and
bar chart), the confusion matrix and overlays of predictions against the ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.report.html import image_tag, table, write_report
from cnnkit.report.plots import save_confusion_matrix, save_iou_bars, save_mask_overlays


def write_segmentation_report(out_dir: Path, stem: str, metrics: dict[str, Any], classes: list[str],
                              palette: list[tuple[int, int, int]], examples: dict[str, Any] | None = None
                              ) -> dict[str, Path]:
    """Write `eval-<stem>.html` and its figures in `out_dir` (label -> file). `examples`, when given, holds the
    shown images (`images` N×C×H×W uint8, `truth` and `predicted` N×H×W masks, one `titles` entry and one
    table row in `rows` each) and `caption`, which says how they were chosen."""
    out_dir = Path(out_dir)
    iou = metrics["per_class_iou"]
    figures = {
        "per-class IoU": save_iou_bars(iou, out_dir / f"iou-{stem}.png", f"per-class IoU (mIoU {metrics['miou']:.3f})"),
        "confusion matrix": save_confusion_matrix(metrics["confusion_matrix"], classes,
                                                  out_dir / f"confusion-{stem}.png", normalize=True),
    }
    summary = [{"data": metrics.get("data", ""), "split": metrics.get("split", ""), "images": metrics["images"],
                "pixels": metrics["pixels"], "mIoU": metrics["miou"], "pixel accuracy": metrics["pixel_accuracy"],
                "mean class accuracy": metrics["mean_class_accuracy"], "flip TTA": metrics.get("tta", False)}]
    rows = [{"class": n, "IoU": "n/a (neither present nor predicted)" if v is None else v,
             "pixels (ground truth)": int(np.asarray(metrics["confusion_matrix"])[i].sum())}
            for i, (n, v) in enumerate(iou.items())]
    sections = [("Summary", table(summary)),
                ("Per-class IoU", table(rows) + image_tag(figures["per-class IoU"], "per-class IoU", out_dir)),
                ("Confusion matrix", image_tag(figures["confusion matrix"], "confusion matrix", out_dir))]
    if examples is not None:
        figures["overlays"] = save_mask_overlays(examples["images"], examples["truth"], examples["predicted"],
                                                 examples["titles"], classes, palette, out_dir / f"overlays-{stem}.png")
        sections.append((f"Predictions against the ground truth ({examples['caption']})",
                         table(examples["rows"])
                         + image_tag(figures["overlays"], "predictions against the ground truth", out_dir)))
    checkpoint = Path(str(metrics.get("checkpoint", "checkpoint"))).name
    figures["report"] = write_report(out_dir / f"eval-{stem}.html", f"cnnkit eval: {checkpoint} (segmentation)",
                                     sections)
    return figures
