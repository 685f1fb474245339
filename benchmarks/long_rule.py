"""Re-derive `--budget`'s rule for the `long` recipe on validation data: from 6 minutes on, a budget tries the
`long` recipe (ResNet-9 width 24 with EMA) and keeps it only if this machine fits `LONG_RECIPE_MIN_EPOCHS` (8)
of its epochs, else trains the `fast` one. That threshold was adopted after a test-set miss; this script asks
the question on a validation split instead, and never reads the test split.

For each budget in `--budgets` and each seed in `--seeds`, both recipes train to the budget on full
Fashion-MNIST with a tenth of the training split held out (`--val-fraction 0.1`, split seed 0 for every run,
so every run is scored on the same 6,000 images), in fresh processes, the two recipes' order alternated. Each
run reports the last model's validation accuracy (with the recipe's flip TTA, as `cnnkit train` validates) and
how many epochs it fitted. Per budget: the mean paired difference long − fast over the seeds with a t-interval.
The rule the data supports: the fewest `long` epochs from which `long` is not behind `fast` at any budget
measured (no measurable difference or ahead), printed beside the rule in the code.

    python -m benchmarks.long_rule --budgets 6m 10m 15m --seeds 0 1 2 3 4 --amp off   # long_rule_off.json

Run it on a quiet machine: the epochs a budget fits depend on the machine's speed (about 2 × budget × seeds of
wall time in all: 5 seeds of 6, 10 and 15 minutes take about five hours on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, SHARED_DATA, command_line, t_interval, write_result


def one(recipe: str, budget: str, seed: int, amp: str, data_dir: str, data: str = "fashion-mnist") -> dict:
    """One run in this (fresh) process."""
    from cnnkit.train import fit, parse_budget

    with tempfile.TemporaryDirectory(prefix="cnnkit-long-rule-") as d:
        r = fit(data=data, data_dir=data_dir, recipe=recipe, budget=parse_budget(budget), seed=seed,
                split_seed=0, val_fraction=0.1, amp=amp, out=str(Path(d) / "run"), progress=False)
        last = r.history[-1]
        return {"recipe": recipe, "budget": budget, "seed": seed, "epochs": int(last["epoch"]),
                "val_acc_last": float(last["val_acc"]), "best_val_acc": r.best_val_acc, "seconds": r.seconds,
                "model": r.config.model, "model_kwargs": r.config.model_kwargs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", default=["6m", "10m", "15m"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--amp", choices=("off", "auto"), default="off")
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--data", default="fashion-mnist", help="sample: a smoke run (long_rule_quick_*.json)")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # RECIPE BUDGET SEED, in this fresh process
    args = ap.parse_args()
    if args.one:
        recipe, budget, seed = args.one
        print(json.dumps(one(recipe, budget, int(seed), args.amp, args.data_dir, args.data)))
        return
    from cnnkit.train.config import LONG_RECIPE_MIN_EPOCHS

    runs = []
    for budget in args.budgets:
        for i, seed in enumerate(args.seeds):
            for recipe in (("fast", "long") if i % 2 == 0 else ("long", "fast")):
                out = subprocess.run([sys.executable, "-m", "benchmarks.long_rule", "--amp", args.amp, "--data-dir",
                                      args.data_dir, "--data", args.data, "--one", recipe, budget, str(seed)],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{recipe} {budget} seed {seed} failed: {out.stderr.strip().splitlines()[-1]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
    per_budget = {}
    for budget in args.budgets:
        pick = {(r["recipe"], r["seed"]): r for r in runs if r["budget"] == budget}
        diff = t_interval([100 * (pick["long", s]["val_acc_last"] - pick["fast", s]["val_acc_last"])
                           for s in args.seeds])
        per_budget[budget] = {"long_minus_fast_points": diff,
                              "long_epochs": sorted(pick["long", s]["epochs"] for s in args.seeds),
                              "fast_epochs": sorted(pick["fast", s]["epochs"] for s in args.seeds),
                              "verdict": ("no measurable difference" if diff["holds_zero"] else
                                          "long ahead" if diff["mean"] > 0 else "long behind")}
    not_behind = [min(v["long_epochs"]) for v in per_budget.values() if v["verdict"] != "long behind"]
    behind = [max(v["long_epochs"]) for v in per_budget.values() if v["verdict"] == "long behind"]
    supported = min((e for e in not_behind if all(e > b for b in behind)), default=None)
    payload = {"command": command_line("benchmarks.long_rule"), "amp": args.amp, "seeds": args.seeds,
               "selection": "validation split only (val_fraction 0.1, split seed 0); the test split is not read",
               "runs": runs, "per_budget": per_budget, "rule_in_code": LONG_RECIPE_MIN_EPOCHS,
               "fewest_long_epochs_not_behind": supported}
    name = f"long_rule_{args.amp}" if args.data == "fashion-mnist" else f"long_rule_quick_{args.amp}"
    write_result(name, payload)
    lines = [f"`long` against `fast` at each budget, validation accuracy of the last model (the tenth of the "
             f"training split held out, split seed 0), {len(args.seeds)} seeds, --amp {args.amp}.", "",
             "| budget | long epochs fitted | fast epochs fitted | long − fast (points) | 95% interval | verdict |",
             "| --- | --- | --- | ---: | --- | --- |"]
    for b, v in per_budget.items():
        d = v["long_minus_fast_points"]
        lines.append(f"| {b} | {', '.join(map(str, v['long_epochs']))} | {', '.join(map(str, v['fast_epochs']))} | "
                     f"{d['mean']:+.2f} | {d['interval'][0]:+.2f} to {d['interval'][1]:+.2f} | {v['verdict']} |")
    lines += ["", f"Rule in the code: keep `long` from {LONG_RECIPE_MIN_EPOCHS} of its epochs. Fewest `long` epochs "
                  f"from which it was not behind at any budget measured here: {supported if supported else 'none'}."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
