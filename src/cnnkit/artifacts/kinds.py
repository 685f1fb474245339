"""The one door to every artifact cnnkit reads: `load(path, device)` tells the artifact's kind from its path
and hands it to that kind's loader in LOADERS. Each kind checks what it trusts before PyTorch sees the file
(no unpickling anywhere; `.pt2` archives rebuilt and their graphs checked; `.ts` only signed or trusted)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from cnnkit.artifacts.checkpoint import rebuild_checkpoint
from cnnkit.artifacts.exported import load_onnx, load_program, load_torchscript
from cnnkit.artifacts.loaded import LoadedCheckpoint

# kind -> its loader (path, device) -> LoadedCheckpoint
LOADERS: dict[str, Callable[[str | os.PathLike, str | torch.device], LoadedCheckpoint]] = {
    "checkpoint": rebuild_checkpoint,  # a cnnkit .safetensors checkpoint, or a run directory's best (else last)
    "onnx": load_onnx,  # ONNX Runtime, on the CPU
    "program": load_program,  # a torch.export program, checked by cnnkit.artifacts.trust
    "torchscript": load_torchscript,  # int8 TorchScript: signed by this user's cnnkit, or trusted
}
SUFFIXES = {".onnx": "onnx", ".pt2": "program", ".ts": "torchscript"}  # anything else is a checkpoint


def artifact_kind(path: str | os.PathLike) -> str:
    """The kind of artifact at `path` (a key of LOADERS), told by its suffix."""
    return next((kind for suffix, kind in SUFFIXES.items() if os.fspath(path).endswith(suffix)), "checkpoint")


def load(path: str | os.PathLike | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """The model in any artifact cnnkit reads (checkpoint or run directory, `.onnx`, `.pt2`, `.ts`) with its
    metadata, ready to run: a checkpoint's model on `device`, an exported one where its runtime runs."""
    return LOADERS[artifact_kind(path)](path, device)
