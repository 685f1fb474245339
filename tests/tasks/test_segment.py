"""Segmentation as a task: its metrics against hand computations and torchmetrics, its losses, the
fashion-scenes benchmark, image and mask augmented together, the models' shapes and their papers' parts."""

from __future__ import annotations

import pytest
import torch

from cnnkit.data.scenes import INK, make_scenes
from cnnkit.errors import ConfigError, ModelError
from cnnkit.models import create
from cnnkit.tasks import SEGMENT
from cnnkit.tasks.segment import IGNORE, dice_loss, iou_from_confusion
from cnnkit.tasks.segment_metrics import segmentation_report


def test_miou_is_the_hand_computed_one_and_ignores_255():
    # 2 images of 2×2 pixels, classes 0..2; one pixel ignored
    target = torch.tensor([[[0, 1], [1, 2]], [[2, 2], [0, IGNORE]]])
    predicted = torch.tensor([[[0, 1], [2, 2]], [[2, 1], [0, 0]]])
    # class 0: inter 2, union 2 -> 1; class 1: inter 1, union 3 (true 2, predicted 2) -> 1/3; class 2: inter 2,
    # union 4 (true 3, predicted 3) -> 1/2. The ignored pixel (predicted 0) counts nowhere.
    want = (1 + 1 / 3 + 1 / 2) / 3
    onehot = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    report = segmentation_report(onehot, target, ["bg", "a", "b"])
    assert report["miou"] == pytest.approx(want)
    assert report["pixel_accuracy"] == pytest.approx(5 / 7)
    assert report["per_class_iou"] == pytest.approx({"bg": 1.0, "a": 1 / 3, "b": 0.5})
    total = SEGMENT.score_sum(onehot[:1], target[:1]) + SEGMENT.score_sum(onehot[1:], target[1:])
    assert SEGMENT.score_value(total, 2) == pytest.approx(want)  # summed over batches, the same mIoU


def test_miou_agrees_with_torchmetrics_and_leaves_absent_classes_out():
    from torchmetrics.functional.classification import multiclass_jaccard_index

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (4, 16, 16), generator=g)  # class 4 never appears, nor is predicted
    target[0, :2] = IGNORE
    probs = torch.rand(4, 5, 16, 16, generator=g)
    probs[:, 4] = 0
    ours = segmentation_report(probs, target, list("abcde"))
    tm = multiclass_jaccard_index(probs.argmax(1), target, 5, average=None, ignore_index=IGNORE, zero_division=float("nan"))
    assert ours["per_class_iou"]["e"] is None
    assert ours["miou"] == pytest.approx(float(tm[:4].mean()), abs=1e-6)
    from torchmetrics.functional.classification import multiclass_accuracy

    micro = multiclass_accuracy(probs.argmax(1), target, 5, average="micro", ignore_index=IGNORE)
    assert ours["pixel_accuracy"] == pytest.approx(float(micro))
    import cnnkit.tasks.segment_metrics as sm

    chunked = sm.CHUNK
    try:  # counted a chunk at a time, from the predicted masks evaluation keeps: the same report
        sm.CHUNK = 1
        assert segmentation_report(SEGMENT.kept(probs), target, list("abcde")) == ours
    finally:
        sm.CHUNK = chunked
    assert torch.isnan(iou_from_confusion(torch.zeros(2, 2))).all()


def test_dice_loss_is_zero_for_a_perfect_prediction_and_ignores_255():
    target = torch.tensor([[[0, 1], [1, IGNORE]]])
    perfect = torch.nn.functional.one_hot(target.clamp_max(1), 2).permute(0, 3, 1, 2).float() * 50
    perfect[0, :, 1, 1] = torch.tensor([-50.0, 50.0])  # wrong at the ignored pixel: must not count
    assert float(dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(-perfect, target)) > 0.9


