"""Deployable artifacts: ONNX through the exporter PyTorch ships (`torch.onnx.export(dynamo=True)`), checked
in ONNX Runtime, and `torch.export` programs (`.pt2`); both with a dynamic batch, checked against the eager
model before anything is written, and carrying a JSON sidecar (classes, input size, normalization) so
`cnnkit predict` and `cnnkit eval` accept them as they accept a checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cnnkit.errors import CheckpointError, ExportError
from cnnkit.train.checkpoint import LoadedCheckpoint, atomic_write_text, load_checkpoint

SIDECAR_FORMAT = "cnnkit-artifact/1"
_META_KEYS = ("model", "model_kwargs", "classes", "in_chans", "img_size", "normalization", "dataset")


def sidecar_path(path: Path) -> Path:
    return Path(f"{path}.json")


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    max_abs_diff: float


def _session(path: str | Path):
    """An ONNX Runtime CPU session on as many threads as torch uses, with intra-op spinning off: by default
    ORT's idle threads keep spinning after each run, which took about 30% of the next PyTorch call's speed on
    2 cores, so anything sharing the process, `cnnkit bench`'s side-by-side rounds included, would pay for
    it. Without spinning ORT itself loses about 5% throughput here (`benchmarks/ort_spinning.py`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _export(checkpoint, out, suffix: str, kind: str, atol: float | None, seed: int,
            write: Callable[[nn.Module, torch.Tensor, str], Callable[[torch.Tensor], np.ndarray]],
            model: nn.Module | None = None, extra: dict[str, Any] | None = None,
            fold_bn: bool = False) -> ExportResult:
    """The steps every export shares: write to a temporary file beside the target with `write(model,
    example, tmp)`, which returns a runner of the written artifact; compare the runner with `model` (default:
    the checkpoint's eager model) at batch 1 and 3; only then move the file into place and write the sidecar,
    both atomically. `atol=None` records the difference without checking it (quantized artifacts, whose
    difference from the float model is measured as accuracy instead). `fold_bn` exports a copy with every
    conv→BN pair folded (`cnnkit.models.fold`), still compared with the unfolded model; a model torch.fx
    cannot trace is exported unfolded, and the sidecar says so."""
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)
    model = (model if model is not None else ckpt.model.float()).eval()
    exported, extra = model, dict(extra or {})
    if fold_bn:
        from cnnkit.errors import ModelError
        from cnnkit.models.fold import fold_batchnorm

        try:
            exported, extra["bn_folded"] = fold_batchnorm(model)
        except ModelError as e:
            extra["bn_folded"], extra["bn_not_folded_because"] = 0, str(e)
    path = Path(out) if out is not None else ckpt.path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (ckpt.in_chans, *ckpt.img_size)
    gen = torch.Generator().manual_seed(seed)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-", suffix=suffix)
    os.close(fd)
    try:
        try:
            with torch.no_grad():
                run = write(exported, torch.randn(2, *shape, generator=gen), tmp)
        except Exception as e:  # the exporters raise many types
            raise ExportError(f"{kind} export of {ckpt.meta['model']} failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]}") from None
        worst = 0.0
        for n in (1, 3):
            x = torch.randn(n, *shape, generator=gen)
            with torch.no_grad():
                worst = max(worst, float(np.abs(run(x) - model(x).numpy()).max()))
        if atol is not None and not worst <= atol:
            raise ExportError(f"the {kind} artifact's outputs differ from PyTorch's by {worst:.2e} "
                              f"(> {atol:.0e}); nothing was written")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(f"{tmp}.data").unlink(missing_ok=True)  # ONNX external data, should the exporter write any
    meta = {"format": SIDECAR_FORMAT, "artifact": kind, "source": str(ckpt.path),
            "max_abs_diff_vs_pytorch": worst, "torch_version": torch.__version__,
            **{k: ckpt.meta[k] for k in _META_KEYS if k in ckpt.meta}, **extra}
    side = sidecar_path(path)
    atomic_write_text(side, json.dumps(meta, indent=2) + "\n")
    return ExportResult(path, side, worst)


def _write_onnx(model: nn.Module, example: torch.Tensor, tmp: str) -> Callable[[torch.Tensor], np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        torch.onnx.export(model, (example,), tmp, dynamo=True, input_names=["images"], output_names=["logits"],
                          external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},))
    sess = _session(tmp)
    return lambda x: sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _write_program(model: nn.Module, example: torch.Tensor, tmp: str) -> Callable[[torch.Tensor], np.ndarray]:
    prog = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(prog, tmp)
    loaded = torch.export.load(tmp).module()
    return lambda x: loaded(x).numpy()


