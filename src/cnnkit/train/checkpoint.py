"""Checkpoints as safetensors with their metadata inside the file and in a JSON sidecar; atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save

from cnnkit import __version__
from cnnkit.errors import CheckpointError, CnnkitError
from cnnkit.models import create

FORMAT = "cnnkit-checkpoint/1"


# mkstemp creates files readable by their owner only; give written files the mode open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """safetensors file with `meta` as JSON in its header, written atomically."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata={"cnnkit": json.dumps(meta)}))


def read_meta(path: Path) -> dict[str, Any]:
    """The cnnkit metadata stored in a safetensors header."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    if "cnnkit" not in header:
        raise CheckpointError(f"{path} has no cnnkit metadata; load plain weight files with --init-from")
    return json.loads(header["cnnkit"])


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Weights (plain state_dict keys, loadable by timm/torch) plus metadata; then the JSON sidecar."""
    meta = {"format": FORMAT, "cnnkit_version": __version__, "torch_version": torch.__version__, **meta}
    state = {k: v for k, v in _unwrap(model).state_dict().items()}
    save_tensors(path, state, meta)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory's best (else last) checkpoint."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).exists():
                return p / name
        raise CheckpointError(f"{p} holds no checkpoint (expected best.safetensors or last.safetensors)")
    if not p.exists():
        raise CheckpointError(f"no such checkpoint or run directory: {p}")
    return p


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, in eval mode, and the metadata it was saved with."""

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


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """load_state_dict(strict) with an error listing the first mismatched keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:3]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:3]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:3]))
        raise CheckpointError(f"weights in {source} do not fit the model ({' | '.join(parts)})")
    model.load_state_dict(state)


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Give the conv, BN and linear layers of a freshly built `model` the (smaller) shapes of a structurally
    pruned `state`, so a pruned checkpoint rebuilds from its model name; returns the layers resized."""
    changed = []
    for name, m in model.named_modules():
        own = {**m._parameters, **m._buffers}
        new = {k: state[f"{name}.{k}" if name else k] for k, v in own.items()
               if v is not None and (f"{name}.{k}" if name else k) in state
               and state[f"{name}.{k}" if name else k].shape != v.shape}
        if not new:
            continue
        for k, t in new.items():
            holder = m._parameters if k in m._parameters else m._buffers
            empty = torch.empty(t.shape, dtype=holder[k].dtype, device=holder[k].device)
            holder[k] = nn.Parameter(empty, holder[k].requires_grad) if k in m._parameters else empty
        if isinstance(m, nn.modules.conv._ConvNd):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            m.out_channels = m.weight.shape[0]
            m.groups = m.out_channels if depthwise else m.groups
            m.in_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.num_features = (m.weight if m.weight is not None else m.running_mean).shape[0]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        else:
            raise CheckpointError(f"cannot restore the pruned shape of {name} ({type(m).__name__})")
        changed.append(name)
    return changed


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model a checkpoint (file or run directory) was trained as, with its weights; an `.onnx`
    artifact with its sidecar loads as an ONNX Runtime model (CPU)."""
    if str(path).endswith((".onnx", ".pt2", ".ts")):
        from cnnkit.deploy.artifacts import load_onnx, load_program, load_torchscript

        loader = {".onnx": load_onnx, ".pt2": load_program, ".ts": load_torchscript}[Path(path).suffix]
        return loader(path)
    file = resolve_checkpoint(path)
    meta = read_meta(file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file}: unsupported checkpoint format {meta.get('format')!r}")
    try:
        model = create(meta["model"], num_classes=len(meta["classes"]), in_chans=meta["in_chans"],
                       img_size=tuple(meta["img_size"]), **meta.get("model_kwargs", {}))
    except CnnkitError as e:
        raise CheckpointError(f"{file}: cannot rebuild its model: {e}") from None
    state = load_file(str(file))
    if meta.get("pruned"):
        resize_to_state(model, state)
    load_state_into(model, state, file)
    return LoadedCheckpoint(model.to(device).eval(), meta, file)
