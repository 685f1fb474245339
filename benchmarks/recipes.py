"""Every small-input model family with its default recipe: `--model M --epochs 10` and nothing else.

For each registered small-input model (one representative per family by default, `--all` for every one)
the script runs exactly what `cnnkit train --model M --data sample --epochs 10` runs (the `fast` dataset
recipe with the family's optimization recipe, 4,500 training and 500 validation images of the bundled
Fashion-MNIST sample), then evaluates the last weights on the sample's 1,000 test images (fp32, no TTA).
A run counts as diverged when the divergence guard stopped it or its loss ended above where it started.
Target (issue 14): every family >= 80% test top-1 and none diverges.

    python -m benchmarks.recipes                 # writes benchmarks/results/recipes.{json,md}
    python -m benchmarks.recipes --models tinyvgg convnext_mini --epochs 3   # a quick look (not saved)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from benchmarks.common import RESULTS, command_line, write_result
from cnnkit.errors import TrainingDiverged
from cnnkit.evaluate import evaluate
from cnnkit.models.registry import get_entry, list_models
from cnnkit.runtime import cpu_description
from cnnkit.train import fit

REPRESENTATIVES = ["resnet9", "resnet20", "preact_resnet20", "pyramidnet", "vgg8_bn_mini", "tinyvgg",
                   "inception_v4_mini", "inception_resnet_v2_mini", "mobilenet_v2_mini", "convnext_mini",
                   "inception_next_mini"]
TARGET = 0.80


def run_one(model: str, epochs: int, amp: str) -> dict:
    row = {"model": model, "family": get_entry(model).family}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = fit(model=model, data="sample", epochs=epochs, amp=amp, out=f"{tmp}/run", progress=False)
        except TrainingDiverged as e:
            row.update(diverged=True, error=str(e), test_acc=None, seconds=time.perf_counter() - start)
            return row
        ev = evaluate(result.last_checkpoint, "sample", "test")
        h = result.history
        row.update(recipe=result.config.model_recipe, optimizer=result.config.optimizer, lr=result.config.lr,
                   weight_decay=result.config.weight_decay, test_acc=ev.metrics["top1"],
                   best_val_acc=result.best_val_acc, first_loss=h[0]["train_loss"], last_loss=h[-1]["train_loss"],
                   diverged=h[-1]["train_loss"] > h[0]["train_loss"], seconds=time.perf_counter() - start,
                   curve=[{"epoch": r["epoch"], "train_loss": r["train_loss"], "val_acc": r["val_acc"]} for r in h])
    return row


def table(rows: list[dict]) -> str:
    lines = []
    for family in sorted({r["family"] for r in rows}):
        lines += [f"### {family}", "", "| model | recipe | optimizer, lr, wd | test top-1 | best val | loss: first → last "
                  "epoch | diverged | minutes |", "| --- | --- | --- | ---: | ---: | --- | --- | ---: |"]
        for r in (r for r in rows if r["family"] == family):
            if r["test_acc"] is None:
                lines.append(f"| {r['model']} | – | – | – | – | – | **yes**: {r['error']} | {r['seconds'] / 60:.1f} |")
                continue
            lines.append(f"| {r['model']} | {r['recipe']} | {r['optimizer']}, {r['lr']:g}, {r['weight_decay']:g} | "
                         f"{100 * r['test_acc']:.1f}% | {100 * r['best_val_acc']:.1f}% | {r['first_loss']:.2f} → "
                         f"{r['last_loss']:.2f} | {'**yes**' if r['diverged'] else 'no'} | {r['seconds'] / 60:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--all", action="store_true", help="Every registered small-input model, not one per family.")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--replace", action="store_true",
                    help="With --models: re-run these and replace their rows in benchmarks/results/recipes.json "
                         "(after a change to their recipe), keeping the other rows.")
    args = ap.parse_args()
    command = command_line("benchmarks.recipes")
    models = args.models or ([m for m in list_models() if not get_entry(m).imagenet] if args.all else REPRESENTATIVES)
    rows = []
    for m in models:
        rows.append(run_one(m, args.epochs, args.amp))
        r = rows[-1]
        print(f"{m}: test {r['test_acc']}, diverged {r['diverged']}, {r['seconds']:.0f} s", flush=True)
    if args.replace and args.models and args.epochs == 10:
        if not (RESULTS / "recipes.json").exists():
            raise SystemExit("--replace needs benchmarks/results/recipes.json: run the whole benchmark first")
        old = json.loads((RESULTS / "recipes.json").read_text())
        if old["amp"] != args.amp:
            raise SystemExit(f"recipes.json was measured with --amp {old['amp']}; replace rows with the same")
        fresh = {r["model"]: r for r in rows}
        rows = [fresh.pop(r["model"], r) for r in old["rows"]] + list(fresh.values())
        command = f"{old['command']} && {command}" if old.get("command") else command  # the full run, then this
    elif args.models or args.epochs != 10:
        print(table(rows))
        return  # a quick look, not the benchmark
    print(table(rows))
    met = all(r["test_acc"] is not None and r["test_acc"] >= TARGET and not r["diverged"] for r in rows)
    payload = {"epochs": args.epochs, "amp": args.amp, "cpu": cpu_description(), "target": TARGET, "met": met,
               "rows": rows, "command": command}
    write_result("recipes", payload)
    (RESULTS / "recipes.md").write_text(
        f"# `benchmarks/recipes.py`: each family's default recipe, `--model M --data sample --epochs 10`\n\n"
        f"CPU: {json.dumps(payload['cpu'])}; `--amp {args.amp}`. Target: every family >= {TARGET:.0%} test top-1 "
        f"and no divergence: **{'met' if met else 'not met'}**.\n\n" + table(rows))


if __name__ == "__main__":
    main()
