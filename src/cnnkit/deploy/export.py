"""Deployable artifacts: ONNX through the exporter PyTorch ships (`torch.onnx.export(dynamo=True)`), checked
in ONNX Runtime, and `torch.export` programs (`.pt2`); both with a dynamic batch (and, for a task whose models
take any size, such as segmentation, a dynamic height and width), checked against the eager model before
anything is written, and carrying a JSON sidecar (task, classes, input size, normalization) so `cnnkit predict`
and `cnnkit eval` accept them as they accept a checkpoint. A detector exports to ONNX only, through
`cnnkit.deploy.detect` (post-processing inside, compared as detections)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint, atomic_write_text, load
from cnnkit.artifacts.files import check_writable, claim_dir, finish_temp_file, temp_path_for
from cnnkit.artifacts.exported import SIDECAR_FORMAT, is_exported, onnx_session, sidecar_path
from cnnkit.errors import ConfigError, ExportError
from cnnkit.tasks import Task, get_task

# the kinds `cnnkit export` writes, as a refusal names them
EXPORT_FORMATS = {"onnx": "ONNX (cnnkit export --format onnx)", "torch.export": "torch.export (--format torch-export)"}
_META_KEYS = ("task", "model", "model_kwargs", "classes", "in_chans", "img_size", "normalization", "dataset")
MIN_AGREEMENT = 0.999  # the least share of equal answers (a mask's pixels) a float artifact must give


@dataclass
class ExportResult:
    """An artifact written: its file, its JSON sidecar, how far its outputs were from PyTorch's, and the checks
    at each input size (`size`, `max_abs_diff` and the task's agreement shares, e.g. `mask_agreement`)."""

    path: Path
    sidecar: Path
    max_abs_diff: float
    checks: list[dict[str, Any]] = field(default_factory=list)


# writes `model` (given an example input and the task, which names the output and says whether the height and
# width are dynamic) to a file and returns a runner of the written file
Writer = Callable[[nn.Module, torch.Tensor, str, Task], Callable[[torch.Tensor], np.ndarray]]
# compares an artifact's outputs on a batch with PyTorch's: `max_abs_diff`, `max_abs_output` and the task's
# shares ending in `_agreement` (each at least MIN_AGREEMENT), besides any other figure worth recording
Compare = Callable[[torch.Tensor, torch.Tensor, Task], dict[str, float]]


def output_parity(got: torch.Tensor, want: torch.Tensor, task: Task) -> dict[str, float]:
    """The default `Compare`: the outputs' largest difference and magnitude, and the task's agreement shares."""
    return {"max_abs_diff": float((got - want).abs().max()), "max_abs_output": float(want.abs().max()),
            **task.agreement(got, want)}


def check_sizes(img_size: tuple[int, int], any_size: bool) -> list[tuple[int, int]]:
    """The input sizes an export is checked at: the training size and, for a model that takes any size, a
    second, non-square one (about 2/3 of the height by 4/3 of the width, in multiples of 32 so that every
    output stride divides it)."""
    h, w = img_size
    if not any_size:
        return [(h, w)]
    h2, w2 = max(32, 32 * round(h * 2 / 3 / 32)), max(32, 32 * round(w * 4 / 3 / 32))
    return [(h, w), (h2, w2 + 32 if w2 == h2 else w2)]


def export_artifact(checkpoint: str | os.PathLike | LoadedCheckpoint, out: str | os.PathLike | None, suffix: str,
                    kind: str, atol: float | None, seed: int, write: Writer, model: nn.Module | None = None,
                    extra: dict[str, Any] | None = None, fold_bn: bool = False, exported: nn.Module | None = None,
                    any_size: bool | None = None, compare: Compare = output_parity) -> ExportResult:
    """The steps every export shares: write to a temporary file beside the target with `write(model,
    example, tmp, task)`, which returns a runner of the written artifact; compare the runner with `model` (default:
    the checkpoint's eager model) at batch 1 and 3, and for a task whose models take any size also at batch 2
    of a second, non-square size (`check_sizes`), by the largest difference and by the task's agreement
    (segmentation: the share of equal mask pixels, at least MIN_AGREEMENT), the difference at most `atol` times
    the outputs' largest magnitude where that exceeds 1 (float32's rounding error is relative); only then move the file into place
    and write the sidecar, both atomically. `atol=None` records the differences without checking them
    (quantized artifacts, whose difference from the float model is measured as accuracy instead). A runtime
    that fails at the second size (a model exported at its training size only) writes nothing and says so.
    `fold_bn` exports a copy with every conv→BN pair folded (`cnnkit.models.fold`), still compared with the
    unfolded model; a model torch.fx cannot trace is exported unfolded, and the sidecar says so. `exported`: the
    module to write instead (already prepared, e.g. folded in part: `fold_bn` is then not applied). `any_size`:
    whether the artifact takes any height and width (default: the task's `any_size`). `compare`: how a batch's
    outputs are compared (default `output_parity`; detection compares detections, `cnnkit.deploy.detect`). A
    task with `export_formats` exports to those kinds only: any other is refused in one line."""
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint)
    if model is None:
        _refuse_exported(ckpt)
    task = get_task(ckpt.meta.get("task"))  # its example input: what the model is exported and checked with
    task.check_available("export")
    formats = getattr(task, "export_formats", None)  # the kinds a task whose models export to some only takes
    if formats is not None and kind not in formats:
        raise ConfigError(f"exporting a {task.name} model as {kind} is not available; export it as "
                          + " or ".join(EXPORT_FORMATS.get(f, f) for f in formats))
    if formats is None and not task.exportable:
        raise ConfigError(f"exporting a {task.name} model is not available yet; its checkpoint runs in PyTorch "
                          f"(cnnkit eval, predict, bench)")
    model = (model if model is not None else ckpt.model.float()).eval()
    extra = dict(extra or {})
    if exported is None:
        exported = _folded(model, extra) if fold_bn else model
    dynamic = task.any_size if any_size is None else any_size
    path = _destination(ckpt, out, suffix, kind)
    gen = torch.Generator().manual_seed(seed)
    tmp = temp_path_for(path, keep_suffix=True)
    side = sidecar_path(path)
    try:
        try:
            with torch.no_grad():  # what the exporters warn of is shown (torch's deprecations included)
                run = write(exported, task.example_input(ckpt.in_chans, ckpt.img_size, 2, gen), str(tmp), task)
        except Exception as e:  # the exporters raise many types on graphs they cannot capture
            raise ExportError(f"{kind} export of {ckpt.meta['model']} failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]}") from None
        checks = [_check(run, model, task, ckpt.in_chans, size, (1, 3) if i == 0 else (2,), gen, kind, compare)
                  for i, size in enumerate(check_sizes(ckpt.img_size, dynamic))]
        worst = max(c["max_abs_diff"] for c in checks)
        scale = max([1.0] + [c["max_abs_output"] for c in checks])  # float error grows with the outputs' size
        if atol is not None and not worst <= atol * scale:
            raise ExportError(f"the {kind} artifact's outputs differ from PyTorch's by {worst:.2e} "
                              f"(> {atol:.0e}" + (f" × the outputs' largest magnitude {scale:.3g}" if scale > 1 else "")
                              + "); nothing was written")
        low = [(c, k) for c in checks for k, v in c.items() if k.endswith("_agreement") and v < MIN_AGREEMENT]
        if atol is not None and low:
            c, k = low[0]
            rule = f" ({extra['parity_rule']})" if extra.get("parity_rule") else ""
            raise ExportError(f"the {kind} artifact's {k.replace('_', ' ')} with PyTorch is {c[k]:.4f}{rule} at "
                              f"{c['size'][0]}×{c['size'][1]} (< {MIN_AGREEMENT}); nothing was written")
        meta = {"format": SIDECAR_FORMAT, "artifact": kind, "source": str(ckpt.path.absolute()),
                "max_abs_diff_vs_pytorch": worst, "parity": checks, "dynamic_size": dynamic,
                "torch_version": torch.__version__, **{k: ckpt.meta[k] for k in _META_KEYS if k in ckpt.meta},
                **task.export_meta(model), **extra}
        atomic_write_text(side, json.dumps(meta, indent=2) + "\n")  # the sidecar first: a model file
        finish_temp_file(tmp, path)  # never exists without one
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.data").unlink(missing_ok=True)  # ONNX external data, should the exporter write any
    return ExportResult(path, side, worst, checks)


