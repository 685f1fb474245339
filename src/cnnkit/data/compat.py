"""Whether a dataset fits a checkpoint (channels, H×W, classes), and loading the data a checkpoint is
measured on: by default its own dataset, at its own input size, with the same held-out test split. A set that
names the checkpoint's classes in another order (an image folder's classes are its sorted folder names) has
its labels renumbered as the model's, by name: every step that loads data here scores against the right
labels."""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnkit.artifacts import LoadedCheckpoint
from cnnkit.data.base import ImageData
from cnnkit.data.sources import load_dataset
from cnnkit.data.settings import DEFAULT_VAL_FRACTION
from cnnkit.data.splits import train_val_split
from cnnkit.errors import CheckpointError, ConfigError, DataError


def _shape(c: int, hw: tuple[int, int]) -> str:
    return "×".join(str(v) for v in (c, *hw))


def class_key(name: str) -> str:
    """A class name as a folder can spell it: its letters and digits, case and the rest ignored ('T-shirt/top'
    and the folder 'T-shirt_top' are one class; a folder's name cannot hold '/')."""
    return " ".join(re.findall(r"[^\W_]+", name.casefold()))


def class_order(data_classes: list[str], model_classes: list[str]) -> list[int] | None:
    """For each of the data's classes, the index of the model's class of the same name (equal, else equal as
    `class_key` spells them); None unless both name the same classes, each once."""
    for key in (str, class_key):
        d, m = [key(c) for c in data_classes], [key(c) for c in model_classes]
        if len(set(d)) == len(d) == len(m) == len(set(m)) and set(d) == set(m):
            index = {k: i for i, k in enumerate(m)}
            return [index[k] for k in d]
    return None


def check_compatible(ckpt: LoadedCheckpoint, data: ImageData, ignore_class_names: bool = False,
                     match_classes: bool = True) -> ImageData:
    """The set to measure the checkpoint on: `data` itself when it has the checkpoint's channels, H×W and
    classes; a copy whose labels are the model's class indices when it names the same classes in another
    order (an image folder's sorted folders: mapped by name, said in one warning). CheckpointError for
    another shape, another number of classes, or other class names; `ignore_class_names` accepts other names
    for the same number of classes, paired by position. `match_classes` False (a task whose outputs are not
    the data's classes) checks the images' shape only."""
    where = f"{data.name} ({data.split})"
    if (data.in_chans, *data.img_size) != (ckpt.in_chans, *ckpt.img_size):
        raise CheckpointError(f"{where} gives {_shape(data.in_chans, data.img_size)} images but {ckpt.path} expects "
                              f"{_shape(ckpt.in_chans, ckpt.img_size)} (channels×height×width); use data of that "
                              f"shape (image folders are resized to it)")
    if not match_classes:
        return data
    if data.num_classes != len(ckpt.classes):
        raise CheckpointError(f"{where} has {data.num_classes} classes but {ckpt.path} was trained on "
                              f"{len(ckpt.classes)}; evaluate it on data with the same classes")
    order = class_order(list(data.classes), list(ckpt.classes))
    if order is not None:
        return data if order == list(range(len(order))) else _mapped_by_name(ckpt, data, order)
    _check_other_names(ckpt, data, ignore_class_names)
    return data


