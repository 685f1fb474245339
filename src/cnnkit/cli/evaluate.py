"""`cnnkit eval` and `cnnkit predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import stdout, summary
from cnnkit.cli.options import (Adapt, AdaptAlpha, Amp, Checkpoint, DataDir, Device, IgnoreClassNames, Strict,
                                TentLr, Tta, check_early, check_out_folder)
from cnnkit.errors import ConfigError


def eval_(
    checkpoint: Checkpoint,
    data: Annotated[Optional[str], typer.Option(help="Dataset to evaluate on (default: the checkpoint's own, with "
                                                     "the test split it held out).")] = None,
    data_dir: DataDir = None,
    split: Annotated[str, typer.Option(help="train, val (the images the run held out for validation: choose "
                                            "settings there) or test; a corruption benchmark corrupts test or "
                                            "val.")] = "test",
    tta: Tta = False,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the JSON and confusion matrix (default: the "
                                                     "run).")] = None,
    device: Device = "auto",
    strict: Strict = False,
    ignore_class_names: IgnoreClassNames = False,
    amp: Amp = "off",
    adapt: Adapt = None,
    alpha: AdaptAlpha = None,
    tent_lr: TentLr = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch (what --adapt adapts to).")] = 512,
    images_per_cell: Annotated[Optional[int], typer.Option(min=1, help="Corruption benchmarks: evaluate this many "
                                                                       "images of each cell (stratified, "
                                                                       "seeded).")] = None,
) -> None:
    """Evaluate a checkpoint: top-1/top-5, per-class precision/recall/F1, ECE, confusion matrix; on a corruption
    benchmark (fashion-mnist-c, mnist-c, cifar10-c, sample-c) the error per corruption and severity."""
    check_out_folder(out)
    check_early(device=device, checkpoint=checkpoint, amp=amp)
    from cnnkit.evaluate.adapt import check_adapt

    check_adapt(adapt, alpha, tent_lr)
    from cnnkit.artifacts import resolve_checkpoint
    from cnnkit.data.corruptions import parse_benchmark

    out_dir = out or resolve_checkpoint(checkpoint).parent
    if data is not None and parse_benchmark(data) is not None:
        if split not in ("test", "val") or tta:
            raise ConfigError(f"{data.split(':')[0]} corrupts the test split (or, with --split val, the run's "
                              f"validation images): leave out --tta, and use --split test or val")
        _eval_corruptions(checkpoint, data, data_dir, out_dir, device, amp, adapt, alpha, tent_lr, batch_size,
                          images_per_cell, split)
        return
    if images_per_cell is not None:
        raise ConfigError("--images-per-cell applies to corruption benchmarks (e.g. --data fashion-mnist-c)")
    from cnnkit.evaluate import evaluate

    r = evaluate(checkpoint, data, split, data_dir=data_dir, tta=tta, device=device, out_dir=out_dir, strict=strict,
                 ignore_class_names=ignore_class_names, amp=amp, adapt=adapt, alpha=alpha, tent_lr=tent_lr,
                 batch_size=batch_size)
    m = r.metrics
    if m.get("per_class"):  # a classifier's precision, recall and F1 per class
        t = Table(title="per class", title_justify="left")
        for c in ("class", "precision", "recall", "F1", "support"):
            t.add_column(c, justify="left" if c == "class" else "right")
        for row in m["per_class"]:
            t.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
        stdout.print(t)
    summary("eval", {"checkpoint": m["checkpoint"], "data": m["data"], "split": m["split"], "images": m["images"],
                     **({"adapt": _adapt_words(m["adapt"])} if adapt else {}), **r.summary,
                     "json": r.json_path, **r.figures})


def _adapt_words(record: dict[str, Any]) -> str:
    extra = {"alpha-bn": f", alpha {record.get('alpha')}", "tent": f", lr {record.get('lr')}"}.get(record["method"], "")
    return f"{record['method']} (batch {record['batch_size']}{extra})"


def _eval_corruptions(checkpoint: Path, data: str, data_dir: Optional[Path], out_dir: Path, device: str, amp: str,
                      adapt: Optional[str], alpha: Optional[float], tent_lr: float, batch_size: int,
                      images_per_cell: Optional[int], split: str) -> None:
    from cnnkit.evaluate import evaluate_corruptions

    r = evaluate_corruptions(checkpoint, data, data_dir=data_dir, batch_size=batch_size, device=device, amp=amp,
                             adapt=adapt, alpha=alpha, tent_lr=tent_lr, images_per_cell=images_per_cell,
                             out_dir=out_dir, split=split)
    severities = sorted({s for row in r.errors.values() for s in row})
    t = Table(title="top-1 error per corruption and severity", title_justify="left")
    t.add_column("corruption")
    for sev in severities:
        t.add_column(str(sev), justify="right")
    t.add_column("mean", justify="right")
    for corruption, row in r.errors.items():
        t.add_row(corruption, *(f"{row[sev]:.3f}" if sev in row else "" for sev in severities),
                  f"{sum(row.values()) / len(row):.3f}")
    stdout.print(t)
    m = r.metrics
    summary("eval", {"checkpoint": m["checkpoint"], "data": data,
                     "split": "val (the run's validation images)" if split == "val" else "test",
                     "images per cell": images_per_cell or "all",
                     "adapt": _adapt_words(m["adapt"]) if adapt else "none",
                     "clean error": f"{r.clean_error:.4f}",
                     "mean corruption error": f"{r.mean_corruption_error:.4f}", "json": r.json_path})


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Run directory (its best checkpoint), a .safetensors "
                                                            "file or an exported artifact (.onnx, .pt2, "
                                                            ".ts).")] = None,
    url: Annotated[Optional[str], typer.Option(help="Ask a running `cnnkit serve` instead: "
                                                    "http://HOST:PORT/v1/models/NAME (token from "
                                                    "$CNNKIT_TOKEN).")] = None,
    topk: Annotated[int, typer.Option(min=1, help="How many classes to show per image.")] = 3,
    tta: Tta = False,
    device: Device = "auto",
    strict: Strict = False,
    amp: Amp = "off",
    adapt: Adapt = None,
    alpha: AdaptAlpha = None,
    tent_lr: TentLr = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch (what --adapt adapts to), in the order "
                                                        "given.")] = 256,
) -> None:
    """Top-k classes for image files of any size and mode (here, or by a running service with --url)."""
    if (checkpoint is None) == (url is None):
        raise ConfigError("give --checkpoint RUN (predict here) or --url http://HOST:PORT/v1/models/NAME "
                          "(ask a running cnnkit serve), one of the two")
    if url is not None:
        local = [o for o, given in (("--tta", tta), ("--strict", strict), ("--device", device != "auto"),
                                    ("--amp", amp != "off"), ("--adapt", adapt is not None)) if given]
        if local:
            raise ConfigError(f"{', '.join(local)} set how predictions run here; with --url the service decides "
                              f"(start it with the options you want), so leave them out")
        rows = _predict_remote(url, inputs, topk)
        source = {"service": url}
    else:
        check_early(device=device, amp=amp)
        from cnnkit.evaluate.adapt import check_adapt

        check_adapt(adapt, alpha, tent_lr)
        from cnnkit.evaluate import predict as predict_files

        preds = predict_files(checkpoint, inputs, topk=topk, tta=tta, device=device, strict=strict, amp=amp,
                              adapt=adapt, alpha=alpha, tent_lr=tent_lr, batch_size=batch_size)
        rows = [(str(p.path), p.shown) for p in preds]
        source = {"checkpoint": checkpoint}
    t = Table(title="predictions", title_justify="left")
    t.add_column("image", overflow="fold")
    for i in range(max(len(top) for _, top in rows)):
        t.add_column(f"#{i + 1}")
    for name, shown in rows:
        t.add_row(name, *shown)
    stdout.print(t)
    summary("predict", {"images": len(rows), **source})


def _predict_remote(url: str, inputs: list[Path], topk: int) -> list[tuple[str, list[str]]]:
    """Predictions of a running service for image files (folders expanded), in requests of up to 32 images, as
    the table shows them (a classifier's answers: the class and its probability)."""
    from cnnkit.data.images import list_image_files
    from cnnkit.serve.client import Client

    files = list_image_files(list(inputs))
    rows = []
    with Client(url) as client:
        for i in range(0, len(files), 32):
            part = files[i:i + 32]
            for f, p in zip(part, client.predict(part, topk)):
                rows.append((str(f), [f"{c['class']} {c['probability']:.1%}" for c in p["top"]]))
    return rows
