"""`cnnkit features` and `cnnkit probe`: what a network's layers represent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import stdout, summary
from cnnkit.cli.options import Checkpoint, DataDir, Device, Quiet, check_early, check_out_folder
from cnnkit.errors import ConfigError


def features(
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Option(help="The .safetensors file to write: one tensor per layer, and labels.")],
    data: Annotated[Optional[str], typer.Option(help="Dataset (default: the checkpoint's own); its labels are "
                                                     "saved.")] = None,
    data_dir: DataDir = None,
    layer: Annotated[str, typer.Option(help="blocks (the output of every block), a module name, or several, "
                                            "comma-separated.")] = "blocks",
    pool: Annotated[str, typer.Option(help="avg or max (global, one value per channel), avg3 (a 3×3 grid of "
                                           "averages), or none (the maps).")] = "avg",
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option(min=1, help="A stratified subset of this many images.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Frozen features of a network's layers, with the images' labels, in one safetensors file."""
    check_early(device=device)
    if split not in ("train", "test"):
        raise ConfigError(f"--split must be train or test, got {split!r}")
    if pool not in ("avg", "max", "avg3", "none"):
        raise ConfigError(f"--pool must be avg, max, avg3 or none, got {pool!r}")
    from cnnkit.represent import features as layer_features
    from cnnkit.represent import save_features

    f = layer_features(checkpoint, data, layer, pool, split, data_dir, batch_size, device, limit, progress=not quiet)
    path = save_features(f, out)
    summary("features", {"file": path, "images": len(f.labels), "data": f"{f.data} ({split})",
                         **{n: "×".join(map(str, t.shape[1:])) for n, t in f.layers.items()}})


def probe(
    checkpoint: Annotated[list[Path], typer.Option(help="Run directory or .safetensors file (repeatable: a RotNet "
                                                        "run and a supervised one in one table).")],
    data: Annotated[Optional[str], typer.Option(help="Dataset to probe on (default: the first checkpoint's "
                                                     "own).")] = None,
    data_dir: DataDir = None,
    layer: Annotated[str, typer.Option(help="blocks (every block), a module name, or several, "
                                            "comma-separated.")] = "blocks",
    head: Annotated[str, typer.Option(help="linear, svm, knn, mlp or conv; several comma-separated.")] = "linear",
    pool: Annotated[str, typer.Option(help="Pooling for linear, svm, knn and mlp: avg3 (a 3×3 grid of averages), "
                                           "avg or max (global), or none (the maps, flattened).")] = "avg3",
    train_images_per_class: Annotated[Optional[int], typer.Option(min=1, help="Train the probes on K images per "
                                                                              "class.")] = None,
    train_images: Annotated[Optional[int], typer.Option(min=1, help="Train the probes on a subset of this "
                                                                    "many.")] = None,
    test_images: Annotated[Optional[int], typer.Option(min=1, help="Score on a subset of this many test "
                                                                   "images.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Add the first checkpoint's architecture at "
                                                                    "random initialization as a baseline.")] = False,
    pixels: Annotated[bool, typer.Option("--pixels", help="Add the heads on raw pixels as a baseline.")] = False,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of the mlp and conv heads.")] = 30,
    out: Annotated[Optional[Path], typer.Option(help="Folder for probe.json and probe.md.")] = None,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the subsets and the heads.")] = 0,
    quiet: Quiet = False,
) -> None:
    """How good frozen features are: a classifier per layer on top of them, scored on the test split."""
    check_early(device=device)
    check_out_folder(out)
    from cnnkit.represent import probe as probe_layers

    heads = [h.strip() for h in head.split(",") if h.strip()]
    rows = probe_layers([str(c) for c in checkpoint], data, layer, heads, pool, data_dir, train_images_per_class,
                        train_images, test_images, random_init, pixels, epochs, device, seed, out, progress=not quiet)
    t = Table(title="probes on frozen features (test accuracy)", title_justify="left")
    for col in ("source", "layer", "head", "test acc", "train acc", "dims"):
        t.add_column(col, justify="right" if col in ("test acc", "train acc", "dims") else "left")
    for r in rows:
        t.add_row(r.source, r.layer, r.head, f"{100 * r.test_acc:.2f}",
                  "—" if r.train_acc != r.train_acc else f"{100 * r.train_acc:.2f}", str(r.dims))
    stdout.print(t)
    if out is not None:
        summary("probe", {"table": out / "probe.md", "json": out / "probe.json"})
