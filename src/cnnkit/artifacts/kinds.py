"""The one door to every artifact cnnkit reads: `load(path, device)` tells the artifact's kind from its path
and hands it to that kind's loader in LOADERS. Each kind checks what it trusts before PyTorch sees the file
(no unpickling anywhere; `.pt2` archives rebuilt and their graphs checked; TorchScript `.ts` refused).

A folder is a run directory (its best, else last checkpoint) or the folder `cnnkit soup` wrote (its greedy
soup, else its uniform one); any other folder of artifacts is refused, naming the files to pass."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from cnnkit.artifacts.checkpoint import rebuild_checkpoint
from cnnkit.artifacts.exported import load_onnx, load_program, refuse_torchscript
from cnnkit.artifacts.loaded import LoadedCheckpoint
from cnnkit.errors import CheckpointError

# kind -> its loader (path, device) -> LoadedCheckpoint
LOADERS: dict[str, Callable[[str | os.PathLike, str | torch.device], LoadedCheckpoint]] = {
    "checkpoint": rebuild_checkpoint,  # a cnnkit .safetensors checkpoint, or a run directory's best (else last)
    "onnx": load_onnx,  # ONNX Runtime, on the CPU
    "program": load_program,  # a torch.export program, checked by cnnkit.artifacts.trust
    "torchscript": refuse_torchscript,  # TorchScript runs code on load: refused in one line
}
SUFFIXES = {".onnx": "onnx", ".pt2": "program", ".ts": "torchscript"}  # anything else is a checkpoint
RUN_FILES = ("best.safetensors", "last.safetensors")  # a run directory's checkpoints, the one loaded first
SOUP_FILES = ("soup-greedy.safetensors", "soup-uniform.safetensors")  # what `cnnkit soup` writes, likewise


def artifact_kind(path: str | os.PathLike) -> str:
    """The kind of artifact at `path` (a key of LOADERS), told by its suffix."""
    return next((kind for suffix, kind in SUFFIXES.items() if os.fspath(path).endswith(suffix)), "checkpoint")


def artifact_file(path: str | os.PathLike) -> str | os.PathLike:
    """What a path names: a file as given; a run directory as given (its checkpoint loader picks best, else
    last); a soup folder's greedy soup, else its uniform one (a warning says which, when it holds both).
    CheckpointError for a folder of other artifacts, listing them."""
    p = Path(path).expanduser()
    if not p.is_dir() or any((p / name).is_file() for name in RUN_FILES):
        return path
    soups = [p / name for name in SOUP_FILES if (p / name).is_file()]
    if len(soups) > 1:
        warnings.warn(f"{p} holds the greedy and the uniform soup: loading the greedy one, {soups[0]} (pass "
                      f"{soups[1]} for the other)", stacklevel=3)
    if soups:
        return soups[0]
    files = sorted(f for f in p.iterdir() if f.is_file() and (f.suffix == ".safetensors" or f.suffix in SUFFIXES))
    if files:
        shown = ", ".join(str(f) for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        raise CheckpointError(f"{p} is neither a run directory (best.safetensors or last.safetensors) nor a soup "
                              f"folder (soup-greedy.safetensors or soup-uniform.safetensors); pass one of its "
                              f"files: {shown}")
    return path  # the checkpoint loader says what a run directory lacks


def load(path: str | os.PathLike | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """The model in any artifact cnnkit reads (checkpoint, run directory or soup folder, `.onnx`, `.pt2`)
    with its metadata, ready to run: a checkpoint's model on `device`, an exported one where its
    runtime runs."""
    file = artifact_file(path)
    return LOADERS[artifact_kind(file)](file, device)
