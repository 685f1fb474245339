"""8-bit quantization through real int8 kernels, on PyTorch's maintained path and ONNX Runtime's.

* PyTorch: PT2E quantization (`torchao.quantization.pt2e`). The model is captured by `torch.export`, annotated
  by the X86 Inductor quantizer (the Arm Inductor quantizer on aarch64), observed on calibration images and
  converted into float operations between quantize/dequantize pairs, with the weights stored as int8; the
  result is saved as a `torch.export` program (`.int8.pt2`, no pickles), which cnnkit compiles with Inductor
  (weight freezing on) when it loads it, lowering each pattern to oneDNN's int8 kernels
  (`cnnkit.artifacts.programs`). Weights per-channel symmetric int8, activations per-tensor affine uint8,
  calibrated with a min-max, percentile or MSE (histogram search) observer. Quantization-aware training uses
  the same quantizer with fake quantization (`prepare_qat_pt2e`), at 8 bits or with 4-bit weights (the int8
  range cut to the symmetric [-7, 7], so the weights stored as int8 are exactly those trained).
* ONNX Runtime: static QDQ quantization of the exported float model, per-channel, with ONNX Runtime's
  min-max, percentile or entropy calibrator (`<name>.int8.onnx`).

Operations that a backend leaves in float32 are listed (`float_ops`). Elsewhere than x86 and Arm there is no
PT2E quantizer: `quantizer_for` says so in one line and the recipes write ONNX Runtime's int8 alone.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import io
import logging
import os
import platform
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit.errors import CompressError

OBSERVERS = ("minmax", "percentile", "mse")
QUANTIZERS = ("auto", "x86", "arm")
_ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "mse": "Entropy"}
# what a converted program's graph holds besides compute: data movement and the quantize/dequantize pairs
_MOVES = ("flatten", "view", "reshape", "slice", "pad", "squeeze", "unsqueeze", "permute", "contiguous",
          "clone", "expand", "cat", "size", "sym_size", "select")
# what Inductor's x86 int8 lowering fuses into the int8 convolution or linear layer before it
_POST_OPS = ("relu", "hardtanh", "hardswish", "silu", "gelu", "add")


def quantizer_for(requested: str = "auto", machine: str | None = None) -> str | None:
    """The PT2E quantizer for this CPU: 'x86' on x86-64, 'arm' on aarch64, None elsewhere (int8 then comes from
    ONNX Runtime alone). `requested` other than 'auto' must be one this machine runs."""
    if requested not in QUANTIZERS:
        raise CompressError(f"unknown quantizer {requested!r}; choose from: {', '.join(QUANTIZERS)}")
    arch = (machine or platform.machine()).lower()
    here = "x86" if arch in ("x86_64", "amd64", "i686", "i386") else "arm" if arch in ("aarch64", "arm64") else None
    if requested != "auto" and requested != here:
        raise CompressError(f"the {requested} quantizer's int8 kernels do not run on this {arch} CPU; "
                            f"use --quantizer auto")
    return here


def _percentile_observer():
    from torchao.quantization.pt2e import HistogramObserver

    class PercentileObserver(HistogramObserver):
        """Activation range from the `percentile`-th percentile of the observed values (both tails), read from
        the running histogram HistogramObserver keeps; outliers beyond it saturate."""

        def __init__(self, percentile: float = 99.99, **kwargs):
            super().__init__(**kwargs)
            self.percentile = percentile

        def calculate_qparams(self):
            if self.histogram.sum() == 0 or self.min_val == self.max_val:
                return super().calculate_qparams()
            cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum()
            edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1)
            tail = (100.0 - self.percentile) / 100.0
            lo = edges[int(torch.searchsorted(cdf, torch.tensor(tail)))]
            hi = edges[min(int(torch.searchsorted(cdf, torch.tensor(1.0 - tail))) + 1, self.bins)]
            return self._calculate_qparams(torch.minimum(lo, torch.tensor(0.0)), torch.maximum(hi, torch.tensor(0.0)))

    return PercentileObserver


def check_quantization(observer: str, quantizer: str, weight_bits: int) -> None:
    """CompressError unless `observer` and `quantizer` are known here and `weight_bits` is 8 or 4."""
    if observer not in OBSERVERS:
        raise CompressError(f"unknown calibration observer {observer!r}; choose from: {', '.join(OBSERVERS)}")
    quantizer_for(quantizer)
    if weight_bits not in (4, 8):
        raise CompressError(f"weights can be quantized to 8 or 4 bits, not {weight_bits}")


def _quantizer_modules():
    """torchao's X86 and Arm Inductor quantizer modules, imported without the Inductor passes the X86 module
    registers on import. Those passes (torchao 0.18) run on top of torch 2.14's own int8 lowering, which has
    already fused a convolution's ReLU by then, and one of them asserts that it has not (ResNet-9:
    "kwargs['postop_name'] == 'none'"); a process that only loads the program (`cnnkit serve`, `bench`) never
    imports them. So every process compiles an int8 program with torch's own lowering alone."""
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.inductor_passes import x86 as passes

    if "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer" not in sys.modules:
        register, custom = passes._register_quantization_weight_pack_pass, inductor_config.pre_grad_custom_pass
        passes._register_quantization_weight_pack_pass = lambda: None
        try:
            importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
        finally:
            passes._register_quantization_weight_pack_pass = register
            inductor_config.pre_grad_custom_pass = custom
    from torchao.quantization.pt2e.quantizer import arm_inductor_quantizer, x86_inductor_quantizer

    return x86_inductor_quantizer, arm_inductor_quantizer


