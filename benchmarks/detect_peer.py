"""Detection on fashion-scenes: cnnkit's default detector against an ultralytics YOLO peer under the same CPU budget,
and the trainer against a plain loop.

    python -m benchmarks.detect_peer budget --seeds 0 1     # cnnkit and YOLO, 10 minutes each, arms alternated
    python -m benchmarks.detect_peer pair --repeats 6       # fit against a hand-written loop, fresh processes

The peer is a benchmark's, never cnnkit's dependency: `pip install --no-deps -r benchmarks/peer-requirements.txt`
(ultralytics without its dependencies, which cnnkit's environment already has but for the few named there). Nothing is
downloaded: the YOLO is built from its yaml (`yolo11n.yaml`, no pretrained weights), plots off, YOLO_OFFLINE set.

`budget`, for each seed, arms alternated: `cnnkit train --data fashion-scenes --model fcos_small --budget 10m
--seed S --split-seed 0` (the default detection recipe: a detector given with fashion-scenes trains on its boxes; the best checkpoint kept by validation mAP on the 10% of the training split it holds out)
then `cnnkit eval` on the test split; then YOLO (`YOLO("yolo11n.yaml").train(..., time=10 minutes, imgsz=96)`, its own
default recipe: mosaic, HSV, scale and translate jitter, flips, SGD/AdamW chosen by itself; the same training and
validation images, written in its layout; its best.pt kept by its validation fitness) and its predictions on the test
split at its validation settings (conf 0.001, IoU 0.7, 100 per image). Both arms' test detections are scored by the
same evaluator: pycocotools through torchmetrics (cnnkit.tasks.detect.coco_metrics), boxes in the 96×96 scenes'
pixels. Each arm is a fresh process with the machine's 2 cores and the same wall-clock budget for training
(validation inside it; start-up and the final test evaluation outside), fp32.

`pair` times one epoch of the default recipe's detector (FCOS, width 16) on the
fashion-scenes training split (no augmentation, nothing held out) in `fit` and in the loop a person writes by hand
(same torchvision model, AdamW, gradient clipping, batch, threads and layout), each arm in a fresh process, arms alternated; the ratio is
the median of per-round paired ratios with a distribution-free 95% interval (benchmarks.common.paired_ratio).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import command_line, paired_ratio, t_interval, write_result
from cnnkit.runtime import cpu_description

DATA = "fashion-scenes"
FIT_OUT = "/tmp/cnnkit-bench-det-fit"
YOLO_MODEL = "yolo11n.yaml"
DEFAULT_DETECTOR = "fcos_small"  # the detector of the default recipe for fashion-scenes' boxes
VAL_FRACTION, SPLIT_SEED = 0.1, 0  # cnnkit's default held-out share, one split for every seed and both arms


# -- the trainer against a plain loop --------------------------------------------------------------------------

def _recipe() -> dict:
    from cnnkit.train import RECIPES

    return RECIPES["fast"]["scenes-detect"]


def plain_loop(channels_last: bool, seed: int) -> float:
    """One epoch of the detection loop a person writes by hand (the model's own losses, summed; AdamW); images/s."""
    from cnnkit.data import channel_stats, load_dataset
    from cnnkit.models import create

    recipe, cfg = _recipe(), yaml.safe_load(open(f"{FIT_OUT}/config.yaml"))
    data = load_dataset(DATA, "train")
    torch.manual_seed(seed)
    model = create(recipe["model"], len(data.classes), 1, img_size=data.img_size, **cfg["model_kwargs"])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    mean, std = channel_stats(data.images)
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1) * 255, torch.tensor(std).view(1, -1, 1, 1) * 255
    batch = recipe["batch_size"]
    n = len(data.images) // batch * batch
    order = torch.randperm(len(data.images))
    t = time.perf_counter()
    for i in range(0, n, batch):
        idx = order[i:i + batch]
        x = ((data.images[idx].float() - mean_t) / std_t).contiguous(memory_format=fmt)
        loss = sum(model(x, data.objects[idx]).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.get("grad_clip"):  # the recipe clips the gradients' norm: so does the loop a person writes
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        opt.step()
    return n / (time.perf_counter() - t)


def fit_epoch() -> float:
    """One epoch of `fit` on the same data and model, nothing held out, no augmentation; images/s."""
    from cnnkit.train import fit

    r = fit(data=DATA, model=DEFAULT_DETECTOR, epochs=1, amp="off", val_fraction=0.0,
            augment={"crop_padding": 0, "hflip": False}, out=FIT_OUT, overwrite=True, progress=False)
    return r.history[0]["images_per_s"]


def pair(args: argparse.Namespace) -> None:
    arms = ("fit", "plain")
    runs: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.repeats):  # fit first in round 0 (the loop takes its model's anchors and layout)
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            cmd = [sys.executable, "-m", "benchmarks.detect_peer", "one", "--arm", arm, "--seed", str(r)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[arm].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
        print({k: round(v[-1], 1) for k, v in runs.items()}, flush=True)
    cfg = yaml.safe_load(open(f"{FIT_OUT}/config.yaml"))
    result = {"command": command_line("benchmarks.detect_peer"), "cpu_details": cpu_description(), "amp": "off",
              "fit_layout": cfg["chosen"]["layout"], "model": f"{cfg['model']} {cfg['model_kwargs']}",
              "batch_size": cfg["batch_size"], "data": DATA,
              "method": "each arm one epoch of the fashion-scenes training split (no augmentation, nothing held out) "
                        "in a fresh process, arms alternated; median of per-round paired ratios, distribution-free "
                        "95% interval",
              "images_per_s_runs": runs, "images_per_s_median": {k: statistics.median(v) for k, v in runs.items()},
              "fit_over_plain": paired_ratio([f / p for f, p in zip(runs["fit"], runs["plain"])])}
    print(write_result("detect_trainer_off", result))


# -- cnnkit against YOLO under one budget -----------------------------------------------------------------------

def _scenes() -> tuple:
    from cnnkit.data import load_dataset
    from cnnkit.data.splits import train_val_split

    train, test = load_dataset(DATA, "train"), load_dataset(DATA, "test")
    tr, va = train_val_split(train.labels, VAL_FRACTION, SPLIT_SEED)
    return train, test, tr, va


def write_yolo_layout(root: Path) -> Path:
    """fashion-scenes in ultralytics' layout (images/, labels/ of train, val and test; data.yaml): the training
    split cnnkit trains on, the validation images cnnkit holds out (same fraction and split seed), the test split.
    cnnkit's class k (1..10; 0 is background) is YOLO's k − 1."""
    from PIL import Image

    train, test, tr, va = _scenes()
    for split, data, index in (("train", train, tr), ("val", train, va), ("test", test, torch.arange(len(test)))):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        h, w = data.images.shape[-2:]
        for i in index.tolist():
            Image.fromarray(data.images[i, 0].numpy()).save(root / "images" / split / f"{i:05d}.png")
            rows = data.objects[i][data.objects[i, :, 0] >= 0]
            lines = [f"{int(c) - 1} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
                     f"{(y1 - y0) / h:.6f}" for c, x0, y0, x1, y1 in rows.tolist()]
            (root / "labels" / split / f"{i:05d}.txt").write_text("".join(line + "\n" for line in lines))
    spec = {"path": str(root), "train": "images/train", "val": "images/val", "test": "images/test",
            "names": {k - 1: name for k, name in enumerate(train.classes) if k > 0}}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


def yolo_arm(root: Path, seed: int, minutes: float) -> dict:
    """Train the YOLO peer for `minutes` of wall time, then score its test detections with cnnkit's evaluator."""
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    from cnnkit.data import load_dataset
    from cnnkit.tasks.detect import coco_metrics

    spec = root / "data" / "data.yaml"
    if not spec.exists():
        write_yolo_layout(root / "data")
    out = root / f"yolo-seed{seed}"
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = YOLO(YOLO_MODEL)
    model.train(data=str(spec), imgsz=96, epochs=1000, time=minutes / 60, batch=32, device="cpu", seed=seed,
                plots=False, amp=False, project=str(root), name=out.name, exist_ok=True, verbose=False,
                cache="ram", pretrained=False)
    train_seconds = time.perf_counter() - started
    best = YOLO(str(out / "weights" / "best.pt"))  # its own file, written just now by this process's training
    test = load_dataset(DATA, "test")
    files = [str(root / "data" / "images" / "test" / f"{i:05d}.png") for i in range(len(test))]
    detections = torch.zeros(len(files), 100, 6)
    detections[..., 5] = -1
    for start in range(0, len(files), 64):
        for k, r in enumerate(best.predict(files[start:start + 64], imgsz=96, conf=0.001, iou=0.7, max_det=100,
                                           device="cpu", verbose=False)):
            b = r.boxes
            n = len(b)
            detections[start + k, :n, :4] = b.xyxy.float()
            detections[start + k, :n, 4] = b.conf.float()
            detections[start + k, :n, 5] = b.cls.float() + 1
    test_metrics = coco_metrics(detections, test.objects, test.classes)
    results = list(csv.DictReader(open(out / "results.csv")))
    return {"arm": "yolo", "seed": seed, "model": YOLO_MODEL, "train_seconds_incl_setup": train_seconds,
            "epochs_run": len(results), "own_val_last": {k.strip(): v for k, v in results[-1].items()},
            "test": test_metrics}


def cnnkit_arm(root: Path, seed: int, minutes: float) -> dict:
    """`cnnkit train` with the budget (the default recipe), then `cnnkit eval` of its best checkpoint on test."""
    out = root / f"cnnkit-seed{seed}"
    train = ["cnnkit", "train", "--data", DATA, "--model", DEFAULT_DETECTOR, "--budget", f"{int(minutes * 60)}s",
             "--seed", str(seed),
             "--split-seed", str(SPLIT_SEED), "--amp", "off", "--out", str(out), "--overwrite"]
    started = time.perf_counter()
    subprocess.run(train, check=True)
    train_seconds = time.perf_counter() - started
    ev = ["cnnkit", "eval", "--checkpoint", str(out), "--split", "test"]
    before = set(out.glob("eval-*.json"))
    subprocess.run(ev, check=True)
    written = sorted(set(out.glob("eval-*.json")) - before)
    test = json.loads(written[-1].read_text())
    cfg = yaml.safe_load(open(out / "config.yaml"))
    metrics = list(csv.DictReader(open(out / "metrics.csv")))
    return {"arm": "cnnkit", "seed": seed, "model": f"{cfg['model']} {cfg['model_kwargs']}",
            "train_command": " ".join(train), "eval_command": " ".join(ev),
            "train_seconds_incl_setup": train_seconds, "epochs_run": len(metrics),
            "budget_plan": (cfg.get("chosen") or {}).get("budget_plan"), "per_epoch": metrics,
            "test": {k: v for k, v in test.items() if k != "confusion_matrix"}}


def budget(args: argparse.Namespace) -> None:
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        for arm in ("cnnkit", "yolo") if seed % 2 == 0 else ("yolo", "cnnkit"):  # arms alternated
            cmd = [sys.executable, "-m", "benchmarks.detect_peer", "one", "--arm", arm, "--seed", str(seed),
                   "--minutes", str(args.minutes), "--out", str(root)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{arm} seed {seed} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(runs[-1]["arm"], seed, round(runs[-1]["test"]["map"], 4), flush=True)
    table = {}
    for arm in ("cnnkit", "yolo"):
        maps = [r["test"]["map"] for r in runs if r["arm"] == arm]
        table[arm] = {"test_map_runs": maps, "test_map_mean": statistics.mean(maps),
                      "test_ap50_runs": [r["test"]["map_50"] for r in runs if r["arm"] == arm],
                      "test_ap_small_runs": [r["test"]["map_small"] for r in runs if r["arm"] == arm],
                      **({"test_map_interval": t_interval(maps)} if len(maps) > 1 else {})}
    diffs = [c["test"]["map"] - y["test"]["map"] for c, y in zip([r for r in runs if r["arm"] == "cnnkit"],
                                                                  [r for r in runs if r["arm"] == "yolo"])]
    result = {"command": command_line("benchmarks.detect_peer"), "cpu_details": cpu_description(),
              "budget_minutes": args.minutes, "seeds": args.seeds, "data": DATA,
              "method": "each arm a fresh process, arms alternated seed by seed; the same training and validation "
                        "images (10% held out, split seed 0); each keeps its best checkpoint by its own validation "
                        "score; test detections of both scored by pycocotools (torchmetrics) in the scenes' pixels",
              "table": table, "cnnkit_minus_yolo_map_by_seed": diffs,
              **({"cnnkit_minus_yolo_interval": t_interval(diffs)} if len(diffs) > 1 else {}),
              "runs": runs, **({"note": args.note} if args.note else {})}
    print(write_result(args.name, result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("budget", "pair", "one", "layout"))
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default="/tmp/cnnkit-bench-det-peer")
    ap.add_argument("--name", default="detect_peer", help="budget: the result's file name")
    ap.add_argument("--note", help="budget: a remark kept with the result (e.g. how the machine was shared)")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.what == "one":
        if args.arm in ("fit", "plain"):
            ips = fit_epoch() if args.arm == "fit" else plain_loop(
                yaml.safe_load(open(f"{FIT_OUT}/config.yaml"))["chosen"]["layout"].startswith("channels-last"),
                args.seed)
            print(json.dumps({"arm": args.arm, "images_per_s": ips}))
        else:
            run = (cnnkit_arm if args.arm == "cnnkit" else yolo_arm)(Path(args.out), args.seed, args.minutes)
            print(json.dumps(run))
    elif args.what == "layout":
        print(write_yolo_layout(Path(args.out) / "data"))
    elif args.what == "pair":
        pair(args)
    else:
        budget(args)


if __name__ == "__main__":
    main()
