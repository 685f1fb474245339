"""Atrous backbones: a classifier made to keep output stride 8 or 16 is the network torchvision and timm build
dilated (same weights, same outputs), and what cannot be made atrous is refused in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import cnnkit.models as models
from cnnkit.errors import ModelError
from cnnkit.artifacts import load
from cnnkit.models.atrous import make_atrous


class _Features(nn.Module):
    """torchvision's ResNet up to its last stage, as `forward_features`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


@pytest.mark.parametrize("stride,dilate", [(8, [False, True, True]), (16, [False, False, True])])
def test_same_as_torchvision_replace_stride_with_dilation(stride, dilate):
    """ResNet-50 made atrous here equals torchvision's own dilated ResNet-50 (DeepLabv3's backbone) with the same
    weights: the same features at 1/stride of the input."""
    torch.manual_seed(0)
    ours = _Features(torchvision.models.resnet50(weights=None)).eval()
    theirs = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilate).eval()
    theirs.load_state_dict(ours.net.state_dict())
    make_atrous(ours, stride, 3, "resnet50")
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        got, want = ours.forward_features(x), _Features(theirs).forward_features(x)
    assert got.shape[-2:] == (96 // stride, 64 // stride)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_same_as_timm_output_stride():
    """cnnkit's ImageNet ResNet-18 (built by timm) made atrous here equals timm's own output_stride=8 model."""
    import timm

    torch.manual_seed(0)
    ours = models.create("resnet18", num_classes=10, in_chans=3, img_size=96).eval()
    theirs = timm.create_model("resnet18", pretrained=False, num_classes=10, output_stride=8).eval()
    theirs.load_state_dict(ours.state_dict())
    make_atrous(ours, 8, 3, "resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone,stride,low", [("vgg8_bn_mini", 8, "stages.1"), ("timm/resnet18", 16, "layer1"),
                                                 ("mobilenet_v2_mini", 8, "stages.4")])
def test_deeplab_on_any_backbone(backbone, stride, low):
    """DeepLabv3+ (ASPP and decoder) on a cnnkit or timm backbone: logits at the input's size, the decoder fed by
    the last stage at stride 4, and a gradient reaching the backbone's first layer."""
    net = models.create("deeplab_small", num_classes=5, in_chans=1, img_size=96, backbone=backbone,
                        output_stride=stride, decoder=True)
    x = torch.randn(2, 1, 96, 80)
    y = net(x)
    assert y.shape == (2, 5, 96, 80) and net.backbone.low_name == low
    y.mean().backward()
    first = next(p for p in net.backbone.parameters() if p.ndim == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone,stride,says", [
    ("resnet20", 8, "resnet20 downsamples 4× in all; output_stride 8 needs a backbone that downsamples at least 8×"),
    ("resnet9", 16, "choose output_stride 8 or another backbone"),
    ("timm/resnet1800", 8, "unknown timm model 'resnet1800'"),
    ("resnet2", 8, "unknown model 'resnet2'"),
])
def test_backbones_that_cannot_serve_are_one_line(backbone, stride, says):
    with pytest.raises(ModelError, match=says) as e:
        models.create("deeplab_small", num_classes=5, in_chans=1, img_size=96, backbone=backbone,
                      output_stride=stride)
    assert "\n" not in str(e.value)


