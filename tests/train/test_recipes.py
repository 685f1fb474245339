"""Each model family trains with its own paper recipe, and that recipe lowers the loss from the start."""

from __future__ import annotations

import pytest

from cnnkit.models.registry import get_entry, list_models
from cnnkit.train import FAMILY_RECIPES, family_recipe, fit, resolve_config

# one model per small-input family, shrunk (same blocks, fewer channels or layers) so 50 steps take seconds
FAMILIES = {
    "resnet": ("resnet20", {}),
    "pyramidnet": ("pyramidnet", {"depth": 20, "alpha": 12}),
    "vgg": ("vgg8_bn_mini", {"width": 0.25, "fc_width": 64}),
    "tinyvgg": ("tinyvgg", {}),
    "inception": ("inception_v4_mini", {"depths": [1, 1, 1]}),
    "mobilenet": ("mobilenet_v2_mini", {"width": 0.25}),
    "convnext": ("convnext_mini", {"dims": [16, 32, 64, 128], "depths": [1, 1, 2, 1]}),
    "inception_next": ("inception_next_mini", {"dims": [16, 32, 64, 128], "depths": [1, 1, 2, 1]}),
    "nin": ("nin3", {"width": 0.125}),
}


def test_every_small_input_model_has_a_family_recipe_of_its_paper():
    for name in list_models():
        entry = get_entry(name)
        recipe = family_recipe(name, entry.family)
        assert recipe.name != "generic", name
        assert recipe.name in FAMILIES or recipe.name == "resnet", name
    assert {r.name for r in FAMILY_RECIPES.values()} >= set(FAMILIES)


@pytest.mark.parametrize("model, optimizer, lr, wd, recipe", [
    ("convnext_mini", "adamw", 1.5e-3, 0.05, "convnext"),
    ("inception_next_mini", "adamw", 1.5e-3, 0.05, "inception_next"),  # the longest name prefix wins
    ("resnet20", "sgd", 0.1, 5e-4, "resnet"),
    ("mobilenet_v2_mini", "rmsprop", 0.004, 4e-5, "mobilenet"),
    ("inception_v4_mini", "rmsprop", 0.045, 4e-5, "inception"),
    ("timm/convnext_atto", "adamw", 1.5e-3, 0.05, "convnext"),
    ("timm/efficientnet_b0", "adamw", 1e-3, 0.05, "generic"),
    ("retinanet_small", "adamw", 1e-3, 1e-4, "detection"),
])
def test_another_model_than_the_recipes_own_gets_its_family_recipe(model, optimizer, lr, wd, recipe):
    cfg = resolve_config({"model": model, "data": "sample"})
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.model_recipe) == (optimizer, lr, wd, recipe)
    assert cfg.epochs == 5 and cfg.augment.hflip  # how long and how to augment still come from the dataset


def test_the_recipes_own_model_keeps_its_tuned_settings_and_options_win():
    cfg = resolve_config({"data": "sample"})
    assert (cfg.model, cfg.lr, cfg.model_recipe) == ("resnet9", 0.2, "fast:mnist-like")
    cfg = resolve_config({"model": "convnext_mini", "lr": 5e-4, "weight_decay": 0.01})
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("adamw", 5e-4, 0.01)
    # another optimizer than the recipe's, without a rate: that optimizer's own default rate and decay
    cfg = resolve_config({"model": "resnet20", "optimizer": "adamw"})
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("adamw", 1e-3, 0.05)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_recipe_lowers_the_loss_over_its_first_50_steps(family, tmp_path):
    model, options = FAMILIES[family]
    # 50 steps: 5 epochs of 10 batches of 32, validated on 100 images; the optimization is the family's default
    # recipe (precision and layout fixed: measuring them is tested elsewhere)
    result = fit(model=model, model_kwargs=options, data="sample", train_images=320, batch_size=32, epochs=5,
                 val_fraction=0.02, tta=False, amp="off", channels_last=True, out=str(tmp_path / family),
                 progress=False)
    assert result.config.model_recipe == family
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.85 * losses[0], losses
    assert result.best_val_acc > 0.2  # 10 classes: chance is 0.1 (50 steps leave BatchNorm statistics rough)


