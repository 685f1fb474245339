"""Training state for --resume (optimizer, scheduler, EMA, RNG) as safetensors + JSON, without pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from cnnkit.artifacts import read_meta, save_tensors


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, slots in state["state"].items():
        plain["state"][str(idx)] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                plain["state"][str(idx)][name] = value
    return tensors, plain


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_train_state(path: Path, optimizer: torch.optim.Optimizer, scheduler: Any, ema: torch.nn.Module | None,
                     progress: dict[str, Any], modules: dict[str, torch.nn.Module] | None = None) -> None:
    """Everything beyond the weights that an exact resume needs (`modules`: other trained modules by name)."""
    tensors, optim_plain = _split_optimizer(optimizer.state_dict())
    if ema is not None:
        tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    for name, module in (modules or {}).items():
        tensors.update({f"module/{name}/{k}": v for k, v in module.state_dict().items()})
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    meta = {"optimizer": optim_plain, "scheduler": scheduler.state_dict(), "progress": progress}
    save_tensors(path, tensors, meta)


def load_train_state(path: Path, optimizer: torch.optim.Optimizer, scheduler: Any | None,
                     ema: torch.nn.Module | None, modules: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """Restore optimizer, scheduler (unless None), EMA, `modules` and RNG from `path`; return the saved progress."""
    meta = read_meta(path)
    tensors = load_file(str(path))
    for name, module in (modules or {}).items():
        prefix = f"module/{name}/"
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
    if scheduler is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
    torch.set_rng_state(tensors["rng/cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return meta["progress"]
