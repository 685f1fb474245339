"""Atrous (dilated) backbones: any cnnkit or timm classifier made to keep its features at output stride 8 or 16.

DeepLab's recipe (Chen et al. 2017, "Rethinking Atrous Convolution"): every downsampling layer whose input is
already at the output stride stops striding, and every later window is dilated by the stride it no longer
skips, so the deeper layers see the same context at a higher resolution, with the same weights. Done here on the
built network, layer by layer, in the order a forward pass calls them:
- a convolution (a "same"-padded one: padding = dilation × (kernel − 1) / 2) at input stride s ≥ the output
  stride: stride 1, dilation × s / output stride, padding to match;
- a max or average pooling there: DeepLab-LargeFOV's 3×3 pooling at stride 1 (padded 1), dilated likewise.
Anything else that downsamples (a functional pooling call, a patchify convolution without padding) is found by
checking the features' stride afterwards, and refused in one line.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import ModelError, close_matches
from cnnkit.models.registry import TIMM_PREFIX

PROBE = 128  # the side of the input the layers' strides are measured on


def _strides(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, float]]:
    """(name, layer, input stride) of each convolution and pooling of `model.forward_features(example)`, in the
    order it calls them."""
    seen: list[tuple[nn.Module, float]] = []

    def note(module: nn.Module, args: tuple) -> None:
        if not any(m is module for m, _ in seen):
            seen.append((module, example.shape[-1] / args[0].shape[-1]))

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    hooks = [m.register_forward_pre_hook(note) for _, m in layers]
    try:
        with torch.no_grad():
            model.forward_features(example)
    finally:
        for h in hooks:
            h.remove()
    names = {id(m): n for n, m in layers}
    return [(names[id(m)], m, s) for m, s in seen]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def make_atrous(model: nn.Module, output_stride: int, in_chans: int, name: str) -> None:
    """Make `model.forward_features` keep its features at `output_stride` (in place; weights unchanged).
    ModelError (one line, naming `name`) when the network downsamples less, or in a way this cannot undo."""
    example = torch.zeros(1, in_chans, PROBE, PROBE)
    was = model.training
    model.eval()
    with torch.no_grad():
        native = PROBE / model.forward_features(example).shape[-1]
    if native < output_stride:
        hint = "output_stride 8 or " if native >= 8 else ""
        raise ModelError(f"{name} downsamples {native:.3g}× in all; output_stride {output_stride} needs a backbone "
                         f"that downsamples at least {output_stride}× (choose {hint}another backbone)")
    for layer_name, layer, s_in in _strides(model, example):
        if s_in < output_stride:
            continue
        rate = int(round(s_in / output_stride))
        if isinstance(layer, nn.Conv2d) and layer.padding == "same":  # stride 1 by torch's rule: torch pads it
            layer.dilation = tuple(di * rate for di in _pair(layer.dilation))
            continue
        if isinstance(layer, nn.Conv2d):
            k, d, p = _pair(layer.kernel_size), _pair(layer.dilation), _pair(layer.padding) \
                if not isinstance(layer.padding, str) else (-1, -1)
            if any(ki > 1 and pi != di * (ki - 1) // 2 for ki, di, pi in zip(k, d, p)) or any(ki % 2 == 0 for ki in k):
                if _pair(layer.stride) == (1, 1) and all(ki == 1 for ki in k):
                    continue
                raise ModelError(f"{name} cannot be made atrous: its layer {layer_name} ({k[0]}×{k[1]} convolution, "
                                 f"padding {layer.padding}) is not a 'same'-padded odd window")
            layer.stride = (1, 1)
            layer.dilation = tuple(di * rate for di in d)
            layer.padding = tuple(di * rate * (ki - 1) // 2 for di, ki in zip(d, k))
            layer._reversed_padding_repeated_twice = [p for pi in reversed(layer.padding) for p in (pi, pi)]
        elif _pair(layer.stride) != (1, 1):  # a downsampling pooling: DeepLab-LargeFOV's 3×3 at stride 1
            parent, _, attr = layer_name.rpartition(".")
            holder = model.get_submodule(parent) if parent else model
            # torch's pooling pads at most half its (undilated) window: pad first (-inf for max: padding never wins)
            replacement = nn.Sequential(nn.ConstantPad2d(rate, float("-inf")), nn.MaxPool2d(3, 1, 0, rate)) \
                if isinstance(layer, nn.MaxPool2d) else nn.AvgPool2d(3, 1, 1, count_include_pad=False) if rate == 1 \
                else None
            if replacement is None:
                raise ModelError(f"{name} cannot be made atrous: its average pooling {layer_name} would need dilation")
            setattr(holder, attr, replacement)
    with torch.no_grad():
        got = PROBE / model.forward_features(example).shape[-1]
    model.train(was)
    if got != output_stride:
        raise ModelError(f"{name} cannot be made atrous at output stride {output_stride}: it still downsamples "
                         f"{got:g}× (a pooling or stride outside its convolution and pooling layers)")


class AtrousBackbone(nn.Module):
    """A classifier's features at `output_stride` (`high`), and the last stage's features at stride 4 (`low`,
    for DeepLabv3+'s decoder; None when no stage ends there)."""

    def __init__(self, name: str, in_chans: int, output_stride: int, options: dict | None = None):
        super().__init__()
        from cnnkit.models.base import stage_modules
        from cnnkit.models.registry import create

        options = dict(options or {})
        if name.startswith(TIMM_PREFIX):  # timm dilates its own models (patchify stems and all)
            self._timm(name[len(TIMM_PREFIX):], in_chans, output_stride, options)
            return
        net = create(name, num_classes=10, in_chans=in_chans, img_size=PROBE, **options)
        if not hasattr(net, "forward_features"):
            raise ModelError(f"{name} has no forward_features: it cannot be a DeepLab backbone")
        make_atrous(net, output_stride, in_chans, name)
        example = torch.zeros(1, in_chans, PROBE, PROBE)
        sizes: dict[str, tuple[int, int]] = {}
        hooks = [net.get_submodule(s).register_forward_hook(
            lambda m, a, out, s=s: sizes.__setitem__(s, (PROBE // out.shape[-1], out.shape[1])))
            for s in stage_modules(net) if s]
        net.eval()
        with torch.no_grad():
            high = net.forward_features(example)
        for h in hooks:
            h.remove()
        at4 = [s for s, (stride, _) in sizes.items() if stride == 4]
        self.low_name = at4[-1] if at4 else None
        self.channels = (sizes[self.low_name][1] if self.low_name else 0, high.shape[1])
        for attr in ("fc", "head", "global_pool", "pre_logits"):  # the classifier's head is not used
            if isinstance(getattr(net, attr, None), nn.Module):
                setattr(net, attr, nn.Identity())
        self.net = net
        self.timm = False
        self._low: list[torch.Tensor] = []
        if self.low_name:
            net.get_submodule(self.low_name).register_forward_hook(self._keep_low)  # a bound method: copies keep theirs

    def _keep_low(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self._low.append(out)

    def _timm(self, name: str, in_chans: int, output_stride: int, options: dict) -> None:
        import timm

        if not timm.is_model(name):
            raise ModelError(f"unknown timm model {name!r}{close_matches(name, timm.list_models())}")
        try:
            loaders = sorted(set(options) & {"pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay",
                                             "cache_dir"})
            if loaders:  # weights come from files through --init-from, never from a hub or a pickle
                raise ValueError(f"option {loaders[0]} is not accepted (load weights with --init-from)")
            net = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans,
                                    output_stride=output_stride, **options)
        except Exception as e:  # noqa: BLE001 - timm raises many types for models without dilation support
            raise ModelError(f"timm/{name} cannot be made atrous at output stride {output_stride}: "
                             f"{(str(e).splitlines() or [type(e).__name__])[0][:160]}") from None
        reductions = net.feature_info.reduction()
        self.low_index = max((i for i, r in enumerate(reductions) if r == 4), default=None)
        self.low_name = net.feature_info.module_name()[self.low_index] if self.low_index is not None else None
        channels = net.feature_info.channels()
        self.channels = (channels[self.low_index] if self.low_index is not None else 0, channels[-1])
        self.net = net
        self.timm = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.timm:
            feats = self.net(x)
            return (feats[self.low_index] if self.low_index is not None else None), feats[-1]
        self._low.clear()
        high = self.net.forward_features(x)
        low = self._low[-1] if self._low else None
        self._low.clear()
        return low, high
