"""Detection: the score the trainer keeps checkpoints by against pycocotools, the detectors against torchvision's
own transform, fashion-scenes' boxes against their pixels, flips that move boxes with images, and a run end to end."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from cnnkit.data.scenes import make_scenes, scene_objects
from cnnkit.data.base import ImageData
from cnnkit.errors import ConfigError
from cnnkit.models import create, list_models
from cnnkit.tasks import DETECT
from cnnkit.tasks.detect import average_precision, coco_metrics, match_counts

DETECTORS = ["retinanet_small", "fcos_small", "ssd_small", "fasterrcnn_small"]


def _synthetic(n: int = 40, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Objects on 96×96 images, and detections: most objects found with jittered boxes, some missed, some
    with the wrong class, plus false positives, all with random scores (ties included)."""
    g = torch.Generator().manual_seed(seed)
    m, d = 5, 12
    targets = torch.zeros(n, m, 5)
    targets[..., 0] = -1
    outputs = torch.zeros(n, d, 6)
    outputs[..., 5] = -1
    for i in range(n):
        k = int(torch.randint(1, m + 1, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 60
        wh = 8 + torch.rand(k, 2, generator=g) * 30
        targets[i, :k, 0] = torch.randint(1, classes, (k,), generator=g).float()
        targets[i, :k, 1:3], targets[i, :k, 3:5] = xy, xy + wh
        rows = []
        for j in range(k):
            if torch.rand(1, generator=g) < 0.85:
                box = targets[i, j, 1:] + torch.randn(4, generator=g) * 1.5
                wrong = float(torch.randint(1, classes, (1,), generator=g))
                cls = targets[i, j, 0] if torch.rand(1, generator=g) < 0.9 else wrong
                rows.append(torch.cat([box, torch.rand(1, generator=g), torch.tensor([float(cls)])]))
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
            xy = torch.rand(2, generator=g) * 60
            box = torch.cat([xy, xy + 10 + torch.rand(2, generator=g) * 20])
            rows.append(torch.cat([box, torch.rand(1, generator=g) * 0.6,
                                   torch.randint(1, classes, (1,), generator=g).float()]))
        if rows:
            r = torch.stack(rows)
            r[:, 4] = (r[:, 4] * 50).round() / 50  # ties between scores, as low-precision detectors give
            r = r[r[:, 4].argsort(descending=True)]
            outputs[i, :len(r)] = r
    return outputs, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_summed_map_is_cocos_within_the_score_binning(seed):
    outputs, targets = _synthetic(seed=seed)
    classes = 4
    total = match_counts(outputs[:17], targets[:17], classes) + match_counts(outputs[17:], targets[17:], classes)
    ap, objects = average_precision(total, classes)
    ours = float(ap[objects > 0].mean())
    coco = coco_metrics(outputs, targets, ["background", "a", "b", "c"])
    assert abs(ours - coco["map"]) < 0.01, (ours, coco["map"])
    assert 0.2 < coco["map"] < 0.9  # a case where the matching matters
    # AP50 alone: the first threshold's column
    assert abs(float(ap[objects > 0, 0].mean()) - coco["map_50"]) < 0.01


def test_perfect_detections_score_one_and_none_score_zero():
    _, targets = _synthetic(n=10, seed=3)
    perfect = torch.zeros(10, 5, 6)
    perfect[..., 5] = -1
    keep = targets[..., 0] >= 0
    perfect[..., :4] = targets[..., 1:]
    perfect[..., 4] = torch.where(keep, 0.9, 0.0)
    perfect[..., 5] = torch.where(keep, targets[..., 0], -1.0)
    total = match_counts(perfect, targets, 4)
    assert DETECT.score_value(total, 10) == pytest.approx(1.0)
    empty = torch.zeros(10, 5, 6)
    empty[..., 5] = -1
    assert DETECT.score_value(match_counts(empty, targets, 4), 10) == 0.0
    with pytest.raises(ValueError, match="score_counts"):
        DETECT.score_sum(empty, targets)
    assert torch.equal(DETECT.score_counts(empty, targets, 4), match_counts(empty, targets, 4))


def test_scene_boxes_are_the_tight_boxes_of_each_objects_visible_pixels():
    src = ImageData(torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8), torch.arange(30) % 10,
                    [str(i) for i in range(10)], "src", "train")
    scenes = make_scenes(src, seed=5, scenes=30)
    objects = scene_objects(scenes.masks, scenes.instances)
    assert torch.equal(objects, scenes.objects)
    for i in range(30):
        for j in range(5):
            ys, xs = (scenes.instances[i] == j + 1).nonzero(as_tuple=True)
            row = objects[i, j]
            if len(ys) == 0:
                assert row[0] == -1
                continue
            assert row.tolist() == [float(scenes.masks[i, ys[0], xs[0]]), float(xs.min()), float(ys.min()),
                                    float(xs.max() + 1), float(ys.max() + 1)]


def test_a_flip_moves_the_boxes_with_the_image():
    from cnnkit.data.settings import AugmentConfig
    from cnnkit.data.transforms import BatchAugment

    src = ImageData(torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8), torch.arange(16) % 10,
                    [str(i) for i in range(10)], "src", "train")
    scenes = make_scenes(src, seed=6, scenes=16)
    augment = BatchAugment(AugmentConfig(crop_padding=0, hflip=True), 11)
    torch.manual_seed(0)
    # the instance map and the mask ride as the image's two channels: where they go, the boxes must follow
    both = torch.stack([scenes.instances, scenes.masks], 1)
    flipped, objects = augment.geometric_with_objects(both, scenes.objects)
    moved = (flipped != both).flatten(1).any(1)
    assert 0 < int(moved.sum()) < 16  # some images flipped, not all
    assert torch.equal(objects, scene_objects(flipped[:, 1], flipped[:, 0]))
    assert torch.equal(objects[~moved], scenes.objects[~moved])


