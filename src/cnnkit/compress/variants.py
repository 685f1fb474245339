"""How a compressed variant becomes a file: int8 TorchScript and int8 ONNX artifacts (written, checked and
given a sidecar by `cnnkit.deploy.export_artifact`), and pruned models saved as checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint, atomic_write_text, save_checkpoint
from cnnkit.artifacts.exported import onnx_session
from cnnkit.compress.context import Context
from cnnkit.compress.quantize import Quantized, quantize_onnx, save_torchscript
from cnnkit.deploy import export_artifact, write_onnx
from cnnkit.tasks import Task


def write_int8_ts(ctx: Context, q: Quantized, float_model: nn.Module, stem: str, extra: dict[str, Any]) -> Path:
    """`<stem>.int8.ts`: the int8 model `q` (quantized from `float_model`) as signed TorchScript."""
    def write(_model: nn.Module, example: torch.Tensor, tmp: str, _task: Task):
        ts = save_torchscript(q.model, example, tmp)
        return lambda x: ts(x).numpy()

    meta = {"engine": q.engine, "observer": q.observer, "weight_bits": q.weight_bits,
            "calibration_images": q.calibration_images, "float_ops": q.float_ops, **ctx.counts(float_model), **extra}
    r = export_artifact(ctx.loaded(float_model, ctx.ckpt.path), ctx.out / f"{stem}.int8.ts", ".ts", "int8 torchscript",
                        1e-4, 0, write, model=q.model, extra=meta)
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
