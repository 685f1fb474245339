"""Shared by the benchmark scripts: machine description, sgemm peak, FLOP counts, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "datasets"


def machine() -> dict[str, Any]:
    import cnnkit
    from cnnkit.runtime import cpu_description

    details = cpu_description()
    cpu = details["model"] if details["model"] != "unknown" else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": details["isa"], "bf16_native": details["bf16_native"],
            "torch_cpu_capability": details["torch_isa"], "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cnnkit": cnnkit.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def gemm_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 3.0) -> float:
    """Best-of GFLOP/s of an n×n matrix product in `dtype` on the CPU (sgemm for float32)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def train_flops_per_image(model: torch.nn.Module, shape: tuple[int, ...], batch: int = 32) -> float:
    """Forward + backward FLOPs per image, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, *shape)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def paired_ratio(ratios: list[float], level: float = 0.95) -> dict[str, Any]:
    """The median of paired ratios (arm A / arm B, one per pair of fresh processes) with a distribution-free
    interval for it: the order statistics k and n+1-k of the sorted ratios, k the largest with
    P(Binomial(n, 1/2) < k) <= (1 - level) / 2 (for 6 pairs: the smallest and largest ratio, 96.9%)."""
    import math
    import statistics

    xs = sorted(ratios)
    n = len(xs)
    tail, k = (1 - level) / 2, 0
    while k + 1 <= n and sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= tail:
        k += 1
    lo, hi = (xs[k - 1], xs[n - k]) if k >= 1 else (float("nan"), float("nan"))
    coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n if k >= 1 else 0.0
    return {"pairs": n, "median": statistics.median(xs), "interval": [lo, hi], "coverage": round(coverage, 4),
            "ratios": ratios}


def paired_bootstrap(correct_a, correct_b, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B (in points) on the same images, with a percentile bootstrap interval:
    the images resampled with replacement, both models scored on each resample (a paired bootstrap, for when
    seeds are unaffordable; it measures the test set's sampling noise, not the training run's)."""
    import numpy as np

    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired_bootstrap needs two equally long vectors of per-image correctness")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(resamples)])
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"difference_points": 100 * float(d.mean()), "interval_points": [100 * float(lo), 100 * float(hi)],
            "images": len(d), "resamples": resamples, "holds_zero": bool(lo <= 0 <= hi)}


def t_interval(values: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of per-seed values (for example paired differences) with a Student-t interval."""
    import statistics

    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(values) / n**0.5 if n > 1 else float("nan")
    return {"mean": mean, "interval": [mean - half, mean + half], "n": n, "values": [float(v) for v in values],
            "holds_zero": bool(mean - half <= 0 <= mean + half)}


def command_line(module: str) -> str:
    """The command that ran this script, as a result's `command`: `python -m benchmarks.NAME` and its arguments."""
    import shlex
    import sys

    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in sys.argv[1:])])


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json, with the machine it ran on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2) + "\n")
    os.replace(tmp, path)
    return path
