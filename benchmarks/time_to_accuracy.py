"""Time to accuracy on full Fashion-MNIST (60k train, 10k test) with a named recipe, on this machine's CPU.

The clock starts before `fit` is called and so includes data loading, every epoch's training, checkpoint
writing and the test evaluation after each epoch (with the recipe's flip TTA). The recipe trains on all
60,000 training images for its fixed number of epochs (val_fraction=0); its hyperparameters were chosen
on a validation split carved from the training set (see README), never on the test set. The test accuracy
after each epoch is recorded to draw the curve; it selects nothing: the reported model is the last one.

    python benchmarks/time_to_accuracy.py --recipe fast     # target: >= 93.0% within 3 minutes
    python benchmarks/time_to_accuracy.py --recipe long     # targets: >= 94.5% within 10, >= 95.0% within 30 min
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import RESULTS, SHARED_DATA, write_result
from cnnkit.data import BatchLoader, load_dataset
from cnnkit.runtime import autocast_dtype
from cnnkit.evaluate.loop import evaluate_loader
from cnnkit.train import fit

TARGETS = {"fast": [(0.930, 3)], "long": [(0.945, 10), (0.950, 30)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=sorted(TARGETS), default="fast")
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="Override the recipe's epochs (the budget-matched run).")
    ap.add_argument("--plot-only", action="store_true", help="Redraw the PNG from the saved JSON; train nothing.")
    args = ap.parse_args()
    name = f"time_to_accuracy_{args.recipe}" + (f"_e{args.epochs}" if args.epochs else "")
    label = f"--recipe {args.recipe}" + (f" --epochs {args.epochs}" if args.epochs else "")
    if args.plot_only:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        plot(saved["curve"], saved["targets"], label, RESULTS / f"{name}.png")
        return

    start = time.perf_counter()
    test = load_dataset("fashion-mnist", "test", data_dir=args.data_dir)
    curve: list[dict[str, float]] = []

    def test_accuracy(end) -> None:
        loader = BatchLoader(test, 1000, end.normalize)
        probs, labels = evaluate_loader(end.eval_model, loader, end.device, autocast_dtype("auto", end.device),
                                        tta=True)
        acc = float((probs.argmax(1) == labels).float().mean())
        curve.append({"epoch": end.epoch, "minutes": (time.perf_counter() - start) / 60, "test_acc": acc,
                      "train_loss": end.metrics["train_loss"]})
        print(f"epoch {end.epoch}: test {acc:.4f} at {curve[-1]['minutes']:.2f} min", flush=True)

    result = fit(data="fashion-mnist", data_dir=args.data_dir, recipe=args.recipe, val_fraction=0.0,
                 seed=args.seed, epochs=args.epochs, out=f"/tmp/cnnkit-tta-{args.recipe}", overwrite=True,
                 progress=False, callbacks=[test_accuracy])
    total_minutes = (time.perf_counter() - start) / 60
    targets = []
    for acc, minutes in TARGETS[args.recipe]:
        first = next((c for c in curve if c["test_acc"] >= acc), None)
        targets.append({"accuracy": acc, "within_minutes": minutes,
                        "reached_at_minutes": first["minutes"] if first else None,
                        "met": bool(first and first["minutes"] <= minutes)})
    payload = {"recipe": args.recipe, "config": result.config.to_dict(), "final_test_acc": curve[-1]["test_acc"],
               "total_minutes": total_minutes, "targets": targets, "curve": curve,
               "threads": torch.get_num_threads()}
    print(write_result(name, payload))
    plot(curve, targets, label, RESULTS / f"{name}.png")
    for t in targets:
        print(t)


def plot(curve, targets, label: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([c["minutes"] for c in curve], [100 * c["test_acc"] for c in curve], "o-", label=label)
    for i, t in enumerate(targets):
        ax.plot([t["within_minutes"]], [100 * t["accuracy"]], "r*", markersize=12,
                label="target (accuracy by minute)" if i == 0 else None)
        ax.axhline(100 * t["accuracy"], color="r", alpha=0.25, linestyle="--")
    ax.set(xlabel="wall-clock minutes (2 CPU cores, incl. data loading and evaluation)",
           ylabel="Fashion-MNIST test accuracy (%)", title=f"Time to accuracy, {label}",
           ylim=(max(80, 100 * min(c["test_acc"] for c in curve) - 1),
                 max(96, 100 * max(c["test_acc"] for c in curve) + 0.5)))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
