"""What loading any artifact gives (`LoadedCheckpoint`: a model ready to run and the metadata it was saved
with), and the check every kind's metadata passes. Every artifact kind's module imports this one; it imports
none of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint (or an exported artifact's runtime), in eval mode, and the metadata
    it was saved with."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def in_chans(self) -> int:
        return int(self.meta["in_chans"])

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.meta["img_size"])

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        return self.meta["normalization"]["mean"], self.meta["normalization"]["std"]


def input_meta_ok(meta: dict[str, Any]) -> bool:
    """Whether `meta` (a checkpoint's or a sidecar's) has classes, in_chans, img_size and normalization of the
    types that loading and preprocessing rely on, and a task (if it names one) given by a name."""
    def count(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    def numbers(v: object) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in v)

    norm = meta.get("normalization")
    return bool(isinstance(meta.get("task", ""), str) and isinstance(meta.get("classes"), list) and meta["classes"]
                and all(isinstance(c, str) for c in meta["classes"]) and count(meta.get("in_chans"))
                and isinstance(meta.get("img_size"), list) and len(meta["img_size"]) == 2
                and all(count(v) for v in meta["img_size"])
                and isinstance(norm, dict) and numbers(norm.get("mean")) and numbers(norm.get("std")))
