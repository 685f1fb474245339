"""`cnnkit models`: list and inspect the registered models."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cnnkit.cli.console import stdout, summary
from cnnkit.cli.options import DataDir, ModelKw, check_early, parse_kv
from cnnkit.data.settings import AugmentConfig
from cnnkit.errors import ModelError


def list_(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell-style pattern or substring.")] = None,
    timm: Annotated[bool, typer.Option("--timm", help="Include every timm model (as timm/<name>).")] = False,
    task: Annotated[str, typer.Option(help="The task's models: classify, segment, ... or all.")] = "classify",
) -> None:
    """Registered model names."""
    from cnnkit.models import get_entry, list_models
    from cnnkit.tasks import get_task

    if task != "all":
        get_task(task)  # an unknown task: one line with the registered ones
    names = list_models(pattern, include_timm=timm, task=None if task == "all" else task)
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
    data: Annotated[Optional[str], typer.Option(help="The data `cnnkit train` would train it on (default sample, as "
                                                     "train's): its input size, classes and recipe.")] = None,
    data_dir: DataDir = None,
    recipe: Annotated[Optional[str], typer.Option(help="fast or long, as train's --recipe (default fast).")] = None,
    input: Annotated[Optional[str], typer.Option("--input", help="Input C×H×W, e.g. 1x28x28, instead of the "
                                                                 "data's.")] = None,
    classes: Annotated[Optional[int], typer.Option(min=1, help="Classes of the head, instead of the "
                                                               "data's.")] = None,
    model_kw: ModelKw = None,
    timing: Annotated[bool, typer.Option("--timing/--no-timing", help="Measure CPU latency and throughput.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the card as JSON.")] = False,
) -> None:
    """A model card of what `cnnkit train --model NAME` builds for the data: parameters, MACs, activation memory,
    per-stage shapes, options, measured CPU speed, and the training settings train would use."""
    from cnnkit.models.card import model_card, parse_input
    from cnnkit.train.config import resolve_config

    check_early(model=name, model_kwargs=parse_kv(model_kw))
    given = {"model": name, "model_kwargs": parse_kv(model_kw) or None, "data": data, "recipe": recipe,
             "data_dir": str(data_dir) if data_dir else None}
    cfg = resolve_config(given)  # exactly as `cnnkit train` resolves it: the recipe's model options included
    shape = parse_input(input) if input else None
    if shape is None or classes is None:  # the data decides what the command line did not
        found = _data_shape(cfg)
        shape, classes = shape or found[0], classes or found[1]
    try:
        card = model_card(name, shape, classes, timing, **cfg.model_kwargs)
    except ModelError as e:
        if input is not None:
            raise
        raise ModelError(f"{e} (the input is {cfg.data}'s images, {'×'.join(map(str, shape))}; give --data or "
                         f"--input CxHxW for another)") from None
    training = training_settings(cfg)
    if json_out:
        stdout.print_json(json.dumps({**card.to_dict(), "data": cfg.data, "training": training,
                                      "recipe": _family_info(cfg.model_recipe)}))
        return
    c, h, w = card.input
    options = ", ".join(f"{k}={v}" for k, v in card.model_kwargs.items()) or "none (the defaults)"
    rows = {"model": card.name, "family": card.family, "paper": card.paper or "-", "options": options,
            "input": f"{c}×{h}×{w} ({cfg.data})" if input is None else f"{c}×{h}×{w}",
            "classes": card.num_classes, "parameters": f"{card.params:,} ({card.params / 1e6:.2f} M)",
            "MACs": f"{card.macs:,} ({card.macs / 1e6:.1f} M)",
            "activation memory": f"{card.activation_bytes / 2**20:.2f} MiB (sum of layer outputs, batch 1, fp32)"}
    if card.latency_ms is not None:
        rows["latency, batch 1"] = f"{card.latency_ms:.2f} ms (fp32, {card.threads} threads, median)"
        rows["throughput, batch 64"] = f"{card.throughput:,.0f} images/s (fp32, {card.threads} threads, median)"
    summary("model", rows)
    _show_training(cfg, training, given)
    _show_stages_and_options(card)


def _data_shape(cfg) -> tuple[tuple[int, int, int], int]:  # noqa: ANN001 - a TrainConfig
    """The input C×H×W and the number of classes of the data a run of `cfg` trains on (a restoration network's:
    its training patches as it sees them, shrunk by its scale)."""
    from cnnkit.data import load_dataset

    if cfg.task == "restore":
        from cnnkit.data.base import image_size
        from cnnkit.data.photos import PATCH
        from cnnkit.models import get_entry

        h, w = image_size(cfg.img_size) or (PATCH, PATCH)
        scale = int(cfg.model_kwargs.get("scale", get_entry(cfg.model).defaults().get("scale", 1)))
        return (3, h // scale, w // scale), 1

    ds = load_dataset(cfg.data, "test", data_dir=cfg.data_dir, download=cfg.download, img_size=cfg.img_size,
                      test_fraction=cfg.test_fraction, seed=cfg.data_split_seed,
                      bad_boxes="drop" if cfg.drop_bad_boxes else "error")
    return (ds.in_chans, *ds.img_size), len(ds.classes)


def training_settings(cfg) -> dict[str, Any]:  # noqa: ANN001 - a TrainConfig
    """What a run of `cfg` trains with, as config.yaml names it."""
    keys = ("model_recipe", "recipe", "epochs", "batch_size", "optimizer", "lr", "momentum", "opt_eps",
            "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "ema", "grad_clip", "tta")
    return {**{k: getattr(cfg, k) for k in keys}, "augment": dict(cfg.augment.__dict__)}


def _family_info(model_recipe: str | None) -> dict[str, str] | None:
    """A model family's recipe (name, the paper's original, how it was scaled), None for a dataset recipe."""
    from cnnkit.train.recipes import FAMILY_RECIPES

    r = FAMILY_RECIPES.get(model_recipe or "")
    return None if r is None else {"name": r.name, "paper": r.paper, "scaled": r.scaled}


def _show_training(cfg, training: dict[str, Any], given: dict[str, Any]) -> None:  # noqa: ANN001 - a TrainConfig
    from cnnkit.train.config import RECIPES
    from cnnkit.train.recipes import FamilyRecipe

    family = _family_info(cfg.model_recipe)
    command = " ".join(["cnnkit train --model", cfg.model, *(f"--model-kw {kv}" for kv in _kw_args(given)),
                        "--data", cfg.data, *(["--recipe", given["recipe"]] if given["recipe"] else [])])
    defaults = AugmentConfig().__dict__
    augment = [f"{k}={v}" for k, v in training["augment"].items() if v != defaults[k]]
    extras = [f"label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "",
              f"EMA {cfg.ema:g}" if cfg.ema else "", "flip TTA in validation" if cfg.tta else ""]
    if family is None:  # a dataset recipe ('fast:mnist-like'), tuned for its own model
        recipe, data_family = cfg.model_recipe.split(":")
        told = (f"{cfg.model_recipe} (the {recipe} recipe for {data_family} data, tuned for "
                f"{RECIPES[recipe][data_family]['model']})")
    else:
        told = f"{cfg.model_recipe} family (its paper's, scaled to short runs)"
    rows = {"recipe": told,
            "settings": FamilyRecipe(cfg.model_recipe, training, "", "").describe(),
            "epochs": cfg.epochs, "augmentation": ", ".join(augment) or "none",
            "also": ", ".join(e for e in extras if e) or "-"}
    if family is not None:
        rows.update({"paper": family["paper"], "scaled to short runs": family["scaled"]})
    label = f"{cfg.model_recipe} family" if family is not None else cfg.model_recipe
    summary(f"default training recipe ({label}; `{command}`)", rows)


def _kw_args(given: dict[str, Any]) -> list[str]:
    return [f"{k}={v}" for k, v in (given["model_kwargs"] or {}).items()]


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