def _refuse_exported(ckpt: LoadedCheckpoint) -> None:
    """ConfigError when `ckpt` is an exported artifact rather than a training checkpoint."""
    if is_exported(ckpt.model):
        source = ckpt.meta.get("source")
        raise ConfigError(f"export takes a training checkpoint or run directory, not the exported artifact "
                          f"{ckpt.path.name}" + (f"; export {source} instead" if source else ""))


def _check(run: Callable[[torch.Tensor], np.ndarray], model: nn.Module, task: Task, in_chans: int,
           size: tuple[int, int], batches: tuple[int, ...], gen: torch.Generator, kind: str,
           compare: Compare = output_parity) -> dict[str, Any]:
    """The artifact's runner against the eager model on random batches of `size`, by `compare`: over the
    batches, the largest of each `max_` figure, the sum of each `_compared` count, the lowest of the rest (the
    agreement shares). ExportError when the runner cannot run them."""
    out: dict[str, Any] = {"size": list(size), "max_abs_diff": 0.0, "max_abs_output": 0.0}
    for n in batches:
        x = task.example_input(in_chans, size, n, gen)
        with torch.no_grad():
            try:
                got = torch.from_numpy(np.asarray(run(x)))
            except Exception as e:  # noqa: BLE001 - ONNX Runtime and exported programs raise many types
                raise ExportError(f"the {kind} artifact does not run at {size[0]}×{size[1]} ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0][:120]}); nothing was written") from None
            want = model(x).float()
        for k, v in compare(got, want, task).items():
            if k not in out:
                out[k] = v
            elif k.startswith("max_"):
                out[k] = max(out[k], v)
            else:
                out[k] = out[k] + v if k.endswith("_compared") else min(out[k], v)
    return out


