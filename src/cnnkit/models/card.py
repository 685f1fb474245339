"""Model cards: parameters, MACs, activation memory, per-stage shapes and measured CPU speed."""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from cnnkit.errors import ModelError
from cnnkit.models.base import stage_modules
from cnnkit.models.layers import OPTION_DOCS
from cnnkit.models.registry import TIMM_PREFIX, create, get_entry


@dataclass
class ModelCard:
    name: str
    family: str
    paper: str
    input: tuple[int, int, int]
    num_classes: int
    params: int
    macs: int  # multiply-accumulates of one forward pass at batch 1 (torch.utils.flop_counter's FLOPs / 2)
    activation_bytes: int  # sum of every layer's output at batch 1 in float32
    stages: list[tuple[str, tuple[int, ...]]]
    options: dict[str, str] = field(default_factory=dict)  # option -> default and meaning
    latency_ms: float | None = None  # batch 1, median
    throughput: float | None = None  # images/s at batch 64, median
    threads: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # the options it was built with (--model-kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_input(spec: str) -> tuple[int, int, int]:
    """'1x28x28' → (1, 28, 28)."""
    m = re.fullmatch(r"\s*(\d+)\s*[x×,]\s*(\d+)\s*[x×,]\s*(\d+)\s*", spec or "")
    if not m:
        raise ModelError(f"--input must look like CxHxW (e.g. 1x28x28), got {spec!r}")
    c, h, w = (int(g) for g in m.groups())
    if min(c, h, w) < 1:
        raise ModelError(f"--input sizes must be positive, got {spec!r}")
    return c, h, w


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of `model(x)`, counted by torch.utils.flop_counter (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@contextlib.contextmanager
def leaf_hooks(model: nn.Module, fn: Callable[[str, nn.Module, Any], None]) -> Iterator[None]:
    """Inside, every leaf layer's forward calls `fn(name, layer, output)`."""
    hooks = [m.register_forward_hook(lambda mod, _i, out, name=name: fn(name, mod, out))
             for name, m in model.named_modules() if not list(m.children())]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def layer_shapes(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Every leaf layer in the order it runs, with its type and output shape (batch dimension dropped)."""
    rows: list[dict[str, Any]] = []

    def record(name: str, mod: nn.Module, out: Any) -> None:
        rows.append({"name": name, "type": type(mod).__name__,
                     "output_shape": list(out.shape[1:]) if isinstance(out, torch.Tensor) else None})

    with leaf_hooks(model, record), torch.no_grad():
        model(x)
    return rows


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[int, list[tuple[str, tuple[int, ...]]]]:
    """Sum of leaf-layer output bytes (float32) and the output shape of each stage."""
    stage_names = stage_modules(model)
    modules = dict(model.named_modules())
    total, shapes, hooks = [0], {}, []

    def leaf_hook(_name, _m, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * 4

    for n in stage_names:
        if n in modules:
            hooks.append(modules[n].register_forward_hook(
                lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:]))
                if isinstance(out, torch.Tensor) else None))
    try:
        with leaf_hooks(model, leaf_hook), torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0], [(n, shapes[n]) for n in stage_names if n in shapes]


def _median_seconds(fn, max_seconds: float = 2.0, max_runs: int = 30) -> float:
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < max_seconds and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[-1] > max_seconds:  # a slow model: one timed run is all the budget allows
            break
    return statistics.median(times)


def model_card(name: str, input: str | tuple[int, int, int] | None = None, num_classes: int = 10,
               timing: bool = True, **options) -> ModelCard:
    """Build `name` and describe it; with `timing`, measure batch-1 latency and batch-64 throughput (fp32, eval)."""
    if name.startswith(TIMM_PREFIX):
        family, paper, default_in, own = "timm", "", "3x224x224", {}
    else:
        entry = get_entry(name)
        family, paper, default_in = entry.family, entry.paper, entry.default_input
        defaults = entry.defaults()
        own = {o: (f"default {defaults[o]!r}" if o in defaults else "") + (
            ("; " if o in defaults and o in OPTION_DOCS else "") + OPTION_DOCS.get(o, "")) for o in entry.options()}
    c, h, w = input if isinstance(input, tuple) else parse_input(input or default_in)
    model = create(name, num_classes=num_classes, in_chans=c, img_size=(h, w), **options).eval()
    x = torch.randn(1, c, h, w)
    try:
        macs = count_macs(model, x)
        act, stages = _trace(model, x)
    except RuntimeError as e:
        raise ModelError(f"{name} cannot run on a {c}×{h}×{w} input: {str(e).splitlines()[0]}") from None
    card = ModelCard(name, family, paper, (c, h, w), num_classes, sum(p.numel() for p in model.parameters()),
                     macs, act, stages, own, threads=torch.get_num_threads(), model_kwargs=dict(options))
    if timing:
        with torch.no_grad():
            card.latency_ms = 1000 * _median_seconds(lambda: model(x))
            xb = torch.randn(64, c, h, w)
            card.throughput = 64 / _median_seconds(lambda: model(xb))
    return card
