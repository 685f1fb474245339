"""`cnnkit features` and `cnnkit probe`: what a network's layers represent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import percent, stdout, summary
from cnnkit.cli.options import Checkpoint, DataDir, Device, Quiet, check_early, check_out_folder
from cnnkit.errors import ConfigError


def features(
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Option(help="The .safetensors file to write: per split, one tensor per layer, and "
                                           "labels.")],
    data: Annotated[Optional[str], typer.Option(help="Dataset (default: the checkpoint's own); its labels are "
                                                     "saved.")] = None,
    data_dir: DataDir = None,
    layer: Annotated[str, typer.Option(help="blocks (the output of every block), a module name, or several, "
                                            "comma-separated.")] = "blocks",
    pool: Annotated[str, typer.Option(help="avg3 (a 3×3 grid of averages, as cnnkit probe), avg or max (global, one "
                                           "value per channel), or none (the maps).")] = "avg3",
    split: Annotated[str, typer.Option(help="both (train and test: what cnnkit probe --features needs), train or "
                                            "test.")] = "both",
    limit: Annotated[Optional[int], typer.Option(min=1, help="A stratified subset of this many images (of each "
                                                             "split).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Frozen features of a network's layers, with the images' labels, in one safetensors file."""
    check_early(device=device)
    if split not in ("both", "train", "test"):
        raise ConfigError(f"--split must be both, train or test, got {split!r}")
    if pool not in ("avg", "max", "avg3", "none"):
        raise ConfigError(f"--pool must be avg, max, avg3 or none, got {pool!r}")
    from cnnkit.represent import feature_splits, save_features

    splits = ("train", "test") if split == "both" else (split,)
    parts = feature_splits(checkpoint, splits, device, data=data, layer=layer, pool=pool, data_dir=data_dir,
                           batch_size=batch_size, limit=limit, progress=not quiet)
    path = save_features(parts, out)
    f = parts[0]
    summary("features", {"file": path, "data": f.data, "pool": f.pool,
                         "images": ", ".join(f"{p.split} {len(p.labels)}" for p in parts),
                         **{n: "×".join(map(str, t.shape[1:])) for n, t in f.layers.items()}})


def probe(
    checkpoint: Annotated[Optional[list[Path]], typer.Option(
        help="Run directory or .safetensors checkpoint (repeatable: a RotNet run and a supervised one in one "
             "table).")] = None,
    features: Annotated[Optional[list[Path]], typer.Option(
        help="A file `cnnkit features` wrote (both splits), probed as it is (repeatable).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Dataset to probe on (default: the first checkpoint's own, or "
                                                     "the features file's).")] = None,
    data_dir: DataDir = None,
    layer: Annotated[str, typer.Option(help="blocks (every block; a features file: every layer it holds), a module "
                                            "name, or several, comma-separated.")] = "blocks",
    head: Annotated[str, typer.Option(help="linear, svm, knn, mlp or conv; several comma-separated.")] = "linear",
    pool: Annotated[Optional[str], typer.Option(
        help="Pooling for linear, svm, knn and mlp: avg3 (a 3×3 grid of averages; the default, as cnnkit "
             "features'), avg or max (global), or none (the maps, flattened). A features file keeps its "
             "own.")] = None,
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
    if pool is not None and pool not in ("avg", "max", "avg3", "none"):
        raise ConfigError(f"--pool must be avg, max, avg3 or none, got {pool!r}")
    from cnnkit.represent import probe as probe_layers

    heads = [h.strip() for h in head.split(",") if h.strip()]
    rows = probe_layers([str(c) for c in checkpoint or []], data, layer, heads, pool, data_dir, train_images_per_class,
                        train_images, test_images, random_init, pixels, epochs, device, seed, out, progress=not quiet,
                        features=[str(f) for f in features or []])
    t = Table(title="probes on frozen features (test accuracy)", title_justify="left")
    for col in ("source", "layer", "head", "test acc", "train acc", "dims"):
        t.add_column(col, justify="right" if col in ("test acc", "train acc", "dims") else "left")
    for r in rows:
        t.add_row(r.source, r.layer, r.head, percent(r.test_acc),
                  "—" if r.train_acc != r.train_acc else percent(r.train_acc), str(r.dims))
    stdout.print(t)
    if out is not None:
        summary("probe", {"table": out / "probe.md", "json": out / "probe.json"})
