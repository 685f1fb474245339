"""The model zoo: published parameter counts, every small family and option, timm block equivalence,
regularizer behaviour, and weight round trips with timm and torchvision."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from cnnkit.errors import ModelError
from cnnkit.models import create, get_entry, list_models
from cnnkit.models.layers import (ATTENTION, MultiSampleDropout, ScheduledDropBlock, drop_path, drop_path_rates,
                                  eca_kernel_size, sample_logits, set_progress)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_families() -> list[str]:
    return [n for n in list_models() if not get_entry(n).imagenet]


# ------------------------------------------------------------------ published counts


@pytest.mark.parametrize("name,millions", [
    ("resnet50", 25.56), ("vgg16", 138.36), ("inception_v3", 23.83), ("inception_v4", 42.68),
    ("inception_resnet_v2", 55.84), ("mobilenet_v2", 3.50), ("convnext_tiny", 28.59),
    ("inception_next_tiny", 28.06)])
def test_imagenet_families_have_published_parameter_counts(name, millions):
    with torch.device("meta"):  # the count needs shapes only
        model = create(name, num_classes=1000, in_chans=3)
    assert round(n_params(model) / 1e6, 2) == millions


def test_eca_parameter_count_on_resnet50():
    with torch.device("meta"):
        base = n_params(create("resnet50", 1000, 3))
        formula = n_params(create("resnet50_attn", 1000, 3, attn="eca"))
        paper = n_params(create("resnet50_attn", 1000, 3, attn="eca", eca_kernel_sizes=[3, 5, 5, 7]))
    # block outputs 256/512/1024/2048 channels -> kernels 5/5/5/7 by the formula; 3+4+6+3 blocks
    assert [eca_kernel_size(c) for c in (256, 512, 1024, 2048)] == [5, 5, 5, 7]
    assert formula - base == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7 == 86
    assert paper - base == 3 * 3 + 4 * 5 + 6 * 5 + 3 * 7 == 80  # the ECA-Net paper's figure


def test_pyramidnet_parameter_count_matches_han_et_al():
    assert round(n_params(create("pyramidnet", 10, 3, depth=110, alpha=48)) / 1e6, 1) == 1.7
    m = create("pyramidnet", 10, 3, depth=20, alpha=48)
    widths = [b.conv2.out_channels for s in m.stages for b in s]
    assert widths[-1] == 64 and all(b - a in (5, 6) for a, b in zip([16] + widths, widths))  # +48/9 per block


# ------------------------------------------------------------------ every small family, every option


def _option_sets(name: str) -> list[dict]:
    opts = get_entry(name).options()
    sets: list[dict] = [{}]
    if "attn" in opts:
        sets += [{"attn": a} for a in ATTENTION]
    if "drop_path" in opts:
        sets.append({"drop_path": 0.2})
    if "drop_block" in opts:
        sets.append({"drop_block": 0.2})
    if "ibn" in opts:
        sets.append({"ibn": True})
    if "head" in opts:
        sets += [{"head": "msd"}, {"head": "spp"}]
    return sets


CASES = [(n, o) for n in small_families() for o in _option_sets(n)]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{'-'.join(map(str, o.values())) or 'plain'}"
                                                     for n, o in CASES])
def test_small_family_forward_backward(name, options):
    torch.manual_seed(0)
    kw = {"width": 8} if name == "resnet9" else {}
    model = create(name, num_classes=10, in_chans=1, img_size=28, **kw, **options)
    x = torch.randn(2, 1, 28, 28)
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()  # eval mode is deterministic whatever the regularizers
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_spp_head_gives_a_fixed_length_for_any_input_size():
    m = create("resnet20", 10, 1, head="spp").eval()
    sizes = {m.forward_head(m.forward_features(torch.randn(1, 1, s, s)), pre_logits=True).shape for s in (28, 40, 57)}
    assert sizes == {(1, 64 * 21)}
    assert m(torch.randn(2, 1, 45, 33)).shape == (2, 10)


# ------------------------------------------------------------------ regularizers


def test_stochastic_depth_rates_decay_linearly_and_drop_the_set_fraction():
    assert drop_path_rates(0.5, 4) == [0.125, 0.25, 0.375, 0.5]
    m = create("resnet20", 10, 1, drop_path=0.3)
    rates = [b.drop_path.drop_prob for s in m.stages for b in s]
    assert rates == pytest.approx([0.3 * (i + 1) / 9 for i in range(9)])
    torch.manual_seed(0)
    dp = drop_path(0.3).train()
    out = dp(torch.ones(20000, 1, 2, 2))
    dropped = (out.flatten(1) == 0).all(1).float().mean().item()
    assert abs(dropped - 0.3) < 0.015  # whole samples dropped at the set rate
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.7))  # survivors rescaled
    dp.eval()
    assert torch.equal(dp(torch.ones(3, 2)), torch.ones(3, 2))


def test_dropblock_drops_the_scheduled_fraction_in_contiguous_blocks():
    torch.manual_seed(0)
    db = ScheduledDropBlock(0.1, block_size=3).train()
    x = torch.ones(64, 4, 28, 28)
    frac = (db(x) == 0).float().mean().item()
    assert abs(frac - 0.1) < 0.02
    set_progress(db, 0.5)  # halfway through training: half the target rate
    assert abs((db(x) == 0).float().mean().item() - 0.05) < 0.015
    set_progress(db, 0.0)
    assert torch.equal(db(x), x)
    # dropped units come in blocks: an isolated zero would need a 1×1 block
    set_progress(db, 1.0)
    mask = (db(x)[:, 0] == 0).float().unsqueeze(1)
    neighbours = nn.functional.conv2d(mask, torch.ones(1, 1, 3, 3), padding=1)
    assert ((neighbours >= 3) | (mask == 0)).all()
    db.eval()
    assert torch.equal(db(x), x)


def test_multi_sample_dropout_head_averages_samples_in_training_only():
    torch.manual_seed(0)
    m = create("resnet20", 10, 1, head="msd")
    assert isinstance(m.fc, MultiSampleDropout)
    x = torch.randn(4, 1, 28, 28)
    m.train()
    out = m(x)
    samples = sample_logits(m)
    assert samples.shape == (8, 4, 10) and torch.allclose(out, samples.mean(0), atol=1e-6)
    assert not torch.allclose(samples[0], samples[1])
    m.eval()
    feats = m.forward_head(m.forward_features(x), pre_logits=True)
    assert torch.allclose(m(x), m.fc.fc(feats)) and sample_logits(m) is None


# ------------------------------------------------------------------ equivalence with timm's blocks


def _load_by_position(mine: nn.Module, theirs: nn.Module) -> None:
    src = list(theirs.state_dict().values())
    keys = list(mine.state_dict())
    assert [tuple(t.shape) for t in src] == [tuple(mine.state_dict()[k].shape) for k in keys]
    mine.load_state_dict(dict(zip(keys, src)))


def _randomize_bn(*modules: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.fixture(scope="module")
def timm_inceptions():
    return timm.create_model("inception_v4").eval(), timm.create_model("inception_resnet_v2").eval()


@pytest.mark.parametrize("ours,where,chans,size", [
    ("InceptionA", "features.6", 384, 9), ("ReductionA", "features.10", 384, 9),
    ("InceptionB", "features.11", 1024, 7), ("ReductionB", "features.18", 1024, 9),
    ("InceptionC", "features.19", 1536, 5)])
def test_inception_v4_blocks_equal_timms(timm_inceptions, ours, where, chans, size):
    import cnnkit.models.inception_small as small

    a, b = getattr(small, ours)(chans, 1.0), timm_inceptions[0].get_submodule(where)
    _randomize_bn(b)
    _load_by_position(a, b)
    x = torch.randn(2, chans, size, size)
    with torch.no_grad():
        assert torch.allclose(a.eval()(x), b(x), atol=1e-5)


@pytest.mark.parametrize("ours,where,chans,size,kw", [
    ("block35", "repeat.0", 320, 7, {"scale": 0.17}), ("block17", "repeat_1.0", 1088, 5, {"scale": 0.10}),
    ("block8", "repeat_2.0", 2080, 3, {"scale": 0.20}), ("block8", "block8", 2080, 3, {"scale": 1.0, "relu": False}),
    ("Mixed6a", "mixed_6a", 320, 9, {}), ("Mixed7a", "mixed_7a", 1088, 9, {})])
def test_inception_resnet_blocks_equal_timms(timm_inceptions, ours, where, chans, size, kw):
    import cnnkit.models.inception_small as small

    a, b = getattr(small, ours)(chans, 1.0, **kw), timm_inceptions[1].get_submodule(where)
    if "scale" in kw:
        assert b.scale == kw["scale"]
    _randomize_bn(b)
    _load_by_position(a, b)
    x = torch.randn(2, chans, size, size)
    with torch.no_grad():
        assert torch.allclose(a.eval()(x), b(x), atol=1e-5)


def test_attention_variants_of_timm_blocks_reduce_to_timms_forward():
    from timm.models.convnext import ConvNeXtBlock
    from timm.models.inception_next import MetaNeXtBlock

    from cnnkit.models.modern_small import ConvNeXtAttnBlock, MetaNeXtAttnBlock

    for ours, theirs in ((ConvNeXtAttnBlock(32, "se", ls_init_value=0.5), ConvNeXtBlock(32, ls_init_value=0.5)),
                         (MetaNeXtAttnBlock(32, "eca", ls_init_value=0.5), MetaNeXtBlock(32, ls_init_value=0.5))):
        ours.attn = nn.Identity()
        _randomize_bn(theirs)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 32, 7, 7)
        with torch.no_grad():
            assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-6)


def test_small_families_use_timms_blocks():
    from timm.models._efficientnet_blocks import InvertedResidual
    from timm.models.convnext import ConvNeXtBlock
    from timm.models.inception_next import InceptionDWConv2d, MetaNeXtBlock

    kinds = lambda m: {type(x) for x in m.modules()}  # noqa: E731
    assert ConvNeXtBlock in kinds(create("convnext_mini", 10, 1))
    assert {MetaNeXtBlock, InceptionDWConv2d} <= kinds(create("inception_next_mini", 10, 1))
    assert InvertedResidual in kinds(create("mobilenet_v2_mini", 10, 1))


# ------------------------------------------------------------------ weights in and out


def _save_state(model: nn.Module, path) -> None:
    torch.save(model.state_dict(), path)


@pytest.mark.parametrize("tv_name,ours,how", [("resnet18", "resnet18", "name"),
                                              ("mobilenet_v2", "mobilenet_v2", "position"),
                                              ("convnext_tiny", "convnext_tiny", "position")])
def test_torchvision_weights_load_without_conversion(tmp_path, tv_name, ours, how):
    import torchvision

    from cnnkit.models.weights import load_pretrained

    torch.manual_seed(0)
    tv = getattr(torchvision.models, tv_name)().eval()
    _randomize_bn(tv)
    _save_state(tv, tmp_path / "w.pth")
    model = create(ours, 1000, 3).eval()
    report = load_pretrained(model, tmp_path / "w.pth")
    assert report.matched_by == how and not report.skipped_head
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-4)


def test_timm_weights_into_a_new_head_and_one_channel(tmp_path):
    from safetensors.torch import save_file

    from cnnkit.models.weights import load_pretrained

    src = timm.create_model("resnet18", num_classes=1000).eval()
    save_file(src.state_dict(), str(tmp_path / "r18.safetensors"))
    model = create("resnet18", num_classes=10, in_chans=1).eval()
    report = load_pretrained(model, tmp_path / "r18.safetensors")
    assert sorted(report.skipped_head) == ["fc.bias", "fc.weight"] and report.adapted
    assert torch.equal(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert torch.allclose(model.conv1.weight[:, 0], src.conv1.weight.sum(1))  # 3 channels summed into 1


def test_cnnkit_checkpoint_loads_back_into_timm(tmp_path):
    from safetensors.torch import load_file

    from cnnkit.artifacts import save_checkpoint

    model = create("convnext_tiny", 7, 3).eval()
    save_checkpoint(tmp_path / "c.safetensors", model, {"model": "convnext_tiny"})
    back = timm.create_model("convnext_tiny", num_classes=7).eval()
    back.load_state_dict(load_file(str(tmp_path / "c.safetensors")), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_mismatched_weights_list_the_first_mismatches(tmp_path):
    from cnnkit.errors import CheckpointError
    from cnnkit.models.weights import load_pretrained

    _save_state(create("resnet20", 10, 3), tmp_path / "r20.pth")
    with pytest.raises(CheckpointError, match=r"do not fit the model: \d+ tensors in the file"):
        load_pretrained(create("resnet18", 10, 3), tmp_path / "r20.pth")
    _save_state(create("resnet9", 10, 3, width=8), tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match=r"matched by name; shape mismatch: stem.0.weight \(16, 3, 3, 3\)"):
        load_pretrained(create("resnet9", 10, 3, width=16), tmp_path / "a.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_pretrained(create("resnet20", 10, 3), tmp_path / "junk.pth")


# ------------------------------------------------------------------ bad input


def test_bad_zoo_input():
    with pytest.raises(ModelError, match="did you mean: .*convnext_mini"):
        create("convnext_mimi")
    with pytest.raises(ModelError, match="vgg8_bn_mini' does not support option.*drop_path"):
        create("vgg8_bn_mini", drop_path=0.1)
    with pytest.raises(ModelError, match="too small for inception_v4_mini.*at least 15×15"):
        create("inception_v4_mini", img_size=12)
    with pytest.raises(ModelError, match="unknown attention 'cbam'.*se, eca"):
        create("resnet20", attn="cbam")
    with pytest.raises(ModelError, match="unknown head 'gem'"):
        create("resnet20", head="gem")
    with pytest.raises(ModelError, match="drop_path must be in"):
        create("resnet20", drop_path=1.5)
