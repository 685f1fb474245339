"""Segmentation on fashion-scenes: the default recipe against a 10-minute budget, and the trainer against a plain loop.

Two measurements, written to benchmarks/results/segment_budget.json and segment_trainer.json:

    python -m benchmarks.segment_trainer budget             # `cnnkit train --data fashion-scenes --budget 10m`, then
                                                           # `cnnkit eval` of its best checkpoint on the test split
    python -m benchmarks.segment_trainer pair --repeats 6   # fit against a hand-written loop, fresh processes
    python -m benchmarks.segment_trainer budget --budget none --recipe long   # the long recipe's 30 epochs, no
                                                           # budget: where more training takes this recipe
    python -m benchmarks.segment_trainer pretrained        # a 15-second classifier of the same objects as the
                                                           # encoder of DeepLab's head, both in the 10 minutes

`budget` runs the command a user types (task inferred from the data, the default recipe's model), in a fresh
process, and reads the test split once, at the end, with the checkpoint the run kept by validation mIoU. `pair`
times one epoch of the fast recipe's model on the fashion-scenes training split (no augmentation, no validation,
fp32 unless --amp says otherwise) in `fit` and in the loop a person writes by hand (same model, optimizer, batch,
threads and layout: the layout `fit` chose), each arm in a fresh process, arms alternated round by round; the ratio
is the median of per-round paired ratios with a distribution-free 95% interval (benchmarks.common.paired_ratio).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import command_line, paired_ratio, write_result
from cnnkit.data import channel_stats, load_dataset
from cnnkit.models import create
from cnnkit.runtime import autocast, autocast_dtype, cpu_description
from cnnkit.tasks.segment import PixelCrossEntropy
from cnnkit.train import RECIPES, fit, parse_budget

RECIPE = RECIPES["fast"]["scenes"]  # what `cnnkit train --data fashion-scenes` trains
DATA = "fashion-scenes"
FIT_OUT = "/tmp/cnnkit-bench-seg-fit"


def plain_loop(amp: torch.dtype | None, channels_last: bool, seed: int) -> float:
    """One epoch of the segmentation loop a person writes by hand (AdamW, pixel cross-entropy); images/s."""
    data = load_dataset(DATA, "train")
    torch.manual_seed(seed)
    model = create(RECIPE["model"], len(data.classes), 1, img_size=data.img_size, **RECIPE["model_kwargs"])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    loss_fn = PixelCrossEntropy()
    mean, std = channel_stats(data.images)
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1) * 255, torch.tensor(std).view(1, -1, 1, 1) * 255
    batch = RECIPE["batch_size"]
    n = len(data.images) // batch * batch
    order = torch.randperm(len(data.images))
    t = time.perf_counter()
    for i in range(0, n, batch):
        idx = order[i:i + batch]
        x = ((data.images[idx].float() - mean_t) / std_t).contiguous(memory_format=fmt)
        with autocast(torch.device("cpu"), amp):
            out = model(x)
        loss = loss_fn.loss(out, data.masks[idx].long(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - t)


def fit_epoch(amp: str) -> float:
    """One epoch of `fit` on the same data and model, nothing held out, no augmentation; images/s."""
    r = fit(data=DATA, epochs=1, amp=amp, val_fraction=0.0, augment={"crop_padding": 0, "hflip": False}, tta=False,
            out=FIT_OUT, overwrite=True, progress=False)
    return r.history[0]["images_per_s"]


def fit_layout() -> bool:
    """Whether `fit` chose channels-last (read from its run's config)."""
    return yaml.safe_load(open(f"{FIT_OUT}/config.yaml"))["chosen"]["layout"].startswith("channels-last")


def one_arm(arm: str, amp: str, seed: int) -> float:
    if arm == "fit":
        return fit_epoch(amp)
    return plain_loop(autocast_dtype(amp, torch.device("cpu")), fit_layout(), seed)


def pair(args: argparse.Namespace) -> None:
    arms = ("fit", "plain")
    runs: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.repeats):  # fit first in round 0 (the loop takes its layout), then alternating
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            cmd = [sys.executable, "-m", "benchmarks.segment_trainer", "one", "--arm", arm, "--amp", args.amp,
                   "--seed", str(r)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[arm].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
        print({k: round(v[-1], 1) for k, v in runs.items()}, flush=True)
    chosen = yaml.safe_load(open(f"{FIT_OUT}/config.yaml"))["chosen"]
    result = {"command": command_line("benchmarks.segment_trainer"), "cpu_details": cpu_description(),
              "amp": args.amp, "fit_precision": chosen["precision"], "fit_layout": chosen["layout"],
              "model": f"{RECIPE['model']} {RECIPE['model_kwargs']}", "batch_size": RECIPE["batch_size"], "data": DATA,
              "method": "each arm one epoch of the fashion-scenes training split (no augmentation, nothing held out) "
                        "in a fresh process, arms alternated; median of per-round paired ratios, distribution-free "
                        "95% interval",
              "images_per_s_runs": runs, "images_per_s_median": {k: statistics.median(v) for k, v in runs.items()},
              "fit_over_plain": paired_ratio([f / p for f, p in zip(runs["fit"], runs["plain"])])}
    print(write_result(f"segment_trainer_{args.amp}", result))


def _test_once(out: Path) -> tuple[list[str], dict]:
    """`cnnkit eval` of the run in `out` on the test split, once, as the run validated (its recipe's flip TTA, not
    a setting picked on the test split): the command and its metrics (without the confusion matrix)."""
    cfg = yaml.safe_load(open(out / "config.yaml"))
    ev = ["cnnkit", "eval", "--checkpoint", str(out), "--split", "test", *(["--tta"] if cfg.get("tta") else [])]
    before = set(out.glob("eval-*.json"))
    subprocess.run(ev, check=True)
    written = sorted(set(out.glob("eval-*.json")) - before) or sorted(out.glob("eval-*test*.json"))
    test = json.loads(written[-1].read_text())
    test.pop("confusion_matrix", None)
    return ev, test


def _run_record(out: Path, train: list[str], args: argparse.Namespace) -> dict:
    metrics = [dict(r) for r in csv.DictReader(open(out / "metrics.csv"))]
    cfg = yaml.safe_load(open(out / "config.yaml"))
    ev, test = _test_once(out)
    return {"command": command_line("benchmarks.segment_trainer"), "cpu_details": cpu_description(),
            "train_command": " ".join(train), "eval_command": " ".join(ev),
            "train_seconds_incl_setup": float(metrics[-1]["elapsed_seconds"]),
            "model": f"{cfg['model']} {cfg['model_kwargs']}", "recipe": cfg.get("recipe"),
            "epochs_planned": cfg.get("epochs"), "per_epoch": metrics, "test": test,
            "method": "the command a user types, in a fresh process; the best checkpoint is kept by validation mIoU "
                      "(10% of the training split held out), the test split read once by `cnnkit eval`",
            **({"note": args.note} if args.note else {})}


def budget(args: argparse.Namespace) -> None:
    out = Path(args.out)
    length = ["--budget", args.budget] if args.budget != "none" else []  # none: the recipe's own epochs
    train = ["cnnkit", "train", "--data", DATA, *length, *(["--recipe", args.recipe] if args.recipe else []),
             "--amp", args.amp, "--out", str(out), "--overwrite"]
    if not args.reuse:  # --reuse: the run in --out is this command's, trained before (evaluate it only)
        subprocess.run(train, check=True)
    result = _run_record(out, train, args)
    name = "segment_budget" if args.budget != "none" else f"segment_{args.recipe or 'fast'}"
    print(write_result(f"{name}_{args.amp}", result))


def pretrained(args: argparse.Namespace) -> None:
    """A pretrained encoder inside the same 10 minutes: the fast recipe's ResNet-9 classifier of the scenes'
    source objects (their training split), then DeepLab's head on that ResNet-9 made atrous, started from it,
    with the budget's rest (its wall time, start-up included, taken off), then the test split once."""
    out, total = Path(args.out), parse_budget(args.budget)
    classifier = out.with_name(out.name + "-classifier")
    cls = ["cnnkit", "train", "--data", "sample", "--amp", args.amp, "--out", str(classifier), "--overwrite"]
    started = time.perf_counter()
    subprocess.run(cls, check=True)
    spent = time.perf_counter() - started
    kw = yaml.safe_load(open(classifier / "config.yaml"))["model_kwargs"]
    train = ["cnnkit", "train", "--data", DATA, "--model", "deeplab_small", "--model-kw", "backbone=resnet9",
             "--model-kw", f"backbone_kw={json.dumps(kw)}", "--init-from", str(classifier),
             "--budget", f"{int(total - spent)}s", "--amp", args.amp, "--out", str(out), "--overwrite"]
    subprocess.run(train, check=True)
    result = _run_record(out, train, args)
    result.update(classifier_command=" ".join(cls), classifier_wall_seconds=spent, budget_seconds=total,
                  classifier_val_acc=float(list(csv.DictReader(open(classifier / "metrics.csv")))[-1]["val_acc"]))
    print(write_result(f"segment_pretrained_{args.amp}", result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("budget", "pretrained", "pair", "one"))
    ap.add_argument("--amp", choices=("off", "auto"), default="off")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--budget", default="10m", help="budget: the time budget, or none for the recipe's epochs")
    ap.add_argument("--recipe", choices=("fast", "long"), help="budget: train's --recipe (default: train's)")
    ap.add_argument("--out", default="/tmp/cnnkit-bench-seg-budget")
    ap.add_argument("--reuse", action="store_true", help="budget: evaluate the run already in --out")
    ap.add_argument("--note", help="budget: a remark kept with the result (e.g. how the machine was shared)")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.what == "one":
        print(json.dumps({"arm": args.arm, "images_per_s": one_arm(args.arm, args.amp, args.seed)}))
    elif args.what == "pair":
        pair(args)
    elif args.what == "pretrained":
        pretrained(args)
    else:
        budget(args)


if __name__ == "__main__":
    main()
