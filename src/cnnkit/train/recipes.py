"""Optimization recipes per model family: each family's paper recipe, scaled to small inputs and short runs.

A dataset recipe (`config.RECIPES`) says how long to train and how to augment, and was tuned for its own
model (resnet9). When the user trains another model, that model's family recipe replaces the dataset
recipe's optimization settings (optimizer, learning rate, weight decay, schedule, warm-up, clipping), so a
ConvNeXt is trained as ConvNeXt was trained and not with ResNet-9's SGD at lr 0.2.

Scaling rules, the same for every family: the paper's optimizer and (for long runs' 1e-4, the 5e-4 short
runs need) weight decay; the paper's batch where it fits a small dataset, else 128, with the learning rate
rescaled to it (linearly for SGD, as Goyal et al. 2017; AdamW and RMSProp by what short runs tolerate, noted
per family); the paper's warm-up as about the same share of a 10-epoch run; a step or exponential decay
replaced by a one-cycle or cosine schedule, which reaches a good model in few epochs. Each was checked on
the bundled sample with `--epochs 10` (benchmarks/recipes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

@dataclass(frozen=True)
class FamilyRecipe:
    """A model family's default optimization settings, with where they come from."""

    name: str
    settings: dict[str, Any]
    paper: str  # what the paper used
    scaled: str  # how it was scaled to small inputs and short runs
    models: tuple[str, ...] = field(default=())  # name prefixes (cnnkit and timm) that use it

    def describe(self) -> str:
        s = self.settings
        parts = [f"batch {s['batch_size']}", s["optimizer"] + (" (Nesterov)" if s["optimizer"] == "sgd" else ""),
                 f"lr {s['lr']:g}",
                 f"weight decay {s['weight_decay']:g}", s["schedule"], f"warm-up {s['warmup_epochs']:g} epoch(s)"]
        if s.get("opt_eps") is not None:
            parts.append(f"eps {s['opt_eps']:g}")
        if s.get("grad_clip"):
            parts.append(f"gradient clipping {s['grad_clip']:g}")
        return ", ".join(parts)


def _sgd(batch: int, lr: float, wd: float, warmup: float = 1.0, clip: float = 0.0) -> dict[str, Any]:
    return dict(batch_size=batch, optimizer="sgd", lr=lr, momentum=0.9, weight_decay=wd, opt_eps=None, schedule="onecycle",
                warmup_epochs=warmup, grad_clip=clip)


def _adamw(batch: int, lr: float, wd: float, warmup: float = 1.0, clip: float = 0.0) -> dict[str, Any]:
    return dict(batch_size=batch, optimizer="adamw", lr=lr, momentum=0.9, weight_decay=wd, opt_eps=None, schedule="cosine",
                warmup_epochs=warmup, grad_clip=clip)