def export_onnx(checkpoint: str | os.PathLike | LoadedCheckpoint, out: str | os.PathLike | None = None,
                atol: float = 1e-4, seed: int = 0, fold_bn: bool = True) -> ExportResult:
    """Export a checkpoint to ONNX (input `images` N×C×H×W with a dynamic N, output `logits`), compare
    ONNX Runtime's float32 outputs with PyTorch's at batch 1 and 3, and only then write `<out>` and
    `<out>.json` atomically. A parity failure writes nothing and says by how much it failed. BatchNorm is
    folded into the convolutions first (`fold_bn`)."""
    return _export(checkpoint, out, ".onnx", "onnx", atol, seed, _write_onnx, fold_bn=fold_bn)


def export_program(checkpoint: str | os.PathLike | LoadedCheckpoint, out: str | os.PathLike | None = None,
                   atol: float = 1e-5, seed: int = 0, fold_bn: bool = True) -> ExportResult:
    """A `torch.export` program (`.pt2`, dynamic batch) with the same sidecar, checked against the eager
    model at batch 1 and 3 before it is written; BatchNorm folded as in `export_onnx`."""
    return _export(checkpoint, out, ".pt2", "torch.export", atol, seed, _write_program, fold_bn=fold_bn)


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, behind the nn.Module call the evaluators use."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.session = _session(path)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def load_onnx(path: str | os.PathLike) -> LoadedCheckpoint:
    """An `.onnx` artifact and its sidecar, as a LoadedCheckpoint (model = OnnxModel)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"no such ONNX file: {p}")
    meta = _read_sidecar(p)
    side = sidecar_path(p)
    try:
        model = OnnxModel(p)
    except Exception as e:  # onnxruntime raises its own exception types
        raise CheckpointError(f"cannot load {p} in ONNX Runtime: {str(e).splitlines()[0][:160]}") from None
    dims = model.session.get_inputs()[0].shape[1:]
    want = [meta["in_chans"], *meta["img_size"]]
    if any(isinstance(d, int) and d != w for d, w in zip(dims, want)):
        raise CheckpointError(f"{side} says the input is {'×'.join(map(str, want))} but {p.name} takes "
                              f"{'×'.join(map(str, dims))}; the sidecar does not belong to this model")
    outputs = model.session.get_outputs()[0].shape
    if isinstance(outputs[-1], int) and outputs[-1] != len(meta["classes"]):
        raise CheckpointError(f"{side} lists {len(meta['classes'])} classes but {p.name} outputs {outputs[-1]}")
    return LoadedCheckpoint(model.eval(), meta, p)


def _read_sidecar(p: Path) -> dict[str, Any]:
    side = sidecar_path(p)
    if not side.exists():
        raise CheckpointError(f"{p} has no sidecar {side.name} (classes, input size, normalization); "
                              f"export it with `cnnkit export` or write the sidecar next to it")
    try:
        meta: dict[str, Any] = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {side}: {e}") from None
    missing = [k for k in ("classes", "in_chans", "img_size", "normalization") if k not in meta]
    if meta.get("format") != SIDECAR_FORMAT or missing:
        raise CheckpointError(f"{side} is not a cnnkit sidecar" + (f" (missing {', '.join(missing)})" if missing else ""))
    return meta


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


def load_program(path: str | os.PathLike) -> LoadedCheckpoint:
    """A `.pt2` program and its sidecar, as a LoadedCheckpoint."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"no such exported program: {p}")
    meta = _read_sidecar(p)
    try:
        module = torch.export.load(str(p)).module()
    except Exception as e:
        raise CheckpointError(f"cannot load {p}: {str(e).splitlines()[0][:160]}") from None
    return LoadedCheckpoint(ProgramModel(module), meta, p)


def load_torchscript(path: str | os.PathLike) -> LoadedCheckpoint:
    """A TorchScript artifact (the int8 models of `cnnkit compress`, `.ts`) and its sidecar."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"no such TorchScript file: {p}")
    meta = _read_sidecar(p)
    if meta.get("engine"):
        if meta["engine"] not in torch.backends.quantized.supported_engines:
            raise CheckpointError(f"{p.name} was quantized for the {meta['engine']} engine, which this machine lacks")
        torch.backends.quantized.engine = meta["engine"]
    try:
        module = torch.jit.load(str(p))
    except Exception as e:
        raise CheckpointError(f"cannot load {p}: {str(e).splitlines()[0][:160]}") from None
    return LoadedCheckpoint(ProgramModel(module), meta, p)
