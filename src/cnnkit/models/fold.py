"""Fold each BatchNorm that directly follows a convolution into that convolution's weights and bias
(eval-mode statistics), through torch.fx's conv-BN fusion. Used by LRP, which needs a rule for every layer,
and by deployment."""

from __future__ import annotations

import copy

import torch.fx
import torch.nn as nn
from torch.fx.experimental.optimization import fuse

from cnnkit.errors import ModelError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """A torch.fx graph of `model`, or a one-line error for models with data-dependent control flow."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, NotImplementedError ...)
        raise ModelError(f"cannot trace {type(model).__name__} with torch.fx "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def _split_norm_act(model: nn.Module) -> nn.Module:
    """timm's BatchNormAct2d (BN, dropout and activation in one module, traced by fx as functional calls)
    as a plain BatchNorm2d followed by its dropout and activation, so fx sees a foldable BN layer."""
    from timm.layers import BatchNormAct2d

    for name, m in list(model.named_modules()):
        if type(m) is BatchNormAct2d:
            ref = next(t for t in (m.weight, m.running_mean) if t is not None)  # keep dtype and device
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                                device=ref.device, dtype=ref.dtype)
            bn.load_state_dict(m.state_dict(), strict=False)
            parent, _, leaf = name.rpartition(".")
            model.get_submodule(parent).add_module(leaf, nn.Sequential(bn, m.drop, m.act))
    return model


def fold_batchnorm(model: nn.Module) -> tuple[torch.fx.GraphModule, int]:
    """An eval-mode copy of `model` with every conv→BN pair folded into one conv, and how many BNs were
    folded. BNs that do not follow a convolution (pre-activation blocks) are kept. The source is unchanged."""
    was_training = model.training
    model.eval()
    try:
        plain = _split_norm_act(copy.deepcopy(model)).eval()
        trace(plain)  # for the one-line error; fuse() would raise the raw one
        folded = fuse(plain, inplace=True)
    finally:
        model.train(was_training)
    before = sum(isinstance(m, _BN) for m in model.modules())
    after = sum(isinstance(m, _BN) for m in folded.modules())
    return folded.eval(), before - after
