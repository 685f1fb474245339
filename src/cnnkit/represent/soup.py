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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import (LoadedCheckpoint, atomic_write_text, claim_dir, load_checkpoint, read_meta,
                              resolve_checkpoint, save_checkpoint)
from cnnkit.data import BatchLoader, ImageData, Normalize
from cnnkit.data.compat import load_checkpoint_data, validation_split
from cnnkit.errors import CheckpointError, ConfigError

METHODS = ("greedy", "uniform", "both")
MIN_SHARED = 0.2  # warn when the images every ingredient held out are fewer than this share of one's split


@dataclass
class Ingredient:
    """A loaded ingredient: its name in the table, its checkpoint and its weights (on the CPU)."""

    name: str
    ckpt: LoadedCheckpoint
    state: dict[str, torch.Tensor] = field(repr=False)

    @property
    def path(self) -> Path:
        return self.ckpt.path


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

    def row(self, name: str) -> SoupRow:
        return next(r for r in self.rows if r.name == name)


# -- ingredients ---------------------------------------------------------------------------------------------

def ingredient_name(path: str | os.PathLike) -> str:
    """A run directory's name; for a checkpoint file, `<run>/<file>` (the run's name alone for best.safetensors)."""
    p = Path(path).expanduser()
    if p.is_dir() or p.suffix != ".safetensors":
        return p.name or str(p)
    return p.parent.name if p.name == "best.safetensors" and p.parent.name else f"{p.parent.name}/{p.name}".lstrip("/")


def load_ingredients(paths: list[str | os.PathLike], device: torch.device | str = "cpu") -> list[Ingredient]:
    """Each run directory's best checkpoint (or the checkpoint file given), checked to be one architecture."""
    if len(paths) < 2:
        raise ConfigError(f"a soup needs at least 2 ingredients (run directories or checkpoints), got {len(paths)}")
    out: list[Ingredient] = []
    names: dict[str, int] = {}
    for p in paths:
        file = resolve_checkpoint(p)
        if file.suffix != ".safetensors":
            raise CheckpointError(f"{file} is not a cnnkit checkpoint (.safetensors); a soup averages the weights of "
                                  f"training runs")
        ckpt = load_checkpoint(file, device)
        name = ingredient_name(p)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name} #{names[name]}"
        state = {k: v.detach().to("cpu").clone() for k, v in ckpt.model.state_dict().items()}
        out.append(Ingredient(name, ckpt, state))
    check_same_architecture(out)
    check_shared_init(out)
    return out


def check_same_architecture(ingredients: list[Ingredient]) -> None:
    """CheckpointError, naming the two files and what differs, unless every ingredient has the first's model,
    options, classes, input shape and weight names and shapes."""
    first = ingredients[0]
    for other in ingredients[1:]:
        a, b = first.ckpt.meta, other.ckpt.meta
        checks = [("model", a.get("model"), b.get("model")),
                  ("model options", a.get("model_kwargs") or {}, b.get("model_kwargs") or {}),
                  ("classes", a.get("classes"), b.get("classes")),
                  ("input shape", [a.get("in_chans"), *(a.get("img_size") or [])],
                   [b.get("in_chans"), *(b.get("img_size") or [])])]
        for what, x, y in checks:
            if x != y:
                raise CheckpointError(f"cannot make a soup of {first.path} and {other.path}: their {what} differ "
                                      f"({_short(x)} vs {_short(y)}); a soup averages the weights of one architecture")
        sa, sb = first.state, other.state
        missing = [k for k in sa if k not in sb] + [k for k in sb if k not in sa]
        if missing:
            raise CheckpointError(f"cannot make a soup of {first.path} and {other.path}: weight {missing[0]} is in "
                                  f"one and not the other; a soup averages the weights of one architecture")
        shape = next((k for k in sa if sa[k].shape != sb[k].shape or sa[k].dtype != sb[k].dtype), None)
        if shape is not None:
            raise CheckpointError(f"cannot make a soup of {first.path} and {other.path}: weight {shape} is "
                                  f"{tuple(sa[shape].shape)} {str(sa[shape].dtype).removeprefix('torch.')} in one and "
                                  f"{tuple(sb[shape].shape)} {str(sb[shape].dtype).removeprefix('torch.')} in the other")
        na, nb = a.get("normalization") or {}, b.get("normalization") or {}
        gap = max((abs(x - y) for k in ("mean", "std") for x, y in zip(na.get(k, []), nb.get(k, []))), default=0.0)
        if gap > 0.05:
            warnings.warn(f"{first.path} and {other.path} normalize their inputs differently (mean {na.get('mean')} "
                          f"vs {nb.get('mean')}); the soups use the best ingredient's", stacklevel=3)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _init_of(meta: dict[str, Any]) -> str | None:
    init = (meta.get("config") or {}).get("init_from")
    if not init:
        return None
    try:
        return str(resolve_checkpoint(init).resolve())  # a run directory and its best.safetensors are one init
    except CheckpointError:
        return str(Path(init).expanduser().absolute())


