"""`cnnkit bench`: what a model or artifact costs on this machine: parameters, MACs, file size, latency
p50/p99 at batch 1, throughput at batch 64, the process's peak memory, and accuracy on a dataset."""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.deploy.artifacts import OnnxModel
from cnnkit.train.checkpoint import load_checkpoint


def _params(model: torch.nn.Module) -> int:
    if isinstance(model, OnnxModel):
        import onnx

        return int(sum(np.prod(t.dims) for t in onnx.load(str(model.path), load_external_data=False).graph.initializer))
    return int(sum(p.numel() for p in model.parameters()))


def _macs(model: torch.nn.Module, x: torch.Tensor) -> int | None:
    """MACs counted by torch.utils.flop_counter for PyTorch models; None for ONNX files and TorchScript
    (whose sidecar carries the source model's count when cnnkit wrote it)."""
    if isinstance(model, OnnxModel) or isinstance(getattr(model, "program", None), torch.jit.ScriptModule):
        return None
    from cnnkit.models.card import count_macs

    return count_macs(model, x)


def _times(model: torch.nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            out.append(time.perf_counter() - t0)
    return out


def bench(target: str | os.PathLike, data: str | None = None, data_dir: str | os.PathLike | None = None,
          batch: int = 64, warmup: int = 3, repeats: int = 30) -> dict[str, Any]:
    """Measure a checkpoint, run directory, `.onnx` or `.pt2` artifact (see the module docstring)."""
    ckpt = load_checkpoint(target)
    model = ckpt.model.eval()
    shape = (ckpt.in_chans, *ckpt.img_size)
    one, many = torch.randn(1, *shape), torch.randn(batch, *shape)
    lat = _times(model, one, warmup, repeats)
    thr = _times(model, many, max(1, warmup // 2), max(3, repeats // 5))
    row: dict[str, Any] = {
        "target": str(ckpt.path), "kind": ckpt.path.suffix.lstrip("."), "params": ckpt.meta.get("params") or _params(model),
        "macs": ckpt.meta.get("macs") or _macs(model, one), "file_bytes": Path(ckpt.path).stat().st_size,
        "latency_ms_p50": 1e3 * float(np.percentile(lat, 50)), "latency_ms_p99": 1e3 * float(np.percentile(lat, 99)),
        "throughput_batch": batch, "images_per_s": batch / statistics.median(thr),
        "torch_threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if data:
        from cnnkit.evaluate import evaluate

        row["data"] = data
        row["top1"] = evaluate(ckpt, data, "test", data_dir=data_dir).metrics["top1"]
    return row
