from __future__ import annotations

import pytest

from cnnkit.errors import ConfigError
from cnnkit.train import RECIPES, TrainConfig, resolve_config


def test_recipe_sets_defaults_and_user_options_win():
    cfg = resolve_config({"data": "fashion-mnist", "recipe": "long", "epochs": 3})
    assert cfg.epochs == 3
    assert cfg.ema == RECIPES["long"]["mnist-like"]["ema"]
    assert cfg.augment.crop_padding == RECIPES["long"]["mnist-like"]["augment"]["crop_padding"]
    cfg = resolve_config({"data": "sample", "augment": {"mixup": 0.2}})
    assert cfg.augment.mixup == 0.2 and cfg.augment.hflip  # merged into the recipe's augmentation


def test_recipe_model_options_apply_only_to_the_recipe_model():
    cfg = resolve_config({"data": "sample", "model": "resnet20"})
    assert cfg.model == "resnet20" and cfg.model_kwargs == {}
    assert resolve_config({"data": "sample"}).model_kwargs == RECIPES["fast"]["mnist-like"]["model_kwargs"]


def test_round_trip_through_dict():
    cfg = resolve_config({"data": "cifar10", "recipe": "fast"})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad,match", [
    ({"recipe": "fastest"}, "did you mean: fast"),
    ({"optimizer": "adam"}, "optimizer must be"),
    ({"lr": -1.0}, "learning rate must be positive"),
    ({"ema": 1.0}, "EMA decay"),
    ({"augment": {"policy": "autoaugment"}}, "unknown augmentation policy"),
    ({"epoch": 3}, "unknown training option"),
])
def test_bad_options_are_clear_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(bad)


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    """oneDNN reports bf16 'supported' where it only emulates it (several times slower than fp32): `auto`
    follows the CPU's own flags instead."""
    import torch

    import cnnkit.runtime as rt

    cpu = torch.device("cpu")
    cases = [(frozenset({"avx512f", "avx512_vnni"}), None),  # AVX-512 without BF16: emulated, so fp32
             (frozenset({"avx512f", "avx512_bf16"}), torch.bfloat16),
             (frozenset({"amx_bf16"}), torch.bfloat16),
             (frozenset(), None)]  # flags unreadable (not Linux): assume no
    for flags, want in cases:
        monkeypatch.setattr(rt, "cpu_flags", lambda flags=flags: flags)
        assert rt.autocast_dtype("auto", cpu) == want, flags
        assert ("float32" in rt.precision_note("auto", cpu)) == (want is None)
    assert rt.autocast_dtype("bf16", cpu) == torch.bfloat16  # asked for explicitly: always honoured
    assert rt.autocast_dtype("off", cpu) is None
    with pytest.raises(ConfigError, match="amp must be auto, bf16, fp16 or off, got 'fp8'"):
        rt.autocast_dtype("fp8", cpu)  # an unknown precision is refused, not run in float32


def test_the_inference_layout_is_measured_in_the_precision_the_model_will_run_in():
    """A server in bf16 chooses its layout from bf16 passes (the faster layout can differ between precisions),
    and the model is left in the layout chosen."""
    import torch
    import torch.nn as nn

    from cnnkit import runtime as rt

    seen = []
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    last = rt.faster_inference_layout(model, (3, 16, 16), 2, torch.device("cpu"), dtype=torch.bfloat16)
    assert seen and set(seen) == {torch.bfloat16}
    fmt = torch.channels_last if last else torch.contiguous_format
    assert model[0].weight.is_contiguous(memory_format=fmt)
    seen.clear()
    rt.faster_inference_layout(model, (3, 16, 16), 2, torch.device("cpu"))
    assert set(seen) == {torch.float32}