def check_shared_init(ingredients: list[Ingredient]) -> bool:
    """Warn (one line) unless every ingredient was fine-tuned from one checkpoint (its config's init_from);
    True when they were."""
    inits = [_init_of(i.ckpt.meta) for i in ingredients]
    if inits[0] is not None and all(x == inits[0] for x in inits):
        return True
    if inits[0] is None or any(x is None for x in inits):
        who = next(i for i, x in zip(ingredients, inits) if x is None)
        why = f"{who.name} records no initialization (trained from scratch)"
    else:
        who = next(i for i, x in zip(ingredients, inits) if x != inits[0])
        why = f"{ingredients[0].name} starts from {inits[0]} but {who.name} from {_init_of(who.ckpt.meta)}"
    warnings.warn(f"the ingredients do not share an initialization ({why}); a soup of independently trained "
                  f"networks is usually worse than either: fine-tune every ingredient from one checkpoint with "
                  f"--init-from", stacklevel=3)
    return False


# -- held-out images -----------------------------------------------------------------------------------------

def _lineage(ingredient: Ingredient) -> list[tuple[Path, dict[str, Any]]]:
    """The ingredient and the cnnkit runs on the same data it was fine-tuned from (they trained on images too)."""
    chain = [(ingredient.path, ingredient.ckpt.meta)]
    seen = {ingredient.path.resolve()}
    meta = ingredient.ckpt.meta
    for _ in range(16):
        init = (meta.get("config") or {}).get("init_from")
        if not init:
            break
        try:
            file = resolve_checkpoint(init)
            parent = read_meta(file)
        except CheckpointError:  # a timm/torchvision weight file, or gone: nothing known of what it saw
            break
        same_data = (parent.get("config") or {}).get("data") == (meta.get("config") or {}).get("data")
        if file.resolve() in seen or not same_data or not isinstance(parent.get("config"), dict):
            break
        seen.add(file.resolve())
        chain.append((file, parent))
        meta = parent
    return chain


