"""Explanation speed against pytorch-grad-cam, and every method's localization and faithfulness.

1. Trains (or reuses, with --checkpoint) a small-input ResNet (resnet9, width 16) on cluttered-fashion-mnist:
   64×64 canvases generated from the full Fashion-MNIST in ../shared/datasets.
2. Speed, on the same CPU, model, layer (the last stage) and batch of 64 test images: cnnkit's Grad-CAM
   against pytorch-grad-cam's GradCAM, and cnnkit's Score-CAM (float32, and with its bf16 option) against
   pytorch-grad-cam's ScoreCAM, each side in a fresh process, alternated over --pairs pairs (default 6), the
   speed-up the median of per-pair ratios with its 95% interval; for each method the largest map difference
   and the share of images with the same pointing-game outcome are recorded.
3. `cnnkit explain --benchmark` on the first --limit test images: pointing game, box IoU, deletion and
   insertion AUC, images/s and the randomization rank correlation for every method, with the centre-point
   baseline.

    python -m benchmarks.explain                      # writes benchmarks/results/explain.{json,md,png,csv}
    python -m benchmarks.explain --checkpoint RUN     # skip training
    python -m benchmarks.explain --checkpoint RUN --speed-only   # the speed comparison alone: explain_speed.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, SHARED_DATA, command_line, paired_ratio, write_result
from cnnkit.data import Normalize, load_dataset
from cnnkit.explain import explain
from cnnkit.explain.workflows import benchmark_methods
from cnnkit.train import fit
from cnnkit.artifacts import load


def _reference(cls, model, layer, x, targets):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cls(model=model, target_layers=[layer])
    out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return out, cam


def _timed(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


ARMS = {"gradcam": ("gradcam", {}, "GradCAM"), "scorecam": ("scorecam", {}, "ScoreCAM"),
        "scorecam_bf16": ("scorecam", {"precision": "bf16"}, "ScoreCAM")}


def _batch(checkpoint: Path):
    ckpt = load(checkpoint)
    test = load_dataset("cluttered-fashion-mnist", "test", data_dir=SHARED_DATA)
    return ckpt, Normalize(*ckpt.normalization)(test.images[:64]), test.labels[:64], test.boxes[:64]


def time_arm(checkpoint: Path, key: str, side: str, rounds: int) -> float:
    """Median seconds per batch of one side (cnnkit or pytorch-grad-cam) of one method, in this (fresh) process,
    after one untimed warm-up call."""
    import pytorch_grad_cam

    ckpt, x, targets, _ = _batch(checkpoint)
    model = ckpt.model.eval()
    ours, opts, ref = ARMS[key]
    if side == "cnnkit":
        fn = lambda: explain(model, x, targets, method=ours, **opts)  # noqa: E731
    else:
        layer = model.get_submodule(explain(model, x[:1], targets[:1]).layer)
        fn = lambda: _reference(getattr(pytorch_grad_cam, ref), model, layer, x, targets)  # noqa: E731
    fn()
    return statistics.median(_timed(fn, rounds))


def speed(checkpoint: Path, pairs: int, rounds: int, methods: list[str]) -> dict:
    """cnnkit against pytorch-grad-cam: the maps compared once, then each side timed in fresh processes,
    alternated over `pairs` pairs; the speed-up is the median of per-pair ratios with its 95% interval."""
    import subprocess
    import sys

    from pytorch_grad_cam import GradCAM, ScoreCAM

    from cnnkit.explain.metrics import pointing_game

    ckpt, x, targets, boxes = _batch(checkpoint)
    model = ckpt.model.eval()
    layer_name = explain(model, x[:1], targets[:1]).layer
    layer = model.get_submodule(layer_name)
    result = {"layer": layer_name, "batch": len(x), "pairs": pairs,
              "method": "each side in a fresh process (one untimed call, then the median of its timed calls); sides "
                        "alternated, order swapped every other pair; speed-up = median of per-pair ratios with a "
                        "distribution-free 95% interval"}
    for key, (ours, opts, ref) in ((k, ARMS[k]) for k in methods):
        cls = {"GradCAM": GradCAM, "ScoreCAM": ScoreCAM}[ref]
        ref_maps, _ = _reference(cls, model, layer, x, targets)  # B×H×W, ReLU'd, min-max scaled, resized
        mine = explain(model, x, targets, method=ours, **opts).maps
        diff = float(np.abs(mine.numpy() - ref_maps).max())
        same_hits = float((pointing_game(mine, boxes) == pointing_game(torch.from_numpy(ref_maps), boxes))
                          .float().mean())
        n = rounds if ours == "gradcam" else max(1, rounds // 2)
        secs: dict[str, list[float]] = {"cnnkit": [], "pytorch_grad_cam": []}
        for p in range(pairs):
            for side in (("cnnkit", "pytorch_grad_cam") if p % 2 == 0 else ("pytorch_grad_cam", "cnnkit")):
                out = subprocess.run([sys.executable, "-m", "benchmarks.explain", "--checkpoint", str(checkpoint),
                                      "--one", key, side, "--rounds", str(n)], capture_output=True, text=True, check=True)
                secs[side].append(float(out.stdout.strip().splitlines()[-1]))
        ratio = paired_ratio([r / o for o, r in zip(secs["cnnkit"], secs["pytorch_grad_cam"])])
        result[key] = {"cnnkit_images_per_s": len(x) / statistics.median(secs["cnnkit"]),
                       "pytorch_grad_cam_images_per_s": len(x) / statistics.median(secs["pytorch_grad_cam"]),
                       "speedup": ratio["median"], "speedup_paired": ratio, "rounds_per_process": n,
                       "max_abs_map_difference": diff, "same_pointing_game_outcome": same_hits, "options": opts,
                       "cnnkit_seconds": secs["cnnkit"], "pytorch_grad_cam_seconds": secs["pytorch_grad_cam"]}
        print(f"{key}: cnnkit {result[key]['cnnkit_images_per_s']:.1f} img/s, pytorch-grad-cam "
              f"{result[key]['pytorch_grad_cam_images_per_s']:.1f} img/s, {ratio['median']:.2f}× "
              f"({ratio['interval'][0]:.2f}–{ratio['interval'][1]:.2f}), max map difference {diff:.2e}, "
              f"same pointing-game outcome {same_hits:.3f}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-images", type=int, default=30000)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5, help="timed calls per process (Score-CAM: half)")
    ap.add_argument("--pairs", type=int, default=6, help="pairs of fresh processes per method")
    ap.add_argument("--speed-only", action="store_true", help="only the speed comparison (needs --checkpoint): "
                                                               "explain_speed.json")
    ap.add_argument("--methods", default=",".join(ARMS), help="speed: which of " + ", ".join(ARMS))
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # KEY SIDE: time one side in this fresh process
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/cnnkit-explain-bench"))
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in ARMS for m in methods):
        ap.error(f"--methods: choose from {', '.join(ARMS)}")
    if args.one:
        print(time_arm(args.checkpoint, args.one[0], args.one[1], args.rounds))
        return
    if args.speed_only:
        if args.checkpoint is None:
            ap.error("--speed-only needs --checkpoint")
        cfg = load(args.checkpoint).meta.get("config", {})
        write_result("explain_speed", {"checkpoint": str(args.checkpoint),
                                       "training": {k: cfg.get(k) for k in ("model", "model_kwargs", "data", "recipe",
                                                                            "epochs", "train_images")},
                                       "speed": speed(args.checkpoint, args.pairs, args.rounds, methods),
                                       "command": command_line("benchmarks.explain")})
        return
    t0 = time.time()
    train_info = None
    if args.checkpoint is None:
        res = fit(data="cluttered-fashion-mnist", data_dir=str(SHARED_DATA), recipe="fast", epochs=args.epochs,
                  train_images=args.train_images, val_fraction=0.05, out=str(args.run_dir), overwrite=True,
                  progress=False)
        args.checkpoint = res.best_checkpoint
        train_info = {"epochs": args.epochs, "train_images": args.train_images, "seconds": res.seconds}
    ckpt = load(args.checkpoint)
    if train_info is None:
        cfg = ckpt.meta.get("config", {})
        train_info = {k: cfg.get(k) for k in ("data", "recipe", "epochs", "train_images", "val_fraction")}
    test = load_dataset("cluttered-fashion-mnist", "test", data_dir=SHARED_DATA)
    with torch.no_grad():
        acc = float((ckpt.model(Normalize(*ckpt.normalization)(test.images[:2000])).argmax(1)
                     == test.labels[:2000]).float().mean())
    print(f"model {ckpt.meta['model']} {ckpt.meta.get('model_kwargs')}, test accuracy (first 2000) {acc:.3f}",
          flush=True)
    sp = speed(args.checkpoint, args.pairs, args.rounds, methods)
    bench = benchmark_methods(ckpt, "cluttered-fashion-mnist", data_dir=SHARED_DATA, limit=args.limit,
                              out_dir=args.run_dir / "explain-benchmark")
    for suffix in ("csv", "md", "png"):
        shutil.copy(getattr(bench, f"{suffix}_path"), RESULTS / f"explain.{suffix}")
    write_result("explain", {"model": ckpt.meta["model"],
                             "model_kwargs": ckpt.meta.get("model_kwargs"), "training": train_info,
                             "test_accuracy_first_2000": acc, "speed": sp, "methods": bench.rows,
                             "limit": args.limit, "seconds": time.time() - t0,
                             "command": command_line("benchmarks.explain")})
    print((RESULTS / "explain.md").read_text())


if __name__ == "__main__":
    from cnnkit.runtime import exclusive_threads

    with exclusive_threads():  # this process is the benchmark's alone (Score-CAM's per-core workers)
        main()
