"""Page faults per training step with glibc's default malloc limits, inside cnnkit's raised ones
(cnnkit.runtime.reuse_freed_memory, what `fit` runs in), and after leaving them (what any later work in a
process that called `fit` gets): the fast recipe's model (ResNet-9 width 16, pooling first), batch 256, fp32
channels-last, 2 threads. Each arm runs in a fresh process (no earlier allocation shapes its heap), the three
in a rotating order, `--repeats` rounds (default 6); each process times and counts 20 steps after 3 of warm-up
(for `after_leaving`, 3 steps inside the limits, then 3 of warm-up and the 20 measured after leaving them). Per round, the
paired ratios of each arm's step time and faults to the fresh glibc-defaults process of the same round; the
summary gives their medians with a distribution-free 95% interval.

    python -m benchmarks.page_faults     # writes benchmarks/results/page_faults.json (about three minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import command_line, paired_ratio, write_result

STEPS = r"""
import json, resource, statistics, sys, time, torch
from cnnkit.models import create
from cnnkit.runtime import reuse_freed_memory
from cnnkit.train import RECIPES

torch.manual_seed(0)
model = create("resnet9", 10, 1, **RECIPES["fast"]["mnist-like"]["model_kwargs"]).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
x = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (256,))

def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()

def measure():
    faults, times = [], []
    for _ in range(20):
        f, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    return faults, times

with reuse_freed_memory() as kept:
    for _ in range(3):
        step()
    if sys.argv[1] != "after_leaving":
        faults, times = measure()
if sys.argv[1] == "after_leaving":
    for _ in range(3):  # the steps after leaving warm up as a fresh process's do
        step()
    faults, times = measure()
print(json.dumps({"kept": kept, "faults_per_step": statistics.mean(faults), "step_ms": 1e3 * statistics.median(times)}))
"""


ARMS = ("glibc_defaults", "kept", "after_leaving")


def run(arm: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CNNKIT_MALLOC"}
    env.update({"OMP_NUM_THREADS": "2", **({"CNNKIT_MALLOC": "system"} if arm == "glibc_defaults" else {})})
    out = subprocess.run([sys.executable, "-c", STEPS, arm], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for r in range(args.repeats):
        for arm in ARMS[r % 3:] + ARMS[:r % 3]:  # each arm first, second and third equally often
            runs[arm].append(run(arm))
        print({k: v[-1] for k, v in runs.items()}, flush=True)
    summary = {k: {"faults_per_step_median": statistics.median(r["faults_per_step"] for r in v),
                   "step_ms_median": statistics.median(r["step_ms"] for r in v)} for k, v in runs.items()}
    base = runs["glibc_defaults"]
    for arm in ("kept", "after_leaving"):
        summary[arm]["step_time_vs_glibc_defaults"] = paired_ratio(
            [a["step_ms"] / b["step_ms"] for a, b in zip(runs[arm], base)])
        summary[arm]["faults_vs_glibc_defaults"] = paired_ratio(
            [a["faults_per_step"] / b["faults_per_step"] for a, b in zip(runs[arm], base)])
    print(write_result("page_faults", {"command": command_line("benchmarks.page_faults"),
                                       "model": "resnet9 fast recipe, batch 256, fp32 channels-last, 2 threads",
                                       "runs": runs, "summary": summary}))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