def _reference_boxes(objects, boxes_after, h, w):
    """The rows torchvision's v2 gives (boxes moved, then clamped to the image), kept where the moved box's
    centre is inside the image and the clamped box at least a pixel wide and high (cnnkit's rule)."""
    from torchvision.transforms.v2 import functional as TF

    centre = (boxes_after[:, :2] + boxes_after[:, 2:]) / 2
    clamped = TF.clamp_bounding_boxes(tv_tensors.BoundingBoxes(boxes_after, format="XYXY", canvas_size=(h, w)))
    clamped = clamped.as_subclass(torch.Tensor)
    keep = ((objects[:, 0] >= 0) & (centre >= 0).all(1) & (centre[:, 0] < w) & (centre[:, 1] < h)
            & (clamped[:, 2] - clamped[:, 0] >= 1) & (clamped[:, 3] - clamped[:, 1] >= 1))
    out = torch.cat([objects[:, :1], clamped], 1)
    out[~keep] = torch.tensor([-1.0, 0, 0, 0, 0])
    return out


@pytest.mark.parametrize("augment", [{"crop_padding": 24, "hflip": True}, {"resized_crop": 0.3}])
def test_crops_move_clip_and_drop_boxes_as_torchvisions_v2_does(augment):
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2 import functional as TF

    from cnnkit.data.settings import AugmentConfig
    from cnnkit.data.transforms import BatchAugment, _crop_flip_draw

    src = ImageData(torch.randint(0, 256, (24, 1, 28, 28), dtype=torch.uint8), torch.arange(24) % 10,
                    [str(i) for i in range(10)], "src", "train")
    scenes = make_scenes(src, seed=3, scenes=24)
    h, w = scenes.images.shape[-2:]
    torch.manual_seed(5)
    images, objects = BatchAugment(AugmentConfig(**augment), 11).geometric_with_objects(scenes.images,
                                                                                        scenes.objects)
    torch.manual_seed(5)  # the same draws again, applied image by image by torchvision's v2 functionals
    if "crop_padding" in augment:
        p = augment["crop_padding"]
        dy, dx, flip = _crop_flip_draw(len(images), p, True)
    dropped = 0
    for i in range(len(images)):
        image = tv_tensors.Image(scenes.images[i])
        boxes = tv_tensors.BoundingBoxes(scenes.objects[i, :, 1:], format="XYXY", canvas_size=(h, w),
                                         clamping_mode=None)  # moved, not clamped: to see where the centres went
        if "crop_padding" in augment:
            image, boxes = TF.pad(image, [p]), TF.pad(boxes, [p])
            top, left = int(dy[i]), int(dx[i])
            image, boxes = TF.crop(image, top, left, h, w), TF.crop(boxes, top, left, h, w)
            if flip[i]:
                image, boxes = TF.horizontal_flip(image), TF.horizontal_flip(boxes)
        else:
            top, left, ch, cw = RandomResizedCrop.get_params(scenes.images[i], (0.3, 1.0), (3 / 4, 4 / 3))
            image = TF.resized_crop(image, top, left, ch, cw, [h, w], antialias=True)
            boxes = TF.resized_crop(boxes, top, left, ch, cw, [h, w])
        expected = _reference_boxes(scenes.objects[i], boxes.as_subclass(torch.Tensor).float(), h, w)
        assert torch.equal(images[i], image.as_subclass(torch.Tensor))
        assert torch.allclose(objects[i], expected, atol=1e-4)
        dropped += int(((scenes.objects[i, :, 0] >= 0) & (objects[i, :, 0] < 0)).sum())
    assert dropped > 0 and not torch.equal(objects, scenes.objects)  # the draws did drop and move boxes


