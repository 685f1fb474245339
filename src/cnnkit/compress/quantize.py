"""8-bit quantization through real int8 kernels.

* PyTorch: FX graph-mode quantization (`torch.ao.quantization.quantize_fx`) with the x86/fbgemm (or onednn,
  qnnpack) engine: weights per-channel symmetric int8, activations per-tensor affine uint8, calibrated with
  a min-max, percentile or MSE (histogram search) observer. Quantization-aware training uses the same
  configuration with fake quantization, at 8 bits or with 4-bit weights (int8 kernels, weights restricted
  to the symmetric [-7, 7], so the weights converted into int8 containers are exactly those trained). The result is saved as TorchScript (`.int8.ts`), the format PyTorch's int8 CPU kernels run
  from outside Python's graph module.
* ONNX Runtime: static QDQ quantization of the exported float model, per-channel, with ONNX Runtime's
  min-max, percentile or entropy calibrator (`<name>.int8.onnx`).

Operations that a backend cannot quantize stay in float32 and are listed (`float_ops`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.ao.quantization import FakeQuantize, HistogramObserver, MinMaxObserver, QConfig, QConfigMapping
from torch.ao.quantization import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from torch.ao.quantization import PerChannelMinMaxObserver

from cnnkit.errors import CompressError

OBSERVERS = ("minmax", "percentile", "mse")
ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")
_ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "mse": "Entropy"}


class PercentileObserver(HistogramObserver):
    """Activation range from the `percentile`-th percentile of the observed values (both tails), read from
    the running histogram HistogramObserver keeps; outliers beyond it saturate."""

    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        self.percentile = percentile

    @torch.jit.export
    def calculate_qparams(self):
        if self.histogram.sum() == 0 or self.min_val == self.max_val:
            return super().calculate_qparams()
        cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum()
        edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1)
        tail = (100.0 - self.percentile) / 100.0
        lo = edges[int(torch.searchsorted(cdf, torch.tensor(tail)))]
        hi = edges[min(int(torch.searchsorted(cdf, torch.tensor(1.0 - tail))) + 1, self.bins)]
        return self._calculate_qparams(torch.minimum(lo, torch.tensor(0.0)), torch.maximum(hi, torch.tensor(0.0)))


def check_quantization(observer: str, engine: str, weight_bits: int) -> None:
    """CompressError unless `observer` and `engine` are known here and `weight_bits` is 8 or 4."""
    if observer not in OBSERVERS:
        raise CompressError(f"unknown calibration observer {observer!r}; choose from: {', '.join(OBSERVERS)}")
    if engine not in ENGINES or engine not in torch.backends.quantized.supported_engines:
        have = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
        raise CompressError(f"quantization engine {engine!r} is not available here; choose from: {', '.join(have)}")
    if weight_bits not in (4, 8):
        raise CompressError(f"weights can be quantized to 8 or 4 bits, not {weight_bits}")


def qconfig_mapping(observer: str = "mse", engine: str = "x86", weight_bits: int = 8,
                    qat: bool = False) -> QConfigMapping:
    """The FX configuration: per-channel symmetric int8 weights (4-bit: the int8 range cut to [-7, 7]: with
    [-8, 7] a symmetric scale maps the largest weight to 7.5, which conversion would round to 8) and
    per-tensor affine uint8 activations. fbgemm/x86 keep PyTorch's reduced activation range (7 bits), which
    their kernels need on CPUs without VNNI."""
    check_quantization(observer, engine, weight_bits)
    reduce = engine in ("x86", "fbgemm")
    wmin, wmax = (-128, 127) if weight_bits == 8 else (-7, 7)
    if qat:
        act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=127 if reduce else 255,
                                     dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)
        # averaging_constant=1: the weight range is the current weights' (not a lagging average), so the
        # weights converted at the end are exactly those the last fake-quantized step saw, still inside [wmin, wmax]
        weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=wmin, quant_max=wmax,
                                        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
                                        averaging_constant=1.0)
    else:
        cls = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": HistogramObserver}[observer]
        act = cls.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=reduce)
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                    quant_min=wmin, quant_max=wmax)
    return QConfigMapping().set_global(QConfig(activation=act, weight=weight))


def float_ops(gm: torch.fx.GraphModule) -> list[str]:
    """The operations of a converted graph that run on float tensors (between a dequantize and the next
    quantize), as 'name (type)'."""
    quantized: dict[torch.fx.Node, bool] = {}
    found: list[str] = []
    for node in gm.graph.nodes:
        ins = [quantized[a] for a in node.all_input_nodes if a in quantized]
        if node.op == "placeholder" or node.op == "get_attr":
            quantized[node] = node.op == "get_attr"
            continue
        if node.target in (torch.quantize_per_tensor, torch.quantize_per_channel):
            quantized[node] = True
        elif node.target == "dequantize":
            quantized[node] = False
        elif node.op == "output":
            continue
        else:
            quantized[node] = all(ins) if ins else True
            if ins and not all(ins):
                kind = (type(gm.get_submodule(node.target)).__name__ if node.op == "call_module"
                        else getattr(node.target, "__name__", str(node.target)))
                if kind not in ("flatten", "size", "view", "reshape", "getattr", "getitem", "Identity", "Flatten"):
                    found.append(f"{node.name} ({kind})")
    return found


@dataclass
class Quantized:
    model: torch.fx.GraphModule
    engine: str
    observer: str
    weight_bits: int
    calibration_images: int
    float_ops: list[str] = field(default_factory=list)


def _calibration_batches(images: torch.Tensor, batch: int) -> list[torch.Tensor]:
    if len(images) < batch:
        raise CompressError(f"the calibration set has {len(images)} images, fewer than one batch ({batch}); "
                            f"give more images or a smaller calibration batch")
    return list(images.split(batch))


def _prepare(model: nn.Module, example: torch.Tensor, mapping: QConfigMapping, qat: bool) -> torch.fx.GraphModule:
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    m = copy.deepcopy(model).float().cpu()
    m.train(qat)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FX's deprecation notices
            return (prepare_qat_fx if qat else prepare_fx)(m, mapping, (example,))
    except Exception as e:  # tracing raises many types
        raise CompressError(f"cannot quantize {type(model).__name__} with FX graph mode: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160]}") from None


def convert(prepared: torch.fx.GraphModule, engine: str) -> torch.fx.GraphModule:
    from torch.ao.quantization.quantize_fx import convert_fx

    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared.eval())


def quantize_fx(model: nn.Module, calibration: torch.Tensor, observer: str = "mse", engine: str = "x86",
                batch: int = 64) -> Quantized:
    """Post-training static int8 quantization of `model` (unchanged) calibrated on `calibration`
    (normalized images, N×C×H×W)."""
    mapping = qconfig_mapping(observer, engine)
    batches = _calibration_batches(calibration, batch)
    prepared = _prepare(model, batches[0], mapping, qat=False)
    with torch.no_grad():
        for x in batches:
            prepared(x)
    q = convert(prepared, engine)
    return Quantized(q, engine, observer, 8, len(calibration), float_ops(q))


def prepare_qat(model: nn.Module, example: torch.Tensor, engine: str = "x86", weight_bits: int = 8) -> torch.fx.GraphModule:
    """A fake-quantized copy of `model` to fine-tune; `convert(result, engine)` gives the int8 model."""
    return _prepare(model, example, qconfig_mapping("minmax", engine, weight_bits, qat=True), qat=True)


def qat_float_model(prepared: torch.fx.GraphModule, model: nn.Module) -> nn.Module:
    """A copy of the float `model` carrying the weights and BatchNorm statistics that quantization-aware
    training left in `prepared` (from `prepare_qat`), for the ONNX route: PyTorch's exporter cannot export
    the fake-quantized graph, so the fine-tuned float weights are exported and quantized by ONNX Runtime,
    whose per-channel symmetric weight grid (max |w| / 127 of the BN-folded weight) is the one the weights
    were trained on, within 0.4%. FX fuses each conv→BN pair into one QAT module at the conv's name; its BN
    goes back to the float BN that follows that conv."""
    from cnnkit.models.fold import trace

    out = copy.deepcopy(model).float().cpu().eval()
    fmods, qmods = dict(out.named_modules()), dict(prepared.named_modules())
    graph = trace(out).graph
    bn_after = {n.args[0].target: n.target for n in graph.nodes
                if n.op == "call_module" and isinstance(fmods.get(n.target), nn.modules.batchnorm._BatchNorm)
                and n.args and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "call_module"}
    copied = 0
    with torch.no_grad():
        for name, fm in fmods.items():
            qm = qmods.get(name)
            if qm is None or next(fm.children(), None) is not None:  # only leaf layers
                continue
            fused_bn = getattr(qm, "bn", None)
            if isinstance(fused_bn, nn.modules.batchnorm._BatchNorm) and name in bn_after:
                fmods[bn_after[name]].load_state_dict(fused_bn.state_dict())
            want = fm.state_dict()
            own = {k: v for k, v in qm.state_dict().items() if k in want}
            if own and set(own) == set(want):
                fm.load_state_dict(own)
                copied += 1
    if copied == 0:
        raise CompressError("found none of the model's layers in the quantization-aware-trained graph")
    return out


def save_torchscript(q: torch.fx.GraphModule, example: torch.Tensor, path: str | Path) -> torch.jit.ScriptModule:
    """Trace and freeze the int8 model and save it; returns the loaded-back module."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.freeze(torch.jit.trace(q, example).eval())
        torch.jit.save(ts, str(path))
        return torch.jit.load(str(path))


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
