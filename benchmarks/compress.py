"""What compression costs and buys on this CPU: every variant against the float32 eager model, measured side by
side in the same run by `cnnkit.compress.compress` (accuracy on the full Fashion-MNIST test set, parameters,
MACs, file size, batch-1 latency p50/p99, batch-64 throughput).

1. Trains (or reuses, with --checkpoint) a small-input ResNet (resnet9, width 16, the `fast` recipe) on all
   60,000 Fashion-MNIST training images from ../shared/datasets, keeping the weights after epoch 1 as the
   lottery-ticket rewind point.
2. Compresses it with int8 (PTQ), qat8, qat4, prune:0.5 (MACs halved, channel counts kept multiples of 16
   (--round-to), then fine-tuned with distillation),
   prune:0.5+int8 and sparse:0.8 (magnitude mask, rewound to epoch 1, retrained with the mask fixed).
3. Compares the pruning criteria at half the MACs before any fine-tuning (accuracy straight after pruning).
Int8's speed against float32 in the same runtime, each arm in its own fresh process, is `benchmarks.int8`'s
(the table this script writes times every variant side by side in one process, as `cnnkit compress` does).

    python -m benchmarks.compress                     # writes benchmarks/results/compress.{json,md} and pareto.png
    python -m benchmarks.compress --checkpoint RUN --rewind RUN/rewind-e1.safetensors
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch


from benchmarks.common import RESULTS, SHARED_DATA, command_line, write_result
from cnnkit.compress import compress, markdown_table, prune_structured
from cnnkit.data import Normalize, load_dataset
from cnnkit.train import fit
from cnnkit.artifacts import load

RECIPES = ["int8", "qat8", "qat4", "prune:0.5", "prune:0.5+int8", "sparse:0.8"]


def criteria(checkpoint: Path, ratio: float = 0.5) -> list[dict]:
    """Accuracy on the test set straight after pruning to (1 − ratio) of the MACs, per criterion, no fine-tuning."""
    ckpt = load(checkpoint)
    norm = Normalize(*ckpt.normalization)
    train = load_dataset("fashion-mnist", "train", data_dir=SHARED_DATA)
    test = load_dataset("fashion-mnist", "test", data_dir=SHARED_DATA)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:256]
    x, y = norm(train.images[pick]), train.labels[pick]
    xt = norm(test.images)
    rows = []
    for crit, scope in [("l1", "uniform"), ("l1", "global"), ("bn", "uniform"), ("bn", "global"),
                        ("taylor", "uniform"), ("taylor", "global"), ("lamp", "global"), ("lasso", "uniform")]:
        t0 = time.perf_counter()
        p = prune_structured(ckpt.model, x, y, ratio, crit, scope)
        with torch.inference_mode():
            acc = float(torch.cat([p.model(b).argmax(1) for b in xt.split(1000)]).eq(test.labels).float().mean())
        rows.append({"criterion": crit, "scope": scope, "top1_before_finetune": acc,
                     "macs_kept": p.macs_after / p.macs_before, "params_kept": p.params_after / p.params_before,
                     "channel_fraction_removed": p.channel_ratio, "refitted_layers": p.refitted_layers,
                     "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--rewind", type=Path)
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/cnnkit-compress-bench"))
    ap.add_argument("--finetune-epochs", type=float, default=3.0)
    ap.add_argument("--criterion", default="lasso")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--round-to", type=int, default=16,
                    help="channel counts kept multiples of this (16: ONNX Runtime's AVX-512 blocks; 1: off)")
    args = ap.parse_args()
    t0 = time.time()
    out = args.run_dir / "compress"
    if args.checkpoint is None:
        rewind = args.run_dir / "rewind-e1.safetensors"

        def keep_epoch1(ev):
            if ev.epoch == 1:
                shutil.copy(ev.run_dir / "last.safetensors", rewind)

        # the fast recipe with the model its committed results were measured on (conv-BN-ReLU, then pool: the
        # recipe's model before it moved pooling first)
        res = fit(data="fashion-mnist", data_dir=str(SHARED_DATA), recipe="fast", val_fraction=0.0,
                  model="resnet9", model_kwargs={"width": 16},
                  out=str(args.run_dir), overwrite=True, progress=False, callbacks=[keep_epoch1])
        args.checkpoint, args.rewind = res.last_checkpoint, rewind
    crit = criteria(args.checkpoint)
    r = compress(args.checkpoint, RECIPES, out, data="fashion-mnist", data_dir=SHARED_DATA,
                 finetune_epochs=args.finetune_epochs, criterion=args.criterion, distill=True, rewind=args.rewind,
                 round_to=args.round_to if args.round_to > 1 else None, repeats=args.repeats, log=lambda s: print(s, flush=True))
    payload = {"checkpoint": str(args.checkpoint), "rewind": str(args.rewind), "recipes": RECIPES,
               "finetune_epochs": args.finetune_epochs, "prune_criterion": args.criterion, "distill": True,
               "observer": "mse", "calibration_images": 512,  # compress()'s defaults, which this script keeps
               "round_to": args.round_to,
               "rows": r.rows, "criteria_at_half_macs": crit,
               "total_seconds": time.time() - t0, "command": command_line("benchmarks.compress")}
    write_result("compress", payload)
    shutil.copy(r.png_path, RESULTS / "compress_pareto.png")
    md = markdown_table(r.rows)
    md += "\n| criterion | scope | top-1 straight after pruning | MACs kept | params kept |\n| --- | --- | --- | --- | --- |\n"
    md += "".join(f"| {c['criterion']} | {c['scope']} | {100 * c['top1_before_finetune']:.2f} | "
                  f"{c['macs_kept']:.2f} | {c['params_kept']:.2f} |\n" for c in crit)
    (RESULTS / "compress.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
