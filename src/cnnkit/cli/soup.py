"""`cnnkit soup`: average the weights of runs fine-tuned from one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import err, percent, stdout, summary
from cnnkit.cli.options import DataDir, Device, check_early, check_out_folder
from cnnkit.errors import ConfigError


def soup(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories (their best checkpoint) or "
                                                    ".safetensors files of one architecture, fine-tuned from one "
                                                    "initialization.")],
    method: Annotated[str, typer.Option(help="greedy (the paper's recipe: add ingredients while the held-out "
                                             "accuracy does not drop), uniform (average all) or both: the "
                                             "checkpoints written; the table always shows both soups.")] = "greedy",
    data: Annotated[Optional[str], typer.Option(help="Dataset (default: the ingredients' own): its validation split "
                                                     "that no ingredient trained on chooses the soup, its test split "
                                                     "scores it.")] = None,
    data_dir: DataDir = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the soup checkpoints, soup.csv and soup.md "
                                                     "(default soups/<first run's name>).")] = None,
    bn_images: Annotated[int, typer.Option(min=0, help="Training images (not held out) on which each soup's "
                                                       "BatchNorm statistics are measured again; 0 keeps the "
                                                       "averaged ones.")] = 10000,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 512,
    device: Device = "auto",
    tta: Annotated[bool, typer.Option("--tta", help="Score every ingredient and soup with flip test-time "
                                                    "augmentation (as training validates with a recipe's tta); "
                                                    "default: without, as cnnkit eval scores.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines.")] = False,
) -> None:
    """Model soup: average the weights of runs fine-tuned from one checkpoint (uniform or greedy, Wortsman et al. 2022)."""
    if method not in ("greedy", "uniform", "both"):
        raise ConfigError(f"--method must be greedy, uniform or both, got {method!r}")
    check_early(device=device)
    check_out_folder(out)
    from cnnkit.merge import how_scored, make_soup

    r = make_soup([str(p) for p in runs], method, data, data_dir, out, bn_images, device, batch_size,
                  progress=False if quiet else _say, tta=tta)
    n = sum(row.kind == "ingredient" for row in r.rows)
    t = Table(title=f"model soup ({r.data}: held-out and test accuracy, {'with' if tta else 'without'} flip TTA)",
              title_justify="left")
    for col in ("ingredient / soup", "held-out acc", "test acc", "BatchNorm", "in greedy soup"):
        t.add_column(col, justify="right" if col.endswith("acc") else "left")
    for row in r.rows:
        kept = ("yes" if row.kept else "no") if row.kept is not None else f"{len(row.ingredients)} of {n}"
        t.add_row(row.name, percent(row.heldout_acc), percent(row.test_acc), row.batchnorm, kept)
    stdout.print(t)
    summary("soup", {**how_scored(r), "greedy ingredients": ", ".join(r.kept),
                     **{f"{m} soup": r.paths[m] for m in ("greedy", "uniform") if m in r.paths},
                     "table": r.paths["md"], "csv": r.paths["csv"]})


def _say(*parts: object) -> None:
    """A progress line on stderr, its accuracies (the floats among its pieces) in percent."""
    err.print("".join(percent(p) if isinstance(p, float) else str(p) for p in parts), markup=False, emoji=False,
              highlight=False, soft_wrap=True)