def _folded(model: nn.Module, extra: dict[str, Any]) -> nn.Module:
    """A copy of `model` with its conv→BN pairs folded (`extra` records how many), else `model` itself
    (`extra` records why not)."""
    from cnnkit.errors import ModelError
    from cnnkit.models.fold import fold_batchnorm

    try:
        folded, extra["bn_folded"] = fold_batchnorm(model)
        return folded
    except ModelError as e:
        extra["bn_folded"], extra["bn_not_folded_because"] = 0, str(e)
        return model


def _destination(ckpt: LoadedCheckpoint, out: str | os.PathLike | None, suffix: str, kind: str) -> Path:
    """The artifact's path (default: beside the checkpoint), checked and its folder made, before the export
    runs: a refused one writes nothing."""
    path = Path(out).expanduser() if out is not None else ckpt.path.with_suffix(suffix)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give the {suffix} file to write, e.g. {path / ('model' + suffix)}")
    if path.suffix != suffix:
        raise ConfigError(f"--out {path} should end in {suffix} (the {kind} format)")
    check_writable([path, sidecar_path(path)])  # every refusal before the export runs: a refused one writes nothing
    claim_dir(path.parent)  # overwrite only what cnnkit wrote there (beside the checkpoint too)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {path.parent}: {e.strerror or e}") from None
    return path


def dynamic_dims(task: Task | None) -> dict[int, Any]:
    """The input's dynamic dimensions for torch.export: the batch and, for a task whose models take any size,
    the height and width (Dim.AUTO: dynamic wherever the graph allows, as the parity check at a second size
    then confirms)."""
    dims: dict[int, Any] = {0: torch.export.Dim("batch")}
    if task is not None and task.any_size:
        dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
    return dims


def write_onnx(model: nn.Module, example: torch.Tensor, tmp: str,
               task: Task | None = None) -> Callable[[torch.Tensor], np.ndarray]:
    """Write `model` to `tmp` as ONNX (input `images` with a dynamic batch, and height and width where `task`'s
    models take any size; output named by `task`, default `logits`) and return a runner of the written file
    in ONNX Runtime (a `Writer` for `export_artifact`)."""
    output = task.output if task is not None else "logits"
    axes = {0: "batch", **({2: "height", 3: "width"} if task is not None and task.any_size else {})}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            torch.onnx.export(model, (example,), tmp, dynamo=True, input_names=["images"], output_names=[output],
                              external_data=False, dynamic_shapes=(dynamic_dims(task),))
    except Exception as first:  # noqa: BLE001
        # the torch.export-based exporter fails to convert some graphs with some torch/onnxscript pairs (torch
        # 2.11 with onnxscript 0.7.2: ResNet-9, "ConversionError ... step 3/3"); the TorchScript-based one,
        # still in torch, exports them. The parity check after this applies to either
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(model, (example,), tmp, dynamo=False, input_names=["images"],
                                  output_names=[output], dynamic_axes={"images": axes, output: axes})
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            raise first from None
    sess = onnx_session(tmp)
    return lambda x: sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def write_program(model: nn.Module, example: torch.Tensor, tmp: str,
                  task: Task | None = None) -> Callable[[torch.Tensor], np.ndarray]:
    """Write `model` to `tmp` as a `torch.export` program with a dynamic batch (and height and width where
    `task`'s models take any size) and return a runner of the program loaded back (a `Writer` for
    `export_artifact`)."""
    prog = torch.export.export(model, (example,), dynamic_shapes=(dynamic_dims(task),))
    torch.export.save(prog, tmp)
    loaded = torch.export.load(tmp).module()
    return lambda x: loaded(x).numpy()


