"""Page faults per training step with glibc's default malloc limits and with the ones fit raises
(cnnkit.runtime.reuse_freed_memory): the fast recipe's model (ResNet-9 width 16, pooling first), batch 256,
fp32 channels-last, 2 threads. Each setting runs in a fresh process (no earlier allocation shapes its heap),
alternately, `--repeats` times; each process times and counts 20 steps after 3 of warm-up.

    python -m benchmarks.page_faults     # writes benchmarks/results/page_faults.json (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import write_result

STEPS = r"""
import json, resource, statistics, time, torch
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

with reuse_freed_memory() as kept:
    for _ in range(3):
        step()
    faults, times = [], []
    for _ in range(20):
        f, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
print(json.dumps({"kept": kept, "faults_per_step": statistics.mean(faults), "step_ms": 1e3 * statistics.median(times)}))
"""


def run(system: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CNNKIT_MALLOC"}
    env.update({"OMP_NUM_THREADS": "2", **({"CNNKIT_MALLOC": "system"} if system else {})})
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"glibc_defaults": [], "kept": []}
    for r in range(args.repeats):
        for name in (("glibc_defaults", "kept") if r % 2 == 0 else ("kept", "glibc_defaults")):
            runs[name].append(run(system=name == "glibc_defaults"))
        print({k: v[-1] for k, v in runs.items()}, flush=True)
    summary = {k: {"faults_per_step_median": statistics.median(r["faults_per_step"] for r in v),
                   "step_ms_median": statistics.median(r["step_ms"] for r in v)} for k, v in runs.items()}
    print(write_result("page_faults", {"model": "resnet9 fast recipe, batch 256, fp32 channels-last, 2 threads",
                                       "runs": runs, "summary": summary}))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
