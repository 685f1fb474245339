"""Load weight files saved by timm, torchvision or cnnkit into a cnnkit model (`--init-from`).

No per-model conversion tables: tensors are matched by name when the names agree (timm files, cnnkit
checkpoints, torchvision ResNets) and otherwise by position, which works because timm and torchvision
register the same layers in the same order (torchvision's MobileNetV2, VGG and ConvNeXt, say). Every pair
must then agree in shape, or in element count for the reshapes the two libraries differ by (VGG's first
classifier layer as a 7×7 convolution, ConvNeXt's layer scale as C×1×1). A classifier of another size is
left freshly initialized, and a 3-channel stem is adapted to 1 channel (timm's `adapt_input_conv`).
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit.errors import CheckpointError

_CONTAINERS = ("state_dict", "model", "model_ema", "module", "net")
_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    """How a weight file was matched to a model."""

    source: str
    matched_by: str  # 'name' or 'position'
    loaded: int
    reshaped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # input convs summed/repeated to the model's channels
    skipped_head: list[str] = field(default_factory=list)  # classifier tensors of another size, left fresh

    def summary(self) -> str:
        s = f"loaded {self.loaded} tensors from {self.source} (matched by {self.matched_by})"
        if self.skipped_head:
            s += f"; new classifier ({', '.join(self.skipped_head)} not loaded)"
        if self.adapted:
            s += f"; input conv adapted: {', '.join(self.adapted)}"
        return s


def read_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors, .pth/.pt/.bin file or a cnnkit run directory, unwrapped."""
    p = Path(path)
    if p.is_dir():  # a cnnkit run directory: its best, else last weights (models stays below artifacts)
        p = next((p / n for n in ("best.safetensors", "last.safetensors") if (p / n).is_file()),
                 p / "best.safetensors")
    if not p.is_file():
        raise CheckpointError(f"weight file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        else:
            # torch's weights-only unpickler builds tensors and plain containers and refuses any other object
            # (a pickle's code never runs); its notices about pickle protocols are not the user's to act on
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"cannot read weights from {p}: it holds objects other than tensors, which cnnkit "
                              f"never unpickles (they could run code); save a state dict of tensors, or "
                              f"convert it to .safetensors") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user error
        from cnnkit.errors import error_line

        raise CheckpointError(f"cannot read weights from {p}: it is not a safetensors or PyTorch weight file "
                              f"({type(e).__name__}: {error_line(e)})") from None
    for key in _CONTAINERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for k, v in (obj.items() if isinstance(obj, dict) else ()):
        if isinstance(v, torch.Tensor) and isinstance(k, str):  # a pickled dict may have keys of any type
            for pre in _PREFIXES:
                k = k[len(pre):] if k.startswith(pre) else k
            state[k] = v
    if not state:
        raise CheckpointError(f"{p} holds no state dict of tensors")
    return state


def _head_keys(model: nn.Module) -> set[str]:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    return {names[id(t)] for t in head.state_dict(keep_vars=True).values() if id(t) in names}


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load the weights in `path` into `model`; raise CheckpointError listing the first mismatches."""
    from timm.models import adapt_input_conv

    src = read_weight_file(path)
    own = model.state_dict()
    head = _head_keys(model)
    if all(k in src for k in own if k not in head):
        pairs, how = [(k, k) for k in own if k in src], "name"
    elif len(src) == len(own):
        pairs, how = list(zip(own, src)), "position"
    else:
        missing = [k for k in own if k not in src]
        raise CheckpointError(
            f"weights in {path} do not fit the model: {len(src)} tensors in the file, {len(own)} in the model, "
            f"and names differ (model has {', '.join(missing[:3])} ...; file has {', '.join(list(src)[:3])} ...)")
    report = LoadReport(str(path), how, 0)
    out, bad = {}, []
    first_conv = next((k for k, v in own.items() if v.ndim == 4), None)
    for dst, key in pairs:
        t, want = src[key], own[dst]
        if t.shape == want.shape:
            out[dst] = t
        elif dst in head:
            report.skipped_head.append(dst)
        elif dst == first_conv and t.ndim == 4 and t.shape[0] == want.shape[0] and t.shape[2:] == want.shape[2:]:
            out[dst] = adapt_input_conv(want.shape[1], t.float()).to(t.dtype)
            report.adapted.append(f"{dst} {t.shape[1]}→{want.shape[1]} channels")
        elif t.numel() == want.numel() and t.shape[0] == want.shape[0]:
            out[dst] = t.reshape(want.shape)
            report.reshaped.append(dst)
        else:
            bad.append(f"{dst} {tuple(want.shape)} vs {key} {tuple(t.shape)}")
    if bad:
        raise CheckpointError(f"weights in {path} do not fit the model (matched by {how}; shape mismatch: "
                              f"{'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    model.load_state_dict(out, strict=False)
    report.loaded = len(out)
    return report