def export_onnx(checkpoint: str | os.PathLike | LoadedCheckpoint, out: str | os.PathLike | None = None,
                atol: float = 1e-4, seed: int = 0, fold_bn: bool = True, score_threshold: float | None = None,
                nms_iou: float | None = None) -> ExportResult:
    """Export a checkpoint to ONNX (input `images` N×C×H×W with a dynamic N, and H and W for a segmentation
    model; output named by the task, `logits`), compare ONNX Runtime's float32 outputs with PyTorch's at batch
    1 and 3 (and at a second size, see `export_artifact`), and only then write `<out>` and
    `<out>.json` atomically. A parity failure writes nothing and says by how much it failed. BatchNorm is
    folded into the convolutions first (`fold_bn`). A detector goes through `cnnkit.deploy.detect`
    (post-processing inside, one image per run; `score_threshold` and `nms_iou` baked into its graph, and
    refused for other models)."""
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load(checkpoint)
    if get_task(ckpt.meta.get("task")).name == "detect":
        return _export_detector(ckpt, out, atol, seed, fold_bn, score_threshold, nms_iou)
    if score_threshold is not None or nms_iou is not None:
        raise ConfigError(f"--score-threshold and --nms-iou are for detection models; {ckpt.path.name} is a "
                          f"{get_task(ckpt.meta.get('task')).name} model")
    return export_artifact(ckpt, out, ".onnx", "onnx", atol, seed, write_onnx, fold_bn=fold_bn)


def export_program(checkpoint: str | os.PathLike | LoadedCheckpoint, out: str | os.PathLike | None = None,
                   atol: float = 1e-5, seed: int = 0, fold_bn: bool = True) -> ExportResult:
    """A `torch.export` program (`.pt2`, dynamic batch) with the same sidecar, checked against the eager
    model at batch 1 and 3 before it is written; BatchNorm folded as in `export_onnx`."""
    return export_artifact(checkpoint, out, ".pt2", "torch.export", atol, seed, write_program, fold_bn=fold_bn)


def _export_detector(ckpt: LoadedCheckpoint, out: str | os.PathLike | None, atol: float, seed: int, fold_bn: bool,
                     score_threshold: float | None, nms_iou: float | None) -> ExportResult:
    """A detection checkpoint as ONNX with its post-processing inside (`cnnkit.deploy.detect`), its score
    threshold and NMS IoU set first where given (`Detector.set_postprocess`; baked into the graph and recorded
    in the sidecar, the caller's model put back as it was), checked against PyTorch by `match_detections` at
    batch 1 and 3 (each image in its own run) and, where the graph takes any size, at a second size."""
    from cnnkit.deploy.detect import detection_settings, detector_parity, fold_detector, write_detector_onnx

    _refuse_exported(ckpt)
    model = ckpt.model.float().eval()
    if not hasattr(model, "set_postprocess"):
        raise ConfigError(f"{ckpt.meta.get('model')} is not one of cnnkit's detectors (cnnkit models list --task "
                          f"detect); its ONNX export with the post-processing inside is not available")
    own = model.postprocess
    model.set_postprocess(score_threshold, nms_iou)
    try:
        extra = detection_settings(model)
        exported = fold_detector(model, extra) if fold_bn else model
        return export_artifact(ckpt, out, ".onnx", "onnx", atol, seed, write_detector_onnx, model=model,
                               extra=extra, exported=exported, any_size=model.exports_any_size,
                               compare=detector_parity(model.postprocess["score_threshold"]))
    finally:
        model.set_postprocess(**own)