def held_out_indices(ingredients: list[Ingredient], labels: torch.Tensor, data_name: str) -> torch.Tensor:
    """Indices of the train split (given by its labels) that no ingredient, nor a run one was fine-tuned from,
    trained on: the intersection of their validation splits. ConfigError if none; a warning if few."""
    common: torch.Tensor | None = None
    sizes, ancestors = [], False
    for ing in ingredients:
        for k, (path, meta) in enumerate(_lineage(ing)):
            val = validation_split(meta, labels, path)
            ancestors |= k > 0
            sizes.append(len(val))
            if len(val) == 0:
                raise ConfigError(f"{path} held out no validation images (val_fraction 0), so it trained on all of "
                                  f"{data_name}'s train split and no image is left to choose the soup on; train "
                                  f"ingredients with a --val-fraction above 0 and the same --split-seed")
            common = val if common is None else common[torch.isin(common, val)]
    assert common is not None
    runs = "every ingredient" + (" and the runs they were fine-tuned from" if ancestors else "")
    if len(common) == 0:
        raise ConfigError(f"no image of {data_name}'s validation split is held out by {runs}, so none is left to "
                          f"choose the soup on; train every ingredient with the same --split-seed (e.g. --split-seed 0)")
    typical = sorted(sizes)[len(sizes) // 2]
    if len(common) < MIN_SHARED * typical:
        warnings.warn(f"only {len(common)} images of {data_name}'s validation split are held out by {runs} (each holds "
                      f"out about {typical}): their split seeds differ; train ingredients with the same --split-seed "
                      f"for a reliable greedy soup", stacklevel=3)
    return common


def bn_subset(n: int, held_out: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    """Up to `limit` indices of range(n) outside `held_out`, chosen by `seed`, sorted."""
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_out] = False
    idx = torch.nonzero(mask).flatten()
    if limit < len(idx):
        g = torch.Generator().manual_seed(seed)
        idx = torch.sort(idx[torch.randperm(len(idx), generator=g)[:limit]]).values
    return idx


# -- averaging, BatchNorm, scoring ---------------------------------------------------------------------------

def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of float tensors (accumulated in float64, so that a soup of identical weights is
    those weights exactly); integer tensors (BatchNorm's num_batches_tracked) are the first's."""
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            acc = torch.zeros(v.shape, dtype=torch.float64)
            for s in states:
                acc += s[k].to(torch.float64)
            out[k] = (acc / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None]


@torch.no_grad()
def recompute_bn(model: nn.Module, data: ImageData, normalize: Normalize, batch_size: int = 256) -> int:
    """Replace every BatchNorm layer's running mean and variance by the statistics of its inputs over `data`
    (in batches of `batch_size`, in order), as training mode computes them: each BatchNorm normalizes with its
    batch's statistics meanwhile, everything else (dropout, stochastic depth) runs as at inference. The
    statistics are pooled exactly over all images (Chan's parallel mean and variance, float64; the variance
    unbiased, as BatchNorm keeps it), which is what a cumulative moving average (`momentum=None`) approximates
    batch by batch. Momentum, num_batches_tracked and modes are restored and the model is left in eval mode.
    Returns the number of BatchNorm layers updated (0: none, nothing done)."""
    layers = batchnorms(model)
    if not layers or len(data) < 2:
        return 0
    stats: dict[nn.Module, list] = {m: [0, None, None] for m in layers}  # count, mean, M2 per channel

    def take(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().to(torch.float64)
        dims = [d for d in range(x.ndim) if d != 1]
        nb = x.numel() // x.shape[1]
        mb = x.mean(dims)
        m2b = ((x - mb.view(1, -1, *[1] * (x.ndim - 2))) ** 2).sum(dims)
        s = stats[m]
        if s[1] is None:
            s[:] = [nb, mb, m2b]
            return
        na, ma, m2a = s
        n = na + nb
        delta = mb - ma
        s[:] = [n, ma + delta * (nb / n), m2a + m2b + delta * delta * (na * nb / n)]

    hooks = [m.register_forward_pre_hook(take) for m in layers]
    momenta = [m.momentum for m in layers]
    tracked = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in layers]
    model.eval()
    for m in layers:
        m.momentum = None
        m.train()
    try:
        n = len(data)
        starts = list(range(0, n, batch_size))
        if n - starts[-1] == 1 and len(starts) > 1:  # a batch of one image has no batch statistics: left out
            starts = starts[:-1]
            n -= 1
        for s in starts:
            model(normalize(data.images[s:min(s + batch_size, n)]))
    finally:
        for h in hooks:
            h.remove()
        for m, mom, count in zip(layers, momenta, tracked):
            m.momentum = mom
            if count is not None:  # training mode counted the batches: the count stays the ingredients'
                m.num_batches_tracked.copy_(count)
        model.eval()
    for m in layers:
        count, mean, m2 = stats[m]
        if mean is None:  # a layer the forward pass does not reach
            continue
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_((m2 / max(count - 1, 1)).to(m.running_var.dtype))
    return len(layers)


class _Scorer:
    """Accuracy of a model on one image set, with loaders cached per normalization."""

    def __init__(self, data: ImageData, device: torch.device, batch_size: int):
        self.data, self.device, self.batch_size = data, device, batch_size
        self.loaders: dict[tuple, BatchLoader] = {}

    def __call__(self, model: nn.Module, norm: tuple[list[float], list[float]]) -> float:
        from cnnkit.evaluate.loop import evaluate_loader

        key = (tuple(norm[0]), tuple(norm[1]))
        if key not in self.loaders:
            self.loaders[key] = BatchLoader(self.data, self.batch_size, Normalize(*norm, self.device))
        probs, labels = evaluate_loader(model.eval(), self.loaders[key], self.device, None)
        return float((probs.argmax(1) == labels).float().mean())


# -- the soup ------------------------------------------------------------------------------------------------

def make_soup(ingredients: list[str | os.PathLike], method: str = "greedy", data: str | None = None,
              data_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
              bn_images: int = 10000, device: str = "auto", batch_size: int = 512,
              progress: bool = True) -> SoupResult:
    """Average the weights of `ingredients` (run directories or checkpoints of one architecture, fine-tuned
    from one initialization) into the uniform and the greedy soup, score every ingredient and both soups on
    the held-out images (the validation split no ingredient trained on) and on the test split of `data`
    (default: the ingredients' own dataset), and write into `out` (default `soups/<first run's name>`)
    `soup-greedy.safetensors` and/or `soup-uniform.safetensors` (`method`: greedy, uniform or both) and the
    table, `soup.csv` and `soup.md`, which always holds both soups. `bn_images` training images (not held out)
    re-measure each soup's BatchNorm statistics; 0 keeps the averaged ones."""
    from cnnkit.runtime import pick_device

    if method not in METHODS:
        raise ConfigError(f"unknown soup method {method!r}; choose greedy, uniform or both")
    if not isinstance(bn_images, int) or isinstance(bn_images, bool) or bn_images < 0:
        raise ConfigError(f"bn_images must be a whole number, 0 or more, got {bn_images!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    dev = pick_device(device)
    ings = load_ingredients(list(ingredients), dev)
    out_dir = Path(out).expanduser() if out is not None else Path("soups") / _run_name(ingredients[0])
    first = ings[0].ckpt
    train = load_checkpoint_data(first, data, "train", data_dir=data_dir)
    test = load_checkpoint_data(first, data, "test", data_dir=data_dir)
    held = held_out_indices(ings, train.labels, train.name)
    heldout = train.subset(held, "held-out")
    bn_set = train.subset(bn_subset(len(train), held, bn_images), "bn") if bn_images else None
    claim_dir(out_dir)
    say = print if progress else (lambda *a, **k: None)
    say(f"soup of {len(ings)} ingredients: {len(heldout)} held-out images of {train.name}, {len(test)} test images"
        + (f", BatchNorm statistics from {len(bn_set)} training images" if bn_set is not None else ""), flush=True)

    score_held, score_test = _Scorer(heldout, dev, batch_size), _Scorer(test, dev, batch_size)
    held_acc = [score_held(i.ckpt.model, i.ckpt.normalization) for i in ings]
    test_acc = [score_test(i.ckpt.model, i.ckpt.normalization) for i in ings]
    for i, h, t in zip(ings, held_acc, test_acc):
        say(f"  {i.name}: held-out {100 * h:.2f}, test {100 * t:.2f}", flush=True)
    order = sorted(range(len(ings)), key=lambda k: -held_acc[k])  # stable: ties keep the given order
    best = ings[order[0]]
    norm = best.ckpt.normalization
    work = copy.deepcopy(best.ckpt.model).to(dev).eval()

    cooked: dict[tuple[int, ...], tuple[float, dict[str, torch.Tensor]]] = {}

    def cook(members: list[int]) -> float:
        """Load the average of `members` into `work`, re-measure its BatchNorm statistics, score it held out."""
        key = tuple(sorted(members))
        if key in cooked:
            work.load_state_dict(cooked[key][1])
            return cooked[key][0]
        work.load_state_dict(average_states([ings[k].state for k in members]))
        if bn_set is not None:
            recompute_bn(work, bn_set, Normalize(*norm, dev), batch_size)
        acc = score_held(work, norm)
        cooked[key] = (acc, {k: v.detach().clone() for k, v in work.state_dict().items()})
        return acc

    # greedy (Recipe 1): best first; each next one stays if the held-out accuracy does not drop
    kept = [order[0]]
    current = cook(kept)
    steps = [GreedyStep(best.name, current, None, True)]
    say(f"greedy: {best.name} alone: {100 * current:.2f}", flush=True)
    for k in order[1:]:
        acc = cook(kept + [k])
        ok = acc >= current
        steps.append(GreedyStep(ings[k].name, acc, current, ok))
        say(f"greedy: + {ings[k].name}: {100 * acc:.2f} ({'kept' if ok else 'left out'})", flush=True)
        if ok:
            kept.append(k)
            current = acc
    models: dict[str, nn.Module] = {}
    scores: dict[str, tuple[float, float]] = {}
    for name, members in (("greedy", kept), ("uniform", list(range(len(ings))))):
        h = cook(members)
        models[name] = copy.deepcopy(work).eval()
        scores[name] = (h, score_test(work, norm))
        say(f"{name} soup ({len(members)} of {len(ings)}): held-out {100 * h:.2f}, test {100 * scores[name][1]:.2f}",
            flush=True)

    paths: dict[str, Path] = {}
    written = ("greedy", "uniform") if method == "both" else (method,)
    for name in written:
        members = kept if name == "greedy" else list(range(len(ings)))
        path = out_dir / f"soup-{name}.safetensors"
        record = {"method": name, "ingredients": [str(ings[k].path) for k in members],
                  "names": [ings[k].name for k in members], "candidates": len(ings),
                  "heldout_acc": scores[name][0], "heldout_images": len(heldout), "test_acc": scores[name][1],
                  "data": train.name, "bn_recomputed_images": len(bn_set) if bn_set is not None else 0}
        if name == "greedy":
            record["steps"] = [vars(s) for s in steps]
        save_checkpoint(path, models[name], _soup_meta(best.ckpt.meta, record))
        paths[name] = path

    kept_names = [ings[k].name for k in kept]
    rows = [SoupRow(i.name, "ingredient", held_acc[k], test_acc[k], k in kept, [i.name], str(i.path))
            for k, i in enumerate(ings)]
    rows.append(SoupRow("uniform soup", "uniform soup", *scores["uniform"], None, [i.name for i in ings],
                        str(paths["uniform"]) if "uniform" in paths else None))
    rows.append(SoupRow("greedy soup", "greedy soup", *scores["greedy"], None, kept_names,
                        str(paths["greedy"]) if "greedy" in paths else None))
    result = SoupResult(rows, paths, steps, kept_names, len(heldout), len(bn_set) if bn_set is not None else 0,
                        train.name, out_dir, models)
    paths["csv"], paths["md"] = write_tables(result, out_dir)
    return result


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


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def write_tables(result: SoupResult, out: Path) -> tuple[Path, Path]:
    """soup.csv (one row per ingredient, then the uniform and the greedy soup) and soup.md."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "kind", "heldout_acc", "test_acc", "in_greedy_soup", "ingredients", "checkpoint"])
    for r in result.rows:
        kept = "" if r.kept is None else ("yes" if r.kept else "no")
        w.writerow([r.name, r.kind, f"{r.heldout_acc:.6f}", f"{r.test_acc:.6f}", kept, ";".join(r.ingredients),
                    r.checkpoint or ""])
    atomic_write_text(out / "soup.csv", buf.getvalue())
    n = sum(r.kind == "ingredient" for r in result.rows)
    lines = [f"Model soup on {result.data}: held-out accuracy on {result.heldout_images} validation images no "
             f"ingredient trained on; test accuracy on the test split. "
             + (f"BatchNorm statistics of each soup re-measured on {result.bn_images} training images."
                if result.bn_images else "BatchNorm statistics averaged, not re-measured."), "",
             "| ingredient / soup | held-out acc | test acc | in greedy soup |", "| --- | ---: | ---: | --- |"]
    for r in result.rows:
        kept = ("yes" if r.kept else "no") if r.kept is not None else f"{len(r.ingredients)} of {n}"
        lines.append(f"| {r.name} | {_pct(r.heldout_acc)} | {_pct(r.test_acc)} | {kept} |")
    lines += ["", "Greedy search (best held-out ingredient first; each next one kept if the soup's held-out accuracy "
                  "does not drop):", ""]
    for s in result.steps:
        lines.append(f"- {s.name}: {_pct(s.heldout_acc)}" + ("" if s.before is None else
                     f" (before: {_pct(s.before)}; {'kept' if s.kept else 'left out'})"))
    atomic_write_text(out / "soup.md", "\n".join(lines) + "\n")
    return out / "soup.csv", out / "soup.md"
