"""The detection papers' claims, measured on fashion-scenes: three ablations, each two arms of `cnnkit train`.

    python -m benchmarks.detect_ablations --seeds 0 1 --epochs 4

- fpn: RetinaNet on an FPN over the stride 8, 16 and 32 maps (the default) against a single-scale head on the
  stride-16 map alone, its three anchor sizes all there (Lin et al. 2017, FPN: the pyramid helps small objects).
  Read: AP of small objects (COCO's < 32² pixels) on the test split, and mAP.
- ssd: SSD predicting from the backbone's four maps (strides 4 to 32, the default) against the last map alone
  (Liu et al. 2016: predictions from several feature maps). Read: mAP.
- focal: RetinaNet with the focal loss (gamma 2, alpha 0.25) against alpha-balanced cross-entropy (gamma 0,
  alpha 0.75, the paper's best CE setting) (Lin et al. 2017, RetinaNet). Read: mAP.

Every arm is the same command but for its model options: the fashion-scenes training split, 10% held out for
validation (split seed 0 for every run), the detection family's settings (AdamW, batch 32, lr 1e-3, one-cycle
over `--epochs`, gradient clipping at norm 1), fp32, NCHW; the best checkpoint kept by validation mAP, then the test split read once by `cnnkit eval`.
Each run in a fresh process; per seed, the arms of an ablation run back to back in alternating order. The
difference per seed (arm minus baseline) is reported with a t interval over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.common import command_line, t_interval, write_result
from cnnkit.runtime import cpu_description

DATA = "fashion-scenes"
ABLATIONS = {  # name: (claim's arm, baseline arm, the test metric read); each arm: model and its options
    "fpn": (("retinanet_small", []), ("retinanet_small", ["strides=[16]", "fpn=false"]), "map_small"),
    "ssd": (("ssd_small", []), ("ssd_small", ["strides=[32]"]), "map"),
    "focal": (("retinanet_small", []), ("retinanet_small", ["focal_gamma=0", "focal_alpha=0.75"]), "map"),
}


def run_arm(root: Path, ablation: str, arm: str, model: str, options: list[str], seed: int, args) -> dict:
    out = root / f"{ablation}-{arm}-seed{seed}"
    train = ["cnnkit", "train", "--data", DATA, "--model", model, "--epochs", str(args.epochs), "--seed", str(seed),
             "--split-seed", "0", "--amp", "off", "--no-channels-last", "--threads", str(args.threads),
             "--out", str(out), "--overwrite", "--quiet"]
    for o in ["width=16", *options]:
        train += ["--model-kw", o]
    started = time.perf_counter()
    subprocess.run(train, check=True)
    seconds = time.perf_counter() - started
    ev = ["cnnkit", "eval", "--checkpoint", str(out), "--split", "test"]
    before = set(out.glob("eval-*.json"))
    subprocess.run(ev, check=True, capture_output=True)
    test = json.loads(sorted(set(out.glob("eval-*.json")) - before)[-1].read_text())
    return {"ablation": ablation, "arm": arm, "seed": seed, "model": model, "options": options,
            "train_command": " ".join(train), "train_seconds": seconds,
            "test": {k: test[k] for k in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
                                          "mar_100")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=list(ABLATIONS), default=list(ABLATIONS))
    ap.add_argument("--out", default="/tmp/cnnkit-bench-det-ablations")
    ap.add_argument("--note")
    args = ap.parse_args()
    root = Path(args.out)
    runs = []
    for seed in args.seeds:
        for name in args.only:
            claim, base, _ = ABLATIONS[name]
            arms = [("claim", *claim), ("baseline", *base)]
            for arm, model, options in (arms if seed % 2 == 0 else arms[::-1]):
                runs.append(run_arm(root, name, arm, model, options, seed, args))
                print(name, arm, seed, {k: round(v, 4) for k, v in runs[-1]["test"].items()}, flush=True)
    table = {}
    for name in args.only:
        metric = ABLATIONS[name][2]
        value = {(r["arm"], r["seed"]): r["test"] for r in runs if r["ablation"] == name}
        diffs = [value[("claim", s)][metric] - value[("baseline", s)][metric] for s in args.seeds]
        table[name] = {"metric": metric,
                       **{arm: {"runs": [value[(arm, s)][metric] for s in args.seeds],
                                "mean": statistics.mean(value[(arm, s)][metric] for s in args.seeds),
                                "map_mean": statistics.mean(value[(arm, s)]["map"] for s in args.seeds)}
                          for arm in ("claim", "baseline")},
                       "claim_minus_baseline": diffs,
                       **({"interval": t_interval(diffs)} if len(diffs) > 1 else {})}
    result = {"command": command_line("benchmarks.detect_ablations"), "cpu_details": cpu_description(),
              "epochs": args.epochs, "seeds": args.seeds, "data": DATA, "ablations": {
                  k: {"claim": f"{v[0][0]} {v[0][1]}", "baseline": f"{v[1][0]} {v[1][1]}", "metric": v[2]}
                  for k, v in ABLATIONS.items() if k in args.only},
              "method": "fixed epochs, fp32, NCHW; best checkpoint by validation mAP (10% held out, split seed 0); "
                        "test split read once per run; arms alternated per seed",
              "table": table, "runs": runs, **({"note": args.note} if args.note else {})}
    print(write_result("detect_ablations", result))


if __name__ == "__main__":
    main()
