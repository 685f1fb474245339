"""The ingredients of a soup: checkpoints of one architecture (run directories or files), loaded with their
weights on the CPU, checked to be one network fine-tuned from one initialization; and the images they held
out, on which the soup is chosen: the intersection of the validation splits of every ingredient and of the
cnnkit runs it was fine-tuned from (each split is `cnnkit.data.compat.validation_split`, as `cnnkit train`
made it)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.artifacts import LoadedCheckpoint, load, read_meta, resolve_checkpoint
from cnnkit.data.compat import validation_split
from cnnkit.errors import CheckpointError, ConfigError

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
        ckpt = load(file, device)
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
