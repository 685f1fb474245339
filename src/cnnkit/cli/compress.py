"""`cnnkit compress`: quantize and prune a checkpoint, and measure every variant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import err, machine_format, print_rows, stdout, summary
from cnnkit.cli.options import Checkpoint, CsvOutput, DataDir, IgnoreClassNames, JsonOutput


def compress(
    checkpoint: Checkpoint,
    recipe: Annotated[list[str], typer.Option(help="int8, qat8, qat4, prune:R, prune:R+int8 or sparse:R (R: fraction "
                                                   "of MACs, or of weights for sparse); repeatable.")],
    out: Annotated[Path, typer.Option(help="Folder for the artifacts, compress.json, report.html and pareto.png.")],
    data: Annotated[Optional[str], typer.Option(help="Calibration, fine-tuning and test data (default: the "
                                                     "checkpoint's dataset).")] = None,
    data_dir: DataDir = None,
    calibration: Annotated[int, typer.Option(min=1, help="Training images used to calibrate int8 "
                                                         "activations.")] = 512,
    observer: Annotated[str, typer.Option(help="Activation calibration: minmax, percentile or mse (MSE histogram "
                                               "search in PyTorch, entropy in ONNX Runtime).")] = "mse",
    quantizer: Annotated[str, typer.Option(help="PT2E int8 quantizer: auto (this CPU's: x86 or arm), x86 or "
                                                "arm.")] = "auto",
    finetune_epochs: Annotated[float, typer.Option(min=0.0, help="Fine-tuning epochs for qat*, prune and "
                                                                 "sparse.")] = 1.0,
    lr: Annotated[Optional[float], typer.Option(help="Fine-tuning learning rate (default 1e-3 QAT, 1e-2 "
                                                     "otherwise).")] = None,
    criterion: Annotated[str, typer.Option(help="Pruning criterion: l1, bn, taylor, lamp or lasso.")] = "l1",
    scope: Annotated[str, typer.Option(help="Pruning scope: uniform (per layer) or global.")] = "uniform",
    rounds: Annotated[int, typer.Option(min=1, help="Prune-then-fine-tune rounds.")] = 1,
    round_to: Annotated[Optional[int], typer.Option(min=1, help="Keep pruned channel counts multiples of this (8 or "
                                                                "16 suit AVX2/AVX-512 kernels).")] = None,
    distill: Annotated[bool, typer.Option("--distill", help="Distil from the uncompressed model while "
                                                            "fine-tuning.")] = False,
    rewind: Annotated[Optional[Path], typer.Option(help="sparse: rewind the masked weights to this early checkpoint "
                                                        "(lottery ticket); default: the trained weights.")] = None,
    train_images: Annotated[Optional[int], typer.Option(min=1, help="Fine-tune on this many training "
                                                                    "images.")] = None,
    repeats: Annotated[int, typer.Option(min=3, help="Timed batch-1 runs per variant.")] = 30,
    test_images: Annotated[Optional[int], typer.Option(min=1, help="Score every variant on a stratified, seeded "
                                                                   "subset of this many test images (default: "
                                                                   "all).")] = None,
    onnx: Annotated[bool, typer.Option(help="Also write float and int8 ONNX models (ONNX Runtime).")] = True,
    ignore_class_names: IgnoreClassNames = False,
    as_json: JsonOutput = False,
    as_csv: CsvOutput = False,
) -> None:
    """Quantize and prune a checkpoint; write the artifacts and an HTML report measuring every variant."""
    from cnnkit.compress import compress as compress_checkpoint

    fmt = machine_format(as_json, as_csv)
    r = compress_checkpoint(checkpoint, recipe, out, data=data, data_dir=data_dir, calibration=calibration,
                            observer=observer, quantizer=quantizer, finetune_epochs=finetune_epochs, lr=lr,
                            criterion=criterion, scope=scope, rounds=rounds, round_to=round_to, distill=distill,
                            rewind=rewind, train_images=train_images, repeats=repeats, onnx=onnx,
                            test_images=test_images, log=lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True),
                            ignore_class_names=ignore_class_names)
    if fmt:
        print_rows(r.rows, fmt)
        return
    from cnnkit.compress.report import delta_key, in_decibels, metric_of, shown_metric

    key, label = metric_of(r.rows)  # top-1, mIoU for a segmentation model, PSNR for a restoration model
    t = Table(title="compress", title_justify="left")
    for c in ("variant", "runtime", "path", label, "Δ dB" if in_decibels(key) else "Δ pts", "KiB", "p50 ms", "img/s"):
        # a narrow terminal folds cells onto more lines, never cuts a path short
        t.add_column(c, justify="left" if c in ("variant", "runtime", "path") else "right", overflow="fold")
    for row in r.rows:
        t.add_row(row["variant"], row["runtime"], row["target"], shown_metric(key, row[key]),
                  f"{row[delta_key(key)]:+.2f}", f"{row['file_bytes'] / 1024:.0f}", f"{row['latency_ms_p50']:.2f}",
                  f"{row['images_per_s']:.0f}")
    stdout.print(t)
    summary("compress", {"folder": r.out_dir, "report": r.html_path, "json": r.json_path, "pareto": r.png_path})