def test_a_patchify_layer_is_refused_not_mangled():
    """A 2×2 stride-2 convolution (ConvNeXt's downsampling) has no 'same' dilated form: refused by name."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.Conv2d(8, 8, 2, 2), nn.Conv2d(8, 8, 2, 2), nn.Conv2d(8, 8, 2, 2))
    net.forward_features = net.forward
    with pytest.raises(ModelError, match=r"its layer 3 \(2×2 convolution"):
        make_atrous(net, 8, 1, "patchy")


def test_a_copy_and_an_export_use_their_own_stride_4_features():
    """The decoder's stride-4 features are taken by a hook: a deep copy (as the trainer's layout probe makes) and
    a torch.export program compute the same logits as the model itself."""
    import copy

    net = models.create("deeplab_small", num_classes=5, in_chans=1, img_size=96, backbone="vgg8_bn_mini",
                        output_stride=8, decoder=True).eval()
    x = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        want = net(x)
        torch.testing.assert_close(copy.deepcopy(net)(x), want)
        program = torch.export.export(net, (x,))
        torch.testing.assert_close(program.module()(x), want)


def test_windows_after_the_output_stride_are_dilated_by_the_stride_they_skip():
    """A plain stack of stride-2 convolutions made atrous at 8: the fourth stops striding, and the windows after
    it (explicitly padded, or padding='same') see the input with dilation 2, as DeepLab defines it."""
    net = nn.Sequential(*[nn.Conv2d(1 if i == 0 else 4, 4, 3, 2, 1) for i in range(4)], nn.Conv2d(4, 4, 3, padding=1),
                        nn.Conv2d(4, 4, 3, padding="same"))
    net.forward_features = net.forward
    make_atrous(net, 8, 1, "stack")
    assert [m.stride for m in net] == [(2, 2)] * 3 + [(1, 1)] * 3
    assert [m.dilation for m in net] == [(1, 1)] * 4 + [(2, 2)] * 2 and net[4].padding == (2, 2)
    assert net(torch.zeros(1, 1, 64, 48)).shape[-2:] == (8, 6)


def test_the_backbone_takes_its_own_options(capsys):
    """backbone_kw builds the backbone with its own options (ResNet-9 at width 8, not its default 64), from the
    command line too; a misspelt one is the backbone's own one-line refusal."""
    from cnnkit.cli import main

    narrow = models.create("deeplab_small", num_classes=5, in_chans=1, img_size=96, backbone="resnet9",
                           backbone_kw={"width": 8})
    assert narrow.backbone.net.stem[0].out_channels == 8
    with pytest.raises(ModelError, match=r"does not support option\(s\) widht \(did you mean: width\?\)"):
        models.create("deeplab_small", num_classes=5, in_chans=1, img_size=96, backbone="resnet9",
                      backbone_kw={"widht": 8})
    assert main(["models", "info", "deeplab_small", "--data", "fashion-scenes", "--model-kw", "backbone=resnet9",
                 "--model-kw", "backbone_kw={width: 8}", "--no-timing", "--json"]) == 0
    assert '"width": 8' in capsys.readouterr().out.replace("'", '"')


def test_a_classifier_run_starts_a_deeplab_backbone(tmp_path):
    """--init-from a classifier run whose model and options are the segmentation model's backbone and backbone_kw:
    its weights (all but the classifier's head) go into the atrous backbone unchanged; other options are refused
    in one line naming the backbone_kw that fits."""
    from types import SimpleNamespace

    from cnnkit.errors import ConfigError
    from cnnkit.train import fit
    from cnnkit.train.setup import start_from

    clf = fit(model="resnet9", model_kwargs={"width": 4}, data="sample", train_images=200, epochs=1, batch_size=100,
              out=str(tmp_path / "clf"), progress=False)
    kwargs = {"backbone": "resnet9", "backbone_kw": {"width": 4}, "decoder": True}
    seg = models.create("deeplab_small", num_classes=11, in_chans=1, img_size=96, **kwargs)
    said = start_from(seg, SimpleNamespace(init_from=str(clf.run_dir), model="deeplab_small", model_kwargs=kwargs))
    assert "as deeplab_small's backbone" in said
    trained = load(clf.run_dir).model.state_dict()
    mine = seg.backbone.net.state_dict()
    assert set(mine) < set(trained) and all(torch.equal(mine[k], trained[k]) for k in mine)
    other = {**kwargs, "backbone_kw": {"width": 8}}
    with pytest.raises(ConfigError, match=r'add --model-kw backbone_kw=\{"width": 4\}'):
        start_from(models.create("deeplab_small", num_classes=11, in_chans=1, img_size=96, **other),
                   SimpleNamespace(init_from=str(clf.run_dir), model="deeplab_small", model_kwargs=other))
