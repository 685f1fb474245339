"""Inside a network: its graph (torch.fx), every layer's activations for one image, and what each layer computes
at one channel and position, with the numbers. The browser explorer (`cnnkit explore`) draws these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ExplainError

# what each kind of layer is called in the explorer; anything else is "other" (input and output shown, no formula)
ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.GELU: "gelu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
               nn.Tanh: "tanh", nn.LeakyReLU: "leaky_relu", nn.Hardswish: "hardswish", nn.ELU: "elu",
               nn.Mish: "mish", nn.Hardsigmoid: "hardsigmoid"}
FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.gelu: "gelu", F.silu: "silu",
             torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.hardswish: "hardswish"}
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)


@dataclass
class Node:
    """One column of the network as the explorer draws it."""

    id: str  # the torch.fx node name: unique, stable for a model
    label: str  # the module's qualified name, or the function's name
    kind: str  # input, conv, bn, act, pool, gpool, linear, add, cat, mul, flatten, norm, other
    type: str  # the module's class or the function's name
    inputs: list[str]
    shape: list[int] = field(default_factory=list)  # output shape, batch dimension left out (C, H, W) or (F,)
    stage: str = ""  # the first part of the qualified name ("layer1", "stages"): the per-stage colour scale
    params: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False  # its output is N×H×W×C (ConvNeXt's MLPs): shown with the channels moved back

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "kind": self.kind, "type": self.type, "inputs": self.inputs,
                "shape": self.shape, "stage": self.stage, "params": self.params}


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, stopping at the modules timm marks untraceable (ConvMlp, BatchNormAct2d, ...) and at
    normalization layers, which the explorer shows whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        try:
            from timm.layers import _fx

            if isinstance(m, tuple(_fx.get_notrace_modules())):
                return True
        except ImportError:  # pragma: no cover - timm is a dependency
            pass
        return isinstance(m, NORMS + PASS_THROUGH) or super().is_leaf_module(m, qualname)


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        # a copy: an in-place operation later (ReLU(inplace=True), x += shortcut) would change the recorded value
        self.values[n.name] = out.detach().clone() if isinstance(out, torch.Tensor) else out
        return out


class Inside:
    """A model traced once; `run(x)` gives every column's activations for a batch of one image."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        self.model = model.eval()
        if example.ndim != 4 or len(example) != 1:
            raise ExplainError(f"the example must be one image, 1×C×H×W, got {tuple(example.shape)}")
        try:
            self.gm = torch.fx.GraphModule(model, _Tracer().trace(model))
            self.traced, self.trace_error = True, ""
        except Exception as e:  # data-dependent control flow: fall back to the order modules run in
            self.gm, self.traced, self.trace_error = None, False, f"{type(e).__name__}: {str(e).splitlines()[0]}"
        self.nodes: list[Node] = []
        self._alias: dict[str, str] = {}  # a hidden node -> the shown node whose value it carries
        with torch.no_grad():
            self._build(example)
        self.by_id = {n.id: n for n in self.nodes}
        self.output_id = self.nodes[-1].id

    # ------------------------------------------------------------------------------------------ building
    def _build(self, x: torch.Tensor) -> None:
        if self.gm is None:
            self._build_from_hooks(x)
            return
        rec = _Recorder(self.gm)
        rec.run(x)
        layout: dict[str, bool] = {}
        for n in self.gm.graph.nodes:
            value = rec.values.get(n.name)
            tensor_ins = [a for a in n.all_input_nodes if self._shown(a.name) is not None]
            ins = list(dict.fromkeys(self._shown(a.name) for a in tensor_ins))
            last = layout.get(tensor_ins[0].name, False) if tensor_ins else False
            if n.op == "placeholder":
                self._add(Node(n.name, "input", "input", "input", [], list(value.shape[1:])), value)
                layout[n.name] = False
                continue
            if n.op == "output" or not isinstance(value, torch.Tensor) or value.ndim < 2 or not value.is_floating_point():
                continue
            module = self.gm.get_submodule(n.target) if n.op == "call_module" else None
            if isinstance(module, PASS_THROUGH) or (n.op == "call_method" and n.target == "contiguous"):
                if ins:
                    self._alias[n.name] = ins[0]
                layout[n.name] = last
                continue
            if n.op == "call_method" and n.target == "permute":
                args = n.args[1:]
                dims = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)
                last = {(0, 2, 3, 1): True, (0, 3, 1, 2): False}.get(tuple(dims), last)
            layout[n.name] = last
            node = self._describe(n, module, ins, value, last)
            self._add(node, value)

    def _build_from_hooks(self, x: torch.Tensor) -> None:
        """Leaf modules in the order they run, each fed by the one before (no joins known)."""
        order: list[tuple[str, nn.Module, torch.Tensor]] = []
        hooks = []
        for name, m in self.model.named_modules():
            if name and not list(m.children()) and not isinstance(m, PASS_THROUGH):
                hooks.append(m.register_forward_hook(
                    lambda mod, _i, out, name=name: order.append((name, mod, out)) if isinstance(out, torch.Tensor) else None))
        try:
            out = self.model(x)
        finally:
            for h in hooks:
                h.remove()
        self._add(Node("input", "input", "input", "input", [], list(x.shape[1:])), x)
        prev = "input"
        seen: set[str] = set()
        for name, m, value in order:
            if name in seen:  # a module called twice: shown once
                continue
            seen.add(name)
            node = self._describe(None, m, [prev], value, False, label=name)
            node.id = name.replace(".", "_")
            self._add(node, value)
            prev = node.id
        if out.shape[1:] != torch.Size(self.nodes[-1].shape):
            self._add(Node("output", "output", "other", "output", [prev], list(out.shape[1:])), out)

    def _add(self, node: Node, value: torch.Tensor) -> None:
        if node.channels_last and value.ndim == 4:
            node.shape = [value.shape[3], value.shape[1], value.shape[2]]
        elif not node.shape:
            node.shape = list(value.shape[1:])
        self.nodes.append(node)
        self._alias[node.id] = node.id

    def _shown(self, name: str) -> str | None:
        return self._alias.get(name)

    def _describe(self, n: torch.fx.Node | None, module: nn.Module | None, ins: list[str], value: torch.Tensor,
                  channels_last: bool, label: str | None = None) -> Node:
        label = label or (str(n.target) if n is not None and n.op == "call_module" else _function_name(n))
        stage = label.split(".")[0] if module is not None else ""
        kind, params = "other", {}
        if module is not None:
            kind, params = _module_kind(module)
            typ = type(module).__name__
        else:
            typ = _function_name(n)
            kind, params = _function_kind(n, typ)
            if not ins and n.op != "placeholder":  # a parameter reshaped (ConvNeXt's layer scale γ): no layer's input
                kind, params = "const", {}
        return Node(n.name if n is not None else label, label, kind, typ, ins, [], stage, params, channels_last)

    # ------------------------------------------------------------------------------------------ running
    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every shown column's output for one image (1×C×H×W, normalized), detached, channels first."""
        with torch.no_grad():
            if self.gm is not None:
                rec = _Recorder(self.gm)
                rec.run(x)
                values = {n.id: rec.values[n.id] for n in self.nodes}
            else:
                values = self._run_hooks(x)
        out = {}
        for n in self.nodes:
            v = values[n.id].detach().float()
            if n.channels_last and v.ndim == 4:
                v = v.permute(0, 3, 1, 2)
            out[n.id] = v[0]
        return out

    def _run_hooks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {"input": x}
        modules = dict(self.model.named_modules())
        hooks = []
        for n in self.nodes[1:]:
            if n.label in modules:
                hooks.append(modules[n.label].register_forward_hook(
                    lambda _m, _i, out, nid=n.id: values.setdefault(nid, out)))
        try:
            out = self.model(x)
        finally:
            for h in hooks:
                h.remove()
        values.setdefault("output", out)
        return values

    def module(self, node_id: str) -> nn.Module | None:
        n = self.by_id[node_id]
        try:
            return self.model.get_submodule(n.label) if n.kind not in ("input", "add", "cat", "mul") else None
        except AttributeError:
            return None

    def consumers(self, node_id: str) -> list[Node]:
        return [n for n in self.nodes if node_id in n.inputs]


