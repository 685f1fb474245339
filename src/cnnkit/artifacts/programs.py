"""Running a `torch.export` program: `ProgramModel`, a loaded program behind the usual nn.Module calls, and
`CompiledProgram`, one that Inductor compiles (a sidecar's `"runtime": "inductor"` asks for it): `cnnkit
compress`'s PT2E int8 artifacts (`.int8.pt2`), whose graph holds float operations between quantize/dequantize
pairs and int8 weights, which Inductor, with weight freezing on, lowers to oneDNN's int8 kernels; and the float
program `compress` writes beside them as their fair baseline (same compiler, same settings).

`CompiledProgram` compiles on first use of each input shape, a static graph per shape (Inductor's int8 lowering
in torch 2.14 fails on a dynamic batch: "expected size … stride" in its quantized convolution), with the batch
padded up to a power of two (at most 128 images a call, larger batches in chunks), so a service sees at most
eight batch sizes. Inductor caches what it compiled on disk (its FX graph cache), so a later process compiles
the same program in a fraction of the first time. Where it cannot compile (no C++ compiler), the program runs
uncompiled, correct but slow, and one line says so."""

from __future__ import annotations

import os
import time
import warnings

import torch
import torch.nn as nn


class ProgramModel(nn.Module):
    """An exported program's module behind the usual nn.Module calls. Its graph is already in eval mode
    and refuses `.eval()`/`.train()`, so those calls stop here."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.program = module

    def train(self, mode: bool = True) -> ProgramModel:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # the batch sizes compiled (each a static graph)


def register_quantized_ops() -> None:
    """Register the quantize/dequantize operators an int8 program's graph names (`quantized_decomposed`), as
    torchao's PT2E module does on import."""
    import torchao.quantization.pt2e  # noqa: F401


def bucket(n: int) -> int:
    """The batch size a batch of `n` (1 ≤ n ≤ 128) images is padded to."""
    return next(b for b in BUCKETS if b >= n)


class CompiledProgram(ProgramModel):
    """A program compiled by Inductor on first use of each input shape; `compile_seconds` records
    each shape's first call (the compile and that run), which `cnnkit bench` and `serve` report."""

    def __init__(self, module: nn.Module, name: str = "the program"):
        super().__init__(module)
        self.name = name
        self.compiled = None
        self.compile_seconds: dict[tuple[int, ...], float] = {}
        self.uncompiled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n > BUCKETS[-1]:
            return torch.cat([self(chunk) for chunk in x.split(BUCKETS[-1])])
        size = bucket(n)
        if size > n:
            x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
        # always in inference mode (one compiled graph whatever the caller's grad mode: Dynamo guards on it), the
        # result handed back as an ordinary tensor
        with torch.inference_mode():
            y = self._run(x.contiguous())[:n]
        return y if torch.is_inference_mode_enabled() else y.clone()

    def warm(self, sizes: tuple[int, ...], example: torch.Tensor) -> float:
        """Compile for each batch size in `sizes` with `example`'s image shape now rather than on first use;
        returns the seconds it took."""
        t0 = time.perf_counter()
        for n in sizes:
            for _ in range(2):  # the second call sets up what the first left to do (oneDNN's primitives)
                self(example[:1].expand(n, *example.shape[1:]))
        return time.perf_counter() - t0

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.uncompiled:
            return self.program(x)
        from torch._inductor import config

        key = tuple(x.shape)
        if self.compiled is None:
            self.compiled = torch.compile(self.program, dynamic=False)
        t0 = time.perf_counter()
        try:
            with config.patch(freezing=True):
                y = self.compiled(x)
        except Exception as e:  # noqa: BLE001 - Inductor raises many types where it cannot build its kernels
            if key in self.compile_seconds or os.environ.get("CNNKIT_DEBUG") == "1":
                raise
            self.uncompiled = True
            warnings.warn(f"cannot compile {self.name} with Inductor ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else ''}); running it uncompiled, in float "
                          f"reference kernels (slow)", stacklevel=3)
            return self.program(x)
        if key not in self.compile_seconds:
            self.compile_seconds[key] = time.perf_counter() - t0
        return y
