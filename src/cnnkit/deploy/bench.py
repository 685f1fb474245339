"""`cnnkit bench`: what a model or artifact costs on this machine: parameters, MACs, file size, latency
p50/p99 at batch 1, throughput at batch 64, peak memory, and its task's headline metric on a dataset (top-1,
mIoU). Every figure is at the target's training size or at a given `img_size` (a segmentation model takes
any), with the time per megapixel beside the latency and the megapixels per second beside the throughput.

Peak memory is measured for each target alone, in a fresh Python process that imports cnnkit, loads the
target and runs it at batch 1 and at the throughput batch: `peak_rss_mib` is that process's high-water
mark, `model_rss_mib` what loading and running the target added to it after the imports."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.artifacts import is_exported, load
from cnnkit.artifacts.exported import OnnxModel
from cnnkit.artifacts.loaded import LoadedCheckpoint
from cnnkit.errors import ConfigError
from cnnkit.runtime import autocast, autocast_dtype, cpu_only_artifact, pick_device, precision_name
from cnnkit.tasks import get_task


def _params(model: torch.nn.Module) -> int:
    if isinstance(model, OnnxModel):
        import onnx

        return int(sum(np.prod(t.dims) for t in onnx.load(str(model.path), load_external_data=False).graph.initializer))
    return int(sum(p.numel() for p in model.parameters()))


def _macs(model: torch.nn.Module, x: torch.Tensor) -> int | None:
    """MACs counted by torch.utils.flop_counter for PyTorch models; None for ONNX files and the programs cnnkit
    compiles (whose sidecar carries the source model's count when cnnkit wrote it)."""
    from cnnkit.artifacts.programs import CompiledProgram

    if isinstance(model, (OnnxModel, CompiledProgram)):
        return None
    from cnnkit.models.card import count_macs

    return count_macs(model, x)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA launch returns before it computes)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(model: torch.nn.Module, x: torch.Tensor, warmup: int, repeats: int,
           dtype: torch.dtype | None = None) -> list[float]:
    with torch.inference_mode(), autocast(x.device, dtype):
        for _ in range(warmup):
            model(x)
        _sync(x.device)
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            _sync(x.device)
            out.append(time.perf_counter() - t0)
    return out


def _seconds_per_run(model: torch.nn.Module, x: torch.Tensor, min_seconds: float,
                     dtype: torch.dtype | None = None) -> float:
    """Mean time of back-to-back runs, repeated until `min_seconds` have passed (at least two runs), so a
    fast model's figure is not one or two runs of a couple of milliseconds."""
    _sync(x.device)
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode(), autocast(x.device, dtype):
        while True:
            model(x)
            n += 1
            _sync(x.device)
            elapsed = time.perf_counter() - t0
            if n >= 2 and elapsed >= min_seconds:
                return elapsed / n