def test_fashion_scenes_are_deterministic_and_their_masks_are_the_objects_ink(sample_train):
    source = sample_train.subset(torch.arange(60), "train")
    a, b = make_scenes(source, 7, canvas=64), make_scenes(source, 7, canvas=64)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, make_scenes(source, 8, canvas=64).images)
    assert a.classes == ["background", *source.classes] and a.masks.shape == (60, 64, 64)
    objects = a.masks > 0
    assert bool((a.images[:, 0][objects] >= INK).all())  # every object pixel shows the object's ink (rounded)
    assert bool(((a.instances > 0) == objects).all())
    counts = torch.tensor([torch.unique(i[i > 0]).numel() for i in a.instances.unbind()])
    assert int(counts.min()) >= 1 and int(counts.max()) <= 5
    # a scene's first object is its own source image, labelled with its class
    assert all(int(source.labels[i]) + 1 in torch.unique(a.masks[i]).tolist() or int(counts[i]) > 1 for i in range(60))
    # the label (for stratified splits) is the class covering the most pixels
    i = 3
    areas = torch.bincount(a.masks[i].flatten().long(), minlength=11)[1:]
    assert int(a.labels[i]) == int(areas.argmax()) + 1


def test_image_and_mask_are_augmented_together():
    from cnnkit.data.settings import AugmentConfig
    from cnnkit.data.transforms import BatchAugment

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 1, 12, 12), generator=g, dtype=torch.uint8)
    masks = (images[:, 0] // 64).to(torch.uint8)  # a mask that is a function of the pixel
    aug = BatchAugment(AugmentConfig(crop_padding=3, hflip=True), 4)
    torch.manual_seed(0)
    out, out_masks = aug.geometric_with_masks(images, masks)
    assert not torch.equal(out, images)  # something moved
    assert torch.equal((out[:, 0] // 64).to(torch.uint8), out_masks)  # and the masks moved with it


@pytest.mark.parametrize("name,options", [("unet_small", {}), ("unet_small", {"skips": False}),
                                          ("deeplab_small", {}), ("deeplab_small", {"output_stride": 16}),
                                          ("deeplab_small", {"decoder": True, "upsample": "duc"}),
                                          ("deeplab_small", {"aspp": False, "hdc": True})])
def test_segmentation_models_give_a_class_per_pixel_at_the_input_size(name, options):
    model = create(name, num_classes=11, in_chans=1, img_size=(40, 52), width=4, **options).eval()
    assert model(torch.randn(2, 1, 40, 52)).shape == (2, 11, 40, 52)


def test_deeplab_parts_follow_the_papers():
    from cnnkit.models.segment import ASPP

    m = create("deeplab_small", num_classes=5, in_chans=1, width=4)
    aspp = [mod for mod in m.modules() if isinstance(mod, ASPP)][0]
    rates = [b[0].dilation[0] for b in aspp.branches]
    assert rates == [1, 2, 4, 6] and aspp.branches[0][0].kernel_size == (1, 1)  # 1×1 plus three atrous 3×3
    features = m.layer4(m.layer3(m.layer2(m.layer1(m.stem(torch.randn(1, 1, 64, 64))))))
    assert features.shape[-1] == 64 // 8  # output stride 8: the last stage dilates instead of striding
    hdc = create("deeplab_small", num_classes=5, in_chans=1, width=4, hdc=True)
    assert [b.body[0][0].dilation[0] for b in hdc.layer4] == [1, 2, 3]  # hybrid rates against gridding
    duc = create("deeplab_small", num_classes=5, in_chans=1, width=4, upsample="duc")
    assert duc.classifier.out_channels == 5 * 8 * 8  # DUC: K × r² channels, then a pixel shuffle by r
    with pytest.raises(ModelError, match="output_stride must be 8 or 16"):
        create("deeplab_small", num_classes=5, in_chans=1, output_stride=4)


@pytest.mark.parametrize("ours_name,theirs_name", [("lraspp_mobilenet_v3", "lraspp_mobilenet_v3_large"),
                                                   ("fcn_resnet50", "fcn_resnet50"),
                                                   ("deeplabv3_resnet50", "deeplabv3_resnet50")])
def test_torchvision_segmentation_models_match_their_library(ours_name, theirs_name):
    import torchvision.models.segmentation as tvseg

    ours = create(ours_name, num_classes=3, in_chans=3)
    theirs = getattr(tvseg, theirs_name)(weights=None, weights_backbone=None, num_classes=3, aux_loss=None) \
        if ours_name != "lraspp_mobilenet_v3" else tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                                  num_classes=3)
    theirs.load_state_dict({k.removeprefix("net."): v for k, v in ours.state_dict().items()})
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(ours.eval()(x), theirs.eval()(x)["out"])
    assert create(ours_name, num_classes=3, in_chans=1).eval()(torch.randn(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_segmentation_refuses_augmentations_that_would_not_move_the_masks():
    from cnnkit.train.config import TrainConfig

    with pytest.raises(ConfigError, match="mixup is not available for segmentation"):
        SEGMENT.objective(TrainConfig(task="segment", augment={"mixup": 0.2}))
    with pytest.raises(ConfigError, match="policy is not available"):
        SEGMENT.objective(TrainConfig(task="segment", augment={"policy": "trivialaugment"}))


def test_multiscale_and_sliding_window_agree_with_the_whole_image_where_they_must():
    from cnnkit.tasks.segment import MultiScale, SlidingWindow, test_time_model

    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(1, 4, 1).eval()  # a per-pixel model: tiles and whole images give the same answer
    x = torch.randn(2, 1, 50, 37)
    whole = pointwise(x).softmax(1)
    tiled = SlidingWindow(pointwise, (16, 12))(x).softmax(1)
    assert torch.allclose(tiled, whole, atol=1e-5)  # every pixel covered, overlaps averaged
    small = torch.randn(1, 1, 10, 8)
    assert torch.equal(SlidingWindow(pointwise, (16, 12))(small), pointwise(small))  # no larger than a tile: whole
    assert torch.allclose(MultiScale(pointwise, [1.0])(x).softmax(1), whole, atol=1e-6)
    # a 2× scale of a per-pixel model, resized back: the bilinear resampling of the same map (smooth inputs agree)
    smooth = torch.nn.functional.interpolate(torch.randn(1, 1, 6, 6), size=(48, 48), mode="bilinear")
    ms = MultiScale(pointwise, [1.0, 2.0])(smooth).softmax(1)
    assert torch.allclose(ms, pointwise(smooth).softmax(1), atol=2e-2)
    with pytest.raises(ConfigError, match="scales must be between"):
        MultiScale(pointwise, [0.0])
    with pytest.raises(ConfigError, match="for segmentation models"):
        from cnnkit.tasks import CLASSIFY

        test_time_model(pointwise, CLASSIFY, [1.0, 1.5], False, (28, 28))


def test_dice_option_trains_segmentation_only():
    from cnnkit.train.config import TrainConfig, resolve_config

    cfg = resolve_config({"data": "fashion-scenes", "dice": 0.5})
    assert cfg.task == "segment" and SEGMENT.objective(cfg).dice == 0.5
    with pytest.raises(ConfigError, match="Dice loss to|segmentation loss"):
        TrainConfig(data="sample", dice=1.0)
    with pytest.raises(ConfigError, match="Dice weight must be 0 or more"):
        TrainConfig(task="segment", data="fashion-scenes", dice=-1.0)


def test_segmentation_models_are_listed_apart_and_default_to_scenes():
    from cnnkit.models import list_models
    from cnnkit.train.config import resolve_config
    from cnnkit.train.recipes import family_recipe

    seg = list_models(task="segment")
    assert {"unet_small", "deeplab_small", "fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3"} <= set(seg)
    assert not set(seg) & set(list_models())  # `models list` shows classifiers unless asked
    cfg = resolve_config({"model": "deeplab_small"})
    assert cfg.data == "fashion-scenes" and cfg.task == "segment"
    assert family_recipe("deeplab_small").name == family_recipe("unet_small").name == "segmentation"