def _check_other_names(ckpt: LoadedCheckpoint, data: ImageData, ignore_class_names: bool) -> None:
    """Classes named differently: refused, unless `ignore_class_names` pairs them by position (with a warning
    when a name of one side stands at another position on the other: that pairing scores against the wrong
    labels)."""
    where = f"{data.name} ({data.split})"
    d, m = [class_key(c) for c in data.classes], [class_key(c) for c in ckpt.classes]
    if not ignore_class_names:
        only_data = [repr(c) for c, k in zip(data.classes, d) if k not in m][:3]
        only_model = [repr(c) for c, k in zip(ckpt.classes, m) if k not in d][:3]
        raise CheckpointError(f"{where} names classes that {ckpt.path} does not ({', '.join(only_data)} in the data; "
                              f"{', '.join(only_model)} in the model): use data of the model's classes (in any "
                              f"order: they are matched by name), or, if they are the same classes named "
                              f"differently, pass --ignore-class-names to pair them by position (the data's class i "
                              f"as the model's class i)")
    moved = next(((c, i, m.index(k)) for i, (c, k) in enumerate(zip(data.classes, d)) if k in m and m[i] != k), None)
    if moved is not None:  # asked for, so done; but likely a mistake, and the figures would be wrong
        warnings.warn(f"--ignore-class-names pairs classes by position, but {where} has {moved[0]!r} as class "
                      f"{moved[1]} and {ckpt.path} as class {moved[2]}: the scores are against the model's class "
                      f"{moved[1]} for those images; name the data's classes as the model does (they are then "
                      f"matched by name)", stacklevel=3)


def _mapped_by_name(ckpt: LoadedCheckpoint, data: ImageData, order: list[int]) -> ImageData:
    """`data` with its labels (and segmentation masks) renumbered as the model numbers the same classes."""
    lut = torch.tensor(order, dtype=torch.long)
    i = next(i for i, j in enumerate(order) if i != j)
    exact = list(data.classes) == [ckpt.classes[j] for j in order]
    warnings.warn(f"{data.name} numbers its classes in another order than {ckpt.path}: its labels were mapped to the "
                  f"model's classes by name{'' if exact else ' (ignoring case and punctuation)'} "
                  f"({data.classes[i]!r} is class {i} in the data, {ckpt.classes[order[i]]!r} class {order[i]} in the "
                  f"model)", stacklevel=3)
    changes: dict[str, Any] = {"labels": lut[data.labels], "classes": list(ckpt.classes)}
    masks = getattr(data, "masks", None)
    if masks is not None:  # a pixel's class too; 255 (ignored) stays
        full = torch.arange(256, dtype=torch.long)
        full[:len(order)] = lut
        changes["masks"] = full[masks.long()].to(masks.dtype)
        if getattr(data, "native_masks", None) is not None:
            changes["native_masks"] = [full[m.long()].to(m.dtype) for m in data.native_masks]
    return dataclasses.replace(data, **changes)


@dataclass(frozen=True)
class DataSource:
    """Which data to measure a checkpoint on, how a flat image folder's test split was held out, and whether
    a detection file's bad boxes are left out ("drop") or refused ("error")."""

    name: str
    data_dir: str | None
    test_fraction: float
    seed: int
    bad_boxes: str = "error"


def checkpoint_data_source(ckpt: LoadedCheckpoint, data: str | None = None,
                           data_dir: str | os.PathLike | None = None, drop_bad_boxes: bool = False) -> DataSource:
    """`data` (default: the checkpoint's own dataset, else the sample), its data_dir (default: the one the
    checkpoint was trained with, for its own dataset), the test fraction and split seed it recorded
    (default 0.2 and 0), and whether bad boxes are dropped: when asked, or for its own dataset when its run
    dropped them (`--drop-bad-boxes`)."""
    meta: dict[str, Any] = ckpt.meta
    dataset = meta.get("dataset") or {}
    own = dataset.get("name")
    name = data or own or "sample"
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    if data_dir is None and name == own:
        data_dir = config.get("data_dir")
    fraction = dataset.get("test_fraction")
    seed = dataset.get("split_seed")
    drop = drop_bad_boxes or (name == own and config.get("drop_bad_boxes") is True)
    return DataSource(name, None if data_dir is None else str(data_dir),
                      0.2 if fraction is None else float(fraction), 0 if seed is None else int(seed),
                      "drop" if drop else "error")


