"""Device, precision, threads and determinism: shared by every step that runs a model."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.errors import ConfigError


def pick_device(device: str = "auto", cpu_only: str | None = None) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; an unknown or unavailable device is an error.

    `cpu_only` names a model that runs on the CPU alone (an int8 program): 'auto' then picks the CPU, and
    asking for another device is an error."""
    device = str(device).strip().lower()
    if device == "auto":
        return torch.device("cpu" if cpu_only or not torch.cuda.is_available() else "cuda")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")
    if cpu_only and dev.type != "cpu":
        raise ConfigError(f"{cpu_only} runs on the CPU only (cnnkit compiles it for the CPU, where PT2E's int8 "
                          f"kernels run); "
                          f"use --device cpu or auto")
    if dev.type == "mps" and not (torch.backends.mps.is_built() and torch.backends.mps.is_available()):
        raise ConfigError("--device mps needs Apple-silicon GPU support, which this machine or PyTorch build "
                          "lacks; use --device auto or cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but no CUDA device is available; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"there is no CUDA device {dev.index}: this machine has {count} "
                              f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); use --device cuda or auto")
    return dev


def cpu_only_artifact(checkpoint: object) -> str | None:
    """The file name of `checkpoint` when it is a program that cnnkit compiles for the CPU (`cnnkit compress`'s
    `.int8.pt2` and its float baseline, whose sidecar says `"runtime": "inductor"`; PT2E's int8 kernels run on
    the CPU only); else None."""
    path = getattr(checkpoint, "path", checkpoint)
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).endswith(".pt2"):
        return None
    import json

    try:
        with open(f"{os.fspath(path)}.json", encoding="utf-8") as f:
            side = json.loads(f.read(1 << 20))
    except (OSError, ValueError, RecursionError):
        return None  # its loader says what is wrong with it
    return os.path.basename(os.fspath(path)) if isinstance(side, dict) and side.get("runtime") == "inductor" else None


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for `amp` on `device`, or None for full precision.

    'auto' means bfloat16 where the hardware runs it natively (CUDA with bf16, CPUs with AVX-512 BF16 or
    AMX, where oneDNN's bf16 convolutions are about 2× faster than fp32), float16 on older GPUs, else off.
    """
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"amp must be auto, bf16, fp16 or off, got {amp!r}")
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if amp == "fp16":
        raise ConfigError("fp16 mixed precision needs a CUDA device; use --amp bf16 or off on the CPU")
    if amp == "bf16" or (amp == "auto" and torch.backends.mkldnn.is_available() and native_bf16_cpu()):
        return torch.bfloat16
    return None


# CPU features that compute bfloat16 natively: AVX-512 BF16 and AMX on x86, the BF16 extension on Arm.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (`flags` on x86, `Features` on Arm); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively. oneDNN also reports bf16 as supported where it only
    emulates it, several times slower than fp32 (issue 14 measured 63 against 345 GFLOP/s), so `auto`
    asks the CPU's own flags instead; where they cannot be read, it assumes no."""
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)