def _function_name(n: torch.fx.Node | None) -> str:
    if n is None:
        return "output"
    if n.op == "call_method":
        return str(n.target)
    return getattr(n.target, "__name__", str(n.target)).lstrip("_")


def _act_name(m: nn.Module) -> str | None:
    for cls, name in ACTIVATIONS.items():
        if isinstance(m, cls):
            return name
    return None


def _module_kind(m: nn.Module) -> tuple[str, dict[str, Any]]:
    if isinstance(m, nn.Conv2d):
        return "conv", {"kernel": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding)
                        if not isinstance(m.padding, str) else m.padding, "dilation": list(m.dilation),
                        "groups": m.groups, "in_channels": m.in_channels, "out_channels": m.out_channels,
                        "bias": m.bias is not None, "padding_mode": m.padding_mode}
    if isinstance(m, nn.ConvTranspose2d):  # U-Net's way up: each input value stamps the kernel onto the output
        return "upconv", {"kernel": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding),
                          "in_channels": m.in_channels, "out_channels": m.out_channels}
    if isinstance(m, nn.BatchNorm2d):
        act = _act_name(getattr(m, "act", nn.Identity()))  # timm's BatchNormAct2d: BN, then its activation
        return "bn", {"eps": m.eps, "activation": act}
    name = _act_name(m)
    if name:
        return "act", {"function": name}
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        pad = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding, m.padding)
        k = m.kernel_size if isinstance(m.kernel_size, (tuple, list)) else (m.kernel_size, m.kernel_size)
        s = m.stride if isinstance(m.stride, (tuple, list)) else (m.stride, m.stride)
        return "pool", {"op": "max" if isinstance(m, nn.MaxPool2d) else "avg", "kernel": list(k), "stride": list(s),
                        "padding": list(pad), "ceil_mode": m.ceil_mode,
                        "count_include_pad": getattr(m, "count_include_pad", True),
                        "dilation": list(m.dilation) if isinstance(getattr(m, "dilation", 1), tuple) else
                        [getattr(m, "dilation", 1)] * 2}
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size, m.output_size)
        op = "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max"
        return ("gpool", {"op": op}) if tuple(size) == (1, 1) else ("other", {"op": f"adaptive {op} pool"})
    if type(m).__name__ == "SelectAdaptivePool2d":  # timm's head pooling
        return "gpool", {"op": "max" if "max" in str(getattr(m, "pool_type", "")) else "avg",
                         "flatten": bool(getattr(m, "flatten_dim", None) or not isinstance(m.flatten, nn.Identity))}
    if isinstance(m, nn.PixelShuffle):  # ESPCN's sub-pixel convolution: s² channels become an s× larger map
        return "shuffle", {"scale": m.upscale_factor}
    if isinstance(m, nn.Linear):
        return "linear", {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.Flatten):
        return "flatten", {}
    if isinstance(m, NORMS):
        return "norm", {}
    return "other", {}


