"""Exported artifacts read back: ONNX models (run by ONNX Runtime) and `torch.export` programs (`.pt2`, the
int8 ones of `cnnkit compress` compiled by Inductor: `cnnkit.artifacts.programs`), each with its JSON sidecar
(classes, input size, normalization), behind the same LoadedCheckpoint as a checkpoint. TorchScript (`.ts`,
the int8 files of cnnkit before PT2E) is refused in one line. (`cnnkit.deploy.export` writes them.)"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cnnkit.artifacts.loaded import LoadedCheckpoint, input_meta_ok
from cnnkit.artifacts.programs import CompiledProgram, ProgramModel, register_quantized_ops
from cnnkit.artifacts.trust import check_program_graph, program_bytes
from cnnkit.errors import CheckpointError, error_line

SIDECAR_FORMAT = "cnnkit-artifact/1"
PT2E_INT8 = "pt2e-int8"  # the sidecar's "quantization" of an int8 program written by `cnnkit compress`
INDUCTOR = "inductor"  # a sidecar's "runtime" for a program cnnkit compiles when it loads it


def sidecar_path(path: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`."""
    return Path(f"{path}.json")


def onnx_session(path: str | Path):
    """An ONNX Runtime CPU session on as many threads as torch uses, with intra-op spinning off: by default
    ORT's idle threads keep spinning after each run, which took about 30% of the next PyTorch call's speed on
    2 cores, so anything sharing the process, `cnnkit bench`'s side-by-side rounds included, would pay for
    it. Without spinning ORT itself loses about 5% throughput here (`benchmarks/ort_spinning.py`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_runner(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A function of an N×C×H×W float32 array giving the session's first output for it. A graph whose batch is
    fixed at 1 (a detector's: its exporter unrolls the loop over the images) runs a larger batch image by image,
    the outputs joined along the batch."""
    node = session.get_inputs()[0]
    name, batch = node.name, node.shape[0] if node.shape else None

    def run(x: np.ndarray) -> np.ndarray:
        if batch == 1 and len(x) > 1:
            return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
        return session.run(None, {name: x})[0]

    return run


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, behind the nn.Module call the evaluators use (a graph of a
    fixed batch of 1 runs a batch image by image, `onnx_runner`)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name
        self.run = onnx_runner(self.session)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

        try:
            out = self.run(x.detach().float().cpu().contiguous().numpy())
        except (Fail, InvalidArgument, RuntimeException) as e:  # a damaged graph can load and fail only here
            raise CheckpointError(f"ONNX Runtime cannot run {self.path.name}: {error_line(e)}; export it "
                                  f"again (cnnkit export)") from None
        return torch.from_numpy(out).to(x.device)