@pytest.mark.parametrize("name", DETECTORS)
def test_each_detector_equals_torchvisions_with_its_own_transform(name):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    torch.manual_seed(0)
    model = create(name, num_classes=5, in_chans=1, img_size=(96, 96)).eval()
    holder = model.net.roi_heads if hasattr(model.net, "roi_heads") else model.net
    holder.score_thresh = 0.0  # untrained scores are low: keep every candidate, so that there is much to compare
    x = torch.randn(3, 1, 96, 96)
    with torch.no_grad():
        ours = model(x)
        model.net.transform = GeneralizedRCNNTransform(96, 96, [0.0], [1.0], size_divisible=1)  # scale 1: as given
        theirs = model.net(list(x))
    assert ours.shape == (3, 100, 6)
    for rows, det in zip(ours, theirs):
        k = len(det["scores"])
        assert k > 10
        assert torch.allclose(rows[:k, :4], det["boxes"], atol=1e-4)
        assert torch.allclose(rows[:k, 4], det["scores"], atol=1e-6)
        assert torch.equal(rows[:k, 5].long(), det["labels"])
        assert (rows[k:, 5] == -1).all() and (rows[k:, 4] == 0).all()


@pytest.mark.parametrize("name", DETECTORS)
def test_each_detector_learns_from_padded_targets(name):
    torch.manual_seed(0)
    model = create(name, num_classes=5, in_chans=1, img_size=(96, 96)).train()
    targets = torch.tensor([[[1, 10, 10, 40, 50], [3, 50, 20, 90, 60], [-1, 0, 0, 0, 0]],
                            [[2, 5, 30, 30, 90], [-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]]], dtype=torch.float32)
    losses = model(torch.randn(2, 1, 96, 96), targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.ndim > 1)
    with pytest.raises(Exception, match="targets"):
        model(torch.randn(2, 1, 96, 96))


def test_models_list_names_the_detectors():
    assert set(DETECTORS) <= set(list_models(task="detect"))
    assert not set(DETECTORS) & set(list_models(task="segment"))


