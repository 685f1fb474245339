"""How fashion-scenes' default detector was chosen: short budgeted runs of candidate detectors and settings.

    python -m benchmarks.detect_screen                    # train every arm (5 or 10 minutes each), then collect
    python -m benchmarks.detect_screen --collect-only     # collect the arms' run directories already there

A screen, not a claim: one seed per arm, the validation mAP each run keeps (10% of the training split held out,
split seed 0), never the test split. Each arm is `cnnkit train --data fashion-scenes --budget 300s --seed 0
--split-seed 0 --amp off` plus its options (the `600s` arms: a 10-minute budget, which trains the `long` recipe),
run one after another on otherwise idle cores. First stage, 5 minutes: the detector and its optimizer settings;
second stage, 10 minutes (the budget of `benchmarks/detect_peer.py`): augmentation and weight averaging on the
winner. The 10-minute arms ran before budget re-plans kept the pace of three epochs and a 4% margin (both arms
alike: they trained 491 and 549 s). The winner then went through `benchmarks/detect_peer.py` (the test split read
once).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
from pathlib import Path

import yaml

from benchmarks.common import command_line, write_result
from cnnkit.runtime import cpu_description

BASE = ["cnnkit", "train", "--data", "fashion-scenes", "--budget", "300s", "--seed", "0", "--split-seed", "0",
        "--amp", "off"]
LONG = {"--budget": "600s"}  # the second stage's budget (replaces BASE's)
ARMS = {  # name: the options after BASE (the recipes as they stood when this screen ran: see the docstring)
    "retinanet": ["--model", "retinanet_small", "--recipe", "fast", "--batch-size", "32", "--lr", "1e-3",
                  "--weight-decay", "1e-4", "--schedule", "onecycle", "--grad-clip", "0"],
    "retinanet-giou": ["--model", "retinanet_small", "--model-kw", "box_loss=giou", "--recipe", "fast",
                       "--batch-size", "32", "--lr", "1e-3", "--weight-decay", "1e-4", "--schedule", "onecycle",
                       "--grad-clip", "0"],
    "fcos-b128": ["--model", "fcos_small", "--batch-size", "128", "--lr", "1e-3", "--weight-decay", "0.05",
                  "--schedule", "cosine", "--grad-clip", "1"],
    "fcos-b128-depth2": ["--model", "fcos_small", "--model-kw", "depth=2", "--batch-size", "128", "--lr", "1e-3",
                         "--weight-decay", "0.05", "--schedule", "cosine", "--grad-clip", "1"],
    "fcos-b128-width24": ["--model", "fcos_small", "--model-kw", "width=24", "--batch-size", "128", "--lr", "1e-3",
                          "--weight-decay", "0.05", "--schedule", "cosine", "--grad-clip", "1"],
    "fcos-b32": ["--model", "fcos_small", "--batch-size", "32", "--lr", "1e-3", "--weight-decay", "1e-4",
                 "--schedule", "onecycle", "--grad-clip", "1"],
    "fcos-b32-lr2e-3": ["--model", "fcos_small", "--batch-size", "32", "--lr", "2e-3", "--weight-decay", "1e-4",
                        "--schedule", "onecycle", "--grad-clip", "1"],
    # second stage, 10 minutes: the long recipe's FCOS (the first stage's winner) without and with crop and EMA
    "fcos-600s": ["--model", "fcos_small", "--ema", "0", "--augment", "resized_crop=0"],
    "fcos-600s-crop-ema": ["--model", "fcos_small", "--ema", "0.999", "--augment", "resized_crop=0.6"],
}


def command(name: str) -> list[str]:
    base = list(BASE)
    if name.startswith("fcos-600s"):
        base[base.index("--budget") + 1] = LONG["--budget"]
    return base + ARMS[name]
SETTINGS = ("model", "model_kwargs", "recipe", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
            "warmup_epochs", "grad_clip", "ema", "augment", "budget")


def collect(out: Path, name: str) -> dict:
    run = out / name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    val = [float(r["val_map"]) for r in rows]
    return {"arm": name, "command": " ".join(command(name) + ["--out", str(run)]),
            "settings": {k: cfg.get(k) for k in SETTINGS}, "epochs": len(rows), "val_map_per_epoch": val,
            "best_val_map": max(val), "seconds": float(rows[-1]["elapsed_seconds"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/cnnkit-bench-det-screen")
    ap.add_argument("--only", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--collect-only", action="store_true", help="read the arms' run directories under --out")
    ap.add_argument("--note")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.collect_only:
        for name in args.only:
            subprocess.run(command(name) + ["--out", str(out / name), "--overwrite", "--quiet"], check=True)
    arms = [collect(out, name) for name in args.only]
    for a in arms:
        print(f"{a['arm']:<20} epochs {a['epochs']:>2}  best validation mAP {a['best_val_map']:.3f}")
    print(write_result("detect_screen", {
        "command": command_line("benchmarks.detect_screen"), "cpu_details": cpu_description(),
        "method": "one seed per arm, 5-minute budgets (10 for the fcos-600s arms), fp32, the best validation mAP of each run (10% of the training "
                  "split held out, split seed 0); a screen, not a comparison with intervals; the test split unread",
        "arms": arms, **({"note": args.note} if args.note else {})}))


if __name__ == "__main__":
    main()