def load_onnx(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """An `.onnx` artifact and its sidecar, as a LoadedCheckpoint (model = OnnxModel). ONNX Runtime runs it on
    the CPU, whatever `device` says (its outputs come back on the input's device)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"no such ONNX file: {p}")
    meta = read_sidecar(p)
    side = sidecar_path(p)
    try:
        model = OnnxModel(p)
    except Exception as e:  # onnxruntime raises its own exception types
        raise CheckpointError(f"cannot load {p} in ONNX Runtime: {error_line(e)}") from None
    dims = model.session.get_inputs()[0].shape[1:]
    want = [meta["in_chans"], *meta["img_size"]]
    if any(isinstance(d, int) and d != w for d, w in zip(dims, want)):
        raise CheckpointError(f"{side} says the input is {'×'.join(map(str, want))} but {p.name} takes "
                              f"{'×'.join(map(str, dims))}; the sidecar does not belong to this model")
    outputs = model.session.get_outputs()[0].shape  # N×K, or N×K×H×W (a class per pixel): K is the second
    # (a detector's N×D×6 rows name no class count)
    if (len(outputs) in (2, 4) and isinstance(outputs[1], int) and outputs[1] != len(meta["classes"])
            and "restoration" not in meta):  # a restoration network's second dimension is its image's channels
        raise CheckpointError(f"{side} lists {len(meta['classes'])} classes but {p.name} outputs {outputs[1]}")
    return LoadedCheckpoint(restoration_attributes(model.eval(), meta), meta, p)


def read_sidecar(p: Path) -> dict[str, Any]:
    """The metadata in an exported artifact's sidecar (`model.onnx.json`), checked: CheckpointError when it is
    missing, unreadable, not a cnnkit sidecar or mangles what loading relies on."""
    side = sidecar_path(p)
    if not side.exists():
        raise CheckpointError(f"{p} has no sidecar {side.name} (classes, input size, normalization); "
                              f"export it with `cnnkit export` or write the sidecar next to it")
    try:
        meta: dict[str, Any] = json.loads(side.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8; RecursionError: too deep
        raise CheckpointError(f"cannot read {side}: {str(e)[:160]}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{side} is not a cnnkit sidecar (not a JSON object)")
    missing = [k for k in ("classes", "in_chans", "img_size", "normalization") if k not in meta]
    if meta.get("format") != SIDECAR_FORMAT or missing:
        raise CheckpointError(f"{side} is not a cnnkit sidecar" + (f" (missing {', '.join(missing)})" if missing else ""))
    if not input_meta_ok(meta):
        raise CheckpointError(f"{side} mangles classes, in_chans, img_size or normalization (a list of class "
                              f"names, a channel count, [H, W], and mean and std lists); re-export the model")
    return meta


def is_exported(model: nn.Module) -> bool:
    """Whether `model` is an exported artifact's runtime (ONNX Runtime, a `torch.export` program, int8 or not)
    rather than a PyTorch model whose layers, weights and gradients can be reached."""
    return isinstance(model, (OnnxModel, ProgramModel))


def load_program(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """A `.pt2` program and its sidecar, as a LoadedCheckpoint, on the CPU whatever `device` says (move it
    with `.model.to`); nothing in the archive is unpickled and its graph is checked first (`trust`). An int8
    program (`cnnkit compress`'s PT2E, its sidecar says) may call PT2E's quantize/dequantize operators too; a
    sidecar's `"runtime": "inductor"` (what `compress` writes) has the program compiled by Inductor on first
    use of each batch size (`cnnkit.artifacts.programs.CompiledProgram`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"no such exported program: {p}")
    meta = read_sidecar(p)
    int8 = meta.get("quantization") == PT2E_INT8
    if int8:  # its quantize/dequantize operators, registered before the graph naming them is read
        register_quantized_ops()
    archive = program_bytes(p)  # refuses anything PyTorch's loader would unpickle
    try:
        program = torch.export.load(archive)
    except Exception as e:
        raise CheckpointError(f"cannot load {p.name}: {error_line(e)}") from None
    check_program_graph(p, program.graph, quantized=int8)  # before anything calls the graph
    try:
        module = program.module()
    except Exception as e:
        raise CheckpointError(f"cannot load {p.name}: {error_line(e)}") from None
    if meta.get("runtime") == INDUCTOR:
        return LoadedCheckpoint(restoration_attributes(CompiledProgram(module, p.name), meta), meta, p)
    return LoadedCheckpoint(restoration_attributes(ProgramModel(module), meta), meta, p)


def refuse_torchscript(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """CheckpointError for a TorchScript file (`.ts`, the int8 artifacts of cnnkit before PT2E): loading one
    runs code stored in the file, and PyTorch has deprecated TorchScript; the int8 model is made again from
    its checkpoint."""
    p = Path(path).expanduser()
    raise CheckpointError(f"{p.name} is TorchScript, which cnnkit no longer loads (loading it runs code stored in "
                          f"the file, and PyTorch has deprecated TorchScript); make the int8 model again from its "
                          f"checkpoint with `cnnkit compress CHECKPOINT --recipe int8` (writes .int8.pt2 and "
                          f".int8.onnx)")


def restoration_attributes(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """An exported restoration network's scale, receptive-field radius, alignment and noise, from its sidecar,
    set on the loaded artifact as the network has them (what tiling and the service read)."""
    given = meta.get("restoration")
    if isinstance(given, dict):
        scale, radius, align = (given.get(k) for k in ("scale", "radius", "align"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1024 for v in (scale, radius, align)):
            raise CheckpointError(f"the sidecar of {meta.get('model', 'this artifact')} mangles its restoration "
                                  f"record (scale, radius and align must be whole numbers)")
        noise = given.get("noise")
        model.scale, model.radius, model.align = scale, radius, align
        model.noise = tuple(float(v) for v in noise) if isinstance(noise, list) and len(noise) == 2 else None
        model.noise_model = "camera" if given.get("noise_model") == "camera" else "gaussian"
    return model
