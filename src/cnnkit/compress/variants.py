"""How a compressed variant becomes a file: PT2E int8 programs (and the float program they are measured
against) and int8 ONNX artifacts (written, checked and given a sidecar by `cnnkit.deploy.export_artifact`), and
pruned models saved as checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint, atomic_write_text, save_checkpoint
from cnnkit.artifacts.exported import INDUCTOR, PT2E_INT8, onnx_session
from cnnkit.compress.context import Context
from cnnkit.compress.quantize import Quantized, quantize_onnx
from cnnkit.deploy import export_artifact, write_onnx, write_program
from cnnkit.tasks import Task


def write_compiled(ctx: Context, float_model: nn.Module, stem: str, extra: dict[str, Any],
                   q: Quantized | None = None) -> Path:
    """`<stem>.int8.pt2`: the PT2E int8 program `q` (quantized from `float_model`); without `q`, `<stem>.pt2`:
    `float_model` itself, the int8 program's fair baseline. Both `torch.export` programs whose sidecar says
    cnnkit compiles them with Inductor when it loads them (`cnnkit.artifacts.programs`)."""
    meta: dict[str, Any] = {"runtime": INDUCTOR, **ctx.counts(float_model), **extra}
    if q is not None:
        meta.update({"quantization": PT2E_INT8, "quantizer": q.quantizer, "observer": q.observer,
                     "weight_bits": q.weight_bits, "calibration_images": q.calibration_images,
                     "float_ops": q.float_ops})
    path = ctx.out / (f"{stem}.int8.pt2" if q is not None else f"{stem}.pt2")
    kind = "int8 torch.export (pt2e)" if q is not None else "torch.export"
    r = export_artifact(ctx.loaded(float_model, ctx.ckpt.path), path, ".pt2", kind, None if q is not None else 1e-4,
                        0, write_program, model=float_model, exported=q.model if q is not None else None, extra=meta)
    return r.path


def write_int8_onnx(ctx: Context, float_model: nn.Module, stem: str, observer: str,
                    extra: dict[str, Any]) -> tuple[Path, list[str]]:
    """`<stem>.int8.onnx`: `float_model` exported to ONNX and quantized by ONNX Runtime on the calibration
    images; and the operators left in float (also in its sidecar)."""
    info: dict[str, Any] = {}

    def write(model: nn.Module, example: torch.Tensor, tmp: str, task: Task):
        fp = Path(f"{tmp}.float.onnx")
        try:
            write_onnx(model, example, str(fp), task)
            info["float_ops"] = quantize_onnx(fp, tmp, ctx.calib, observer, min(ctx.settings.batch, len(ctx.calib)),
                                              log=ctx.log)
        finally:
            fp.unlink(missing_ok=True)
        sess = onnx_session(tmp)
        return lambda x: sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]

    meta = {"observer": observer, "calibration_images": len(ctx.calib), **ctx.counts(float_model), **extra}
    r = export_artifact(ctx.loaded(float_model, ctx.ckpt.path), ctx.out / f"{stem}.int8.onnx", ".onnx", "int8 onnx",
                        None, 0, write, extra=meta)
    side = json.loads(r.sidecar.read_text())
    side["float_ops"] = info.get("float_ops", [])
    atomic_write_text(r.sidecar, json.dumps(side, indent=2) + "\n")
    return r.path, side["float_ops"]


def save_pruned(ctx: Context, model: nn.Module, path: Path, extra: dict[str, Any]) -> LoadedCheckpoint:
    """The pruned `model` saved as a checkpoint at `path`, and handed on as loaded from there."""
    meta = ctx.variant_meta(**extra, source=str(ctx.ckpt.path))
    save_checkpoint(path, model, meta)
    return LoadedCheckpoint(model, meta, path)
