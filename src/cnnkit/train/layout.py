"""Channels-last or NCHW: chosen by measuring which one trains this model faster on this machine.

On a GPU with mixed precision channels-last is what the tensor cores want, so it is chosen without
measuring. On a CPU it depends on the model and the kernels (oneDNN): usually faster for plain and residual
convolution stacks, sometimes slower for depthwise or tiny layers. The first run of a model (its name and
options), input shape, batch, precision and thread count on a CPU measures a few training steps in both
layouts; the answer is cached per CPU model and torch version in `$CNNKIT_CACHE/layout.json` (default
`~/.cache/cnnkit`), so later runs decide at once.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.runtime import autocast, cpu_description

TIMED_STEPS = 3


def _cache_file() -> Path:
    from cnnkit.data.datasets import cache_dir

    return cache_dir() / "layout.json"


def _key(model_name: str, model_kwargs: dict[str, Any], shape: tuple[int, ...], batch: int,
         amp: torch.dtype | None) -> str:
    cpu = cpu_description()
    return json.dumps([cpu["model"], torch.__version__, torch.get_num_threads(), model_name,
                       sorted((k, str(v)) for k, v in model_kwargs.items()), list(shape), batch, str(amp)])


def _time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                amp: torch.dtype | None) -> float:
    """Median seconds of a forward, backward and SGD step, after one warm-up step."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    times = []
    for i in range(TIMED_STEPS + 1):
        t = time.perf_counter()
        with autocast(device, amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def choose_layout(model: nn.Module, model_name: str, model_kwargs: dict[str, Any], shape: tuple[int, ...],
                  batch: int, device: torch.device, amp: torch.dtype | None) -> tuple[bool, str]:
    """(channels_last, why) for training `model` on inputs of `shape` (C, H, W) in batches of `batch`."""
    if device.type == "cuda":
        return True, "channels-last (what the GPU's tensor cores want)"
    if device.type != "cpu":
        return False, f"NCHW (the default on {device.type})"
    batch = min(batch, 64)  # enough to rank the layouts, cheap for large models
    key = _key(model_name, model_kwargs, shape, batch, amp)
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), dict) and "nchw" in known[key]:
        entry = known[key]
        how = "cached measurement"
    else:
        probe = copy.deepcopy(model).to(device).train()
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(0, 2, (batch,), device=device)
        state = torch.get_rng_state()
        nchw = _time_steps(probe, x, y, device, amp)
        probe = probe.to(memory_format=torch.channels_last)
        last = _time_steps(probe, x.contiguous(memory_format=torch.channels_last), y, device, amp)
        torch.set_rng_state(state)
        entry = {"nchw": nchw, "channels_last": last}
        how = "measured"
        known = known if isinstance(known, dict) else {}
        known[key] = entry
        try:  # a cache only: a folder that cannot be written costs a re-measurement next time, nothing more
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, cache)
        except OSError:
            pass
    use_last = entry["channels_last"] <= entry["nchw"]
    ratio = entry["nchw"] / entry["channels_last"] if use_last else entry["channels_last"] / entry["nchw"]
    name = "channels-last" if use_last else "NCHW"
    return use_last, f"{name} ({how}: {ratio:.2f}× faster than {'NCHW' if use_last else 'channels-last'})"