def make_quantizer(kind: str, observer: str = "mse", weight_bits: int = 8, qat: bool = False):
    """The PT2E quantizer of `kind` ('x86' or 'arm'): its default configuration (per-channel symmetric int8
    weights, per-tensor affine uint8 activations, the full 8-bit activation range, as CPUs with VNNI want) with
    the activation observer `observer` (post-training) and, with 4-bit weights, the weight range cut to
    [-7, 7] (with [-8, 7] a symmetric scale maps the largest weight to 7.5, which would round to 8)."""
    from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver

    x86, arm = _quantizer_modules()
    if kind == "arm":
        quantizer, config = arm.ArmInductorQuantizer(), arm.get_default_arm_inductor_quantization_config(is_qat=qat)
    else:
        quantizer, config = x86.X86InductorQuantizer(), x86.get_default_x86_inductor_quantization_config(is_qat=qat)
    if not qat:
        cls = {"minmax": MinMaxObserver, "percentile": _percentile_observer(), "mse": HistogramObserver}[observer]
        act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=cls.with_args(eps=2 ** -12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    if weight_bits == 4:
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-7, quant_max=7))
    return quantizer.set_global(config)


def capture(model: nn.Module, example: torch.Tensor, dynamic: dict | None, train: bool = False) -> torch.fx.GraphModule:
    """`model` (a float copy on the CPU, in train or eval mode) captured by `torch.export` with the input's
    `dynamic` dimensions (default: the batch); CompressError in one line where it cannot be."""
    from cnnkit.deploy.export import dynamic_dims

    m = copy.deepcopy(model).float().cpu().train(train)
    try:
        return torch.export.export(m, (example,), dynamic_shapes=(dynamic or dynamic_dims(None),)).module()
    except Exception as e:  # torch.export raises many types on graphs it cannot capture
        raise CompressError(f"cannot capture {type(model).__name__} with torch.export for PT2E quantization: "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None


def float_ops(gm: torch.fx.GraphModule) -> list[str]:
    """The compute operations of a converted graph that run in float, as 'name (op)': those that read a tensor
    which is neither dequantized int8 nor the output of an int8 operation they fuse with as Inductor's x86
    lowering does (a convolution's or linear layer's ReLU, hardtanh, hardswish, SiLU or GELU, a residual
    addition and its ReLU). Data movement (views, slices, padding) is not listed."""
    quantized: set[torch.fx.Node] = set()  # dequantized tensors and views of them
    int8: set[torch.fx.Node] = set()
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        ns, name = node.target.namespace, node.target._schema.name.split("::")[-1].rstrip("_")
        ins = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if ns == "quantized_decomposed":
            if name.startswith("dequantize"):
                quantized.add(node)
            continue
        if ns != "aten":
            continue
        if name in _MOVES:
            if ins and all(a in quantized for a in ins):
                quantized.add(node)
            continue
        if ins and all(a in quantized or (a in int8 and name in _POST_OPS) for a in ins):
            int8.add(node)
        else:
            found.append(f"{node.name} ({name})")
    return found


@dataclass
class Quantized:
    model: torch.fx.GraphModule
    quantizer: str
    observer: str
    weight_bits: int
    calibration_images: int
    float_ops: list[str] = field(default_factory=list)


def _calibration_batches(images: torch.Tensor, batch: int) -> list[torch.Tensor]:
    if len(images) < batch:
        raise CompressError(f"the calibration set has {len(images)} images, fewer than one batch ({batch}); "
                            f"give more images or a smaller calibration batch")
    return list(images.split(batch))


def quantize_pt2e(model: nn.Module, calibration: torch.Tensor, observer: str = "mse", quantizer: str = "x86",
                  batch: int = 64, dynamic: dict | None = None) -> Quantized:
    """Post-training static int8 quantization of `model` (unchanged) calibrated on `calibration` (the inputs
    the model is given, N×C×H×W), captured with the input's `dynamic` dimensions."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    check_quantization(observer, quantizer, 8)
    batches = _calibration_batches(calibration, batch)
    gm = capture(model, batches[0], dynamic)
    try:
        prepared = prepare_pt2e(gm, make_quantizer(quantizer, observer))
    except Exception as e:  # the quantizer's annotation raises many types on graphs it does not know
        raise CompressError(f"cannot quantize {type(model).__name__} with PT2E: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160]}") from None
    with torch.no_grad():
        for x in batches:
            prepared(x)
    q = convert(prepared)
    return Quantized(q, quantizer, observer, 8, len(calibration), float_ops(q))


def prepare_qat(model: nn.Module, example: torch.Tensor, quantizer: str = "x86", weight_bits: int = 8,
                dynamic: dict | None = None) -> torch.fx.GraphModule:
    """A fake-quantized copy of `model` to fine-tune (its `.train()`/`.eval()` work); `convert(result)` gives
    the int8 program, `freeze_bn(result)` stops its BatchNorm statistics."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    check_quantization("minmax", quantizer, weight_bits)
    gm = capture(model, example, dynamic, train=True)
    try:
        prepared = prepare_qat_pt2e(gm, make_quantizer(quantizer, weight_bits=weight_bits, qat=True))
    except Exception as e:
        raise CompressError(f"cannot prepare {type(model).__name__} for quantization-aware training: "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    allow_exported_model_train_eval(prepared)
    return prepared


def freeze_bn(prepared: torch.fx.GraphModule) -> None:
    """Stop a QAT graph's BatchNorm statistics: its BatchNorm (and dropout) run as in evaluation from now on,
    while the fake quantization keeps training."""
    from torchao.quantization.pt2e import move_exported_model_to_eval

    move_exported_model_to_eval(prepared)


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 graph of a calibrated or quantization-aware-trained one (weights stored as int8), without the
    float weights it no longer reads."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    q = convert_pt2e(prepared)
    used = {n.target for n in q.graph.nodes if n.op == "get_attr"}
    for name in [k for k in q.state_dict() if k not in used]:
        owner, _, leaf = name.rpartition(".")
        delattr(q.get_submodule(owner) if owner else q, leaf)
    return q


def qat_float_model(prepared: torch.fx.GraphModule, model: nn.Module) -> nn.Module:
    """A copy of the float `model` carrying the weights and BatchNorm statistics that quantization-aware
    training left in `prepared` (from `prepare_qat`), for the ONNX route: the captured graph keeps each
    parameter and buffer under the model's own name, and ONNX Runtime's per-channel symmetric weight grid
    (max |w| / 127 of the BN-folded weight) is the one the weights were trained on, within 0.4%."""
    out = copy.deepcopy(model).float().cpu().eval()
    trained = prepared.state_dict()
    want = out.state_dict()
    found = {k: trained[k] for k in want if k in trained and trained[k].shape == want[k].shape}
    if not found:
        raise CompressError("found none of the model's layers in the quantization-aware-trained graph")
    out.load_state_dict(found, strict=False)
    return out


class _Collect(logging.Handler):
    """The root logger's one handler while ONNX Runtime quantizes: keeps the records its tools log, hands every
    other record to the handlers it replaced (or, with none, to logging's last resort, as before)."""

    def __init__(self, replaced: list[logging.Handler]):
        super().__init__()
        self.replaced, self.messages = replaced, []

    def emit(self, record: logging.LogRecord) -> None:
        if f"{os.sep}onnxruntime{os.sep}" in record.pathname:
            self.messages.append(record.getMessage())
            return
        for h in self.replaced or ([logging.lastResort] if logging.lastResort else []):
            if record.levelno >= h.level:
                h.handle(record)


_PER_TENSOR = re.compile(r"Axis -?\d+ is out-of-range for weight '(.+)' with rank 1")


@contextlib.contextmanager
def _ort_logging(log: Callable[[str], None]) -> Iterator[None]:
    """ONNX Runtime's quantization tools log warnings through the root logger, which then prints them as
    `WARNING:root:...`, once per use of a tensor. Taken here, and each said once, in cnnkit's words, to `log`."""
    root = logging.getLogger()
    collect = _Collect(list(root.handlers))
    root.handlers = [collect]
    try:
        yield
    finally:
        root.handlers = collect.replaced
    per_tensor = list(dict.fromkeys(m[1] for m in map(_PER_TENSOR.match, collect.messages) if m))
    if per_tensor:  # a 1-D weight (e.g. a LayerNorm's scale) has no channel axis: one scale for all its values
        log(f"  int8 ONNX: {len(per_tensor)} one-dimensional weight(s) quantized per tensor, not per channel: "
            f"{', '.join(per_tensor)}")
    for message in dict.fromkeys(m for m in collect.messages if not _PER_TENSOR.match(m)):
        log(f"  int8 ONNX: ONNX Runtime says: {message}")


def quantize_onnx(float_onnx: str | Path, out: str | Path, calibration: torch.Tensor, method: str = "mse",
                  batch: int = 64, log: Callable[[str], None] = lambda s: None) -> list[str]:
    """ONNX Runtime static quantization (QDQ, per-channel symmetric int8 weights, uint8 activations) of a
    float ONNX file into `out`; returns the compute nodes left in float. What ONNX Runtime's tools warn of is
    said, once each, to `log`."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in OBSERVERS:
        raise CompressError(f"unknown calibration observer {method!r}; choose from: {', '.join(OBSERVERS)}")
    batches = _calibration_batches(calibration, batch)
    name = onnx.load(str(float_onnx), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x.numpy()}

    pre = Path(f"{out}.pre.onnx")
    try:
        with _ort_logging(log), contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
            quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)  # shape inference, BN folding
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[method]),
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    except Exception as e:  # ONNX Runtime's tools raise many types (onnx, numpy, their own) on graphs they reject
        raise CompressError(f"ONNX Runtime quantization failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    finally:
        pre.unlink(missing_ok=True)
    return onnx_float_nodes(out)


def onnx_float_nodes(path: str | Path) -> list[str]:
    """Compute nodes of a QDQ model whose inputs are not all dequantized int8 tensors."""
    import onnx

    graph = onnx.load(str(path)).graph
    from_dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    inits = {i.name for i in graph.initializer}
    skip = {"QuantizeLinear", "DequantizeLinear", "Shape", "Reshape", "Flatten", "Constant", "Gather", "Unsqueeze",
            "Concat", "Squeeze", "Identity"}
    out = []
    for n in graph.node:
        if n.op_type in skip:
            continue
        ins = [i for i in n.input if i and i not in inits]
        if ins and not all(i in from_dq for i in ins):
            out.append(f"{n.name} ({n.op_type})")
    return out
