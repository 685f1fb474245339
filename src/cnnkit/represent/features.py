"""Frozen features of a trained network's layers ("CNN features off-the-shelf", Razavian et al. 2014), with the
images' labels: the input of every probe and transfer experiment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint, load, save_tensors
from cnnkit.data import ImageData, Normalize
from cnnkit.data.compat import load_checkpoint_data
from cnnkit.errors import CheckpointError, ConfigError, close_matches

POOLS = ("avg", "max", "avg3", "none")
DEFAULT_POOL = "avg3"  # `cnnkit features` and `cnnkit probe` alike: what a probe of a file gets is what it measures
SPLITS = ("train", "test")


@dataclass
class Features:
    """Per layer an N×D (pooled) or N×C×H×W (`pool="none"`) float tensor, and the N labels."""

    layers: dict[str, torch.Tensor]
    labels: torch.Tensor
    classes: list[str]
    pool: str
    checkpoint: str
    data: str
    split: str


def block_names(model: nn.Module) -> list[str]:
    """The modules that end each block or stage (what `--layer blocks` reads), input side first."""
    names = model.stage_names() if hasattr(model, "stage_names") else []
    if not names and hasattr(model, "feature_info"):  # a timm model
        names = [f["module"] for f in model.feature_info]
    if not names:
        raise ConfigError(f"{type(model).__name__} names no blocks; give --layer with module names")
    return names


def resolve_layers(model: nn.Module, layer: str | list[str]) -> list[str]:
    """'blocks', one module name, or a comma-separated list -> checked module names."""
    wanted = layer if isinstance(layer, list) else [s.strip() for s in layer.split(",") if s.strip()]
    if wanted == ["blocks"]:
        return block_names(model)
    modules = dict(model.named_modules())
    for name in wanted:
        if name not in modules or not name:
            raise ConfigError(f"no layer {name!r} in {type(model).__name__}{close_matches(name, modules)}; its "
                              f"blocks: {', '.join(block_names(model)) if hasattr(model, 'stage_names') else '?'}")
    return wanted


def pool_features(t: torch.Tensor, pool: str) -> torch.Tensor:
    """B×C×H×W -> B×C by global average or max, B×9C by averaging over a 3×3 grid of regions ('avg3': some
    of where, as probes of early layers need), or kept as it is ('none'); B×D stays B×D."""
    if t.ndim <= 2 or pool == "none":
        return t
    if pool == "avg3":
        return torch.nn.functional.adaptive_avg_pool2d(t, 3).flatten(1)
    return t.mean((2, 3)) if pool == "avg" else t.amax((2, 3))


def extract(model: nn.Module, data: ImageData, normalize: Normalize, layers: list[str], pool: str = DEFAULT_POOL,
            batch_size: int = 256, progress: bool = False) -> dict[str, torch.Tensor]:
    """The outputs of `layers` for every image of `data`, batched, in inference mode, pooled by `pool`."""
    if pool not in POOLS:
        raise ConfigError(f"--pool must be avg, max, avg3 or none, got {pool!r}")
    model.eval()
    modules = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: got.__setitem__(n, out)) for n in layers]
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    starts = range(0, len(data.images), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description="features", transient=True)
    try:
        with torch.inference_mode():
            for s in starts:
                model(normalize(data.images[s:s + batch_size]))
                for n in layers:
                    chunks[n].append(pool_features(got[n].float(), pool).cpu())
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(c) for n, c in chunks.items()}


def load_features_data(ckpt: LoadedCheckpoint, data: str | None, split: str,
                       data_dir: str | os.PathLike | None = None, per_class: int | None = None,
                       limit: int | None = None, seed: int = 0) -> ImageData:
    """`split` of `data` at the checkpoint's input shape (class names may differ: features need no head),
    optionally K images per class or a stratified subset of `limit` images."""
    from cnnkit.data import per_class_subset, train_val_split

    ds = load_checkpoint_data(ckpt, data, split, data_dir=data_dir, check=False)
    if (ds.in_chans, *ds.img_size) != (ckpt.in_chans, *ckpt.img_size):
        raise CheckpointError(f"{ds.name} ({split}) gives {ds.in_chans}×{ds.img_size[0]}×{ds.img_size[1]} images "
                              f"but {ckpt.path} takes {ckpt.in_chans}×{ckpt.img_size[0]}×{ckpt.img_size[1]}")
    if per_class is not None:
        ds = ds.subset(per_class_subset(ds.labels, per_class, seed), split)
    if limit is not None and limit < len(ds):
        _, keep = train_val_split(ds.labels, limit / len(ds), seed)
        ds = ds.subset(keep, split)
    return ds


def features(checkpoint: str | os.PathLike | LoadedCheckpoint, data: str | None = None, layer: str = "blocks",
             pool: str = DEFAULT_POOL, split: str = "test", data_dir: str | os.PathLike | None = None,
             batch_size: int = 256, device: str = "auto", limit: int | None = None,
             progress: bool = False) -> Features:
    """Frozen features of `layer` ('blocks' for every block) of a checkpoint on `split` of `data` (default the
    checkpoint's own dataset)."""
    from cnnkit.runtime import pick_device

    dev = pick_device(device)
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint, dev)
    model = ckpt.model.to(dev).eval()
    layers = resolve_layers(model, layer)
    ds = load_features_data(ckpt, data, split, data_dir, limit=limit)
    feats = extract(model, ds, Normalize(*ckpt.normalization, dev), layers, pool, batch_size, progress)
    return Features(feats, ds.labels.clone(), list(ds.classes), pool, str(ckpt.path), ds.name, split)


