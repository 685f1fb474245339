"""The report of a training run: metrics, learning curves, confusion matrix and example predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.report.html import image_tag, table, write_report
from cnnkit.report.plots import save_confusion_matrix, save_learning_curves, save_prediction_grid


def write_run_report(fit: Any, ev: Any, path: Path | None = None, grid: int = 32) -> Path:
    """Write `<run>/report.html` with its figures in `<run>/report/`; returns the HTML path. `fit` is the
    `cnnkit.train.FitResult` of the run (run_dir, config, history, seconds), `ev` the
    `cnnkit.evaluate.EvalResult` of its test evaluation: report sits below both steps and imports neither."""
    path = Path(path or fit.run_dir / "report.html")
    fig_dir = path.parent / "report"
    m = ev.metrics
    classes = ev.data.classes
    curves = save_learning_curves(fit.history, fig_dir / "learning_curves.png")
    confusion = save_confusion_matrix(m["confusion_matrix"], classes, fig_dir / "confusion_matrix.png")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(ev.labels), size=min(grid, len(ev.labels)), replace=False))
    conf, pred = ev.probs[pick].max(1)
    examples = save_prediction_grid(ev.data.images[pick].numpy(), ev.labels[pick].tolist(), pred.tolist(),
                                    conf.tolist(), classes, fig_dir / "predictions.png")
    cfg = fit.config
    summary = [{"model": cfg.model, "data": cfg.data, "epochs": len(fit.history),
                "train seconds": round(fit.seconds, 1), "evaluated on": f"{m['data']}, split {m['split']}",
                "images": m["images"],
                "top-1": m["top1"], "top-5": m["top5"], "macro F1": m["macro_f1"], "ECE": m["ece"]}]
    sections = [
        ("Summary", table(summary)),
        ("Learning curves", image_tag(curves, "learning curves", path.parent)),
        ("Confusion matrix", image_tag(confusion, "confusion matrix", path.parent)),
        ("Per-class metrics", table([{k: v for k, v in r.items()} for r in m["per_class"]])),
        (f"Predictions on {grid} images of the {m['split']} split (red: wrong)", image_tag(examples, "predictions", path.parent)),
        ("Training history", table([{k: v for k, v in h.items()} for h in fit.history])),
    ]
    return write_report(path, f"cnnkit run: {cfg.model} on {cfg.data}", sections)
