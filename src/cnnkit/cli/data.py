"""`cnnkit data`: prepare data sets: shards of an image folder, and the bundled sample as image files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cnnkit.cli.console import err, summary
from cnnkit.cli.options import check_out_folder, parse_img_size


def shard(
    source: Annotated[str, typer.Argument(help="The images: imagefolder:<dir>.")],
    out: Annotated[Path, typer.Option(help="Folder for the shards and manifest.json: new, or one `cnnkit data shard` "
                                           "wrote.")],
    shard_size: Annotated[str, typer.Option(help="Largest shard file: e.g. 500MB, 1GB, 64KiB or bytes (KB, MB, GB: "
                                                 "powers of 1000; KiB, MiB, GiB: of 1024).")] = "1GiB",
    val_fraction: Annotated[float, typer.Option(help="Fraction of each class of the train split held out as "
                                                     "val.")] = 0.1,
    split_seed: Annotated[int, typer.Option(help="Seed of the test and val splits and of the order samples are "
                                                 "written in.")] = 0,
    test_fraction: Annotated[float, typer.Option(help="Fraction of each class held out as test (a flat folder "
                                                      "only).")] = 0.2,
    img_size: Annotated[Optional[str], typer.Option("--img-size", help="Size images are decoded to: N or HxW "
                                                                       "(default: their own when shared, else "
                                                                       "64).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the shards an earlier `cnnkit data shard` wrote in "
                                                 "--out.")] = False,
) -> None:
    """Write an image folder as WebDataset tar shards (train, val, test) and their manifest.json."""
    from cnnkit.data.shards import MANIFEST_NAME, parse_size, write_shards

    size = parse_size(shard_size)
    check_out_folder(out)
    manifest = write_shards(source, out, size, val_fraction, split_seed, test_fraction, parse_img_size(img_size),
                            overwrite=overwrite)
    rows: dict[str, Any] = {}
    for split, entry in manifest["splits"].items():
        rows[split] = (f"{entry['images']} images in {len(entry['shards'])} shard(s), "
                       f"{entry['bytes'] / 2**20:.1f} MiB")
    rows["skipped"] = f"{manifest['skipped']} unreadable image(s)"
    rows["manifest"] = str(out / MANIFEST_NAME)
    summary("shards", rows)


def export_sample(
    out: Annotated[Path, typer.Argument(metavar="DIR", help="Folder to write the images into: new, or one "
                                                            "`cnnkit data export-sample` wrote.")],
    split: Annotated[str, typer.Option(help="Which of the sample's splits to write: train, test or "
                                            "both.")] = "both",
    limit: Annotated[Optional[int], typer.Option(help="Write only the first N images of each class (default: "
                                                      "all, 500 train and 100 test).")] = None,
) -> None:
    """Write the bundled sample as an image folder of PNG files: DIR/train/<class>/00000.png, ..., DIR/test/...,
    and DIR/classes.json, so that --data imagefolder:DIR reads the sample's classes under its names and order."""
    from cnnkit.data.bundled import export_sample as write_sample

    done = write_sample(out, split, limit, log=lambda line: err.print(f"cnnkit data export-sample: {line}",
                                                                      soft_wrap=True, markup=False,
                                                                      highlight=False))
    rows: dict[str, Any] = {s: f"{n} images in {out / s}/<class>/" for s, n in done["images"].items()}
    rows["classes"] = f"{len(done['classes'])}, listed in {done['class_file']}"
    rows["use"] = f"--data imagefolder:{out}"
    summary("sample exported", rows)
