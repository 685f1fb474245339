"""`cnnkit models info/list`, `--init-from` and the zoo's options inside `fit`."""

from __future__ import annotations

import json

import pytest
import torch

from cnnkit.cli import main
from cnnkit.models.card import count_macs, model_card
from tests.conftest import TINY


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_macs_agree_with_a_count_from_the_layer_shapes():
    card = model_card("resnet20", "3x32x32", timing=False)
    from cnnkit.models import create

    m = create("resnet20", 10, 3)
    shapes = {}
    hooks = [mod.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, o.shape))
             for n, mod in m.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    m.eval()(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    by_hand = 0
    for n, mod in m.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            by_hand += shapes[n].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, torch.nn.Linear):
            by_hand += mod.in_features * mod.out_features
    assert card.macs == by_hand
    assert 40e6 < card.macs < 42e6  # the ~41M usually quoted for ResNet-20 on CIFAR-10
    assert card.stages[-1] == ("stages.2", (64, 8, 8)) and card.params == 269722


def test_imagenet_resnet50_macs():
    from cnnkit.models import create

    assert round(count_macs(create("resnet50", 1000, 3).eval(), torch.randn(1, 3, 224, 224)) / 1e9, 1) == 4.1


def test_models_info_cli(capsys):
    code, out, err = run(capsys, "models", "info", "tinyvgg", "--input", "1x28x28")
    assert code == 0, err
    for text in ("parameters", "MACs", "activation memory", "latency, batch 1", "throughput, batch 64",
                 "features.1", "10×4×4", "hidden"):
        assert text in out
    code, out, err = run(capsys, "models", "info", "resnet20", "--no-timing", "--json", "--model-kw", "attn=eca")
    card = json.loads(out)
    assert code == 0 and card["params"] == 269434 + 27 and card["latency_ms"] is None
    assert "attn" in card["options"] and "ECA" in card["options"]["attn"].upper()


def test_models_info_describes_what_train_builds_for_the_data(capsys):
    """Without --input, the card is of the model `cnnkit train --model NAME` builds for the data: the recipe's
    model options, the data's channels, size and classes; and the settings that run trains with."""
    code, out, err = run(capsys, "models", "info", "resnet9", "--no-timing", "--json")
    card = json.loads(out)
    assert code == 0, err
    assert card["model_kwargs"] == {"width": 16, "pool_first": True} and card["input"] == [1, 28, 28]
    assert card["params"] == 412_666 and card["recipe"] is None  # 0.41 M, not the 6.57 M of width 64
    t = card["training"]
    assert (t["model_recipe"], t["batch_size"], t["lr"], t["warmup_epochs"]) == ("fast:mnist-like", 256, 0.2, 1.5)
    code, out, err = run(capsys, "models", "info", "resnet9", "--no-timing", "--json", "--recipe", "long")
    assert json.loads(out)["model_kwargs"] == {"width": 24, "pool_first": True}
    code, out, err = run(capsys, "models", "info", "nin3", "--no-timing", "--model-kw", "width=0.25")
    assert code == 0, err
    assert "default training recipe (nin family" in out and "batch 128" in out and "width=0.25" in out
    code, out, err = run(capsys, "models", "info", "resnet50", "--no-timing")
    assert code == 2 and "too small for resnet50" in err and "--input" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (("models", "info", "resnet2O"), "did you mean"),
    (("models", "info", "resnet20", "--input", "28x28"), "CxHxW"),
    (("models", "info", "inception_v4_mini", "--input", "1x12x12"), "at least 15×15"),
    (("models", "info", "resnet20", "--model-kw", "attn=cbam"), "unknown attention"),
])
def test_models_info_bad_input(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_models_list_shows_families(capsys):
    code, out, _ = run(capsys, "models", "list", "mini")
    assert code == 0 and "convnext_mini" in out and "inception_next_mini" in out and "resnet20" not in out


def test_fit_with_zoo_options_and_init_from(tmp_path, capsys, trained_run):
    from cnnkit.models.layers import ScheduledDropBlock
    from cnnkit.train import fit
    from cnnkit.artifacts import load

    # DropBlock's schedule and the multi-sample dropout loss run inside the trainer
    rates: list[list[float]] = []

    def record(end) -> None:
        rates.append([m.block.drop_prob for m in end.model.modules() if isinstance(m, ScheduledDropBlock)])

    res = fit(model="resnet20", model_kwargs={"drop_block": 0.1, "head": "msd", "drop_path": 0.1}, data="sample",
              epochs=2, batch_size=128, train_images=512, out=str(tmp_path / "zoo"), progress=False,
              callbacks=[record])
    assert abs(res.train_images - 512) <= 10 and res.history[-1]["train_loss"] > 0  # stratified, per class
    # the rate grows linearly over the run: about halfway after epoch 1, just under the target at the end
    assert rates[0] and all(0.03 < r < 0.06 for r in rates[0]) and all(0.08 < r < 0.1 for r in rates[1])
    # --init-from a previous run: the new run starts from its weights
    code, out, err = run(capsys, "train", *("--model", TINY["model"]), "--model-kw", "width=8", "--data", "sample",
                         "--epochs", "1", "--lr", "1e-12", "--train-images", "256", "--batch-size", "128",
                         "--init-from", str(trained_run.run_dir), "--out", str(tmp_path / "init"), "--quiet")
    assert code == 0, err
    a = load(trained_run.best_checkpoint).model.state_dict()
    b = load(tmp_path / "init").model.state_dict()
    assert torch.allclose(a["layer2.0.0.weight"], b["layer2.0.0.weight"], atol=1e-6)  # tiny lr: still the init
    code, _, err = run(capsys, "train", "--model", "resnet20", "--data", "sample", "--epochs", "1",
                       "--init-from", str(trained_run.run_dir), "--out", str(tmp_path / "bad"), "--quiet")
    # a cnnkit run's weights belong to its architecture: another model is refused, naming the flags to add
    assert code == 2 and "not the resnet20 asked for" in err and "add --model resnet9 --model-kw width=8" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "train", "--model", "resnet9", "--model-kw", "width=16", "--data", "sample",
                       "--epochs", "1", "--init-from", str(trained_run.run_dir), "--out", str(tmp_path / "bad"),
                       "--quiet")
    assert code == 2 and "do not fit resnet9 with width=16" in err and "--model-kw width=8" in err
