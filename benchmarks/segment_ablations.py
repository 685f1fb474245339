"""The segmentation papers' claims, measured on fashion-scenes (96×96 grey scenes, background + 10 classes):
ASPP against an FCN-style head (DeepLabv3), output stride 8 against 16 (DeepLabv3: mIoU against MACs and
latency), DUC against bilinear upsampling and HDC against a constant dilation rate (Wang et al. 2018,
"Understanding Convolution for Semantic Segmentation"), and U-Net's skip connections against none.

Arms: `deeplab_small` (width 8) at output stride 8 with ASPP, bilinear upsampling and constant rates (2, 2, 2)
in its dilated last stage is the base that four arms change one option of; `unet_small` (width 8, depth 3)
with and without skips. For every seed, all arms train on the same seeded subset of the training scenes with
the same held-out validation scenes and the same recipe (fashion-scenes' AdamW one-cycle, fp32, one thread);
each run's epoch is chosen on validation mIoU (its best.safetensors), and the 1,000 test scenes are read once
per final model. A claim's difference is the mean over seeds of the paired test-mIoU difference (points) with a
Student-t 95% interval: "no measurable difference" when it holds 0. MACs at 96×96 are FlopCounterMode's FLOPs
halved (convolutions and matrix products only: no BN, ReLU, pooling or interpolation). Latency at batch 1:
each arm in a fresh process (one thread, warm-up excluded), the arms alternated, `--latency-pairs` pairs, the
median paired ratio with its interval (`benchmarks.common.paired_ratio`).

    python -m benchmarks.segment_ablations           # writes benchmarks/results/segment_ablations.json and .md
    python -m benchmarks.segment_ablations --quick   # smoke run (46 s here): segment_ablations_quick.json
    python -m benchmarks.segment_ablations --latency-only --latency-pairs 12 --latency-iters 100   # *_latency.json

Seeds run one after another, every arm of a seed before the next seed, and the result files are rewritten after
each run: a stopped run leaves the complete seeds it finished summarized (and says how many).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, command_line, paired_ratio, t_interval, write_result

ARMS: dict[str, tuple[str, dict]] = {
    "deeplab OS8, ASPP, bilinear, rates 2-2-2": ("deeplab_small", {}),
    "deeplab OS8, no ASPP (FCN head)": ("deeplab_small", {"aspp": False}),
    "deeplab OS16": ("deeplab_small", {"output_stride": 16}),
    "deeplab OS8, DUC": ("deeplab_small", {"upsample": "duc"}),
    "deeplab OS8, HDC rates 1-2-3": ("deeplab_small", {"hdc": True}),
    "unet, skips": ("unet_small", {"depth": 3}),
    "unet, no skips": ("unet_small", {"depth": 3, "skips": False}),
}
BASE = "deeplab OS8, ASPP, bilinear, rates 2-2-2"

# (claim, arm A, arm B): the claim is that A's test mIoU is above B's; papers' settings as context only
CLAIMS = [
    ("ASPP beats no ASPP (DeepLabv3)", BASE, "deeplab OS8, no ASPP (FCN head)"),
    ("output stride 8 beats 16, at more MACs (DeepLabv3)", BASE, "deeplab OS16"),
    ("DUC beats bilinear upsampling (Wang et al. 2018)", "deeplab OS8, DUC", BASE),
    ("HDC beats a constant dilation rate (Wang et al. 2018)", "deeplab OS8, HDC rates 1-2-3", BASE),
    ("U-Net's skip connections beat none (Ronneberger et al. 2015)", "unet, skips", "unet, no skips"),
]
LATENCY = (BASE, "deeplab OS16")
PAPERS = ("Context, not comparison (other data, other networks): DeepLabv3 (Chen et al. 2017) on PASCAL VOC 2012 "
          "val with ResNet-50/101 found ASPP with image pooling better than the cascaded atrous blocks alone and "
          "output stride 8 better than 16 at several times the computation; Wang et al. 2018 on Cityscapes val "
          "(ResNet-101/152) found DUC better than bilinear upsampling and HDC better than a constant rate "
          "(gridding); U-Net (Ronneberger et al. 2015, ISBI cell tracking) motivates the skips by precise "
          "localization and reports no ablation without them.")


def build(arm: str, width: int) -> torch.nn.Module:
    """A fresh model of `arm` at `width` for fashion-scenes (1 channel, 11 classes), in eval mode."""
    from cnnkit.models import create

    name, kwargs = ARMS[arm]
    return create(name, num_classes=11, in_chans=1, width=width, **kwargs).eval()


def size_of(arm: str, width: int) -> dict[str, float]:
    """Parameters and multiply-accumulates of one 96×96 image (FlopCounterMode's FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(arm, width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 1, 96, 96))
    return {"params": sum(p.numel() for p in model.parameters()), "macs": counter.get_total_flops() / 2}


def latency_worker(arm: str, width: int, iters: int) -> None:
    """Print the median seconds of a batch-1 forward pass of `arm` (one thread, after a warm-up)."""
    torch.set_num_threads(1)
    model, x = build(arm, width), torch.randn(1, 1, 96, 96)
    times = []
    with torch.inference_mode():
        for i in range(iters + 10):
            t = time.perf_counter()
            model(x)
            if i >= 10:
                times.append(time.perf_counter() - t)
    print(json.dumps({"median_s": statistics.median(times)}))


def latency_pairs(width: int, pairs: int, iters: int) -> dict:
    """Batch-1 latency of the two LATENCY arms, each in a fresh process, alternated; their paired ratios."""
    a, b = LATENCY
    seconds: dict[str, list[float]] = {a: [], b: []}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for i in range(pairs):
        for arm in ((a, b) if i % 2 == 0 else (b, a)):
            out = subprocess.run([sys.executable, "-m", "benchmarks.segment_ablations", "--latency-worker", arm,
                                  "--width", str(width), "--latency-iters", str(iters)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            seconds[arm].append(json.loads(out.strip().splitlines()[-1])["median_s"])
    ratio = paired_ratio([x / y for x, y in zip(seconds[a], seconds[b])])
    return {"arms": [a, b], "ms": {k: [1000 * s for s in v] for k, v in seconds.items()},
            "median_ms": {k: 1000 * statistics.median(v) for k, v in seconds.items()},
            f"ratio {a} / {b}": ratio, "iters_per_process": iters}


def train_arm(arm: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    """Train `arm` with `seed`, pick its epoch on validation mIoU, and score that checkpoint on the test split."""
    from cnnkit.evaluate import evaluate
    from cnnkit.train import fit

    name, kwargs = ARMS[arm]
    t = time.perf_counter()
    run = fit(model=name, model_kwargs={"width": args.width, **kwargs}, data="fashion-scenes", epochs=args.epochs,
              train_images=args.train_images, val_fraction=args.val_fraction, batch_size=args.batch_size, seed=seed,
              tta=False, amp="off", channels_last=False, threads=1,
              out=str(work / f"seed{seed}-arm{list(ARMS).index(arm)}"), progress=False)
    seconds = time.perf_counter() - t
    val = [h["val_miou"] for h in run.history]
    test = evaluate(run.run_dir, "fashion-scenes", "test", device="cpu").metrics
    shutil.rmtree(run.run_dir, ignore_errors=True)
    return {"arm": arm, "seed": seed, "model": name, "model_kwargs": {"width": args.width, **kwargs},
            "val_miou_per_epoch": val, "selected_epoch": val.index(max(val)) + 1, "val_miou": max(val),
            "test_miou": test["miou"], "test_pixel_accuracy": test["pixel_accuracy"],
            "train_images": run.train_images, "val_images": run.val_images, "test_images": test["images"],
            "train_seconds": seconds}


def verdict(d: dict, b: str) -> str:
    """What a paired difference A − B (with its interval) says about the claim that A beats B."""
    if d["n"] < 2:
        return "one seed: no interval"
    if d["holds_zero"]:
        return "not shown: no measurable difference"
    return "holds" if d["mean"] > 0 else f"does not hold: {b} ahead"


def summarize(rows: list[dict], trained: list[str], sizes: dict, latency: dict | None) -> dict:
    """Per trained arm over the seeds every one of them finished: means with t-intervals; per claim whose two
    arms were trained the paired differences."""
    seeds = sorted({r["seed"] for r in rows if sum(q["seed"] == r["seed"] for q in rows) == len(trained)})
    by = {(r["arm"], r["seed"]): r for r in rows}
    arms = {}
    for arm in trained:
        done = [by[arm, s] for s in seeds]
        arms[arm] = {**sizes[arm], "test_miou": t_interval([r["test_miou"] for r in done]) if done else None,
                     "val_miou_mean": statistics.fmean(r["val_miou"] for r in done) if done else None,
                     "selected_epochs": [r["selected_epoch"] for r in done]}
    claims = []
    for claim, a, b in CLAIMS:
        if not seeds or a not in trained or b not in trained:
            continue
        d = t_interval([100 * (by[a, s]["test_miou"] - by[b, s]["test_miou"]) for s in seeds])
        claims.append({"claim": claim, "a": a, "b": b, "difference_points": d, "verdict": verdict(d, b),
                       "macs_ratio": sizes[a]["macs"] / sizes[b]["macs"]})
    return {"complete_seeds": seeds, "arms": arms, "claims": claims, "latency": latency}


def markdown(payload: dict) -> str:
    """The result as the tables of the docs page."""
    s, cfg = payload["summary"], payload["config"]
    seeds = s["complete_seeds"]
    lines = [f"Segmentation ablations on fashion-scenes: width {cfg['width']}, {cfg['epochs']} epochs on "
             f"{cfg['train_images']} training scenes (batch {cfg['batch_size']}), epoch chosen on validation mIoU, "
             f"test mIoU on the 1,000 test scenes; seeds {', '.join(map(str, seeds)) or 'none finished'}"
             f" ({len(seeds)}).", "",
             "| arm | params | MACs at 96×96 (M) | selected epochs | val mIoU | test mIoU (mean) | 95% interval |",
             "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for arm, a in s["arms"].items():
        t = a["test_miou"]
        val, test = ("", "") if t is None else (f"{100 * a['val_miou_mean']:.1f}", f"{100 * t['mean']:.1f}")
        iv = "" if t is None or t["n"] < 2 else f"{100 * t['interval'][0]:.1f} to {100 * t['interval'][1]:.1f}"
        lines.append(f"| {arm} | {a['params']:,} | {a['macs'] / 1e6:.1f} | "
                     f"{', '.join(map(str, a['selected_epochs']))} | {val} | {test} | {iv} |")
    lines += ["", f"| claim (A beats B) | A − B test mIoU (points, {len(seeds)} paired seeds) | 95% interval | "
                  "MACs A / B | verdict here |", "| --- | ---: | --- | ---: | --- |"]
    for c in s["claims"]:
        d = c["difference_points"]
        iv = "" if d["n"] < 2 else f"{d['interval'][0]:+.2f} to {d['interval'][1]:+.2f}"
        lines.append(f"| {c['claim']} | {d['mean']:+.2f} | {iv} | {c['macs_ratio']:.2f} | {c['verdict']} |")
    lat = s["latency"]
    if lat:
        a, b = lat["arms"]
        r = lat[f"ratio {a} / {b}"]
        lines += ["", f"Latency at batch 1, one thread ({r['pairs']} alternated pairs of fresh processes): "
                      f"{a} {lat['median_ms'][a]:.2f} ms, {b} {lat['median_ms'][b]:.2f} ms (medians); "
                      f"paired ratio {r['median']:.2f} ({r['interval'][0]:.2f} to {r['interval'][1]:.2f}, "
                      f"{100 * r['coverage']:.1f}% interval)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=800, help="seeded subset of the 5,000 training scenes")
    ap.add_argument("--val-fraction", type=float, default=0.05, help="training scenes held out for validation")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--latency-pairs", type=int, default=6)
    ap.add_argument("--latency-iters", type=int, default=50)
    ap.add_argument("--latency-only", action="store_true",
                    help="train nothing: measure the output strides' latency alone into segment_ablations_latency.json")
    ap.add_argument("--latency-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smoke run: width 4, one seed, one epoch on 64 scenes, "
                                                         "the two output-stride arms only")
    args = ap.parse_args()
    if args.latency_worker:
        latency_worker(args.latency_worker, args.width, args.latency_iters)
        return
    from cnnkit.artifacts import atomic_write_text

    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.width, args.epochs, args.train_images = [0], 4, 1, 64
        args.val_fraction, args.latency_pairs, args.latency_iters = 0.01, 1, 5
    name = "segment_ablations_quick" if args.quick else "segment_ablations"
    trained = list(LATENCY) if args.quick else list(ARMS)
    sizes = {arm: size_of(arm, args.width) for arm in ARMS}
    latency = latency_pairs(args.width, args.latency_pairs, args.latency_iters)
    if args.latency_only:
        write_result(f"{name}_latency", {"width": args.width, "macs": {arm: sizes[arm]["macs"] for arm in LATENCY},
                                         "latency": latency, "command": command_line("benchmarks.segment_ablations")})
        print(json.dumps(latency, indent=2))
        return
    config = {k: getattr(args, k) for k in ("seeds", "width", "epochs", "train_images", "val_fraction", "batch_size",
                                            "latency_pairs", "latency_iters")}
    config |= {"data": "fashion-scenes", "recipe": "fast (scenes): AdamW lr 3e-3, wd 1e-4, one-cycle, hflip",
               "amp": "off", "threads": 1, "tta": False}
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="cnnkit-segabl-"))
    try:
        for seed in args.seeds:
            for arm in trained:
                rows.append(train_arm(arm, seed, args, work))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "model_kwargs"}), flush=True)
                payload = {"config": config, "rows": rows, "summary": summarize(rows, trained, sizes, latency),
                           "papers": PAPERS, "quick": args.quick,
                           "command": command_line("benchmarks.segment_ablations")}
                write_result(name, payload)
                atomic_write_text(RESULTS / f"{name}.md", markdown(payload))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
