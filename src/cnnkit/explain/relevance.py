"""Layer-wise relevance propagation (Bach et al. 2015) through Captum's LRP, on a copy of the model made
ready for it with torch.fx:

- BatchNorm folded into the preceding convolution (BNs that follow no convolution keep Captum's ε rule);
- every tensor operation between layers (residual additions, a shortcut's slicing and padding,
  concatenations, ReLUs, scalings) made a module with an ε rule, so relevance is split between summands
  instead of copied to both; Captum multiplies each tensor by itself once however many layers read it, so
  relevance reaching a tensor through a bare function would be counted twice;
- each call of a reused module given its own copy (Captum keeps one set of activations per module);
- identity and dropout layers removed.

Rules: `epsilon` (LRP-ε on every layer) and `zplus` (Captum's α1β0 rule, i.e. z+, on convolutions and
linear layers; ε elsewhere). Captum offers no general α/β rule, so only α=1, β=0 is here. With ε → 0,
LRP-ε equals gradient × input on ReLU networks (tested), a check of the whole preparation.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from cnnkit.errors import ExplainError, ModelError
from cnnkit.models.fold import fold_batchnorm

LRP_RULES = ("epsilon", "zplus")
_WITH_EPSILON = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.BatchNorm2d)
_REMOVED = (nn.Identity, nn.Dropout)
_ACTIVATIONS = {nn.ReLU: F.relu, nn.ReLU6: F.relu6}


class _Op(nn.Module):
    """One tensor operation of the traced graph, as a module that Captum can give a rule."""

    def __init__(self, node: torch.fx.Node, inputs: list[torch.fx.Node]):
        super().__init__()
        self.kind, self.fn, self.template = node.op, node.target, (node.args, node.kwargs)
        self.slots = {n: i for i, n in enumerate(inputs)}

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        args, kwargs = torch.fx.node.map_arg(self.template, lambda n: tensors[self.slots[n]])
        if self.kind == "call_method":
            return getattr(args[0], self.fn)(*args[1:], **kwargs)
        return self.fn(*args, **kwargs)


def _is_tensor(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("tensor_meta"), TensorMetadata)


def _modularize(gm: torch.fx.GraphModule, example: torch.Tensor, unsupported: set[str]) -> None:
    """Replace identity/dropout layers by their input, ReLU and flatten layers by their function, then every
    tensor operation by an `_Op` module, and give each further call of a module its own copy."""
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_module"]:
        m = gm.get_submodule(node.target)
        if isinstance(m, _REMOVED):
            new = node.args[0]
        elif type(m) in _ACTIVATIONS or isinstance(m, nn.Flatten):
            fn, args = ((torch.flatten, (node.args[0], m.start_dim, m.end_dim)) if isinstance(m, nn.Flatten)
                        else (_ACTIVATIONS[type(m)], (node.args[0],)))
            with graph.inserting_after(node):
                new = graph.call_function(fn, args)
        else:
            continue
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    gm.recompile()
    ShapeProp(gm).propagate(example)
    for i, node in enumerate(list(graph.nodes)):
        if node.op not in ("call_function", "call_method") or not _is_tensor(node):
            continue
        inputs: list[torch.fx.Node] = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda n: inputs.append(n) or n)
        inputs = list(dict.fromkeys(inputs))
        if not inputs or not all(_is_tensor(n) for n in inputs):
            continue  # e.g. indexing a tuple of outputs, or an op on sizes
        if any(n.op == "get_attr" for n in inputs):  # a layer written as a function of its own weights
            unsupported.add(getattr(node.target, "__name__", str(node.target)))
            continue
        gm.add_submodule(f"lrp_op_{i}", _Op(node, inputs))
        with graph.inserting_after(node):
            new = graph.call_module(f"lrp_op_{i}", tuple(inputs))
        new.meta = node.meta
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    calls: Counter[str] = Counter()
    for node in [n for n in graph.nodes if n.op == "call_module"]:
        calls[node.target] += 1
        if calls[node.target] > 1:
            name = f"{node.target.replace('.', '_')}_call{calls[node.target]}"
            gm.add_submodule(name, copy.deepcopy(gm.get_submodule(node.target)))
            node.target = name
    graph.eliminate_dead_code()
    gm.recompile()
    gm.delete_all_unused_submodules()
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    while empty := [name for name, m in gm.named_modules() if name and name not in called
                    and not list(m.children()) and not list(m.parameters(recurse=False))]:
        for name in empty:  # containers emptied above; Captum would look for a rule on them
            gm.delete_submodule(name)


def lrp_ready(model: nn.Module, example: torch.Tensor, rule: str = "epsilon",
              epsilon: float = 1e-2) -> tuple[nn.Module, int]:
    """A copy of `model` with a Captum rule on every layer, and how many BatchNorms were folded.
    `example` is one input batch (its first image is run once to find which operations act on tensors)."""
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    if rule not in LRP_RULES:
        raise ExplainError(f"unknown LRP rule {rule!r}; choose from: {', '.join(LRP_RULES)}")
    if epsilon < 0:
        raise ExplainError(f"LRP epsilon must be ≥ 0, got {epsilon}")
    try:
        gm, folded = fold_batchnorm(model)
    except ModelError as e:
        raise ExplainError(f"LRP needs a traceable model: {e}") from None
    unsupported: set[str] = set()
    _modularize(gm, example[:1].detach(), unsupported)
    for m in {gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"}:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.rule = EpsilonRule(epsilon) if rule == "epsilon" else Alpha1_Beta0_Rule()
        elif isinstance(m, (*_WITH_EPSILON, _Op)):
            m.rule = EpsilonRule(epsilon)
        else:
            unsupported.add(type(m).__name__)
    if unsupported:
        raise ExplainError(f"LRP has no rule for {', '.join(sorted(unsupported))} in {type(model).__name__}; "
                           f"it covers ReLU networks of convolution, linear, pooling and batch-norm layers")
    return gm.eval(), folded


def lrp(model: nn.Module, x: torch.Tensor, targets: list[int], rule: str = "epsilon",
        epsilon: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """(relevance B×C×H×W, conservation error per image: summed relevance minus the target logit)."""
    from captum.attr import LRP

    ready, _ = lrp_ready(model, x, rule, epsilon)
    attr, delta = LRP(ready).attribute(x.detach().clone().requires_grad_(True), target=targets,
                                       return_convergence_delta=True)
    return attr.detach(), delta.detach()
