"""One entry point for every model: cnnkit's small-input families and every timm model as `timm/<name>`."""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from cnnkit.errors import ModelError, close_matches

TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder and what it needs."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    min_size: int  # smallest input side the network's down-sampling allows
    paper: str
    shared: tuple[str, ...] = ()  # shared options (layers.COMMON_OPTIONS) the builder takes through **options
    default_input: str = "1x28x28"  # C×H×W a model card uses when none is given
    imagenet: bool = False  # an ImageNet-size original (built by timm) rather than a small-input family
    task: str = "classify"  # what its outputs are (cnnkit.tasks): classes, or a class per pixel (segment)

    def options(self) -> list[str]:
        """Keyword options the builder accepts beyond num_classes, in_chans and img_size."""
        params = inspect.signature(self.builder).parameters
        own = [p for p, v in params.items() if p not in ("num_classes", "in_chans", "img_size")
               and v.kind is not inspect.Parameter.VAR_KEYWORD]
        return own + [o for o in self.shared if o not in own]

    def defaults(self) -> dict[str, object]:
        """Default values of the builder's own options."""
        params = inspect.signature(self.builder).parameters
        return {p: v.default for p, v in params.items() if v.default is not inspect.Parameter.empty
                and p not in ("num_classes", "in_chans", "img_size")}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(family: str, min_size: int, paper: str = "", shared: tuple[str, ...] = (),
                   default_input: str = "1x28x28", imagenet: bool = False, task: str = "classify") -> Callable:
    """Decorator: register a builder `fn(num_classes, in_chans, img_size, **options)` under its name.

    `shared` names the shared options (attention, stochastic depth, DropBlock, head, ...) the builder accepts.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, family, min_size, paper, tuple(shared),
                                            default_input, imagenet, task)
        return fn

    return wrap


def get_entry(name: str) -> ModelEntry:
    """The registry entry of a cnnkit model (not timm)."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}{close_matches(name, _REGISTRY)}; "
                         f"see `cnnkit models list` (timm models are named timm/<name>)")
    return _REGISTRY[name]


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def list_models(pattern: str | None = None, include_timm: bool = False, task: str | None = "classify") -> list[str]:
    """Registered model names of `task` (None: every task) matching a shell-style pattern; timm's classifiers
    as `timm/<name>` when asked."""
    names = sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)
    if include_timm and task in (None, "classify"):
        names += [TIMM_PREFIX + n for n in _timm_names()]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or pattern in n]
    return names


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _option_problem(key: str, value: object, default: object) -> str | None:
    """What is wrong with `value` for option `key` (whose builder default is `default`), or None when it fits."""
    from cnnkit.models.layers import ATTENTION, HEADS

    def need(what: str) -> str:
        return f"model option {key}={value!r} is not valid: give {what}"

    if key in ("drop", "drop_path", "drop_block"):
        return None if _is_number(value) and 0 <= value < 1 else f"{key} must be in [0, 1), got {value!r}"
    if key == "attn":
        return None if value is None or value in ("none", *ATTENTION) else \
            f"unknown attention {value!r}; choose one of: none, {', '.join(ATTENTION)}"
    if key == "head":
        return None if value in HEADS else f"unknown head {value!r}; choose one of: {', '.join(HEADS)}"
    if key == "mixer":
        return None if value in ("inception", "dw7") else need("inception or dw7")
    if key == "ibn" or isinstance(default, bool):
        return None if isinstance(value, bool) else need("true or false")
    if key == "alpha":
        return None if _is_number(value) and value >= 0 else need("a non-negative number, e.g. 48")
    if key == "eca_kernel_sizes":
        ok = value is None or (isinstance(value, (list, tuple)) and len(value) == 4
                               and all(_is_int(k) and k > 0 and k % 2 for k in value))
        return None if ok else need("four odd kernel sizes, one per stage, e.g. [3, 5, 5, 7]")
    if key in ("strides", "focal_gamma", "focal_alpha"):  # the detectors check these themselves, in one line
        return None
    if isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(_is_int(v) and v > 0 for v in value)
        return None if ok else need(f"{len(default)} positive integers, e.g. {list(default)}")
    if _is_int(default) or key in ("drop_block_size", "depth", "hidden", "fc_width"):
        return None if _is_int(value) and value > 0 else \
            need(f"a positive integer, e.g. {default if _is_int(default) else 3}")
    if _is_number(default):
        return None if _is_number(value) and value > 0 else need(f"a positive number, e.g. {default}")
    return None