def load_checkpoint_data(ckpt: LoadedCheckpoint, data: str | None = None, split: str = "test",
                         data_dir: str | os.PathLike | None = None, strict: bool = False,
                         ignore_class_names: bool = False, check: bool = True,
                         match_classes: bool = True, drop_bad_boxes: bool = False) -> ImageData:
    """`split` of `data` (see `checkpoint_data_source`) at the checkpoint's channels and H×W, checked to fit
    it (unless `check` is False: then call `check_compatible` yourself and use the set it returns), its labels
    the model's class indices (the same classes in another order are mapped by name). `split="val"`: the
    training images the checkpoint's run held out for validation."""
    return load_source_split(ckpt, checkpoint_data_source(ckpt, data, data_dir, drop_bad_boxes), split, strict,
                             ignore_class_names, check, match_classes)


def load_source_split(ckpt: LoadedCheckpoint, src: DataSource, split: str = "test", strict: bool = False,
                      ignore_class_names: bool = False, check: bool = True, match_classes: bool = True) -> ImageData:
    """`load_checkpoint_data` for a data source already resolved (`checkpoint_data_source`)."""
    if split not in ("train", "val", "test"):
        raise DataError(f"split must be train, val (the images the run held out for validation) or test, got {split!r}")
    ds = load_dataset(src.name, "train" if split == "val" else split, data_dir=src.data_dir, strict=strict,
                      img_size=tuple(ckpt.img_size), in_chans=ckpt.in_chans, test_fraction=src.test_fraction,
                      seed=src.seed, bad_boxes=src.bad_boxes)
    if split == "val":
        ds = held_out_for_validation(ckpt, ds)
    if check:  # the same classes in another order come back renumbered as the model's
        ds = check_compatible(ckpt, ds, ignore_class_names, match_classes)
    return ds


def validation_split(meta: dict[str, Any], labels: torch.Tensor, source: Path | str) -> torch.Tensor:
    """The indices (into the train split whose labels are given) that a run held out for validation, from its
    checkpoint's config: `val_fraction`, and `split_seed` (else `seed`) as `cnnkit train` splits them. Empty
    when the run held none out (`val_fraction` 0)."""
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source} records no training configuration, so which images it trained on is "
                              f"unknown; give checkpoints written by cnnkit train")
    fraction = cfg.get("val_fraction", DEFAULT_VAL_FRACTION)
    seed = cfg.get("split_seed")
    seed = cfg.get("seed", 0) if seed is None else seed
    try:  # a handed checkpoint's config is data: a malformed value is its mistake, said in one line
        fraction, seed = float(fraction or 0), int(seed)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source} records a validation split cnnkit cannot read (val_fraction "
                              f"{cfg.get('val_fraction')!r}, seed {seed!r})") from None
    if not fraction:
        return torch.zeros(0, dtype=torch.long)
    return train_val_split(labels, fraction, seed)[1]


def _fingerprints(train: ImageData) -> set[str]:
    """`train`'s fingerprint, whole and without its masks: a run records the data as its task trained on it (a
    detection run on fashion-scenes, say, its boxes without the scenes' masks)."""
    if getattr(train, "masks", None) is None and getattr(train, "instances", None) is None:
        return {train.fingerprint()}
    boxes_only = dataclasses.replace(train, masks=None, instances=None, native_masks=None)
    return {train.fingerprint(), boxes_only.fingerprint()}


def held_out_for_validation(ckpt: LoadedCheckpoint, train: ImageData) -> ImageData:
    """The images of `train` (the checkpoint's dataset's train split) that its run held out for validation, as
    a set named "val". ConfigError when the run held none out."""
    recorded = (ckpt.meta.get("dataset") or {}).get("fingerprint")
    if recorded and hasattr(train, "fingerprint") and recorded not in _fingerprints(train):
        raise ConfigError(f"--split val is the images {ckpt.path}'s run held out of its own training data, and "
                          f"{train.name}'s train split is not that data (its fingerprint differs); use --split "
                          f"test, or the dataset the run trained on")
    held = validation_split(ckpt.meta, train.labels, ckpt.path)
    if len(held) == 0:
        raise ConfigError(f"{ckpt.path} held out no validation images (val_fraction 0): it trained on every image of "
                          f"{train.name}'s train split, so it has no validation split to evaluate; train with "
                          f"--val-fraction above 0, or use --split test")
    return train.subset(held, "val")