def test_precision_and_layout_are_measured_once_per_model_and_machine_then_read_from_the_cache(monkeypatch,
                                                                                             tmp_path):
    import torch

    from cnnkit.models import create
    from cnnkit.train import layout

    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path))
    timed = []
    speed = {"fp32-nchw": 0.015, "fp32-channels_last": 0.010, "bf16-nchw": 0.012, "bf16-channels_last": 0.020}

    def fake_step(model, opt, x, y, device, amp):
        label = layout._label(amp, x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1)
        timed.append(label)
        # a spell of contention from another process: the winner's first timed step takes 100× as long
        return speed[label] * (100 if label == "fp32-channels_last" and timed.count(label) == 2 else 1)

    monkeypatch.setattr(layout, "_step", fake_step)
    model = create("resnet9", 10, 3, width=4)
    cpu = torch.device("cpu")
    args = (model, "resnet9", {"width": 4}, (3, 28, 28), 256, cpu)
    # a CPU with native bf16: all four candidates, and fp32 channels-last (the fastest) wins
    monkeypatch.setattr(layout, "native_bf16_cpu", lambda: True)
    dtype, last, prec, lay = layout.choose_execution(*args, "auto", "auto")
    steps = 1 + layout.TIMED_ROUNDS  # a warm-up step, then one per round
    assert (dtype, last) == (None, True) and len(timed) == 4 * steps
    # against the other precision at its own fastest layout (bf16 NCHW's 12 ms), not at the winner's (20 ms)
    assert prec == "float32 (measured 1.20× faster than bfloat16 autocast; the CPU has native bf16)"
    assert lay == "channels-last (measured 1.50× faster than NCHW)"
    assert layout.choose_execution(*args, "auto", "auto")[3].startswith("channels-last (measured (cached)")
    assert len(timed) == 4 * steps  # not measured again
    # a CPU that only emulates bf16 (mocked flags): bf16 is never a candidate, whatever it would measure
    monkeypatch.setattr(layout, "native_bf16_cpu", lambda: False)
    speed["bf16-nchw"] = 0.001
    dtype, last, prec, _ = layout.choose_execution(model, "resnet9", {"width": 8}, (3, 28, 28), 256, cpu, "auto",
                                                   "auto")
    assert dtype is None and "no native bf16" in prec and not any(t.startswith("bf16") for t in timed[4 * steps:])
    # explicit choices are kept; a GPU takes channels-last without measuring
    assert layout.choose_execution(*args, "off", False)[:2] == (None, False)
    assert layout.choose_execution(*args, "bf16", "auto")[0] == torch.bfloat16


def test_train_says_and_records_what_auto_chose(trained_run):
    import yaml

    saved = yaml.safe_load((trained_run.run_dir / "config.yaml").read_text())
    assert saved["channels_last"] == "auto"
    assert saved["chosen"]["layout"].split(" ")[0] in ("channels-last", "NCHW")
    assert "float32" in saved["chosen"]["precision"] or "bfloat16" in saved["chosen"]["precision"]


def test_a_model_that_onednn_would_corrupt_channels_last_trains_nchw():
    """oneDNN's channels-last backward of a strided 1×1 convolution with few input channels writes past its
    workspace (uxlfoundation/oneDNN#6035: a crash on some CPUs, wrong gradients on others): such a model trains
    NCHW whatever the layout option says, and the note names the layer."""
    import torch
    import torch.nn as nn

    from cnnkit.runtime import nhwc_training_hazard
    from cnnkit.train import layout

    risky = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 1, stride=2))
    safe = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 1, stride=2), nn.Conv2d(8, 8, 1))
    assert nhwc_training_hazard(safe) is None
    assert "1 has 8 input channels" in nhwc_training_hazard(risky)
    frozen = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2).requires_grad_(False))  # no weight gradient: no backward
    assert nhwc_training_hazard(frozen) is None
    for option in ("auto", True):
        dtype, last, _, note = layout.choose_execution(risky, "risky", {}, (1, 16, 16), 8, torch.device("cpu"), "off",
                                                       option)
        assert (dtype, last) == (None, False) and note.startswith("NCHW (not channels-last: its strided 1×1")