FAMILY_RECIPES: dict[str, FamilyRecipe] = {r.name: r for r in [
    FamilyRecipe(
        "resnet", _sgd(128, 0.1, 5e-4),
        "He et al. 2016 (CIFAR): SGD, momentum 0.9, lr 0.1 at batch 128, weight decay 1e-4, lr ÷10 at 50% and 75%",
        "the paper's batch and rate; one-cycle instead of steps; weight decay 5e-4, which short runs need (as in "
        "Page's DAWNBench ResNet)",
        ("resnet", "preact_resnet", "ecaresnet", "seresnet", "resnext", "wide_resnet")),
    FamilyRecipe(
        "pyramidnet", _sgd(128, 0.1, 5e-4),
        "Han et al. 2017: SGD with Nesterov momentum 0.9, lr 0.1 at batch 128, weight decay 1e-4, steps",
        "as the ResNet family", ("pyramidnet",)),
    FamilyRecipe(
        "vgg", _sgd(128, 0.05, 5e-4),
        "Simonyan & Zisserman 2015: SGD, momentum 0.9, lr 0.01 at batch 256, weight decay 5e-4, ÷10 on plateau",
        "batch 128; with BatchNorm (the _bn models) the rate can be 5× higher than the paper's, 0.05; one-cycle",
        ("vgg",)),
    FamilyRecipe(
        "tinyvgg", _adamw(32, 5e-3, 1e-4, clip=1.0),
        "Wang et al. 2020 (CNN Explainer) trained TinyVGG with Adam; the network has no normalization layer",
        "AdamW at lr 5e-3 (2e-3 reached 81% on the sample in 10 epochs, 5e-3 84%), batch 32 (a 4,400-parameter "
        "network needs many steps more than large batches), warm-up and cosine; gradient clipping at norm 1, "
        "since without normalization SGD at the ResNet rate collapsed it to one class", ("tinyvgg",)),
    FamilyRecipe(
        "convnext", _adamw(128, 1.5e-3, 0.05),
        "Liu et al. 2022: AdamW, lr 4e-3 at batch 4096, weight decay 0.05, 20 warm-up epochs of 300, cosine",
        "lr 1.5e-3 at batch 128 (the square-root rule from 4096 gives 7e-4; short runs tolerate twice that); "
        "warm-up 1 epoch of 10", ("convnext",)),
    FamilyRecipe(
        "inception_next", _adamw(128, 1.5e-3, 0.05),
        "Yu et al. 2024: ConvNeXt's recipe (AdamW, lr 4e-3 at batch 4096, weight decay 0.05, warm-up, cosine)",
        "as the ConvNeXt family", ("inception_next",)),
    FamilyRecipe(
        "mobilenet", dict(batch_size=96, optimizer="rmsprop", lr=0.004, momentum=0.9, weight_decay=4e-5, opt_eps=1e-3,
                          schedule="cosine", warmup_epochs=1.0, grad_clip=0.0),
        "Sandler et al. 2018: RMSProp (decay 0.9, momentum 0.9), lr 0.045 at batch 96, weight decay 4e-5, "
        "lr ×0.98 per epoch",
        "TensorFlow-style RMSProp (eps 1e-3, as timm's MobileNet recipes) at batch 96; lr 0.004: at 0.016 "
        "BatchNorm's running statistics could not follow the weights in a short run (validation at chance for "
        "two epochs while training accuracy rose); cosine after 1 warm-up epoch instead of the slow "
        "exponential decay", ("mobilenet",)),
    FamilyRecipe(
        "inception", dict(batch_size=64, optimizer="rmsprop", lr=0.045, momentum=0.9, weight_decay=4e-5, opt_eps=1.0,
                          schedule="cosine", warmup_epochs=1.0, grad_clip=2.0),
        "Szegedy et al. 2017: RMSProp (decay 0.9, eps 1.0), lr 0.045, ×0.94 every 2 epochs, gradient clipping "
        "at 2.0",
        "the paper's optimizer, rate, eps and clipping, at batch 64; cosine after 1 warm-up epoch instead of "
        "the exponential decay", ("inception",)),
    FamilyRecipe(
        "nin", _sgd(128, 0.1, 5e-4),
        "Gidaris et al. 2018 (RotNet's NIN on CIFAR-10): SGD, momentum 0.9, lr 0.1 at batch 128, weight decay "
        "5e-4, lr ×0.2 at epochs 30, 60 and 80 of 100",
        "the paper's optimizer, batch, rate and weight decay; one-cycle instead of the steps", ("nin",)),
    FamilyRecipe(
        "segmentation", dict(_adamw(32, 3e-3, 1e-4), schedule="onecycle"),
        "the papers trained on Pascal VOC / Cityscapes crops with SGD (FCN: lr 1e-4 unnormalized; DeepLabv3: lr "
        "0.007 at batch 16, 'poly' decay, 30k iterations; U-Net: SGD, momentum 0.99, batch 1)",
        "AdamW at lr 3e-3, batch 32, weight decay 1e-4, one-cycle: the fashion-scenes recipe's settings, which "
        "reach a usable model in a few epochs from scratch (no ImageNet encoder at hand)",
        ("unet", "deeplab", "fcn", "lraspp", "smp")),
    FamilyRecipe(
        "detection", dict(_adamw(32, 1e-3, 1e-4, clip=1.0), schedule="onecycle"),
        "the papers trained on COCO from ImageNet backbones with SGD (RetinaNet and FCOS: lr 0.01 at batch 16, "
        "momentum 0.9, weight decay 1e-4, 90k iterations, ÷10 at 60k and 80k; SSD: lr 1e-3 at batch 32)",
        "AdamW at lr 1e-3, batch 32, weight decay 1e-4, one-cycle, gradient clipping at norm 1: from scratch on "
        "fashion-scenes, FCOS reached 0.46 validation mAP in a 5-minute budget with these settings against 0.33 "
        "with the generic recipe's batch 128 and weight decay 0.05 (one seed each, a screening run)",
        ("retinanet", "fcos", "ssd", "fasterrcnn")),
    FamilyRecipe(
        "restoration", _adamw(16, 1e-3, 0.0, warmup=0.0),
        "SRCNN: SGD at lr 1e-4 (1e-5 for the last layer), MSE; ESPCN: lr 0.01 down to 1e-4, MSE; EDSR: Adam at lr "
        "1e-4, batch 16, L1, halved every 200k steps; DnCNN: SGD at lr 0.1 down to 1e-4, batch 128, MSE",
        "AdamW at lr 1e-3 (short runs), batch 16, no weight decay, cosine without warm-up (none of the papers warms "
        "up; a photograph set's epoch is long, and a 1-epoch warm-up took half of a 10-minute DnCNN run); each "
        "paper's loss (cnnkit.tasks.restore)", ("srcnn", "espcn", "edsr", "dncnn", "cbdnet")),
    FamilyRecipe(
        "generic", _adamw(128, 1e-3, 0.05, clip=1.0),
        "no family recipe: a conservative default for models cnnkit has no paper recipe for",
        "AdamW, lr 1e-3, weight decay 0.05, warm-up and cosine, gradient clipping at norm 1", ()),
]}


def _registry_family(model: str) -> str | None:
    from cnnkit.models.registry import TIMM_PREFIX, get_entry

    if model.startswith(TIMM_PREFIX):
        return None
    try:
        return get_entry(model).family
    except Exception:  # an unknown name is reported when the model is built, with close matches
        return None


def family_recipe(model: str, family: str | None = None) -> FamilyRecipe:
    """The recipe of `model` (a cnnkit name or timm/<name>); `family` is its registry family (looked up when not
    given)."""
    name = model.split("/", 1)[-1]
    best: tuple[int, FamilyRecipe] | None = None
    for recipe in FAMILY_RECIPES.values():
        for prefix in recipe.models:
            if name.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), recipe)
    if best is not None:
        return best[1]
    family = family or _registry_family(model)
    if family:
        key = family.split(" ")[0]
        if key in FAMILY_RECIPES:
            return FAMILY_RECIPES[key]
    return FAMILY_RECIPES["generic"]
