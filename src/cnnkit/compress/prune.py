"""Pruning.

Structured (channels), through Torch-Pruning's dependency graph, which keeps every coupled layer
(BN, the next convolution, residual partners) consistent:

* criteria: `l1` (Li et al. 2017: L1 norm of each filter), `bn` (Liu et al. 2017, network slimming: |γ| of
  the BN after the filter), `taylor` (Molchanov et al. 2019: first-order Taylor |g·w| summed over the
  group, from the gradients of a calibration batch), `lamp` (Lee et al. 2021: layer-adaptive magnitude
  scores), `lasso` (He et al. 2017: LASSO regression selects the input channels of the next layer that best
  reconstruct its output; the next layer's weights are then refitted by least squares);
* `uniform` (every layer loses the same fraction of channels) or `global` (one threshold across layers,
  normalized per layer);
* the ratio is the fraction of MACs to remove: the channel fraction that reaches it is found by bisection;
* iterative rounds with fine-tuning between them are driven by `cnnkit.compress.recipes` (`pruned_model`).

Unstructured: global magnitude pruning of conv/linear weights with the mask kept fixed while retraining,
optionally rewound to an early checkpoint (Frankle & Carbin 2019, with rewinding as in Frankle et al. 2020).
It makes the weights sparse, not the model faster: dense kernels run the zeros.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CompressError

CRITERIA = ("l1", "bn", "taylor", "lamp", "lasso")
SCOPES = ("uniform", "global")


def check_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise CompressError(f"a pruning ratio must lie strictly between 0 and 1, got {ratio}")
    return ratio


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    from cnnkit.models.card import count_macs as _count

    return _count(model, example[:1])


def _classifier(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The last conv/linear layer to run: its output channels are the classes and must stay."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


class LassoImportance:
    """He et al. 2017's channel selection as a Torch-Pruning importance: for each convolution that reads
    the group's channels, the contributions Z_c of each input channel to a sample of its outputs Y are
    regressed on Y with the LASSO path (sklearn's LARS); a channel's score is how early it enters the path,
    summed over the reading layers. `inputs` maps each reading layer to its input on a calibration batch."""

    def __init__(self, inputs: dict[nn.Module, torch.Tensor], samples: int = 4000, seed: int = 0):
        self.inputs, self.samples, self.seed = inputs, samples, seed

    def _contributions(self, layer: nn.Module, idxs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[layer].double()
        gen = torch.Generator().manual_seed(self.seed)
        if isinstance(layer, nn.Linear):
            per = x[:, None, :] * layer.weight.double()[None]  # N×out×in
            z = per.flatten(0, 1)
        else:
            cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N×(C·k·k)×L
            k = layer.kernel_size[0] * layer.kernel_size[1]
            cols = cols.view(x.shape[0], x.shape[1], k, -1)
            w = layer.weight.double().view(layer.out_channels, x.shape[1], k)
            z = torch.einsum("nckl,ock->nolc", cols, w).flatten(0, 2)  # (N·out·L)×C
        pick = torch.randperm(len(z), generator=gen)[: self.samples]
        z = z[pick][:, idxs]
        return z, z.sum(1)

    def __call__(self, group) -> torch.Tensor:
        from sklearn.linear_model import lars_path

        n = len(group[0].idxs)
        score = torch.zeros(n, dtype=torch.float64)
        used = False
        for dep, idxs in group:
            layer = dep.target.module
            handler = dep.handler.__name__ if hasattr(dep.handler, "__name__") else type(dep.handler).__name__
            if layer not in self.inputs or "in_channels" not in str(handler) or len(idxs) != n:
                continue
            if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                continue
            z, y = self._contributions(layer, list(idxs))
            _, _, coefs = lars_path(z.numpy(), y.numpy(), method="lasso", max_iter=4 * n)
            active = torch.as_tensor(coefs != 0).sum(1).double()  # steps on the path where each is active
            score += active / max(1.0, float(active.max()))
            used = True
        if not used:  # no reading layer to regress (e.g. the group feeds only a depthwise conv): L1 norm
            first = group[0][0].target.module
            w = first.weight.detach().double().flatten(1) if first.weight.dim() > 1 else first.weight.detach().double()[:, None]
            score = w.abs().sum(1)[list(group[0][1])] if len(w) != n else w.abs().sum(1)
        return score.float()


def _importance(criterion: str, scope: str, inputs: dict | None):
    import torch_pruning as tp

    norm = "mean" if scope == "global" else None
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=norm,
                                                      target_types=[nn.modules.conv._ConvNd, nn.Linear])
    if criterion == "bn":
        return tp.importance.BNScaleImportance(normalizer=norm)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=norm)
    if criterion == "lamp":
        return tp.importance.LAMPImportance(p=2)
    return LassoImportance(inputs or {})


def _reading_inputs(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """The input of every conv (groups 1) and linear layer on `x`."""
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, i[0].detach()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _least_squares_refit(pruned: nn.Module, original: nn.Module, x: torch.Tensor,
                         removed: dict[str, dict[str, list[int]]], samples: int = 8000) -> int:
    """He et al.'s reconstruction step: layer by layer in forward order, refit each conv (groups 1) whose
    input channels were cut, so that on the pruned network's own inputs (after the earlier refits) it
    reproduces the original layer's outputs on its kept output channels."""
    before = _reading_inputs(original, x)
    orig = dict(original.named_modules())
    refit = 0
    for name, layer in list(pruned.named_modules()):
        ref = orig.get(name)
        cut = removed.get(name, {})
        if not isinstance(layer, nn.Conv2d) or layer.groups != 1 or ref is None or not cut.get("in"):
            continue
        after = _reading_inputs(pruned, x)[layer]
        keep = [c for c in range(ref.out_channels) if c not in set(cut.get("out", []))]
        with torch.no_grad():
            y = F.conv2d(before[ref].double(), ref.weight.double()[keep], None, ref.stride, ref.padding, ref.dilation)
            cols = F.unfold(after.double(), layer.kernel_size, layer.dilation, layer.padding, layer.stride)
            a = cols.transpose(1, 2).flatten(0, 1)  # (N·L)×(C'·k·k)
            b = y.flatten(2).transpose(1, 2).flatten(0, 1)  # (N·L)×out'
            pick = torch.randperm(len(a), generator=torch.Generator().manual_seed(0))[:samples]
            sol = torch.linalg.lstsq(a[pick], b[pick]).solution  # (C'·k·k)×out'
            layer.weight.copy_(sol.T.reshape(layer.weight.shape).to(layer.weight.dtype))
        refit += 1
    return refit


@dataclass
class Pruned:
    model: nn.Module
    criterion: str
    scope: str
    channel_ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    refitted_layers: int = 0


def _prune_once(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, criterion: str, scope: str,
                channel_ratio: float, inputs: dict | None, round_to: int | None = None) -> tuple[nn.Module, dict[str, dict[str, list[int]]]]:
    """A pruned copy, and the channels removed per layer name ('out'/'in' indices of the original)."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    ins = None
    if inputs is not None:  # re-key the recorded inputs onto the copy's layers
        by_name = {n: t for n, mod in model.named_modules() for k, t in inputs.items() if k is mod}
        ins = {mod: by_name[n] for n, mod in m.named_modules() if n in by_name}
    importance, ignored = _importance(criterion, scope, ins), _classifier(m, x)
    names = {mod: n for n, mod in m.named_modules()}
    removed: dict[str, dict[str, list[int]]] = {}
    try:
        pruner = tp.pruner.MetaPruner(m, x[:1], importance=importance, global_pruning=scope == "global",
                                      pruning_ratio=channel_ratio, ignored_layers=ignored, max_pruning_ratio=0.95,
                                      round_to=round_to)
        if criterion == "taylor":  # the gradients Taylor importance reads at pruner.step
            m.zero_grad()
            F.cross_entropy(m(x), y).backward()
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                fn = getattr(dep.handler, "__name__", "")
                side = "out" if "out_channels" in fn else "in" if "in_channels" in fn else None
                if side and dep.target.module in names:
                    removed.setdefault(names[dep.target.module], {}).setdefault(side, []).extend(int(i) for i in idxs)
            group.prune()
    except Exception as e:  # Torch-Pruning raises many types on graphs it cannot follow
        raise CompressError(f"Torch-Pruning cannot prune {type(model).__name__}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160]}") from None
    m.zero_grad(set_to_none=True)
    return m, removed


def prune_structured(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, ratio: float = 0.5,
                     criterion: str = "l1", scope: str = "uniform", refit: bool | None = None,
                     tolerance: float = 0.02, round_to: int | None = None) -> Pruned:
    """Remove channels from a copy of `model` until its MACs are cut by `ratio` (within `tolerance`).
    `x` (and labels `y`, for the Taylor criterion) is a calibration batch of normalized images. `round_to`
    keeps every pruned layer's channel count a multiple of it (CPU kernels block channels by 8 or 16)."""
    check_ratio(ratio)
    if round_to is not None and round_to < 1:
        raise CompressError(f"round_to must be a positive channel count, got {round_to}")
    if criterion not in CRITERIA:
        raise CompressError(f"unknown pruning criterion {criterion!r}; choose from: {', '.join(CRITERIA)}")
    if scope not in SCOPES:
        raise CompressError(f"unknown pruning scope {scope!r}; choose uniform or global")
    if criterion == "lasso" and scope == "global":
        raise CompressError("LASSO channel selection is layer-wise (He et al. 2017); use it with scope uniform")
    if criterion == "taylor" and y is None:
        raise CompressError("the Taylor criterion needs labels for its calibration batch")
    model = model.float().cpu().eval()
    try:
        import torch_pruning as tp  # noqa: F401
    except ImportError:
        raise CompressError("structured pruning needs torch-pruning: pip install torch-pruning") from None
    base_macs = count_macs(model, x)
    base_params = sum(p.numel() for p in model.parameters())
    target = (1.0 - ratio) * base_macs
    inputs = _reading_inputs(model, x) if criterion == "lasso" else None
    lo, hi, best = 0.0, 0.95, None
    with torch.enable_grad():  # Torch-Pruning traces the graph through autograd, even under a caller's no_grad
        for _ in range(12):  # bisection on the channel fraction
            mid = (lo + hi) / 2
            cand, removed = _prune_once(model, x, y, criterion, scope, mid, inputs, round_to)
            macs = count_macs(cand, x)
            if best is None or abs(macs - target) < abs(best[1] - target):
                best = (cand, macs, mid, removed)
            if abs(macs - target) <= tolerance * base_macs:
                break
            lo, hi = (mid, hi) if macs > target else (lo, mid)
    pruned, macs, frac, removed = best
    refitted = 0
    if refit if refit is not None else criterion == "lasso":
        refitted = _least_squares_refit(pruned, model, x, removed)
    return Pruned(pruned.eval(), criterion, scope, frac, base_macs, macs, base_params,
                  sum(p.numel() for p in pruned.parameters()), refitted)


# --- unstructured ---------------------------------------------------------------------------------------

def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude masks over every conv/linear weight: the `sparsity` fraction of smallest |w| go."""
    check_ratio(sparsity)
    weights = {f"{n}.weight": m.weight.detach() for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    k = int(sparsity * flat.numel())
    threshold = flat.kthvalue(max(k, 1)).values
    return {n: (w.abs() > threshold).to(w.dtype) for n, w in weights.items()}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights in place (after every optimizer step while retraining)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device))


def sparsity_of(model: nn.Module) -> float:
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return float(sum((w == 0).sum() for w in ws) / sum(w.numel() for w in ws))