def feature_splits(checkpoint: str | os.PathLike | LoadedCheckpoint, splits: tuple[str, ...] = SPLITS,
                   device: str = "auto", **options: Any) -> list[Features]:
    """`features` of each of `splits` (default train and test, what a probe trains and scores on), the
    checkpoint loaded once; `options` as `features` takes them."""
    from cnnkit.runtime import pick_device

    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint, pick_device(device))
    return [features(ckpt, split=s, device=device, **options) for s in splits]


def save_features(f: Features | list[Features], out: str | os.PathLike) -> Path:
    """One safetensors file: per split, a tensor per layer (`<split>/<layer>`) and `<split>/labels`, with what
    they are in the header. The splits must come from one checkpoint, data, pooling and layers. Replaces only a
    features file cnnkit wrote."""
    parts = f if isinstance(f, list) else [f]
    path = Path(out).expanduser()
    if path.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {path.name}")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name ending in .safetensors")
    if path.exists() and read_features_meta(path) is None:
        raise ConfigError(f"{path} exists and is not a cnnkit features file; cnnkit replaces only files it wrote")
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ConfigError(f"cannot write {path}: {blocked} is a file, not a folder")
    first = parts[0]
    if any((p.checkpoint, p.data, p.pool, list(p.layers)) != (first.checkpoint, first.data, first.pool,
                                                               list(first.layers)) for p in parts):
        raise ConfigError("the splits of one features file must come from one checkpoint, data, pooling and layers")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "features", "checkpoint": first.checkpoint, "data": first.data, "pool": first.pool,
            "classes": first.classes, "splits": {p.split: len(p.labels) for p in parts},
            "layers": {n: list(t.shape[1:]) for n, t in first.layers.items()}}
    tensors = {f"{p.split}/{n}": t for p in parts for n, t in {**p.layers, "labels": p.labels}.items()}
    save_tensors(path, tensors, meta)
    return path


def read_features_meta(path: Path) -> dict[str, Any] | None:
    """The header of a cnnkit features file, or None when the file is something else."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("cnnkit", "null"))
    except Exception:  # not safetensors at all
        return None
    return meta if isinstance(meta, dict) and meta.get("kind") == "features" else None


def load_feature_splits(path: str | os.PathLike) -> dict[str, Features]:
    """Every split a features file holds, by name."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    meta = read_features_meta(p)
    if meta is None:
        raise CheckpointError(f"{p} is not a cnnkit features file")
    tensors = load_file(str(p))
    if "splits" not in meta:  # written before files held several splits: one, its tensors named by layer alone
        tensors = {f"{meta['split']}/{k}": v for k, v in tensors.items()}
    out = {}
    for split in meta.get("splits") or [meta["split"]]:
        mine = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == split}
        labels = mine.pop("labels")
        out[split] = Features(mine, labels, meta["classes"], meta["pool"], meta["checkpoint"], meta["data"], split)
    return out


def load_features(path: str | os.PathLike, split: str | None = None) -> Features:
    """One split of a features file: `split`, else its test split, else the one it holds."""
    splits = load_feature_splits(path)
    name = split or ("test" if "test" in splits else next(iter(splits)))
    if name not in splits:
        raise ConfigError(f"{path} holds the features of the {' and '.join(splits)} split(s), not of {name}")
    return splits[name]
