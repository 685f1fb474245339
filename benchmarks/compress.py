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
4. Fair baselines for int8's speed-up: the fp32 model with its BatchNorm folded into the convolutions, in the
   same runtime as each int8 variant (PyTorch: the folded `torch.export` program; ONNX Runtime: the fp32
   ONNX file, folded by ONNX Runtime's graph optimizations), measured side by side with the int8 files in
   `--pairs` fresh processes (each process times all five in interleaved rounds, the order reversed every
   other process); the figure is the median of the per-process ratios with its 95% interval.

    python -m benchmarks.compress                     # writes benchmarks/results/compress.{json,md} and pareto.png
    python -m benchmarks.compress --checkpoint RUN --rewind RUN/rewind-e1.safetensors
    python -m benchmarks.compress --skip-compress --checkpoint RUN/last.safetensors --run-dir DIR
        # only step 4, on the files an earlier `cnnkit compress --recipe int8 --out DIR/compress` wrote;
        # writes benchmarks/results/compress_fused_baselines.json
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

import json
import subprocess
import sys

from benchmarks.common import RESULTS, SHARED_DATA, command_line, paired_ratio, write_result
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


FAIR = ("eager", "folded_pt2", "onnx_fp32", "int8_ts", "int8_onnx")


def fused_baselines(checkpoint: Path, out: Path, pairs: int) -> dict:
    """int8 against fp32 with BatchNorm folded, in the same runtime: throughput at batch 64 and batch-1 latency
    of the five files, each process timing all five (interleaved rounds), `pairs` fresh processes."""
    from cnnkit.deploy.export import export_program

    files: dict = {"eager": checkpoint}
    names = {p.name: p for p in out.iterdir()} if out.is_dir() else {}
    plain = lambda n: not any(t in n for t in (".qat", ".pruned", ".sparse"))  # noqa: E731
    for key, test in (("onnx_fp32", lambda n: n.endswith(".onnx") and ".int8." not in n),
                      ("int8_ts", lambda n: n.endswith(".int8.ts")), ("int8_onnx", lambda n: n.endswith(".int8.onnx"))):
        found = [p for n, p in names.items() if test(n) and plain(n)]
        if not found:
            raise SystemExit(f"no {key} file in {out}: run `cnnkit compress --recipe int8 --out {out}` first")
        files[key] = found[0]
    files["folded_pt2"] = export_program(checkpoint, out / "fp32_folded.pt2").path  # after every check
    runs = []
    for i in range(pairs):
        order = list(FAIR) if i % 2 == 0 else list(reversed(FAIR))
        cmd = [sys.executable, "-m", "benchmarks.compress", "--time-files",
               json.dumps({k: str(files[k]) for k in order})]
        # the int8 TorchScript file loads because `cnnkit compress` signed it with this user's key: no trust flag
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print("process", i, {k: round(v["images_per_s"]) for k, v in runs[-1].items()}, flush=True)

    def ratio(a: str, b: str, key: str = "images_per_s") -> dict:
        if key == "images_per_s":
            return paired_ratio([r[a][key] / r[b][key] for r in runs])
        return paired_ratio([r[b][key] / r[a][key] for r in runs])  # latency: b's time over a's (a speed-up)

    return {"files": {k: Path(v).name for k, v in files.items()}, "processes": pairs, "runs": runs,
            "throughput_b64": {"int8_ts_over_eager": ratio("int8_ts", "eager"),
                               "int8_ts_over_folded_pt2": ratio("int8_ts", "folded_pt2"),
                               "folded_pt2_over_eager": ratio("folded_pt2", "eager"),
                               "int8_onnx_over_onnx_fp32": ratio("int8_onnx", "onnx_fp32"),
                               "onnx_fp32_over_eager": ratio("onnx_fp32", "eager")},
            "latency_b1_speedup": {"int8_ts_over_eager": ratio("int8_ts", "eager", "latency_ms_p50"),
                                   "int8_ts_over_folded_pt2": ratio("int8_ts", "folded_pt2", "latency_ms_p50"),
                                   "int8_onnx_over_onnx_fp32": ratio("int8_onnx", "onnx_fp32", "latency_ms_p50")}}


def time_files(spec: str) -> None:
    """One process of `fused_baselines`: bench_many over the given files; a JSON line on stdout."""
    from cnnkit.deploy.bench import bench_many

    files = json.loads(spec)
    rows = bench_many(list(files.values()), batch=64, repeats=50, device="cpu")
    print(json.dumps({k: {"images_per_s": r["images_per_s"], "latency_ms_p50": r["latency_ms_p50"]}
                      for k, r in zip(files, rows)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-files", help=argparse.SUPPRESS)  # one process of the fused-baseline comparison
    ap.add_argument("--pairs", type=int, default=6, help="fresh processes for the fused-baseline comparison")
    ap.add_argument("--skip-compress", action="store_true",
                    help="only the fused-baseline comparison, on the files an earlier run left in --run-dir")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--rewind", type=Path)
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/cnnkit-compress-bench"))
    ap.add_argument("--finetune-epochs", type=float, default=3.0)
    ap.add_argument("--criterion", default="lasso")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--round-to", type=int, default=16,
                    help="channel counts kept multiples of this (16: ONNX Runtime's AVX-512 blocks; 1: off)")
    args = ap.parse_args()
    if args.time_files:
        return time_files(args.time_files)
    t0 = time.time()
    out = args.run_dir / "compress"
    if args.skip_compress:
        fair = fused_baselines(args.checkpoint or args.run_dir / "last.safetensors", out, args.pairs)
        write_result("compress_fused_baselines", {**fair, "command": command_line("benchmarks.compress")})
        print(json.dumps({k: fair[k] for k in ("throughput_b64", "latency_b1_speedup")}, indent=1, default=str))
        return
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
               "fused_baselines": fused_baselines(args.checkpoint, out, args.pairs),
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
