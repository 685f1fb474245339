"""Seeded, stratified splits of a labelled set: train and validation, a few images per class, and the test
split held out of a flat image folder."""

from __future__ import annotations

import hashlib

import torch

from cnnkit.errors import DataError


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of `per_class` images of each class (all of a smaller class), chosen by `seed`, sorted."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)][:per_class])
    return torch.sort(torch.cat(keep)).values


def train_val_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seed-deterministic split of indices into (train, val); with a positive `val_fraction`
    every class of two or more images gives at least one to val (and keeps at least one)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        if val_fraction > 0 and len(idx) >= 2:  # small classes: never an empty val split, never an empty class
            n_val = min(len(idx) - 1, max(1, n_val))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.sort(torch.cat(train_idx)).values, torch.sort(torch.cat(val_idx)).values


def held_out_test(files: list[str], labels: list[int], test_fraction: float, seed: int) -> list[bool]:
    """Which files form the held-out test split: per class, the `test_fraction` (at least one image, and
    never all of a class that has two or more) ranked first by a seeded hash of each file's name, so the
    split depends only on the file names, the fraction and the seed, and is stratified by class."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be strictly between 0 and 1, got {test_fraction}")
    # A seeded hash of the name rather than a permutation of positions: adding or removing an image moves
    # no other image between the splits.
    rank = [hashlib.sha256(f"{seed}\0{f}".encode()).hexdigest() for f in files]
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    test = [False] * len(files)
    for idx in by_class.values():
        n = len(idx)
        n_test = 0 if n < 2 else min(n - 1, max(1, round(n * test_fraction)))
        for i in sorted(idx, key=lambda i: (rank[i], files[i]))[:n_test]:
            test[i] = True
    return test
