"""Model soups (Wortsman et al., ICML 2022, "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time"): one network whose weights are the average of several
networks fine-tuned from one initialization with different seeds, learning rates or augmentations.

Two recipes, as in the paper:

- the *uniform soup* averages every ingredient;
- the *greedy soup* (the paper's Recipe 1) sorts the ingredients by held-out accuracy, best first, starts from
  the best and adds each next one only if the soup's held-out accuracy does not drop.

The held-out images are those of the validation split that no ingredient trained on: each ingredient's
validation split is recomputed from its checkpoint (its `val_fraction` and split seed), and so is that of the
run it was fine-tuned from when that is a cnnkit checkpoint on the same data; the soup is chosen on their
intersection. Ingredients trained with the same `--split-seed` share the whole split.

BatchNorm: the paper's ingredients (CLIP ViTs, LayerNorm) had none. A CNN's BatchNorm running statistics are
the statistics of the activations of the network that computed them; the average of several networks'
running statistics is not the statistics of the averaged network's activations, and using them costs
accuracy (sometimes all of it). So after averaging, every soup's running means and variances are measured
again (`recompute_bn`) on training images that are not held out, before it is scored, the soups tried during
the greedy search included: the held-out figure is then that of the network that is saved. A network without
BatchNorm skips this step.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import atomic_write_text, claim_dir, save_checkpoint
from cnnkit.data import BatchLoader, ImageData, Normalize
from cnnkit.data.compat import load_checkpoint_data
from cnnkit.errors import ConfigError
from cnnkit.merge.average import average_states, recompute_bn
from cnnkit.merge.ingredients import Ingredient, bn_subset, held_out_indices, load_ingredients

METHODS = ("greedy", "uniform", "both")


@dataclass
class SoupRow:
    """One line of the table: an ingredient, the uniform soup or the greedy soup."""

    name: str
    kind: str  # "ingredient", "uniform soup" or "greedy soup"
    heldout_acc: float
    test_acc: float
    kept: bool | None  # ingredients: whether the greedy soup holds it; soups: None
    ingredients: list[str]  # soups: the ingredients averaged; an ingredient: itself
    checkpoint: str | None = None  # the ingredient's file, or the soup's file when it was written
    batchnorm: str = ""  # "as trained" (an ingredient), "re-measured" or "averaged" (a soup's statistics)


@dataclass
class GreedyStep:
    """One try of the greedy search: the soup with `name` added scored `heldout_acc`; kept if not below the
    soup before it (`before`; None for the first, the best ingredient alone)."""

    name: str
    heldout_acc: float
    before: float | None
    kept: bool


@dataclass
class SoupResult:
    rows: list[SoupRow]
    paths: dict[str, Path]  # "uniform"/"greedy" checkpoints written, "csv", "md"
    steps: list[GreedyStep]
    kept: list[str]  # the greedy soup's ingredients, in the order they were added
    heldout_images: int
    bn_images: int  # training images the BatchNorm statistics were measured on (0: not recomputed)
    data: str
    out: Path
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # "uniform", "greedy": eval mode
    test_images: int = 0
    tta: bool = False  # every row scored with flip test-time augmentation
    trained_with_tta: bool = False  # the ingredients' training validated with it (their "best val acc" did)

    def row(self, name: str) -> SoupRow:
        return next(r for r in self.rows if r.name == name)


# -- scoring -----------------------------------------------------------------------------------------------

class Scorer:
    """Accuracy of a model on one image set, with loaders cached per normalization; `tta` averages each
    image's prediction with its mirror's (flip test-time augmentation, as training validates with `tta`)."""

    def __init__(self, data: ImageData, device: torch.device, batch_size: int, tta: bool = False):
        self.data, self.device, self.batch_size, self.tta = data, device, batch_size, tta
        self.loaders: dict[tuple, BatchLoader] = {}

    def __call__(self, model: nn.Module, norm: tuple[list[float], list[float]]) -> float:
        """Top-1 accuracy of `model` on the set, its inputs normalized by `norm` (mean, std)."""
        from cnnkit.evaluate.loop import evaluate_loader

        key = (tuple(norm[0]), tuple(norm[1]))
        if key not in self.loaders:
            self.loaders[key] = BatchLoader(self.data, self.batch_size, Normalize(*norm, self.device))
        probs, labels = evaluate_loader(model.eval(), self.loaders[key], self.device, None, self.tta)
        return float((probs.argmax(1) == labels).float().mean())


# A progress line in pieces: text, and accuracies (fractions, floats) that the receiver shows in its unit
Say = Callable[..., None]


def _printer(*parts: Any) -> None:
    print("".join(f"{p:.4f}" if isinstance(p, float) else str(p) for p in parts), file=sys.stderr, flush=True)


# -- the soup ------------------------------------------------------------------------------------------------

def make_soup(ingredients: list[str | os.PathLike], method: str = "greedy", data: str | None = None,
              data_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
              bn_images: int = 10000, device: str = "auto", batch_size: int = 512,
              progress: bool | Say = True, tta: bool = False) -> SoupResult:
    """Average the weights of `ingredients` (run directories or checkpoints of one architecture, fine-tuned
    from one initialization) into the uniform and the greedy soup, score every ingredient and both soups on
    the held-out images (the validation split no ingredient trained on) and on the test split of `data`
    (default: the ingredients' own dataset), and write into `out` (default `soups/<first run's name>`)
    `soup-greedy.safetensors` and/or `soup-uniform.safetensors` (`method`: greedy, uniform or both) and the
    table, `soup.csv` and `soup.md`, which always holds both soups. `bn_images` training images (not held out)
    re-measure each soup's BatchNorm statistics; 0 keeps the averaged ones. Ingredients and soups are scored
    alike (`tta`: with flip test-time augmentation), on the same images; the ingredients as they are.
    `progress`: lines on stderr (True), or a `Say` that receives each line's pieces."""
    from cnnkit.runtime import pick_device

    check_options(method, bn_images, batch_size)
    dev = pick_device(device)  # chosen once: the ingredients load there, and every soup is cooked there
    ings = load_ingredients(list(ingredients), dev)
    out_dir = Path(out).expanduser() if out is not None else Path("soups") / _run_name(ingredients[0])
    images = soup_images(ings, data, data_dir, bn_images)
    claim_dir(out_dir)
    say: Say = progress if callable(progress) else _printer if progress else (lambda *a: None)
    say(f"soup of {len(ings)} ingredients: {len(images.heldout)} held-out images of {images.data}, "
        f"{len(images.test)} test images, {'with' if tta else 'without'} flip TTA"
        + (f"; each soup's BatchNorm statistics re-measured on {len(images.bn)} training images"
           if images.bn is not None else ""))
    score_held, score_test = Scorer(images.heldout, dev, batch_size, tta), Scorer(images.test, dev, batch_size, tta)
    held_acc = [score_held(i.ckpt.model, i.ckpt.normalization) for i in ings]
    test_acc = [score_test(i.ckpt.model, i.ckpt.normalization) for i in ings]
    for i, h, t in zip(ings, held_acc, test_acc):
        say(f"  {i.name} (as trained): held-out ", h, ", test ", t)
    order = sorted(range(len(ings)), key=lambda k: -held_acc[k])  # stable: ties keep the given order
    kitchen = Kitchen(ings, ings[order[0]], images.bn, score_held, dev, batch_size)
    soups = cook_soups(kitchen, order, score_test, say)
    paths = write_soups(kitchen, soups, method, images, out_dir, tta)
    result = SoupResult(soup_rows(ings, held_acc, test_acc, soups, paths, kitchen.bn_images), paths, soups.steps,
                        [ings[k].name for k in soups.kept], len(images.heldout), kitchen.bn_images, images.data,
                        out_dir, soups.models, len(images.test), tta, all(_validated_with_tta(i) for i in ings))
    paths["csv"], paths["md"] = write_tables(result, out_dir)
    return result


def _validated_with_tta(ing: Ingredient) -> bool:
    """Whether the ingredient's run validated with flip TTA (its recipe's `tta`): its "best val acc" did."""
    return bool((ing.ckpt.meta.get("config") or {}).get("tta"))


def check_options(method: str, bn_images: int, batch_size: int) -> None:
    """ConfigError for an unknown method, or a BatchNorm image count or batch size out of range."""
    if method not in METHODS:
        raise ConfigError(f"unknown soup method {method!r}; choose greedy, uniform or both")
    if not isinstance(bn_images, int) or isinstance(bn_images, bool) or bn_images < 0:
        raise ConfigError(f"bn_images must be a whole number, 0 or more, got {bn_images!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")


@dataclass
class SoupImages:
    """The images of a soup: the dataset's name, the held-out images it is chosen on, the test split it is
    scored on, and the training images (not held out) its BatchNorm statistics are measured on (None: not)."""

    data: str
    heldout: ImageData
    test: ImageData
    bn: ImageData | None


def soup_images(ings: list[Ingredient], data: str | None, data_dir: str | os.PathLike | None,
                bn_images: int) -> SoupImages:
    """The soup's images from the first ingredient's data (or `data`): the held-out ones are those of the
    validation splits that no ingredient trained on (`held_out_indices`)."""
    first = ings[0].ckpt
    train = load_checkpoint_data(first, data, "train", data_dir=data_dir)
    test = load_checkpoint_data(first, data, "test", data_dir=data_dir)
    held = held_out_indices(ings, train.labels, train.name)
    heldout = train.subset(held, "held-out")
    bn = train.subset(bn_subset(len(train), held, bn_images), "bn") if bn_images else None
    return SoupImages(train.name, heldout, test, bn)


class Kitchen:
    """Where soups are cooked: one working copy of the best ingredient's network, into which the average of
    some ingredients is loaded, its BatchNorm statistics re-measured, and scored on the held-out images;
    each soup is cooked once, and kept."""

    def __init__(self, ings: list[Ingredient], best: Ingredient, bn: ImageData | None, score_held: Scorer,
                 device: torch.device, batch_size: int):
        self.ings, self.best, self.bn, self.score_held = ings, best, bn, score_held
        self.device, self.batch_size = device, batch_size
        self.norm = best.ckpt.normalization
        self.work = copy.deepcopy(best.ckpt.model).to(device).eval()
        self.cooked: dict[tuple[int, ...], tuple[float, dict[str, torch.Tensor]]] = {}
        self.bn_images = 0  # images the soups' BatchNorm statistics were re-measured on (0: not, or none to)

    def cook(self, members: list[int]) -> float:
        """Load the average of `members` into `work`, re-measure its BatchNorm statistics, score it held out."""
        key = tuple(sorted(members))
        if key in self.cooked:
            self.work.load_state_dict(self.cooked[key][1])
            return self.cooked[key][0]
        self.work.load_state_dict(average_states([self.ings[k].state for k in members]))
        if self.bn is not None and recompute_bn(self.work, self.bn, Normalize(*self.norm, self.device), self.batch_size):
            self.bn_images = len(self.bn)
        acc = self.score_held(self.work, self.norm)
        self.cooked[key] = (acc, {k: v.detach().clone() for k, v in self.work.state_dict().items()})
        return acc


@dataclass
class Soups:
    """The greedy soup's ingredients (indices, in the order added) and its search; each soup's network (eval
    mode) and (held-out, test) accuracy, by name ("greedy", "uniform")."""

    kept: list[int]
    steps: list[GreedyStep]
    models: dict[str, nn.Module]
    scores: dict[str, tuple[float, float]]


def cook_soups(kitchen: Kitchen, order: list[int], score_test: Scorer, say: Callable[..., None]) -> Soups:
    """The greedy soup (Recipe 1: best first, in `order`; each next one stays if the held-out accuracy does
    not drop) and the uniform soup, each scored on the test split too."""
    ings, best = kitchen.ings, kitchen.best
    kept = [order[0]]
    current = kitchen.cook(kept)
    steps = [GreedyStep(best.name, current, None, True)]
    remeasured = " (BatchNorm re-measured)" if kitchen.bn_images else ""
    say(f"greedy: {best.name} alone{remeasured}: held-out ", current)
    for k in order[1:]:
        acc = kitchen.cook(kept + [k])
        ok = acc >= current
        steps.append(GreedyStep(ings[k].name, acc, current, ok))
        say(f"greedy: + {ings[k].name}: held-out ", acc, f" ({'kept' if ok else 'left out'})")
        if ok:
            kept.append(k)
            current = acc
    models: dict[str, nn.Module] = {}
    scores: dict[str, tuple[float, float]] = {}
    for name, members in (("greedy", kept), ("uniform", list(range(len(ings))))):
        h = kitchen.cook(members)
        models[name] = copy.deepcopy(kitchen.work).eval()
        scores[name] = (h, score_test(kitchen.work, kitchen.norm))
        say(f"{name} soup ({len(members)} of {len(ings)}): held-out ", h, ", test ", scores[name][1])
    return Soups(kept, steps, models, scores)


def write_soups(kitchen: Kitchen, soups: Soups, method: str, images: SoupImages, out_dir: Path,
                tta: bool = False) -> dict[str, Path]:
    """`soup-<name>.safetensors` for the soups `method` asks for: the best ingredient's metadata with a `soup`
    record (ingredients, scores, the greedy search)."""
    ings = kitchen.ings
    paths: dict[str, Path] = {}
    for name in ("greedy", "uniform") if method == "both" else (method,):
        members = soups.kept if name == "greedy" else list(range(len(ings)))
        record = {"method": name, "ingredients": [str(ings[k].path) for k in members],
                  "names": [ings[k].name for k in members], "candidates": len(ings),
                  "heldout_acc": soups.scores[name][0], "heldout_images": len(images.heldout),
                  "test_acc": soups.scores[name][1], "test_images": len(images.test), "data": images.data,
                  "tta": tta, "bn_recomputed_images": kitchen.bn_images}
        if name == "greedy":
            record["steps"] = [vars(s) for s in soups.steps]
        path = out_dir / f"soup-{name}.safetensors"
        save_checkpoint(path, soups.models[name], _soup_meta(kitchen.best.ckpt.meta, record))
        paths[name] = path
    return paths


def soup_rows(ings: list[Ingredient], held_acc: list[float], test_acc: list[float], soups: Soups,
              paths: dict[str, Path], bn_images: int = 0) -> list[SoupRow]:
    """The table: each ingredient (as trained), then the uniform and the greedy soup."""
    rows = [SoupRow(i.name, "ingredient", held_acc[k], test_acc[k], k in soups.kept, [i.name], str(i.path),
                    "as trained") for k, i in enumerate(ings)]
    bn = "re-measured" if bn_images else "averaged"
    rows.append(SoupRow("uniform soup", "uniform soup", *soups.scores["uniform"], None, [i.name for i in ings],
                        str(paths["uniform"]) if "uniform" in paths else None, bn))
    rows.append(SoupRow("greedy soup", "greedy soup", *soups.scores["greedy"], None, [ings[k].name for k in soups.kept],
                        str(paths["greedy"]) if "greedy" in paths else None, bn))
    return rows


def how_scored(result: SoupResult) -> dict[str, str]:
    """How every row's figures were measured, in words (the table's notes): the images, TTA, BatchNorm."""
    tta = "flip, every row" if result.tta else "none" + (
        " (the ingredients' runs validated with flip TTA: their best val acc is a TTA figure; --tta to compare)"
        if result.trained_with_tta else "")
    bn = (f"soups: re-measured on {result.bn_images} training images not held out (so a soup of one ingredient "
          f"differs from it); ingredients: as trained"
          if result.bn_images else "soups: the ingredients' averaged statistics (not re-measured)")
    return {"held-out images": f"{result.heldout_images} validation images of {result.data} that no ingredient "
                               f"trained on (every row)",
            "test images": f"{result.test_images} ({result.data}'s test split, every row)", "TTA": tta,
            "BatchNorm statistics": bn}


def _run_name(path: str | os.PathLike) -> str:
    p = Path(path).expanduser()
    name = p.name if p.is_dir() or p.suffix != ".safetensors" else (p.parent.name or p.stem)
    return name or "soup"


def _soup_meta(meta: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The best ingredient's metadata with the soup's own scores and a `soup` record; no training state."""
    skip = {"format", "cnnkit_version", "torch_version", "train_state"}
    out = {k: v for k, v in meta.items() if k not in skip}
    out["metrics"] = {"val_acc": record["heldout_acc"], "test_acc": record["test_acc"]}
    out["soup"] = record
    return out


def _pct(v: float) -> str:  # as `cnnkit.cli.console.percent` shows accuracies (merge sits below the CLI)
    return f"{100 * v:.2f}%"


def write_tables(result: SoupResult, out: Path) -> tuple[Path, Path]:
    """soup.csv (one row per ingredient, then the uniform and the greedy soup) and soup.md."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "kind", "heldout_acc", "test_acc", "in_greedy_soup", "ingredients", "checkpoint",
                "batchnorm", "tta"])
    for r in result.rows:
        kept = "" if r.kept is None else ("yes" if r.kept else "no")
        w.writerow([r.name, r.kind, f"{r.heldout_acc:.6f}", f"{r.test_acc:.6f}", kept, ";".join(r.ingredients),
                    r.checkpoint or "", r.batchnorm, "flip" if result.tta else "none"])
    atomic_write_text(out / "soup.csv", buf.getvalue())
    n = sum(r.kind == "ingredient" for r in result.rows)
    lines = [f"Model soup on {result.data}, every row scored alike:", ""]
    lines += [f"- {k}: {v}" for k, v in how_scored(result).items()]
    lines += ["", "| ingredient / soup | held-out acc | test acc | BatchNorm | in greedy soup |",
              "| --- | ---: | ---: | --- | --- |"]
    for r in result.rows:
        kept = ("yes" if r.kept else "no") if r.kept is not None else f"{len(r.ingredients)} of {n}"
        lines.append(f"| {r.name} | {_pct(r.heldout_acc)} | {_pct(r.test_acc)} | {r.batchnorm} | {kept} |")
    lines += ["", "Greedy search (best held-out ingredient first; each next one kept if the soup's held-out accuracy "
                  "does not drop):", ""]
    for s in result.steps:
        lines.append(f"- {s.name}: {_pct(s.heldout_acc)}" + ("" if s.before is None else
                     f" (before: {_pct(s.before)}; {'kept' if s.kept else 'left out'})"))
    atomic_write_text(out / "soup.md", "\n".join(lines) + "\n")
    return out / "soup.csv", out / "soup.md"