def _high_water_kib() -> int:
    """This process's peak resident set in KiB: Linux's VmHWM, which starts afresh at exec (ru_maxrss
    carries the parent's peak over into a child), else ru_maxrss."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child_peak(target: str, batch: int, device: str = "cpu", amp: str = "off",
                img_size: tuple[int, int] | None = None) -> None:
    """Runs in the child process of `peak_memory`: prints its high-water marks as JSON (on a GPU also the
    most memory torch's allocator held there)."""
    import cnnkit.models  # noqa: F401  (the model code's libraries are not the model's memory)

    before = _high_water_kib()
    dev = torch.device(device)
    ckpt = load(target, dev)
    model = ckpt.model.to(dev)
    with torch.inference_mode(), autocast(dev, autocast_dtype(amp, dev)):
        for n in (1, batch):
            model(torch.randn(n, ckpt.in_chans, *(img_size or ckpt.img_size), device=dev))
    _sync(dev)
    peak = _high_water_kib()
    out = {"peak_rss_mib": peak / 1024, "model_rss_mib": (peak - before) / 1024}
    if dev.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    print(json.dumps(out))


def peak_memory(target: str | os.PathLike, batch: int = 64, device: str = "cpu", amp: str = "off",
                img_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The target's peak memory on its own (see the module docstring), at `img_size` (default: its training
    size). If the child process fails, both figures are None and `peak_memory_error` holds the last line it
    wrote to stderr."""
    size = None if img_size is None else tuple(int(v) for v in img_size)
    code = (f"from cnnkit.deploy.bench import _child_peak; "
            f"_child_peak({str(target)!r}, {int(batch)}, {str(device)!r}, {str(amp)!r}, {size!r})")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    with contextlib.suppress(IndexError, ValueError):
        return json.loads(proc.stdout.strip().splitlines()[-1])
    why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"peak_rss_mib": None, "model_rss_mib": None, "peak_memory_error": why[:200]}


def target_device(target: str | os.PathLike, device: str = "auto") -> torch.device:
    """Where `cnnkit bench` runs a target: `device` (auto: CUDA when present), except that a program cnnkit
    compiles for the CPU (an int8 `.pt2`) runs on the CPU only and an `.onnx` file in ONNX Runtime on the CPU (auto picks the CPU for them;
    another device is refused rather than timed through copies to and from the CPU)."""
    name = os.path.basename(os.fspath(target))
    if name.endswith(".onnx"):
        dev = pick_device(device)  # an unknown or unavailable device is refused as for any target
        if str(device).strip().lower() != "auto" and dev.type != "cpu":
            raise ConfigError(f"{name} runs in ONNX Runtime on the CPU here; bench it with --device cpu or auto")
        return torch.device("cpu")
    return pick_device(device, cpu_only_artifact(target))


def input_size(ckpt: LoadedCheckpoint, img_size: tuple[int, int] | None) -> tuple[int, int]:
    """The size `ckpt` is measured at: `img_size`, else its training size. Another size than the training one
    only for a model that takes any (its task's `any_size`; an exported one exported with a dynamic height and
    width: not SSD's ONNX graph, whose default boxes are fixed), else ConfigError."""
    if img_size is None or tuple(img_size) == ckpt.img_size:
        return ckpt.img_size
    h, w = (int(v) for v in img_size)
    if h < 1 or w < 1:
        raise ConfigError(f"--img-size must be positive, got {h}x{w}")
    if not get_task(ckpt.meta.get("task")).any_size or (is_exported(ckpt.model) and not ckpt.meta.get("dynamic_size")):
        raise ConfigError(f"{ckpt.path.name} takes {ckpt.img_size[0]}x{ckpt.img_size[1]} images only; --img-size "
                          f"is for models that take any size (segmentation and detection checkpoints; an artifact "
                          f"exported with a dynamic size, its sidecar's dynamic_size)")
    return h, w


def metric_key(label: str) -> str:
    """A metric's key in a row from its label: its lower-case letters and digits (top-1 -> top1, mIoU -> miou),
    which is how an evaluation names it."""
    return "".join(ch for ch in label.lower() if ch.isalnum())


def headline(task_name: str | None, metrics: dict[str, Any]) -> tuple[str, str, float]:
    """A task's headline metric in `metrics` (an evaluation's): the first its `summary` shows, as (key, label,
    value)."""
    label, value = next(iter(get_task(task_name).summary(metrics).items()))
    return metric_key(label), label, float(value)


def bench_many(targets: list[str | os.PathLike], data: str | None = None, data_dir: str | os.PathLike | None = None,
               batch: int = 64, warmup: int = 3, repeats: int = 30, rounds: int = 5,
               min_seconds: float = 0.2, ignore_class_names: bool = False, device: str = "auto",
               amp: str = "off", log: Callable[[str], None] = lambda s: None,
               img_size: tuple[int, int] | None = None, test_images: int | None = None) -> list[dict[str, Any]]:
    """Measure several models side by side: all are loaded first, then timed in `rounds` interleaved
    rounds (each round times every target in turn), so a slow spell of the machine (another process,
    clock changes) falls on all of them rather than on whichever happened to run then. Latency is taken
    over all rounds' batch-1 runs (`repeats` in all); throughput is the median over the rounds of
    back-to-back batch-`batch` runs lasting at least `min_seconds` each. Inputs are `img_size` (H, W; default
    each target's training size, see `input_size`); `ms_per_megapixel` and `megapixels_per_s` put latency and
    throughput per pixel. With `data`, each target's headline metric (`headline`: top-1, mIoU; its key in the
    row, and `metric` its label) is measured on its test split (a flat image folder's held-out part, as each
    target recorded it; `test_images`: a stratified, seeded subset of that many). `device` and `amp` as for `cnnkit eval` (see `target_device`); on a GPU each timing
    waits for the device to finish. `log` is told what is being measured, phase by phase and target by target."""
    devs = [target_device(t, device) for t in targets]  # every target's device settled before any is loaded
    for d in devs:
        autocast_dtype(amp, d)  # e.g. fp16 on a CPU: refused before anything is loaded
    ckpts = [load(t, d) for t, d in zip(targets, devs)]
    sizes = [input_size(c, img_size) for c in ckpts]  # refused before anything is timed
    for c, d in zip(ckpts, devs):
        c.model.to(d)
    # an exported artifact runs in the precision it was exported in; autocast is for PyTorch models
    exported = [is_exported(c.model) for c in ckpts]
    amps = ["off" if e else amp for e in exported]
    dtypes = [autocast_dtype(a, d) for a, d in zip(amps, devs)]
    rounds = max(1, min(rounds, repeats))
    per_round = max(1, repeats // rounds)
    lat: list[list[float]] = [[] for _ in ckpts]
    thr: list[list[float]] = [[] for _ in ckpts]
    inputs = [(torch.randn(1, c.in_chans, *hw, device=d), torch.randn(batch, c.in_chans, *hw, device=d))
              for c, d, hw in zip(ckpts, devs, sizes)]
    for i, c in enumerate(ckpts):
        _times(c.model.eval(), inputs[i][0], warmup, 0, dtypes[i])
        _times(c.model, inputs[i][1], max(1, warmup // 2), 0, dtypes[i])
    log(f"timing {len(ckpts)} target(s) in {rounds} interleaved rounds")
    for _ in range(rounds):
        for i, c in enumerate(ckpts):
            lat[i] += _times(c.model, inputs[i][0], 1, per_round, dtypes[i])
            thr[i].append(_seconds_per_run(c.model, inputs[i][1], min_seconds, dtypes[i]))
    rows = []
    for i, ckpt in enumerate(ckpts):
        log(f"  {i + 1}/{len(ckpts)} {ckpt.path.name}: peak memory{f', accuracy on {data}' if data else ''}")
        one, megapixels = inputs[i][0], sizes[i][0] * sizes[i][1] / 1e6
        row: dict[str, Any] = {
            "target": str(ckpt.path), "kind": ckpt.path.suffix.lstrip("."), "device": str(devs[i]),
            "precision": "as exported" if exported[i] else precision_name(dtypes[i]),
            "params": ckpt.meta.get("params") or _params(ckpt.model),
            "macs": (ckpt.meta.get("macs") if sizes[i] == ckpt.img_size else None) or _macs(ckpt.model, one),
            "file_bytes": Path(ckpt.path).stat().st_size,
            "img_size": list(sizes[i]), "latency_ms_p50": 1e3 * float(np.percentile(lat[i], 50)),
            "latency_ms_p99": 1e3 * float(np.percentile(lat[i], 99)),
            "ms_per_megapixel": 1e3 * float(np.percentile(lat[i], 50)) / megapixels,
            "throughput_batch": batch, "images_per_s": batch / statistics.median(thr[i]),
            "megapixels_per_s": batch * megapixels / statistics.median(thr[i]),
            "torch_threads": torch.get_num_threads(), "warmup": warmup, "repeats": len(lat[i]), "rounds": rounds,
            "throughput_seconds_per_round": min_seconds,
            **peak_memory(ckpt.path, batch, str(devs[i]), amps[i], None if sizes[i] == ckpt.img_size else sizes[i]),
        }
        if ckpt.meta.get("task") == "restore":  # a restoration's output is `scale` times the input's sides
            s = int(getattr(ckpt.model, "scale", 1))
            row["output_size"] = [sizes[i][0] * s, sizes[i][1] * s]
            row["ms_per_output_megapixel"] = row["ms_per_megapixel"] / (s * s)
        if data:
            from cnnkit.evaluate import evaluate

            # in batches of the throughput's size: a compiled program (an int8 `.pt2`) then meets the batch sizes
            # it was timed at, compiled once each
            m = evaluate(ckpt, data, "test", data_dir=data_dir, ignore_class_names=ignore_class_names,
                         device=str(devs[i]), amp=amps[i], images=test_images, batch_size=batch).metrics
            key, row["metric"], row[key] = headline(ckpt.meta.get("task"), m)
            row["data"], row["split"] = data, m["split"] + (f", {m['subset']}" if "subset" in m else "")
        rows.append(row)
    return rows


def bench(target: str | os.PathLike, data: str | None = None, data_dir: str | os.PathLike | None = None,
          batch: int = 64, warmup: int = 3, repeats: int = 30, device: str = "auto", amp: str = "off",
          img_size: tuple[int, int] | None = None, test_images: int | None = None) -> dict[str, Any]:
    """Measure a checkpoint, run directory, `.onnx` or `.pt2` artifact (see the module docstring)."""
    return bench_many([target], data, data_dir, batch, warmup, repeats, device=device, amp=amp, img_size=img_size,
                      test_images=test_images)[0]