def test_a_run_trains_and_evaluates_with_cocos_metrics(tmp_path):
    from cnnkit.evaluate import evaluate
    from cnnkit.train import fit

    result = fit(model="retinanet_small", model_kwargs={"width": 8}, data="fashion-scenes", epochs=1,
                 train_images=64, val_fraction=0.02, batch_size=16, out=str(tmp_path / "run"), progress=False,
                 amp="off", channels_last=False)
    assert result.config.task == "detect" and result.config.model_recipe == "detection"  # the family's settings
    sizes = result.config.model_kwargs["anchor_sizes"]  # derived from the training boxes, recorded with the run
    assert len(sizes) == 3 and sizes == sorted(sizes) and 10 < sizes[1] < 60
    assert result.best_val_acc is not None and 0.0 <= result.best_val_acc <= 1.0  # the validation mAP
    metrics = evaluate(result.run_dir, split="test", images=40).metrics
    assert {"map", "map_50", "map_75", "map_small", "mar_100", "per_class_ap"} <= set(metrics)
    held_out = evaluate(result.run_dir, split="val")  # the scenes the run held out (its boxes, without the masks)
    assert held_out.metrics["images"] > 0 and 0.0 <= held_out.metrics["map"] <= 1.0
    from PIL import Image

    from cnnkit.data import load_dataset
    from cnnkit.evaluate import predict

    Image.fromarray(load_dataset("fashion-scenes", "test").images[0, 0].numpy(), "L").save(tmp_path / "scene.png")
    answer = predict(result.run_dir, [tmp_path / "scene.png"], topk=3)[0].answer
    assert len(answer) <= 3 and all(set(a) == {"class", "score", "box"} and len(a["box"]) == 4 for a in answer)
    assert [a["score"] for a in answer] == sorted((a["score"] for a in answer), reverse=True)
    from cnnkit.cli import main

    for argv in (["export", "--checkpoint", str(result.run_dir), "--format", "torch-export", "--out",
                  str(tmp_path / "d.pt2")],
                 ["compress", "--checkpoint", str(result.run_dir), "--recipe", "int8", "--out", str(tmp_path / "c")]):
        assert main(argv) == 2  # ONNX only (tests/deploy/test_detect_export.py); no int8 yet: one line, nothing written
    assert not (tmp_path / "d.pt2").exists() and not (tmp_path / "c").exists()


def test_data_without_boxes_and_crops_are_refused_in_one_line(tmp_path):
    from cnnkit.train import fit

    with pytest.raises(ConfigError, match="has no boxes"):
        fit(model="retinanet_small", data="sample", epochs=1, train_images=32, out=str(tmp_path / "a"),
            progress=False)
    with pytest.raises(ConfigError, match="erasing is not available for detection"):
        fit(model="retinanet_small", augment={"erasing": 0.25}, epochs=1, train_images=32,
            out=str(tmp_path / "b"), progress=False)


def test_anchor_sizes_are_the_quantiles_of_the_training_boxes_sides():
    import numpy as np

    from cnnkit.tasks.detect import anchor_sizes_from_boxes

    _, targets = _synthetic(n=30, seed=4)
    rows = targets.reshape(-1, 5)
    rows = rows[rows[:, 0] >= 0].numpy()
    sides = np.sqrt((rows[:, 3] - rows[:, 1]) * (rows[:, 4] - rows[:, 2]))
    expected = np.quantile(sides, [1 / 6, 1 / 2, 5 / 6])
    assert anchor_sizes_from_boxes(targets, 3) == pytest.approx(expected, abs=0.051)
    assert DETECT.model_options("retinanet_small", {}, type("D", (), {"objects": targets})()) == {
        "anchor_sizes": anchor_sizes_from_boxes(targets, 3)}
    assert DETECT.model_options("retinanet_small", {"anchor_sizes": [8, 16, 32]}, None) == {}  # the user's stand
    assert DETECT.model_options("fcos_small", {}, None) == {}  # anchor-free


def test_a_run_whose_validation_score_is_undefined_still_keeps_a_best_checkpoint(tmp_path, monkeypatch):
    """A detection validation split without objects scores NaN: the latest epoch is then the best, never none."""
    from cnnkit.tasks.detect import Detection
    from cnnkit.train import fit

    monkeypatch.setattr(Detection, "score_value", lambda self, total, images: float("nan"))
    result = fit(model="retinanet_small", model_kwargs={"width": 8, "anchor_sizes": [12, 24, 48]},
                 data="fashion-scenes", epochs=1, train_images=32, val_fraction=0.1, batch_size=16,
                 out=str(tmp_path / "run"), progress=False, amp="off", channels_last=False)
    assert result.best_checkpoint.exists() and result.best_val_acc is None