def _function_kind(n: torch.fx.Node, typ: str) -> tuple[str, dict[str, Any]]:
    if n.target in FUNCTIONS:
        return "act", {"function": FUNCTIONS[n.target]}
    if typ in ("add", "iadd") or n.target in (torch.add,):
        return "add", {}
    if typ in ("sub", "isub") or n.target in (torch.sub,):  # DnCNN's residual: the input less the noise it predicts
        return "sub", {}
    if typ in ("cat", "concat", "concatenate"):
        return "cat", {"dim": n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)}
    if typ in ("mul", "imul"):  # a constant factor (ResNet-9's × 0.125 on the logits) is kept for its view
        factors = [float(a) for a in n.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        return "mul", ({"factor": factors[0]} if len(factors) == 1 else {})
    if typ in ("flatten", "view", "reshape") and n.op in ("call_function", "call_method"):
        return "flatten", {}
    if typ == "mean":
        return "gpool", {"op": "avg"}
    if typ in ("max_pool2d", "avg_pool2d") and n.op == "call_function":  # U-Net's F.max_pool2d
        return "pool", _pool_args(n, "max" if typ == "max_pool2d" else "avg")
    return "other", {}


def _pool_args(n: torch.fx.Node, op: str) -> dict[str, Any]:
    """A functional pooling call's parameters, as `_module_kind` gives a pooling module's."""
    names = ["input", "kernel_size", "stride", "padding"]
    given = {**dict(zip(names, n.args)), **n.kwargs}
    pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]  # noqa: E731
    kernel = pair(given["kernel_size"])
    return {"op": op, "kernel": kernel, "stride": pair(given.get("stride") or kernel),
            "padding": pair(given.get("padding", 0)), "ceil_mode": bool(given.get("ceil_mode", False)),
            "count_include_pad": bool(given.get("count_include_pad", True)), "dilation": pair(given.get("dilation", 1))}


