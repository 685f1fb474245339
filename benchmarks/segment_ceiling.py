"""How far recognition alone takes fashion-scenes' test mIoU: an oracle that knows every object's exact pixels.

Every pixel of a fashion-scenes mask belongs to one object (or the background); a segmenter's mIoU is bounded by
how well it tells the objects' classes apart. This oracle is given what no segmenter has: the true instance map
(each visible object's exact pixels, occluded parts removed) and, for each object, its source image whole,
unoccluded, at 28×28 on a black background, as a classifier sees it. It labels each object's pixels with that
classifier's prediction (flip TTA when the run used it); the background is perfect. Its mIoU is what a
segmenter reaches if its boundaries were perfect and it recognized the objects as well as the classifier does
on clean, whole objects: a segmenter learning from the same objects has to recognize them scaled, occluded and
on a textured background, so it is not expected to do better.

The scenes are regenerated object by object from the generator's seeded draws (the source image of each
object slot, `cnnkit.data.scenes.make_scenes`); the script checks that every visible object's pixels carry its
source image's class in the stored mask before it uses them.

    cnnkit train --data sample --recipe long --amp off --out runs/cls-sample
    python -m benchmarks.segment_ceiling --classifier runs/cls-sample --scenes fashion-scenes
    # writes benchmarks/results/segment_ceiling_fashion-scenes.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import command_line, write_result
from cnnkit.artifacts.kinds import load
from cnnkit.data.loader import Normalize
from cnnkit.data.scenes import MADE_FROM, MAX_SCENES, SPLIT_SEEDS
from cnnkit.data.sources import load_dataset
from cnnkit.tasks import CLASSIFY
from cnnkit.tasks.segment import confusion, iou_from_confusion


def object_sources(n_source: int, count: int, max_objects: int = 5) -> torch.Tensor:
    """Which source image each of the `count` test scenes' object slots drew (make_scenes' first two draws)."""
    g = torch.Generator().manual_seed(SPLIT_SEEDS["test"])
    torch.randint(1, max_objects + 1, (count,), generator=g)  # how many objects each scene has
    who = torch.randint(0, n_source, (count, max_objects), generator=g)
    who[:, 0] = torch.arange(count)
    return who


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifier", required=True, help="a cnnkit classification run trained on the scenes' source")
    ap.add_argument("--scenes", default="fashion-scenes", choices=sorted(MADE_FROM))
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    source = load_dataset(MADE_FROM[args.scenes], "test")
    scenes = load_dataset(args.scenes, "test")
    count = len(scenes.images)
    assert count == min(len(source.images), MAX_SCENES["test"])
    who = object_sources(len(source.images), count)

    slot = scenes.instances.long()  # 0: background, j: the object drawn in slot j
    true_of_slot = torch.cat([torch.zeros(count, 1, dtype=torch.long), source.labels[who] + 1], 1)
    regenerated = true_of_slot.gather(1, slot.flatten(1)).view_as(slot)
    if not torch.equal(regenerated, scenes.masks.long()):
        raise SystemExit("the regenerated object sources do not give the stored masks: the generator changed")

    ckpt = load(args.classifier)
    if ckpt.classes != source.classes:
        raise SystemExit(f"{args.classifier} was trained on classes {ckpt.classes}, not {source.classes}")
    tta = bool(ckpt.meta.get("config", {}).get("tta", False))
    mean, std = ckpt.normalization
    norm = Normalize(mean, std)
    probs = torch.cat([CLASSIFY.infer(ckpt.model, norm(source.images[i:i + 500]), tta)
                       for i in range(0, len(source.images), 500)])
    predicted = probs.argmax(1)
    top1 = float((predicted == source.labels).float().mean())

    pred_of_slot = torch.cat([torch.zeros(count, 1, dtype=torch.long), predicted[who] + 1], 1)
    oracle = pred_of_slot.gather(1, slot.flatten(1)).view_as(slot)
    k = len(scenes.classes)
    iou = iou_from_confusion(confusion(oracle.flatten(), scenes.masks.long().flatten(), k))
    result = {
        "command": command_line("benchmarks.segment_ceiling"),
        "scenes": args.scenes, "test_scenes": count, "source": MADE_FROM[args.scenes],
        "classifier": {"run": str(args.classifier), "model": ckpt.meta.get("config", {}).get("model"),
                       "tta": tta, "source_test_top1": top1},
        "oracle_miou": float(iou.nanmean()),
        "oracle_object_miou": float(iou[1:].nanmean()),
        "per_class_iou": {name: float(v) for name, v in zip(scenes.classes, iou)},
    }
    path = write_result(f"segment_ceiling_{args.scenes}", result)
    print(f"classifier top-1 on {MADE_FROM[args.scenes]} test: {top1:.2%}; oracle test mIoU on {args.scenes}: "
          f"{result['oracle_miou']:.2%} (objects only {result['oracle_object_miou']:.2%}) -> {path}")
    for name, v in result["per_class_iou"].items():
        print(f"  {name:12s} {v:.1%}")


if __name__ == "__main__":
    main()
