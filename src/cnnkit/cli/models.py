"""`cnnkit models`: list and inspect the registered models."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import stdout, summary
from cnnkit.cli.options import ModelKw, parse_kv


def list_(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell-style pattern or substring.")] = None,
    timm: Annotated[bool, typer.Option("--timm", help="Include every timm model (as timm/<name>).")] = False,
) -> None:
    """Registered model names."""
    from cnnkit.models import get_entry, list_models

    names = list_models(pattern, include_timm=timm)
    rows = [(n, "timm", "", "") if n.startswith("timm/") else
            (n, get_entry(n).family, get_entry(n).default_input, get_entry(n).paper) for n in names]
    if not stdout.is_terminal:  # for pipes and files: plain lines, tab-separated, nothing cut or wrapped
        sys.stdout.write("".join("\t".join(r).rstrip("\t") + "\n" for r in rows))
        return
    t = Table(title="models", title_justify="left")
    for c in ("name", "family", "input", "paper"):
        t.add_column(c)
    for n, family, size, paper in rows:
        t.add_row(n, family, size.replace("x", "×"), paper)
    stdout.print(t)
    summary("models", {"listed": len(names)})


def info(
    name: Annotated[str, typer.Argument(help="Model name (see `cnnkit models list`).")],
    input: Annotated[Optional[str], typer.Option("--input", help="Input C×H×W, e.g. 1x28x28 (default: the "
                                                                 "model's).")] = None,
    classes: Annotated[int, typer.Option(min=1, help="Number of classes of the head.")] = 10,
    model_kw: ModelKw = None,
    timing: Annotated[bool, typer.Option("--timing/--no-timing", help="Measure CPU latency and throughput.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the card as JSON.")] = False,
) -> None:
    """A model card: parameters, MACs, activation memory, per-stage shapes, options and measured CPU speed."""
    from cnnkit.models.card import model_card
    from cnnkit.train.recipes import family_recipe

    card = model_card(name, input, classes, timing, **parse_kv(model_kw))
    recipe = family_recipe(name, card.family)
    recipe_info = {"name": recipe.name, "settings": recipe.settings, "paper": recipe.paper, "scaled": recipe.scaled}
    if json_out:
        stdout.print_json(json.dumps({**card.to_dict(), "recipe": recipe_info}))
        return
    c, h, w = card.input
    rows = {"model": card.name, "family": card.family, "paper": card.paper or "-", "input": f"{c}×{h}×{w}",
            "classes": card.num_classes, "parameters": f"{card.params:,} ({card.params / 1e6:.2f} M)",
            "MACs": f"{card.macs:,} ({card.macs / 1e6:.1f} M)",
            "activation memory": f"{card.activation_bytes / 2**20:.2f} MiB (sum of layer outputs, batch 1, fp32)"}
    if card.latency_ms is not None:
        rows["latency, batch 1"] = f"{card.latency_ms:.2f} ms (fp32, {card.threads} threads, median)"
        rows["throughput, batch 64"] = f"{card.throughput:,.0f} images/s (fp32, {card.threads} threads, median)"
    summary("model", rows)
    summary(f"default training recipe ({recipe.name} family; `cnnkit train --model {name}`)",
            {"settings": recipe.describe(), "paper": recipe.paper, "scaled to short runs": recipe.scaled})
    _show_stages_and_options(card)


def _show_stages_and_options(card) -> None:  # noqa: ANN001 - cnnkit.models.card's ModelCard
    t = Table(title="stages", title_justify="left")
    for col in ("module", "output C×H×W"):
        t.add_column(col)
    for n, shape in card.stages:
        t.add_row(n, "×".join(str(s) for s in shape))
    stdout.print(t)
    if card.options:
        t = Table(title="options (--model-kw key=value)", title_justify="left")
        t.add_column("option")
        t.add_column("meaning", overflow="fold")
        for o, doc in card.options.items():
            t.add_row(o, doc)
        stdout.print(t)
