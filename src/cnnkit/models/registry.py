"""One entry point for every model: cnnkit's small-input families and every timm model as `timm/<name>`."""

from __future__ import annotations

import fnmatch
import inspect
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
                   default_input: str = "1x28x28", imagenet: bool = False) -> Callable:
    """Decorator: register a builder `fn(num_classes, in_chans, img_size, **options)` under its name.

    `shared` names the shared options (attention, stochastic depth, DropBlock, head, ...) the builder accepts.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, family, min_size, paper, tuple(shared),
                                            default_input, imagenet)
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


def list_models(pattern: str | None = None, include_timm: bool = False) -> list[str]:
    """Registered model names matching a shell-style pattern; timm's as `timm/<name>` when asked."""
    names = sorted(_REGISTRY)
    if include_timm:
        names += [TIMM_PREFIX + n for n in _timm_names()]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or pattern in n]
    return names


def create(name: str, num_classes: int = 10, in_chans: int = 3, img_size: int | tuple[int, int] | None = None,
           **options) -> nn.Module:
    """Build model `name` with a fresh `num_classes` head for `in_chans`-channel inputs of `img_size`."""
    size = img_size if isinstance(img_size, int) or img_size is None else min(img_size)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX):], num_classes, in_chans, **options)
    entry = get_entry(name)
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise ModelError(f"model {name!r} does not support option(s) {', '.join(unknown)}; "
                         f"it accepts: {', '.join(entry.options()) or 'no options'}")
    if size is not None and size < entry.min_size:
        raise ModelError(f"input {size}×{size} is too small for {name}: its down-sampling needs at least "
                         f"{entry.min_size}×{entry.min_size}")
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **options)
    model.num_classes = num_classes
    return model


def _create_timm(name: str, num_classes: int, in_chans: int, **options) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r}{close_matches(name, _timm_names())}")
    options.pop("pretrained", None)  # weights come from local files (--init-from), never from a hub
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **options)
    except TypeError as e:
        raise ModelError(f"timm model {name!r} does not accept these options: {e}") from None
