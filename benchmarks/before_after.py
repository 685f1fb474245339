"""Before/after: training throughput of this checkout against an earlier commit, on the same machine, same run.

Issue 14's rule "where bf16 is native, nothing gets slower than today": the earlier commit (default 05aeffb, the
last one before the issue's precision and layout work) is checked out into a temporary git worktree and each
version trains in its own child process (PYTHONPATH pointing at its `src`), alternately, `--repeats` times.
Two settings, both one epoch of full Fashion-MNIST with `--amp` as given, no validation:

- `fixed`: ResNet-9 width 16, batch 256, SGD lr 0.2, no augmentation (the trainer-overhead benchmark's run);
- `default`: what `cnnkit train --recipe fast --data fashion-mnist --epochs 1` does in each version.

    python -m benchmarks.before_after --amp auto     # writes benchmarks/results/before_after_auto.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, SHARED_DATA, command_line, write_result

CHILD = r"""
import json, sys, time
from cnnkit.train import fit
setting, amp, data_dir, out = sys.argv[1:5]
opts = dict(data="fashion-mnist", data_dir=data_dir, epochs=1, amp=amp, val_fraction=0.0, tta=False, out=out,
            overwrite=True, progress=False)
if setting == "fixed":
    opts.update(model="resnet9", model_kwargs={"width": 16}, batch_size=256, lr=0.2, label_smoothing=0.0,
                augment={"crop_padding": 0, "hflip": False})
else:
    opts.update(recipe="fast")
t = time.perf_counter()
r = fit(**opts)
print(json.dumps({"images_per_s": r.history[0]["images_per_s"], "wall_s": time.perf_counter() - t}))
"""


def run_child(src: Path, setting: str, amp: str, data_dir: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-c", CHILD, setting, amp, data_dir, str(Path(out) / "run")],
                              env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="05aeffb")
    ap.add_argument("--amp", choices=("off", "auto"), default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    args = ap.parse_args()
    before_rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), before_rev], cwd=ROOT, check=True)
        try:
            srcs = {"before": tree / "src", "after": ROOT / "src"}
            runs: dict[str, list[dict]] = {f"{s}_{v}": [] for s in ("fixed", "default") for v in srcs}
            for r in range(args.repeats):
                for setting in ("fixed", "default"):
                    order = list(srcs) if r % 2 == 0 else list(reversed(srcs))
                    for version in order:
                        runs[f"{setting}_{version}"].append(run_child(srcs[version], setting, args.amp,
                                                                      args.data_dir))
                        print(version, setting, runs[f"{setting}_{version}"][-1], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in runs.items()}
    result = {"command": command_line("benchmarks.before_after"),
              "amp": args.amp, "before": before_rev, "images_per_s_median": med, "runs": runs,
              "ratio_after_over_before": {s: med[f"{s}_after"] / med[f"{s}_before"] for s in ("fixed", "default")}}
    print(write_result(f"before_after_{args.amp}", result))
    print(json.dumps({k: result[k] for k in ("images_per_s_median", "ratio_after_over_before")}, indent=1))


if __name__ == "__main__":
    main()
