"""Trainer overhead: images/s of cnnkit.train.fit against plain hand-written PyTorch loops, side by side.

Same model (the fast recipe's: ResNet-9, width 16, pooling before BN and ReLU), batch size, threads and data (full Fashion-MNIST training set, one epoch,
no augmentation, no validation). Every arm runs in a fresh process (no earlier allocation, thread pool or
malloc setting shapes it), `--repeats` rounds (default 6) in a rotating order; each ratio is the median of
per-round paired ratios with a distribution-free 95% interval (benchmarks.common.paired_ratio).
`fit` runs with `--amp` as given (`auto`: bf16 only where the CPU computes it natively; `off`: fp32, which is
what a CPU without native bf16 gets, so `--amp off` stands in for such a machine) and its layout on `auto`
(measured). The plain loops cover every setting a person might pick by hand: fp32 and (where the CPU has
native bf16, or with --all-plain) bf16 autocast, each NCHW and channels-last. Reported: fit against the plain
loop at its own precision and layout (what the trainer adds), and against the fastest plain loop of any
setting (what a user gets from cnnkit's choices); model FLOPs utilization against an sgemm peak measured in the
same run; the input pipeline's time per batch against the training step it feeds. fit keeps the memory its
steps free for the next steps (cnnkit.runtime.reuse_freed_memory: glibc's malloc limits raised while it trains);
the fp32 channels-last loop runs once more with the same limits ("kept_memory"), so the tables show how much of
fit's lead over the hand-written loop that is; the kept-memory loop is not one of the plain loops.

    python -m benchmarks.trainer_overhead --amp off    # writes benchmarks/results/trainer_overhead_off.json
    python -m benchmarks.trainer_overhead --amp auto   # ... trainer_overhead_auto.json
    python -m benchmarks.trainer_overhead --amp off --pair --repeats 6   # fit against its plain twin only
                                                    # (and the twin with fit's malloc limits)

`--pair` runs only three arms (fit, the plain loop at fit's precision and layout, and that loop with fit's
malloc limits), fit first in the first round. Earlier versions ran the full table in one process, where every
loop after the first `fit` ran with the malloc setting fit left behind; those figures are withdrawn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import yaml

from benchmarks.common import (SHARED_DATA, command_line, gemm_peak_gflops, paired_ratio, train_flops_per_image,
                               write_result)
from cnnkit.data import AugmentConfig, BatchLoader, Normalize, channel_stats, load_dataset
from cnnkit.models import create
from cnnkit.runtime import autocast, autocast_dtype, cpu_description, reuse_freed_memory
from cnnkit.train import RECIPES, fit

MODEL, BATCH, LR = "resnet9", 256, 0.2
KW = RECIPES["fast"]["mnist-like"]["model_kwargs"]  # what `cnnkit train --data fashion-mnist` trains
ORIGINAL_KW = {"width": 16}  # Page's first ordering (conv-BN-ReLU, then pool), the recipe's model until 2026-11


def plain_loop(data, amp: torch.dtype | None, channels_last: bool, seed: int = 0, kept_memory: bool = False) -> float:
    """One epoch of the loop a person writes by hand; returns images/s of the epoch. `kept_memory`: with the
    malloc limits fit raises while it trains (cnnkit.runtime.reuse_freed_memory), to show what that is worth."""
    if kept_memory:
        with reuse_freed_memory():
            return plain_loop(data, amp, channels_last, seed)
    torch.manual_seed(seed)
    model = create(MODEL, 10, 1, **KW)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean, std = channel_stats(data.images)
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1) * 255, torch.tensor(std).view(1, -1, 1, 1) * 255
    images, labels = data.images, data.labels
    n = len(labels) // BATCH * BATCH
    order = torch.randperm(len(labels))
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        idx = order[i:i + BATCH]
        x = ((images[idx].float() - mean_t) / std_t).contiguous(memory_format=fmt)
        with autocast(torch.device("cpu"), amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - t)


def fit_epoch(data_dir: str, amp: str, kwargs: dict = KW, out: str = "/tmp/cnnkit-bench-overhead") -> float:
    r = fit(model=MODEL, model_kwargs=kwargs, data="fashion-mnist", data_dir=data_dir, epochs=1, batch_size=BATCH, amp=amp,
            lr=LR, val_fraction=0.0, augment={"crop_padding": 0, "hflip": False}, label_smoothing=0.0,
            tta=False, out=out, overwrite=True, progress=False)
    return r.history[0]["images_per_s"]


def input_pipeline(data, augment: AugmentConfig, step_seconds: float) -> dict[str, float]:
    mean, std = channel_stats(data.images)
    loader = BatchLoader(data, BATCH, Normalize(mean, std, channels_last=True), shuffle=True, augment=augment,
                         drop_last=True)
    t = time.perf_counter()
    batches = sum(1 for _ in loader)
    per_batch = (time.perf_counter() - t) / batches
    return {"prep_ms_per_batch": per_batch * 1e3, "step_ms_per_batch": step_seconds * 1e3,
            "step_over_prep": step_seconds / per_batch}


PAIR_ARMS = ("fit", "plain_same", "plain_same_kept_memory")


def run_arm(arm: str, args: argparse.Namespace, seed: int) -> float:
    """Images/s of one arm, one epoch, in a fresh process (`--one ARM`)."""
    cmd = [sys.executable, "-m", "benchmarks.trainer_overhead", "--one", arm, "--amp", args.amp,
           "--data-dir", args.data_dir, "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def pair_in_fresh_processes(args: argparse.Namespace) -> None:
    """fit, the plain loop at fit's precision and layout, and that loop with fit's malloc limits: each arm in a
    fresh process, `--repeats` rounds in a rotating order; per-round paired ratios of fit to each loop."""
    runs: dict[str, list[float]] = {arm: [] for arm in PAIR_ARMS}
    for r in range(args.repeats):
        for arm in PAIR_ARMS[r % 3:] + PAIR_ARMS[:r % 3]:
            runs[arm].append(run_arm(arm, args, r))
        print({k: round(v[-1]) for k, v in runs.items()}, flush=True)
    fit_cfg = yaml.safe_load(open("/tmp/cnnkit-bench-overhead/config.yaml"))
    result = {"command": command_line("benchmarks.trainer_overhead"),
              "cpu_details": cpu_description(), "amp": args.amp, "fit_layout": fit_cfg["chosen"]["layout"],
              "fit_precision": fit_cfg["chosen"]["precision"], "model": f"{MODEL} {KW}", "batch_size": BATCH,
              "method": "each arm one epoch of the full Fashion-MNIST training set in a fresh process; arms in a "
                        "rotating order; median of per-round paired ratios, distribution-free 95% interval",
              "images_per_s_runs": runs,
              "images_per_s_median": {k: statistics.median(v) for k, v in runs.items()},
              "fit_over_plain": paired_ratio([f / p for f, p in zip(runs["fit"], runs["plain_same"])]),
              "fit_over_plain_kept_memory": paired_ratio(
                  [f / p for f, p in zip(runs["fit"], runs["plain_same_kept_memory"])]),
              "plain_kept_memory_over_plain": paired_ratio(
                  [k / p for k, p in zip(runs["plain_same_kept_memory"], runs["plain_same"])])}
    print(write_result(f"trainer_overhead_{args.amp}_pair", result))
    print({k: v for k, v in result.items() if k not in ("cpu_details", "images_per_s_runs")})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--repeats", type=int, default=6, help="rounds; each arm once per round, in a fresh process")
    ap.add_argument("--amp", choices=("off", "auto"), default="auto")
    ap.add_argument("--all-plain", action="store_true", help="Also time bf16 plain loops where bf16 is emulated.")
    ap.add_argument("--pair", action="store_true",
                    help="Only fit and the plain loop at fit's setting, more precisely: many repeats of the pair "
                         "(writes trainer_overhead_<amp>_pair.json; the full table stays as it is)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # one arm, in this (fresh) process
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pair and args.one is None:
        return pair_in_fresh_processes(args)
    cpu = cpu_description()
    amp = autocast_dtype(args.amp, torch.device("cpu"))
    dtypes = {"fp32": None}
    if amp is not None or cpu["bf16_native"] or args.all_plain:
        dtypes["bf16"] = torch.bfloat16
    arms = ["fit", "fit_original_order"] + [f"plain_{d}_{layout}" for d in dtypes for layout in ("nchw", "channels_last")]
    # the fp32 channels-last loop again with fit's malloc limits: what fit's lead over the hand-written loop is made of
    arms.append("kept_memory_fp32_channels_last")
    if args.one is not None:  # one arm in this fresh process: its images/s on stdout
        data = load_dataset("fashion-mnist", "train", data_dir=args.data_dir)

        def fit_chose_channels_last() -> bool:
            chosen = yaml.safe_load(open("/tmp/cnnkit-bench-overhead/config.yaml"))["chosen"]
            return chosen["layout"].startswith("channels-last")

        one = {"fit": lambda r: fit_epoch(args.data_dir, args.amp),  # runs first, so the loops know fit's layout
               "fit_original_order": lambda r: fit_epoch(args.data_dir, args.amp, ORIGINAL_KW, "/tmp/cnnkit-bench-oo"),
               "plain_same": lambda r: plain_loop(data, amp, fit_chose_channels_last(), seed=r),
               "plain_same_kept_memory": lambda r: plain_loop(data, amp, fit_chose_channels_last(), seed=r,
                                                              kept_memory=True),
               "kept_memory_fp32_channels_last": lambda r: plain_loop(data, None, True, seed=r, kept_memory=True)}
        for dname, dt in (("fp32", None), ("bf16", torch.bfloat16)):
            for layout in ("nchw", "channels_last"):
                one[f"plain_{dname}_{layout}"] = (lambda dt, cl: lambda r: plain_loop(data, dt, cl, seed=r))(
                    dt, layout == "channels_last")
        print(json.dumps({"arm": args.one, "images_per_s": one[args.one](args.seed)}))
        return
    data = load_dataset("fashion-mnist", "train", data_dir=args.data_dir)
    runs: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(args.repeats):  # every arm in a fresh process, the order rotating round by round
        for name in arms[r % len(arms):] + arms[:r % len(arms)]:
            runs[name].append(run_arm(name, args, r))
        print({k: round(v[-1]) for k, v in runs.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    fit_cfg = yaml.safe_load(open("/tmp/cnnkit-bench-overhead/config.yaml"))
    fit_layout = "channels_last" if fit_cfg["chosen"]["layout"].startswith("channels-last") else "nchw"
    same = f"plain_{'bf16' if amp is not None else 'fp32'}_{fit_layout}"
    # each repeat's fit against the same repeat's loop, minutes apart: this machine's speed drifts by ±10% over
    # minutes, so the median of these paired ratios is the steadier figure
    paired = paired_ratio([f / p for f, p in zip(runs["fit"], runs[same])])
    kept = "kept_memory_fp32_channels_last"
    paired_kept = paired_ratio([f / p for f, p in zip(runs["fit"], runs[kept])])
    plain = {k: v for k, v in med.items() if k.startswith("plain_")}  # the hand-written loops, as people write them
    fastest = max(plain, key=plain.get)

    flops = train_flops_per_image(create(MODEL, 10, 1, **KW), (1, 28, 28))
    # pooling first moves no convolution, so both orderings count the same FLOPs and share one utilization scale
    assert flops == train_flops_per_image(create(MODEL, 10, 1, **ORIGINAL_KW), (1, 28, 28))
    sgemm = gemm_peak_gflops(torch.float32)
    bf16_gemm = gemm_peak_gflops(torch.bfloat16)
    step_seconds = BATCH / med["fit"]
    pipeline = {name: input_pipeline(data, AugmentConfig(**RECIPES[name]["mnist-like"].get("augment", {})),
                                     step_seconds) for name in ("fast", "long")}
    result = {
        "command": command_line("benchmarks.trainer_overhead"),
        "method": "every arm one epoch of the full Fashion-MNIST training set in a fresh process, `--repeats` "
                  "rounds in a rotating order; paired ratios per round, median with a distribution-free 95% interval",
        "cpu_details": cpu, "amp": args.amp, "fit_precision": fit_cfg["chosen"]["precision"],
        "fit_layout": fit_cfg["chosen"]["layout"],
        "model": f"{MODEL} {KW}", "fit_original_order_model": f"{MODEL} {ORIGINAL_KW}", "batch_size": BATCH, "images": len(data),
        "images_per_s_median": med, "images_per_s_runs": runs,
        "plain_same_setting": same, "ratio_fit_over_plain_same_setting": paired,
        "ratio_fit_over_fit_original_order": paired_ratio([f / o for f, o in zip(runs["fit"], runs["fit_original_order"])]),
        "fastest_plain": fastest,
        "ratio_fit_over_fastest_plain": paired_ratio([f / p for f, p in zip(runs["fit"], runs[fastest])]),
        "ratio_fit_over_fp32_channels_last": paired_ratio(
            [f / p for f, p in zip(runs["fit"], runs["plain_fp32_channels_last"])]),
        "ratio_fit_over_kept_memory_fp32_channels_last": paired_kept,
        "train_gflop_per_image": flops / 1e9,
        "sgemm_peak_gflops": sgemm, "bf16_gemm_peak_gflops": bf16_gemm,
        "fit_share_of_sgemm_peak": med["fit"] * flops / 1e9 / sgemm,
        "mfu_vs_sgemm": {k: v * flops / 1e9 / sgemm for k, v in med.items()},
        "mfu_vs_bf16_gemm": {k: v * flops / 1e9 / bf16_gemm for k, v in med.items()},
        "input_pipeline": pipeline,
    }
    print(write_result(f"trainer_overhead_{args.amp}", result))
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "images_per_s_runs"})


if __name__ == "__main__":
    main()
