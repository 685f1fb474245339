"""Precision and memory layout for training, chosen by what is fastest for this model on this machine.

`--amp auto` never considers bfloat16 on a CPU that only emulates it (see runtime.native_bf16_cpu). Where
the CPU computes bf16 natively, bf16 is still not always faster: on a 2-core Xeon with AMX, ResNet-9 trains
1.6× faster in bf16, MobileNetV2 and ConvNeXt (depthwise convolutions) faster in fp32. Channels-last is
faster for most convolution stacks and slower for some. So on a CPU, each candidate (fp32, and bf16 where
native; NCHW and channels-last where `--channels-last` is `auto`) is timed for a few training steps on a
copy of the model, and the fastest wins. The answer is cached per CPU model, torch version, thread count,
model, options, input shape and batch in `$CNNKIT_CACHE/layout.json` (default `~/.cache/cnnkit`), so only
the first run of a model on a machine measures; delete the file to measure again. On a GPU, `auto` keeps
the usual rule (bf16 where supported, else fp16) with channels-last, which the tensor cores want.
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

from cnnkit.models.restore import RestorationNet
from cnnkit.runtime import (autocast, autocast_dtype, cpu_description, native_bf16_cpu, nhwc_training_hazard,
                             precision_note)

TIMED_ROUNDS = 3  # each candidate is timed once per round, rounds interleaved; the fastest step of each counts
_NAMES = {None: "float32", torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast"}


def _cache_file() -> Path:
    from cnnkit.data import cache_dir

    return cache_dir() / "layout.json"


def _key(model_name: str, model_kwargs: dict[str, Any], shape: tuple[int, ...], batch: int) -> str:
    # "v2": timed in interleaved rounds (the fastest step counts); entries timed the earlier way, one
    # candidate after another, could record a spell of contention as the answer and are measured again
    return json.dumps(["v2", cpu_description()["model"], torch.__version__, torch.get_num_threads(), model_name,
                       sorted((k, str(v)) for k, v in model_kwargs.items()), list(shape), batch])


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device,
          amp: torch.dtype | None) -> float:
    """Seconds of one forward, backward and SGD step."""
    t = time.perf_counter()
    if getattr(model, "task", None) == "detect":  # a detector's own losses, one box per image
        side = min(x.shape[-2:])
        boxes = torch.tensor([1.0, side / 8, side / 8, side / 2, side / 2], device=x.device).expand(len(x), 1, 5)
        with autocast(device, amp):
            loss = sum(v.float() for v in model(x, boxes).values())
    elif isinstance(model, RestorationNet):  # the input it is given: the patch shrunk by its scale; the patch back
        s, (h, w) = model.scale, x.shape[-2:]
        target = x[..., :h - h % s, :w - w % s]
        with autocast(device, amp):
            out = model(target[..., ::s, ::s])
        loss = F.mse_loss(out.float(), target.float())
    else:
        with autocast(device, amp):
            out = model(x)
        if out.ndim > 2:  # a class per pixel (segmentation): the image's label at every pixel
            y = y.view(-1, *[1] * (out.ndim - 2)).expand(-1, *out.shape[2:])
        loss = F.cross_entropy(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    float(loss.detach())
    return time.perf_counter() - t


def _label(amp: torch.dtype | None, channels_last: bool) -> str:
    return f"{'bf16' if amp == torch.bfloat16 else 'fp32'}-{'channels_last' if channels_last else 'nchw'}"


def choose_execution(model: nn.Module, model_name: str, model_kwargs: dict[str, Any], shape: tuple[int, ...],
                     batch: int, device: torch.device, amp: str, channels_last: bool | str
                     ) -> tuple[torch.dtype | None, bool, str, str]:
    """(autocast dtype, channels_last, precision note, layout note) for training `model` on (C, H, W) inputs.
    On a CPU, a model that oneDNN's channels-last backward would corrupt memory for trains NCHW whatever
    `channels_last` says (runtime.nhwc_training_hazard), and the layout note says why."""
    hazard = nhwc_training_hazard(model) if device.type == "cpu" and channels_last is not False else None
    if hazard is not None:
        dtype, _, prec, _ = choose_execution(model, model_name, model_kwargs, shape, batch, device, amp, False)
        return dtype, False, prec, f"NCHW (not channels-last: {hazard})"
    if device.type != "cpu" or (amp != "auto" and channels_last != "auto"):
        dtype = autocast_dtype(amp, device)
        last = channels_last if channels_last != "auto" else device.type == "cuda"
        why = "what the GPU's tensor cores want" if device.type == "cuda" else f"the default on {device.type}"
        layout = ("channels-last" if last else "NCHW") + (
            f" ({why})" if channels_last == "auto" else f" (--{'' if last else 'no-'}channels-last)")
        return dtype, last, precision_note(amp, device), layout
    dtypes = [autocast_dtype(amp, device)] if amp != "auto" else (
        [None, torch.bfloat16] if torch.backends.mkldnn.is_available() and native_bf16_cpu() else [None])
    layouts = [channels_last] if channels_last != "auto" else [False, True]
    candidates = [(d, cl) for d in dtypes for cl in layouts]
    timings = _measure(model, model_name, model_kwargs, shape, min(batch, 64), device, candidates)
    best = min(candidates, key=lambda c: timings[_label(*c)])
    dtype, last = best
    cached = " (cached)" if timings.get("cached") else ""

    def versus(others: list[tuple[torch.dtype | None, bool]], what) -> str:
        if not others:
            return ""
        runner_up = min(others, key=lambda c: timings[_label(*c)])
        ratio = timings[_label(*runner_up)] / timings[_label(*best)]
        return f"measured{cached} {ratio:.2f}× faster than {what(runner_up)}"

    if amp == "auto":
        if len(dtypes) == 1:
            prec = f"{_NAMES[dtype]} (the CPU has no native bf16; emulated bf16 would be slower)"
        else:
            other = [(d, cl) for d in dtypes if d != dtype for cl in layouts]  # the other precision's best layout
            prec = f"{_NAMES[dtype]} ({versus(other, lambda c: _NAMES[c[0]])}; the CPU has native bf16)"
    else:
        prec = precision_note(amp, device)
    if channels_last == "auto":
        other = [(dtype, not last)]
        layout = f"{'channels-last' if last else 'NCHW'} ({versus(other, lambda c: 'channels-last' if c[1] else 'NCHW')})"
    else:
        layout = f"{'channels-last' if last else 'NCHW'} (--{'' if last else 'no-'}channels-last)"
    return dtype, last, prec, layout


def _measure(model: nn.Module, model_name: str, model_kwargs: dict[str, Any], shape: tuple[int, ...], batch: int,
             device: torch.device, candidates: list[tuple[torch.dtype | None, bool]]) -> dict[str, Any]:
    """Seconds per step of each candidate, from the cache or measured now (and then cached)."""
    key = _key(model_name, model_kwargs, shape, batch)
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key) if isinstance(known.get(key), dict) else {}
    wanted = [_label(*c) for c in candidates]
    if all(isinstance(entry.get(w), (int, float)) for w in wanted):
        return {**entry, "cached": True}
    state = torch.get_rng_state()
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    todo = [c for c in candidates if _label(*c) not in entry]
    probes = []
    for dtype, last in todo:  # a copy per candidate, warmed up by one step
        probe = copy.deepcopy(model).to(device).train()
        xs = x.contiguous(memory_format=torch.channels_last) if last else x
        probe = probe.to(memory_format=torch.channels_last) if last else probe
        opt = torch.optim.SGD(probe.parameters(), lr=1e-4)
        _step(probe, opt, xs, y, device, dtype)
        probes.append((probe, opt, xs, dtype))
    # Rounds interleave the candidates and the fastest step of each counts: a spell of contention from another
    # process then slows one step of every candidate rather than all steps of one, and cannot decide the choice.
    best = [float("inf")] * len(todo)
    for r in range(TIMED_ROUNDS):
        order = range(len(todo)) if r % 2 == 0 else reversed(range(len(todo)))
        for i in order:
            best[i] = min(best[i], _step(*probes[i][:3], y, device, probes[i][3]))
    del probes
    entry.update({_label(*c): t for c, t in zip(todo, best)})
    torch.set_rng_state(state)
    known[key] = entry
    try:  # a cache only: a folder that cannot be written costs a re-measurement next time, nothing more
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    except OSError:
        pass
    return entry
