"""Explanation speed against pytorch-grad-cam, and every method's localization and faithfulness.

1. Trains (or reuses, with --checkpoint) a small-input ResNet (resnet9, width 16) on cluttered-fashion-mnist:
   64×64 canvases generated from the full Fashion-MNIST in ../shared/datasets.
2. Speed, side by side on the same CPU, model, layer (the last stage) and batch of 64 test images, in
   interleaved rounds (median reported): cnnkit's Grad-CAM against pytorch-grad-cam's GradCAM, and cnnkit's
   Score-CAM (float32, and with its bf16 option) against pytorch-grad-cam's ScoreCAM; for each pair the
   largest map difference and the share of images with the same pointing-game outcome are recorded.
3. `cnnkit explain --benchmark` on the first --limit test images: pointing game, box IoU, deletion and
   insertion AUC, images/s and the randomization rank correlation for every method, with the centre-point
   baseline.

    python -m benchmarks.explain                      # writes benchmarks/results/explain.{json,md,png,csv}
    python -m benchmarks.explain --checkpoint RUN     # skip training
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, SHARED_DATA, command_line, write_result
from cnnkit.data import Normalize, load_dataset
from cnnkit.explain import explain
from cnnkit.explain.run import benchmark_methods
from cnnkit.train import fit
from cnnkit.artifacts import load_checkpoint


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


def speed(ckpt, x: torch.Tensor, targets: torch.Tensor, boxes: torch.Tensor, rounds: int) -> dict:
    """Median seconds per batch of cnnkit vs pytorch-grad-cam, interleaved, after comparing the maps."""
    from pytorch_grad_cam import GradCAM, ScoreCAM

    from cnnkit.explain.metrics import pointing_game

    model = ckpt.model.eval()
    layer_name = explain(model, x[:1], targets[:1]).layer
    layer = model.get_submodule(layer_name)
    result = {"layer": layer_name, "batch": len(x)}
    for key, ours, opts, cls in (("gradcam", "gradcam", {}, GradCAM), ("scorecam", "scorecam", {}, ScoreCAM),
                                 ("scorecam_bf16", "scorecam", {"precision": "bf16"}, ScoreCAM)):
        ref_maps, _ = _reference(cls, model, layer, x, targets)  # B×H×W, ReLU'd, min-max scaled, resized
        mine = explain(model, x, targets, method=ours, **opts).maps
        diff = float(np.abs(mine.numpy() - ref_maps).max())
        same_hits = float((pointing_game(mine, boxes) == pointing_game(torch.from_numpy(ref_maps), boxes))
                          .float().mean())
        n = rounds if ours == "gradcam" else max(1, rounds // 2)
        t_ours, t_ref = [], []
        for _ in range(n):  # interleaved: both see the same machine state
            t_ours += _timed(lambda: explain(model, x, targets, method=ours, **opts), 1)
            t_ref += _timed(lambda: _reference(cls, model, layer, x, targets), 1)
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        result[key] = {"cnnkit_images_per_s": len(x) / mo, "pytorch_grad_cam_images_per_s": len(x) / mr,
                       "speedup": mr / mo, "rounds": n, "max_abs_map_difference": diff,
                       "same_pointing_game_outcome": same_hits, "options": opts,
                       "cnnkit_seconds": t_ours, "pytorch_grad_cam_seconds": t_ref}
        print(f"{key}: cnnkit {len(x) / mo:.1f} img/s, pytorch-grad-cam {len(x) / mr:.1f} img/s, "
              f"{mr / mo:.2f}×, max map difference {diff:.2e}, same pointing-game outcome {same_hits:.3f}",
              flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-images", type=int, default=30000)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/cnnkit-explain-bench"))
    args = ap.parse_args()
    t0 = time.time()
    train_info = None
    if args.checkpoint is None:
        res = fit(data="cluttered-fashion-mnist", data_dir=str(SHARED_DATA), recipe="fast", epochs=args.epochs,
                  train_images=args.train_images, val_fraction=0.05, out=str(args.run_dir), overwrite=True,
                  progress=False)
        args.checkpoint = res.best_checkpoint
        train_info = {"epochs": args.epochs, "train_images": args.train_images, "seconds": res.seconds}
    ckpt = load_checkpoint(args.checkpoint)
    if train_info is None:
        cfg = ckpt.meta.get("config", {})
        train_info = {k: cfg.get(k) for k in ("data", "recipe", "epochs", "train_images", "val_fraction")}
    test = load_dataset("cluttered-fashion-mnist", "test", data_dir=SHARED_DATA)
    x = Normalize(*ckpt.normalization)(test.images[:64])
    with torch.no_grad():
        acc = float((ckpt.model(Normalize(*ckpt.normalization)(test.images[:2000])).argmax(1)
                     == test.labels[:2000]).float().mean())
    print(f"model {ckpt.meta['model']} {ckpt.meta.get('model_kwargs')}, test accuracy (first 2000) {acc:.3f}",
          flush=True)
    sp = speed(ckpt, x, test.labels[:64], test.boxes[:64], args.rounds)
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
