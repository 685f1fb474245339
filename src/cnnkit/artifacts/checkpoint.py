"""Checkpoints: safetensors files whose header holds the metadata (model, classes, input, normalization,
training config). The header is the truth; the JSON sidecar beside each checkpoint is a readable copy,
rewritten from the header whenever the two disagree (e.g. after a run was killed between the two writes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save

from cnnkit import __version__
from cnnkit.artifacts.files import atomic_write_bytes, atomic_write_text
from cnnkit.artifacts.loaded import LoadedCheckpoint, input_meta_ok
from cnnkit.errors import CheckpointError, CnnkitError, error_line

FORMAT = "cnnkit-checkpoint/1"


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
        raise CheckpointError(f"{path} is not a readable safetensors file ({error_line(e)})") from None
    if "cnnkit" not in header:
        raise CheckpointError(f"{path} has no cnnkit metadata; load plain weight files with --init-from")
    try:
        meta = json.loads(header["cnnkit"])
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its cnnkit metadata is damaged (not a JSON object)")
    return meta


def _check_model_meta(file: Path, meta: dict[str, Any]) -> None:
    """The keys a checkpoint needs to rebuild its model, with the right types."""
    ok = isinstance(meta.get("model"), str) and isinstance(meta.get("model_kwargs", {}), dict) and input_meta_ok(meta)
    if not ok:
        raise CheckpointError(f"{file}: its metadata lacks or mangles model, classes, in_chans, img_size or "
                              f"normalization; it cannot be loaded")


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Weights (plain state_dict keys, loadable by timm/torch) plus metadata; then the JSON sidecar."""
    meta = {"format": FORMAT, "cnnkit_version": __version__, "torch_version": torch.__version__, **meta}
    state = {k: v for k, v in _unwrap(model).state_dict().items()}
    save_tensors(path, state, meta)
    write_sidecar(path, meta)


def write_sidecar(path: Path, meta: dict[str, Any]) -> Path:
    """The readable JSON copy of a checkpoint's header metadata (`<name>.json`)."""
    side = Path(path).with_suffix(".json")
    atomic_write_text(side, json.dumps(meta, indent=2) + "\n")
    return side


def repair_sidecar(path: Path) -> bool:
    """Rewrite a checkpoint's sidecar from its header if it is missing or disagrees; True if rewritten."""
    meta = read_meta(path)
    side = Path(path).with_suffix(".json")
    try:
        if json.loads(side.read_text()) == meta:
            return False
    except (OSError, ValueError, RecursionError):  # a missing, unreadable or garbage sidecar is rewritten
        pass
    write_sidecar(path, meta)
    return True


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


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """load_state_dict(strict) with an error listing the first mismatched keys and shapes."""
    check_state_fits(model, state, source)
    model.load_state_dict(state)


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """CheckpointError listing the first mismatched keys and shapes unless `state` fits `model` exactly."""
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


def rebuild_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model a checkpoint (file or run directory) was trained as, with its weights, on `device`
    (the checkpoint kind of `cnnkit.artifacts.load`)."""
    file = resolve_checkpoint(path)
    meta = read_meta(file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file}: unsupported checkpoint format {repr(meta.get('format'))[:60]}")
    _check_model_meta(file, meta)
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{file}: cannot read its weights ({error_line(e)})") from None
    model = _build_model(file, meta, state)
    load_state_into(model, state, file)
    return LoadedCheckpoint(model.to(device).eval(), meta, file)


def _build_model(file: Path, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The model `meta` describes, shaped like `state` (pruned checkpoints). It is first built on the meta
    device, which allocates nothing, and compared with the weights, so that metadata asking for a model far
    larger than the file (a huge img_size, in_chans or width) is refused before it takes the machine's memory."""
    from cnnkit.models import create  # here: cnnkit.models reads weight files through this module

    def build() -> nn.Module:
        try:
            model = create(meta["model"], num_classes=len(meta["classes"]), in_chans=meta["in_chans"],
                           img_size=tuple(meta["img_size"]), **meta.get("model_kwargs", {}))
            if meta.get("pruned"):
                resize_to_state(model, state)
        except CnnkitError as e:
            raise CheckpointError(f"{file}: cannot rebuild its model: {e}") from None
        except Exception as e:  # builders raise what torch and timm raise on mangled options (TypeError, ...)
            raise CheckpointError(f"{file}: cannot rebuild its model from its metadata "
                                  f"({type(e).__name__}: {error_line(e)})") from None
        return model

    try:
        with torch.device("meta"):
            probe = build()
    except CheckpointError:
        probe = None  # a builder that computes on tensors (.item(), .tolist()) cannot run on the meta device
    if probe is not None:
        check_state_fits(probe, state, file)
        if meta.get("pruned"):  # layers were resized to the weights: the input's channels and the head must
            _check_input_channels(probe.eval(), meta, file)  # still agree with the metadata
            outputs = _meta_outputs(probe, meta)
            if outputs is not None and outputs != len(meta["classes"]):
                raise CheckpointError(f"{file}: its model gives {outputs} outputs but its metadata lists "
                                      f"{len(meta['classes'])} classes")
    return build()


def _check_input_channels(model: nn.Module, meta: dict[str, Any], file: str) -> None:
    """The first convolution a (pruned, resized) model runs must take the metadata's `in_chans`: found by
    running it on the meta device until that convolution is reached."""
    first: list[tuple[nn.Module, int]] = []

    class Reached(Exception):
        pass

    def hook(m: nn.Module, args: tuple) -> None:
        first.append((m, args[0].shape[1]))
        raise Reached

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        with torch.no_grad():
            model(torch.empty(1, meta["in_chans"], *meta["img_size"], device="meta"))
    except Exception:  # Reached, or a forward that needs real values: nothing more to learn here
        pass
    finally:
        for h in handles:
            h.remove()
    if first and first[0][0].in_channels != first[0][1]:
        raise CheckpointError(f"{file}: its weights take {first[0][0].in_channels}-channel images but its "
                              f"metadata says in_chans {first[0][1]}")


def _meta_outputs(model: nn.Module, meta: dict[str, Any]) -> int | None:
    """The number of outputs of a model on the meta device (shapes only, no computation), if it can run there."""
    try:
        with torch.no_grad():
            return int(model(torch.empty(1, meta["in_chans"], *meta["img_size"], device="meta")).shape[-1])
    except Exception:  # a forward that needs real values (or sizes beyond int64) says nothing here
        return None