# ---------------------------------------------------------------------------------------------- node details

def conv_terms(inside: Inside, acts: dict[str, torch.Tensor], node_id: str, channel: int) -> dict[str, Any]:
    """What the explorer's elastic view needs to write out the convolution for one output channel: the input
    channels it reads (its group), the kernel slices, the bias, PyTorch's own output map, and the layers that
    follow it here (BatchNorm and the activation), with their parameters and outputs."""
    node = inside.by_id[node_id]
    conv = inside.module(node_id)
    if not isinstance(conv, nn.Conv2d):
        raise ExplainError(f"{node.label} is not a convolution")
    if not 0 <= channel < conv.out_channels:
        raise ExplainError(f"{node.label} has {conv.out_channels} channels; channel {channel} does not exist")
    per_group_out = conv.out_channels // conv.groups
    group = channel // per_group_out
    cin = conv.in_channels // conv.groups
    x = acts[node.inputs[0]]
    chain: list[dict[str, Any]] = []
    current = node
    while True:  # the BatchNorm and activation that only this layer feeds
        nxt = inside.consumers(current.id)
        if len(nxt) != 1 or nxt[0].kind not in ("bn", "act") or any(c["kind"] == nxt[0].kind for c in chain):
            break
        current = nxt[0]
        step: dict[str, Any] = {"id": current.id, "label": current.label, "kind": current.kind,
                                "output": acts[current.id][channel]}
        if current.kind == "bn":
            bn = inside.module(current.id)
            step.update(gamma=float(bn.weight[channel]) if bn.weight is not None else 1.0,
                        beta=float(bn.bias[channel]) if bn.bias is not None else 0.0,
                        mean=float(bn.running_mean[channel]), var=float(bn.running_var[channel]), eps=bn.eps,
                        activation=current.params.get("activation"))
        else:
            step["function"] = current.params["function"]
        chain.append(step)
    return {"node": node.as_dict(), "channel": channel, "group": group, "groups": conv.groups,
            "input_node": node.inputs[0], "input_channels": list(range(group * cin, (group + 1) * cin)),
            "input": x[group * cin:(group + 1) * cin], "weight": conv.weight[channel].detach().float(),
            "bias": float(conv.bias[channel]) if conv.bias is not None else 0.0, "has_bias": conv.bias is not None,
            "stride": list(conv.stride), "padding": list(conv.padding) if not isinstance(conv.padding, str)
            else _same_padding(conv), "dilation": list(conv.dilation), "padding_mode": conv.padding_mode,
            "output": acts[node_id][channel], "chain": chain}