def test_the_batched_focal_loss_equals_torchvisions_image_by_image():
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    from cnnkit.models import create

    torch.manual_seed(0)
    ours = create("retinanet_small", 5, 1, width=8, anchor_sizes=[12, 24, 48]).train()
    _, targets = _synthetic(n=4, classes=5, seed=2)
    targets[3] = -1  # an image without objects
    x = torch.randn(4, 1, 96, 96)
    head = ours.net.head.classification_head
    reference = RetinaNetClassificationHead(64, head.num_anchors, 5)
    reference.load_state_dict(head.state_dict())
    got = ours(x, targets)["classification"]
    ours.net.head.classification_head = reference
    assert torch.allclose(got, ours(x, targets)["classification"], rtol=1e-5)


def test_a_giou_box_loss_is_one_minus_the_giou_of_each_matched_anchor_with_its_object():
    """With the box outputs zeroed every anchor predicts itself: the loss is then the mean of 1 - GIoU(anchor,
    object) over the anchors the matcher gives the object (IoU 0.5 or more); the default L1 loss is the mean
    absolute sum of the encoded offsets from each such anchor to the object."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou, generalized_box_iou

    torch.manual_seed(0)
    x, target = torch.randn(1, 1, 96, 96), torch.tensor([[[2.0, 30.0, 20.0, 57.0, 44.0]]])
    losses = {}
    for loss in ("giou", "l1"):
        model = create("retinanet_small", 5, 1, width=8, anchor_sizes=[16, 24, 32], box_loss=loss).train()
        reg = model.net.head.regression_head.bbox_reg
        torch.nn.init.zeros_(reg.weight), torch.nn.init.zeros_(reg.bias)
        losses[loss] = float(model(x, target)["bbox_regression"].detach())
    features = list(model.net.backbone(x).values())
    anchors = model.net.anchor_generator(ImageList(x, [(96, 96)]), features)[0]
    box = target[0, :, 1:]
    matched = anchors[box_iou(anchors, box)[:, 0] >= 0.5]
    assert len(matched) >= 2
    expected = float((1 - generalized_box_iou(matched, box)[:, 0]).mean())
    assert losses["giou"] == pytest.approx(expected, rel=1e-5) and losses["giou"] > 0.05
    l1_zero_target = model.net.head.regression_head.box_coder.encode_single(box.expand(len(matched), 4), matched)
    assert losses["l1"] == pytest.approx(float(l1_zero_target.abs().sum(1).mean()), rel=1e-5)


@pytest.mark.parametrize("radius", [1.5, 6.0])
def test_fcos_centre_radius_is_in_strides_and_picks_the_locations_near_the_centre(radius):
    """The positives FCOS's matcher gives one 40x24-pixel object are, by hand, the stride-8 locations strictly
    inside its box and within `radius` strides of its centre (each location at its cell's corner, as torchvision's
    anchor generator places it); 1.5 is the paper's, 6 (the default) takes every location inside the box."""
    from cnnkit.models import create

    model = create("fcos_small", 5, 1, width=8, center_radius=radius).train()
    seen = []
    head_loss = model.net.head.compute_loss
    model.net.head.compute_loss = lambda targets, outputs, anchors, matched: seen.append(matched) or head_loss(
        targets, outputs, anchors, matched)
    x0, y0, x1, y1 = 20.0, 36.0, 60.0, 60.0
    model(torch.randn(1, 1, 96, 96), torch.tensor([[[3.0, x0, y0, x1, y1]]]))
    got = {int(i) for i in torch.nonzero(seen[0][0] == 0)}
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    expected = {k * 12 + j for k in range(12) for j in range(12)  # level 0: 12x12 locations, row by row
                if x0 < 8 * j < x1 and y0 < 8 * k < y1 and max(abs(8 * j - cx), abs(8 * k - cy)) < radius * 8}
    assert got == expected and len(expected) >= 4
    from cnnkit.errors import ModelError

    for bad, message in ((0, "center_radius=0 is not valid"), (100, "center_radius is in strides")):
        with pytest.raises(ModelError, match=message):
            create("fcos_small", 5, 1, width=8, center_radius=bad)


