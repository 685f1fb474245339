"""Time to accuracy on full Fashion-MNIST (60k train, 10k test) with a named recipe, on this machine.

The clock starts before `fit` is called and so includes data loading, every epoch's training, checkpoint
writing and the test evaluation after each epoch (with the recipe's flip TTA). The recipe trains on all
60,000 training images for its fixed number of epochs (val_fraction=0); its hyperparameters were chosen
on a validation split carved from the training set (see docs/benchmarks/time-budget.md), never on the test set. The test accuracy
after each epoch is recorded to draw the curve; it selects nothing: the reported model is the last one.

    python -m benchmarks.time_to_accuracy --recipe fast     # target: >= 93.0% within 3 minutes
    python -m benchmarks.time_to_accuracy --recipe long     # targets: >= 94.5% within 10, >= 95.0% within 30 min
    python -m benchmarks.time_to_accuracy --budget 3m --amp off    # `cnnkit train --budget 3m`, fp32 only
    python -m benchmarks.time_to_accuracy --budget 10m --amp auto  # ... to 10 minutes, what auto picks
    python -m benchmarks.time_to_accuracy --budget 1m --device cuda  # on a GPU (..._cuda.json)
    python -m benchmarks.time_to_accuracy --budget 10m --amp off --seed 3  # another seed (..._seed3.json)
    python -m benchmarks.time_to_accuracy --budget 10m --amp off --summarize 0 1 2 3 4  # ..._seeds.json
    (`--tag NAME` in each of these names the files ..._NAME[_seedN].json: runs on another machine)

With --budget the run is exactly `cnnkit train --data fashion-mnist --budget B --val-fraction 0` (the
recipe chosen by the budget), plus the test evaluation after each epoch that draws the curve; that
evaluation happens inside the budget's clock, which the run accounts for after its first epoch. `--amp off`
stands in for a CPU without native bf16 (fp32 is all `auto` would use there).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import RESULTS, SHARED_DATA, command_line, write_result
from cnnkit.data import BatchLoader, load_dataset
from cnnkit.runtime import autocast_dtype
from cnnkit.evaluate.loop import evaluate_loader
from cnnkit.train import fit

TARGETS = {"fast": [(0.930, 3)], "long": [(0.945, 10), (0.950, 30)], "budget-3m": [(0.930, 3)],
           "budget-10m": [(0.945, 10)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=sorted(TARGETS), default="fast")
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="Override the recipe's epochs (the budget-matched run).")
    ap.add_argument("--budget", default=None, help="Train to this budget (3m or 10m) instead of a recipe's epochs.")
    ap.add_argument("--amp", default="auto", choices=("auto", "off"))
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    ap.add_argument("--plot-only", action="store_true", help="Redraw the PNG from the saved JSON; train nothing.")
    ap.add_argument("--tag", default=None, help="Add _TAG to the result's name (e.g. the machine), so that runs on "
                                                "another machine do not replace the committed ones.")
    ap.add_argument("--summarize", type=int, nargs="+", metavar="SEED", default=None,
                    help="Train nothing: gather the runs of these seeds (each written by --seed N) into NAME_seeds.json, "
                         "the final test accuracy's mean over seeds and its margin over each target with a t-interval.")
    args = ap.parse_args()
    name = f"time_to_accuracy_{args.recipe}" + (f"_e{args.epochs}" if args.epochs else "")
    label = f"--recipe {args.recipe}" + (f" --epochs {args.epochs}" if args.epochs else "")
    if args.budget:
        name, label = f"time_to_accuracy_budget{args.budget}_{args.amp}", f"--budget {args.budget} --amp {args.amp}"
    if args.device.startswith("cuda"):
        name, label = f"{name}_cuda", f"{label} --device {args.device}"
    if args.tag:
        name = f"{name}_{args.tag}"
    if args.seed:
        name, label = f"{name}_seed{args.seed}", f"{label} --seed {args.seed}"
    if args.summarize:
        summarize(name, args)
        return
    if args.plot_only:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        plot(saved["curve"], saved["targets"], label, RESULTS / f"{name}.png")
        return

    start = time.perf_counter()
    test = load_dataset("fashion-mnist", "test", data_dir=args.data_dir)
    curve: list[dict[str, float]] = []

    def test_accuracy(end) -> None:
        loader = BatchLoader(test, 1000, end.normalize)
        probs, labels = evaluate_loader(end.eval_model, loader, end.device, autocast_dtype(args.amp, end.device),
                                        tta=True)
        acc = float((probs.argmax(1) == labels).float().mean())
        curve.append({"epoch": end.epoch, "minutes": (time.perf_counter() - start) / 60, "test_acc": acc,
                      "train_loss": end.metrics["train_loss"]})
        print(f"epoch {end.epoch}: test {acc:.4f} at {curve[-1]['minutes']:.2f} min", flush=True)

    if args.budget:
        from cnnkit.train import parse_budget

        length = {"budget": parse_budget(args.budget)}
    else:
        length = {"recipe": args.recipe, "epochs": args.epochs}
    result = fit(data="fashion-mnist", data_dir=args.data_dir, val_fraction=0.0, amp=args.amp, device=args.device,
                 seed=args.seed, out=f"/tmp/cnnkit-tta-{name}", overwrite=True, progress=False,
                 callbacks=[test_accuracy], **length)
    total_minutes = (time.perf_counter() - start) / 60
    targets = []
    for acc, minutes in TARGETS.get(f"budget-{args.budget}" if args.budget else args.recipe, []):
        first = next((c for c in curve if c["test_acc"] >= acc), None)
        targets.append({"accuracy": acc, "within_minutes": minutes,
                        "reached_at_minutes": first["minutes"] if first else None,
                        "met": bool(first and first["minutes"] <= minutes)})
    import yaml

    from cnnkit.runtime import cpu_description

    chosen = yaml.safe_load((result.run_dir / "config.yaml").read_text()).get("chosen", {})
    payload = {"recipe": result.config.recipe, "budget": args.budget, "amp": args.amp, "chosen": chosen,
               "cpu_details": cpu_description(), "config": result.config.to_dict(),
               "final_test_acc": curve[-1]["test_acc"], "total_minutes": total_minutes,
               "ended_inside_budget": (total_minutes * 60 <= length["budget"]) if args.budget else None,
               "targets": targets, "curve": curve, "threads": torch.get_num_threads(),
               "command": command_line("benchmarks.time_to_accuracy")}
    print(write_result(name, payload))
    plot(curve, targets, label, RESULTS / f"{name}.png", gpu=args.device.startswith("cuda"))
    for t in targets:
        print(t)


def summarize(name: str, args) -> None:
    """Several seeds of one setting: mean final test accuracy and margin over each target, with t-intervals;
    a target counts as met when every seed reached it in time and the margin's interval lies above 0."""
    from benchmarks.common import t_interval

    files = [RESULTS / (f"{name}.json" if s == 0 else f"{name}_seed{s}.json") for s in args.summarize]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"no run for: {', '.join(missing)} (write each with --seed N first)")
    runs = [json.loads(f.read_text()) for f in files]
    finals = [100 * r["final_test_acc"] for r in runs]
    targets = []
    for i, t in enumerate(runs[0]["targets"]):
        margin = t_interval([f - 100 * t["accuracy"] for f in finals])
        in_time = [bool(r["targets"][i]["met"]) for r in runs]
        targets.append({"accuracy": t["accuracy"], "within_minutes": t["within_minutes"], "met_per_seed": in_time,
                        "final_margin_points": margin,
                        "met": bool(all(in_time) and margin["interval"][0] > 0)})
    payload = {"seeds": args.summarize, "files": [f.name for f in files], "final_test_acc_points": t_interval(finals),
               "total_minutes": [r["total_minutes"] for r in runs],
               "epochs": [r["curve"][-1]["epoch"] for r in runs], "targets": targets,
               "command": command_line("benchmarks.time_to_accuracy")}
    print(write_result(f"{name}_seeds", payload))
    for t in targets:
        print(t)


def plot(curve, targets, label: str, path, gpu: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([c["minutes"] for c in curve], [100 * c["test_acc"] for c in curve], "o-", label=label)
    for i, t in enumerate(targets):
        ax.plot([t["within_minutes"]], [100 * t["accuracy"]], "r*", markersize=12,
                label="target (accuracy by minute)" if i == 0 else None)
        ax.axhline(100 * t["accuracy"], color="r", alpha=0.25, linestyle="--")
    ax.set(xlabel=f"wall-clock minutes ({'one GPU' if gpu else '2 CPU cores'}, incl. data loading and evaluation)",
           ylabel="Fashion-MNIST test accuracy (%)", title=f"Time to accuracy, {label}",
           ylim=(max(80, 100 * min(c["test_acc"] for c in curve) - 1),
                 max(96, 100 * max(c["test_acc"] for c in curve) + 0.5)))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