def upconv_terms(inside: Inside, acts: dict[str, torch.Tensor], node_id: str, channel: int) -> dict[str, Any]:
    """A transposed convolution at one output channel: every input channel, the kernel slice each stamps onto
    this channel (ConvTranspose2d's weight is in × out × kH × kW), the bias and PyTorch's output map."""
    node = inside.by_id[node_id]
    m = inside.module(node_id)
    if not isinstance(m, nn.ConvTranspose2d) or m.groups != 1 or tuple(m.dilation) != (1, 1):
        raise ExplainError(f"{node.label}: only ungrouped, undilated transposed convolutions have a formula view")
    if not 0 <= channel < m.out_channels:
        raise ExplainError(f"{node.label} has {m.out_channels} channels; channel {channel} does not exist")
    return {"node": node.as_dict(), "channel": channel, "input_node": node.inputs[0],
            "input": acts[node.inputs[0]], "weight": m.weight[:, channel].detach().float(),
            "bias": float(m.bias[channel]) if m.bias is not None else 0.0, "has_bias": m.bias is not None,
            "stride": list(m.stride), "padding": list(m.padding), "output": acts[node_id][channel]}


def _same_padding(conv: nn.Conv2d) -> list[int]:
    if conv.padding == "valid":
        return [0, 0]
    return [(d * (k - 1)) // 2 for k, d in zip(conv.kernel_size, conv.dilation)]


def layer_terms(inside: Inside, acts: dict[str, torch.Tensor], node_id: str, channel: int) -> dict[str, Any]:
    """The inputs, parameters and output of one layer at one channel, for its formula view."""
    node = inside.by_id[node_id]
    if node.kind == "conv":
        return conv_terms(inside, acts, node_id, channel)
    if node.kind == "upconv":
        return upconv_terms(inside, acts, node_id, channel)
    out = acts[node_id]
    if not 0 <= channel < (out.shape[0] if out.ndim >= 2 else out.numel()):
        what = "channels" if out.ndim >= 2 else "elements"
        raise ExplainError(f"{node.label} has {out.shape[0] if out.ndim >= 2 else out.numel()} {what}; "
                           f"{what[:-1]} {channel} does not exist")
    d: dict[str, Any] = {"node": node.as_dict(), "channel": channel, "inputs": node.inputs}
    ins = [acts[i] for i in node.inputs]
    m = inside.module(node_id)
    if node.kind == "linear" and isinstance(m, nn.Linear) and out.ndim == 1:
        d.update(input=ins[0].flatten(), weight=m.weight[channel].detach().float(),
                 bias=float(m.bias[channel]) if m.bias is not None else 0.0, output=out.flatten()[channel:channel + 1])
        return d
    if node.kind == "cat":
        sizes = [t.shape[0] for t in ins]
        start = 0
        for i, s in enumerate(sizes):
            if channel < start + s:
                d.update(source=i, source_channel=channel - start, sizes=sizes)
                break
            start += s
        d.update(input=[ins[d["source"]][d["source_channel"]]], output=out[channel])
        return d
    if out.ndim == 1:  # a vector: a flatten's element is its input's same element; global pooling's, a channel's map
        d.update(input=[t.flatten()[channel:channel + 1] if t.numel() == out.numel() else t[channel] for t in ins],
                 output=out[channel:channel + 1])
    else:
        d.update(input=[t[channel] if t.ndim == out.ndim and t.shape[0] == out.shape[0] else t for t in ins],
                 output=out[channel])
    if node.kind == "bn" and isinstance(m, nn.BatchNorm2d):
        d.update(gamma=float(m.weight[channel]) if m.weight is not None else 1.0,
                 beta=float(m.bias[channel]) if m.bias is not None else 0.0,
                 mean=float(m.running_mean[channel]), var=float(m.running_var[channel]), eps=m.eps)
    if node.kind == "linear":  # over channels at every position (ConvNeXt's MLP): a 1×1 convolution
        d["note"] = (f"{node.label} is a Linear layer applied at every position (a 1×1 convolution over the "
                     f"channels); its input and output at channel {channel} are shown")
    if node.kind == "other" or node.kind == "norm":
        d["note"] = (f"{node.type} has no formula view here; its input and output at channel {channel} are "
                     f"shown")
    return d