def cpu_description() -> dict[str, object]:
    """The CPU model, its vector ISA and whether it computes bf16 natively: what every speed figure needs."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "sve", "bf16")
           if f in flags]
    return {"model": model or "unknown", "cores": os.cpu_count(), "isa": isa, "bf16_native": native_bf16_cpu(),
            "torch_isa": torch.backends.cpu.get_cpu_capability()}


def precision_note(amp: str, device: torch.device) -> str:
    """What `amp` resolves to on `device`, and why, in a few words (printed by `cnnkit train`)."""
    dtype = autocast_dtype(amp, device)
    name = {None: "float32", torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast"}[dtype]
    if amp != "auto":
        return f"{name} (--amp {amp})"
    if device.type == "cuda":
        return f"{name} ({'the GPU computes bf16' if dtype == torch.bfloat16 else 'the GPU lacks bf16'})"
    native = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
    return (f"{name} (the CPU computes bf16 natively: {', '.join(native)})" if dtype is not None
            else f"{name} (the CPU has no native bf16; emulated bf16 would be slower)")


def precision_name(dtype: torch.dtype | None) -> str:
    """What an autocast dtype (None: none, float32) is called in cards, tables and JSON."""
    return {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; in deterministic mode also forbid non-deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


_OWNS_THREADS = False


@contextlib.contextmanager
def exclusive_threads() -> Iterator[None]:
    """Declare that nothing else in this process runs torch meanwhile (the `cnnkit` command, a benchmark):
    cnnkit may then lower torch's thread count for a while (Score-CAM's per-core workers). torch's count is
    process-wide, so without this declaration, e.g. inside a service or a notebook, it is never changed."""
    global _OWNS_THREADS
    before, _OWNS_THREADS = _OWNS_THREADS, True
    try:
        yield
    finally:
        _OWNS_THREADS = before


def owns_threads() -> bool:
    """Whether cnnkit may change torch's process-wide thread count now (see `exclusive_threads`)."""
    return _OWNS_THREADS


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_REUSE_DEPTH = 0
_LIMITS_RAISED = False  # once raised, for the process's life: glibc has no way back to its dynamic threshold
_REUSE_LOCK = threading.Lock()


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (whose mallopt is tuned below), else None (macOS, Windows, musl)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """While it lasts, memory that torch frees is kept for its next tensors instead of going back to the
    operating system; yields whether that took effect (glibc only; CNNKIT_MALLOC=system leaves malloc alone).

    A training step allocates and frees the same activation tensors every step. glibc serves blocks over its
    mmap threshold with fresh pages and trims the heap's free top beyond its trim threshold, so the next step
    touches zeroed new pages again: about 5,000 page faults per ResNet-9 step at batch 256 here, against about
    300 with the limits raised (benchmarks/page_faults.py). PyTorch's own CPU launcher (torch.backends.xeon.run_cpu)
    gets the same effect by preloading jemalloc or tcmalloc configured never to give memory back.

    The raised limits stay for the rest of the process: glibc cannot be put back as it was. Setting either limit
    turns off its dynamic mmap threshold for good (mallopt(3)), so setting 128 KiB back on exit made every later
    block above 128 KiB a fresh mmap: training steps after `fit` returned faulted in about 12 times the pages
    of the same steps in a fresh process (tests/train/test_memory_reuse.py).
    What the process kept is handed back on leaving the outermost use (malloc_trim), so its memory after
    `fit` returns is what it would be without."""
    global _REUSE_DEPTH, _LIMITS_RAISED
    libc = _glibc()
    if libc is None or os.environ.get("CNNKIT_MALLOC", "").lower() == "system":
        yield False
        return
    with _REUSE_LOCK:
        _REUSE_DEPTH += 1
        if not _LIMITS_RAISED:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest: blocks up to 32 MiB come from the heap
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # never trim the heap's top by itself
            _LIMITS_RAISED = True
    try:
        yield True
    finally:
        with _REUSE_LOCK:
            _REUSE_DEPTH -= 1
            if _REUSE_DEPTH == 0:
                libc.malloc_trim(0)  # the kept memory goes back now; the limits stay (see above)


NHWC_1X1_MIN_CHANNELS = 16  # oneDNN's input-channel block on AVX-512 (8 on AVX2): below it, the bug below


def nhwc_training_hazard(model: torch.nn.Module) -> str | None:
    """Why training `model` channels-last on a CPU is unsafe, or None: oneDNN's backward-by-weights of a strided
    1×1 convolution on channels-last data with fewer input channels (per group) than its channel block writes past
    its workspace (uxlfoundation/oneDNN#6035, open): heap corruption and a crash on some CPUs (AMD EPYC, AVX-512
    here), wrong weight gradients on others. Found on cnnkit's detectors at width 8 (an 8-channel shortcut)."""
    for name, m in model.named_modules():
        if (isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) != (1, 1)
                and m.in_channels // m.groups < NHWC_1X1_MIN_CHANNELS and any(p.requires_grad for p in m.parameters())):
            return (f"its strided 1×1 convolution {name} has {m.in_channels // m.groups} input channels, where oneDNN's "
                    f"channels-last backward corrupts memory (oneDNN issue 6035)")
    return None


def faster_inference_layout(model: torch.nn.Module, shape: tuple[int, ...], batch: int, device: torch.device,
                            rounds: int = 3, dtype: torch.dtype | None = None) -> bool:
    """Whether channels-last runs `model` (in eval mode, on `batch` inputs of `shape`, under autocast to
    `dtype` when given: the precision it will run in) faster than NCHW here; the model is left in the faster
    layout. GPUs take channels-last without measuring.
    On the CPU both are timed in interleaved rounds, the fastest pass of each counting, so a spell of load from
    another process cannot decide it (most convolution stacks run faster channels-last on the CPU, some slower)."""
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        return True
    x = torch.randn(batch, *shape, device=device)
    best = {"nchw": float("inf"), "channels_last": float("inf")}
    for r in range(rounds + 1):  # round 0 warms both up
        for layout in (("nchw", "channels_last") if r % 2 else ("channels_last", "nchw")):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model.to(memory_format=fmt)  # not under inference_mode: the weights must stay usable by autograd
            xs = x.contiguous(memory_format=fmt)
            with torch.no_grad(), autocast(device, dtype):
                t = time.perf_counter()
                model(xs)
                if r:
                    best[layout] = min(best[layout], time.perf_counter() - t)
    last = best["channels_last"] < best["nchw"]
    model.to(memory_format=torch.channels_last if last else torch.contiguous_format)
    return last