def check_options(name: str, options: dict[str, object]) -> None:
    """ModelError unless every option is one cnnkit model `name` takes, with a value of the right kind and range
    (checked here, before anything is built, so a wrong value never surfaces as an error deep inside torch)."""
    entry = get_entry(name)
    accepted = entry.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        shown = ", ".join(str(k) if str(k).isprintable() else repr(k) for k in unknown)  # one line, whatever the key
        raise ModelError(f"model {name!r} does not support option(s) {shown}"
                         f"{close_matches(unknown[0], accepted)}; it accepts: {', '.join(accepted) or 'no options'}")
    defaults = entry.defaults()
    for key, value in options.items():
        problem = _option_problem(key, value, defaults.get(key))
        if problem:
            raise ModelError(f"{name}: {problem} (see `cnnkit models info {name}`)")


def create(name: str, num_classes: int = 10, in_chans: int = 3, img_size: int | tuple[int, int] | None = None,
           **options) -> nn.Module:
    """Build model `name` with a fresh `num_classes` head for `in_chans`-channel inputs of `img_size`."""
    size = img_size if isinstance(img_size, int) or img_size is None else min(img_size)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX):], num_classes, in_chans, img_size, **options)
    entry = get_entry(name)
    check_options(name, options)
    if size is not None and size < entry.min_size:
        raise ModelError(f"input {size}×{size} is too small for {name}: its down-sampling needs at least "
                         f"{entry.min_size}×{entry.min_size}")
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **options)
    model.num_classes = num_classes
    return model


def _create_timm(name: str, num_classes: int, in_chans: int, img_size: int | tuple[int, int] | None = None,
                 **options) -> nn.Module:
    import timm
    import torch

    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r}{close_matches(name, _timm_names())}")
    options.pop("pretrained", None)  # weights come from local files (--init-from), never from a hub
    # timm loads `checkpoint_path` with torch.load, unpickling whatever the file holds; the others point timm at
    # files or hubs of weights. Weights enter through --init-from (safetensors, or tensors only)
    loaders = sorted(set(options) & {"checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})
    if loaders:
        raise ModelError(f"model option {loaders[0]} is not accepted (it makes timm load files itself); load "
                         f"weights with --init-from PATH (.safetensors, or a .pth of plain tensors)")
    for key, value in options.items():  # timm stores rates unchecked and fails on them only when it runs
        if key.endswith("_rate") and not (_is_number(value) and 0 <= value < 1):
            raise ModelError(f"model option {key}={value!r} is not valid for timm/{name}: give a number in [0, 1)")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **options)
    except (TypeError, ValueError, AssertionError) as e:  # timm's builders reject bad keyword values this way
        raise ModelError(f"timm model {name!r} does not accept these options: {str(e).splitlines()[0]}") from None
    if img_size is not None:
        # Some timm models (ViTs with fixed position embeddings, ...) take only the size they were built for;
        # find out now with one small forward pass rather than deep inside training or evaluation.
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, in_chans, h, w))
        except (RuntimeError, AssertionError, ValueError) as e:  # what torch and timm raise on a wrong shape
            built = model.pretrained_cfg.get("input_size") if hasattr(model, "pretrained_cfg") else None
            hint = f" (it was built for {'×'.join(map(str, built))})" if built else ""
            raise ModelError(f"timm/{name} cannot take {in_chans}×{h}×{w} inputs{hint}: "
                             f"{str(e).splitlines()[0][:160].rstrip('.')}; choose a convolutional model or resize the "
                             f"images to its size") from None
        finally:
            model.train(was_training)
    return model
