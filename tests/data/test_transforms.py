from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit.data import AugmentConfig, BatchAugment, BatchLoader, Normalize, channel_stats, random_crop_flip


def _crops(padded: torch.Tensor, h: int, w: int) -> list[torch.Tensor]:
    out = []
    for y in range(padded.shape[-2] - h + 1):
        for x in range(padded.shape[-1] - w + 1):
            c = padded[..., y:y + h, x:x + w]
            out += [c, c.flip(-1)]
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3), st.booleans(), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_crop_flip_output_is_a_padded_crop_of_its_own_image(padding, hflip, chans, seed):
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (6, chans, 7, 9), dtype=torch.uint8)
    out = random_crop_flip(images, padding, hflip)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for img, o in zip(images, out):
        padded = F.pad(img, (padding,) * 4)
        candidates = _crops(padded, 7, 9) if hflip else _crops(padded, 7, 9)[::2]
        assert any(torch.equal(o, c) for c in candidates)


def test_crop_flip_draws_per_image_not_per_batch():
    torch.manual_seed(0)
    image = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(64, 1, 1, 1)
    out = random_crop_flip(image, 2, True)
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 10


def test_mixup_cutmix_give_soft_targets_that_sum_to_one():
    aug = BatchAugment(AugmentConfig(mixup=0.2, cutmix=1.0), num_classes=10)
    x, y = aug.erase_and_mix(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    assert y.shape == (16, 10) and torch.allclose(y.sum(1), torch.ones(16))


def test_loader_order_depends_only_on_seed_and_epoch(sample_train):
    norm = Normalize(*channel_stats(sample_train.images))
    a = BatchLoader(sample_train, 100, norm, shuffle=True, seed=1)
    b = BatchLoader(sample_train, 100, norm, shuffle=True, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a.order(), b.order())
    b.set_epoch(4)
    assert not torch.equal(a.order(), b.order())
    assert sorted(a.order().tolist()) == list(range(len(sample_train)))


def test_loader_normalizes_with_given_stats(sample_train):
    mean, std = channel_stats(sample_train.images)
    loader = BatchLoader(sample_train, 5000, Normalize(mean, std))
    x, y = next(iter(loader))
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    assert torch.equal(y, sample_train.labels)


def test_policy_and_erasing_keep_shapes(sample_train):
    cfg = AugmentConfig(crop_padding=2, hflip=True, policy="trivialaugment", erasing=0.5)
    loader = BatchLoader(sample_train, 32, Normalize([0.5], [0.25]), shuffle=True, augment=cfg)
    x, y = next(iter(loader))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (32,)