def test_detector_options_choose_the_maps_and_are_checked():
    from cnnkit.errors import ModelError
    from cnnkit.models import create

    x = torch.randn(1, 1, 96, 96)
    single = create("retinanet_small", 5, 1, width=8, strides=[16], fpn=False).eval()
    assert list(single.net.backbone(x)) == ["0"] and single.net.backbone(x)["0"].shape[-2:] == (6, 6)
    assert single.net.anchor_generator.num_anchors_per_location() == [27]  # all three sizes on the one map
    assert list(create("ssd_small", 5, 1, width=8, strides=[32]).net.backbone(x)["0"].shape[-2:]) == [3, 3]
    for kwargs, message in (({"strides": [8, 12]}, "strides must be distinct strides"),
                            ({"strides": [8, 16]}, "reads 3 maps"),
                            ({"fpn": False}, "without an FPN the head reads one map"),
                            ({"focal_gamma": -1}, "focal_gamma must be a number"),
                            ({"box_loss": "iou"}, "box_loss must be one of l1, smooth_l1, giou"),
                            ({"anchor_sizes": [10, 20]}, "anchor_sizes must be 3 positive sizes")):
        with pytest.raises(ModelError, match=message):
            create("retinanet_small", 5, 1, width=8, **kwargs)


def test_any_cnnkit_or_timm_classifier_can_be_a_detectors_backbone():
    import timm

    from cnnkit.errors import ModelError
    from cnnkit.models import create

    x = torch.randn(2, 1, 96, 96)
    model = create("retinanet_small", 5, 1, backbone="timm/resnet18", fpn_channels=32).eval()
    body = model.net.backbone.body
    reference = timm.create_model("resnet18", pretrained=False, features_only=True, in_chans=1, out_indices=(2, 3, 4))
    missing = reference.load_state_dict(body.net.state_dict(), strict=False).missing_keys
    assert not missing  # the same weights: timm's own maps
    with torch.no_grad():
        for ours, theirs in zip(body(x).values(), reference.eval()(x)):
            assert torch.allclose(ours, theirs, atol=1e-5)
    assert body.channels == [128, 256, 512] and model(x).shape == (2, 100, 6)
    # a cnnkit classifier's stages, and an extra stride-2 block past its deepest map (SSDlite's head on it)
    ssd = create("ssd_small", 5, 1, backbone="resnet9", backbone_kw={"width": 8}, strides=[8, 16, 32], lite=True)
    assert [tuple(v.shape[-2:]) for v in ssd.net.backbone(x).values()] == [(12, 12), (6, 6), (3, 3)]
    # SSDlite on MobileNetV2 (the MobileNetV2 paper's detector): its inverted-residual stages' maps, and it learns
    lite = create("ssd_small", 5, 1, backbone="mobilenet_v2_mini", strides=[8, 16, 32], lite=True).train()
    assert [tuple(v.shape[-2:]) for v in lite.net.backbone(x).values()] == [(12, 12), (6, 6), (3, 3)]
    _, targets = _synthetic(n=2, classes=5, seed=3)
    losses = lite(x, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lite.net.backbone.parameters())
    # the small backbone's depth: more residual blocks per stage, the same maps
    deep = create("fcos_small", 5, 1, width=8, depth=3).eval()
    assert len(deep.net.backbone.body.body.stages[0]) == 3
    assert [tuple(v.shape[-2:]) for v in deep.net.backbone(x).values()] == [(12, 12), (6, 6), (3, 3)]
    with pytest.raises(ModelError, match="depth .* must be 1 to 8"):
        create("fcos_small", 5, 1, depth=9)
    with pytest.raises(ModelError, match="depth is the small backbone's"):
        create("fcos_small", 5, 1, backbone="resnet9", depth=2)
    with pytest.raises(ModelError, match="has no map at stride 2"):
        create("retinanet_small", 5, 1, backbone="timm/convnext_atto", strides=[2, 16, 32])
    with pytest.raises(ModelError, match="the small backbone's maps are at strides 4, 8, 16, 32"):
        create("fcos_small", 5, 1, strides=[16, 32, 64])
    with pytest.raises(ModelError, match="takes no weights from a hub"):
        create("retinanet_small", 5, 1, backbone="timm/resnet18", backbone_kw={"pretrained": True})
