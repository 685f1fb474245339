"""segmentation_models_pytorch architectures on smp and timm encoders: the same network as smp builds, atrous
output stride as asked, any input size, bad encoders refused in one line."""

from __future__ import annotations

import pytest
import torch

import cnnkit.models as models
from cnnkit.cli import main
from cnnkit.errors import ModelError

smp = pytest.importorskip("segmentation_models_pytorch")


@pytest.mark.parametrize("ours,theirs,kw,theirs_kw", [
    ("smp_deeplabv3plus", "DeepLabV3Plus", {"encoder": "timm/resnet18", "output_stride": 8},
     {"encoder_name": "tu-resnet18", "encoder_output_stride": 8}),
    ("smp_deeplabv3", "DeepLabV3", {"encoder": "resnet18", "output_stride": 16},
     {"encoder_name": "resnet18", "encoder_output_stride": 16}),
    ("smp_unet", "Unet", {"encoder": "timm/resnet18", "encoder_depth": 4},
     {"encoder_name": "tu-resnet18", "encoder_depth": 4, "decoder_channels": (256, 128, 64, 32)}),
    ("smp_fpn", "FPN", {"encoder": "resnet18"}, {"encoder_name": "resnet18"}),
])
def test_same_network_as_smp_builds(ours, theirs, kw, theirs_kw):
    """cnnkit's model is smp's with the same weights: equal logits on an input smp accepts."""
    torch.manual_seed(0)
    mine = models.create(ours, num_classes=5, in_chans=1, img_size=64, **kw).eval()
    ref = getattr(smp, theirs)(encoder_weights=None, in_channels=1, classes=5, **theirs_kw).eval()
    ref.load_state_dict(mine.net.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(mine(x), ref(x))


@pytest.mark.parametrize("stride", [8, 16])
def test_deeplab_encoder_is_atrous_at_the_output_stride(stride):
    """DeepLab on a timm ResNet: the deepest features stay at 1/stride of the input (the later stages dilated,
    not strided), as DeepLabv3's output stride is defined; the network's own dilations show it."""
    net = models.create("smp_deeplabv3", num_classes=3, in_chans=3, img_size=96, encoder="timm/resnet18",
                        output_stride=stride).eval()
    with torch.no_grad():
        deepest = net.net.encoder(torch.randn(1, 3, 96, 96))[-1]
    assert deepest.shape[-2:] == (96 // stride, 96 // stride)
    dilations = {m.dilation[0] for m in net.net.encoder.modules() if isinstance(m, torch.nn.Conv2d)}
    assert max(dilations) == 32 // stride  # rates 2 (OS 16: the last stage) or 4 (OS 8: the last two, 2 then 4)


def test_any_input_size_gives_logits_at_that_size():
    """A side that is not a multiple of the network's stride: padded inside, logits at the input's size, and
    where the size is a multiple nothing changes (equal to the unpadded network's)."""
    net = models.create("smp_unet", num_classes=4, in_chans=1, img_size=64, encoder="resnet18").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 75, 131)).shape == (1, 4, 75, 131)
        x = torch.randn(1, 1, 64, 96)
        assert torch.equal(net(x), net.net(x))


def test_models_list_names_them_as_segmentation():
    seg = models.list_models(task="segment")
    assert {"smp_unet", "smp_fpn", "smp_pspnet", "smp_deeplabv3", "smp_deeplabv3plus", "smp_upernet"} <= set(seg)
    assert not set(seg) & set(models.list_models(task="classify"))


@pytest.mark.parametrize("kw,says", [
    ({"encoder": "resnet19"}, "unknown encoder 'resnet19'"),
    ({"encoder": "timm/resnet1800"}, "unknown timm encoder 'resnet1800'"),
    ({"output_stride": 32}, "output_stride must be 8 or 16"),
])
def test_bad_encoder_options_are_one_line(kw, says):
    with pytest.raises(ModelError, match=says) as e:
        models.create("smp_deeplabv3plus", num_classes=3, in_chans=1, img_size=64, **kw)
    assert "\n" not in str(e.value)


def test_cli_refuses_an_unknown_encoder_in_one_line(capsys):
    code = main(["train", "--model", "smp_unet", "--model-kw", "encoder=resnet19", "--data", "fashion-scenes",
                 "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown encoder 'resnet19'" in err and "resnet18" in err  # with the close match
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_then_export_any_size(tmp_path, capsys):
    """The user's flow on an smp model: train on fashion-scenes, export ONNX with dynamic height and width; the
    artifact's masks agree with PyTorch's at a size that is not a multiple of the network's stride."""
    import numpy as np

    from cnnkit.artifacts.kinds import load

    run_dir = tmp_path / "run"
    code = main(["train", "--model", "smp_unet", "--model-kw", "encoder=resnet18", "--model-kw", "encoder_depth=3",
                 "--data", "fashion-scenes", "--epochs", "1", "--train-images", "32", "--val-fraction", "0.01",
                 "--batch-size", "16", "--no-tta", "--no-channels-last", "--out", str(run_dir), "--quiet"])
    assert code == 0, capsys.readouterr().err
    code = main(["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert code == 0, capsys.readouterr().err
    x = torch.rand(2, 1, 75, 131)
    with torch.no_grad():
        want = load(run_dir).model.eval()(x).numpy()
        got = load(tmp_path / "m.onnx").model(x).numpy()
    assert got.shape == (2, 11, 75, 131)
    assert np.abs(got - want).max() < 1e-3
