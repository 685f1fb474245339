"""The small-input zoo on full Fashion-MNIST: one recipe, one wall-clock budget per model, on this CPU.

For every small-input family (and the training spine's default, resnet9 width 16 with its own `fast`
recipe, as the baseline) the script
  1. measures training throughput for a few steps (bf16 autocast and channels-last where the CPU has bf16,
     exactly as `fit` trains), and from it plans how many images fit in the budget: the smallest number of
     whole epochs that covers them, each over a stratified subset of the 60,000 training images sized so
     that the run fills the budget (all 60,000 when they fit);
  2. trains with `fit` (val_fraction 0; the clock is fit's own and includes data loading);
  3. evaluates the last weights on the 10,000 test images (fp32, no TTA);
  4. reads parameters and MACs (torch.utils.flop_counter) from the model card and measures fp32 inference
     throughput at batch 64.
The zoo recipe (AdamW, lr 2e-3, weight decay 0.05, one-cycle, batch 256, label smoothing 0.1, random crop
with 2 px padding) is the same for every zoo model; nothing was tuned per model.

It also measures the InceptionNeXt claim: the Inception depthwise token mixer against ConvNeXt's 7×7
depthwise mixer in the same MetaNeXt network (inception_next_mini with mixer=inception vs mixer=dw7).

    python -m benchmarks.zoo                 # writes benchmarks/results/zoo.{json,md,png}
    python -m benchmarks.zoo --plot-only     # redraw the PNG and table from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, SHARED_DATA, command_line, write_result
from cnnkit.evaluate import evaluate
from cnnkit.models import create
from cnnkit.models.card import model_card
from cnnkit.runtime import autocast, autocast_dtype

ZOO = ["resnet20", "resnet56", "preact_resnet20", "pyramidnet", "vgg8_bn_mini", "vgg11_bn_mini",
       "inception_v4_mini", "inception_resnet_v2_mini", "mobilenet_v2_mini", "convnext_mini",
       "inception_next_mini", "tinyvgg"]
BASELINE = ("resnet9", {"width": 16})
RECIPE = dict(optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="onecycle", batch_size=256,
              label_smoothing=0.1, ema=0.0, augment={"crop_padding": 2, "hflip": True})
TRAIN_IMAGES = 60000


def train_images_per_s(model: torch.nn.Module, batch: int = 256, steps: int = 6) -> float:
    """Median training img/s of forward+backward+SGD step on random 1×28×28 data, as fit runs it."""
    amp = autocast_dtype("auto", torch.device("cpu"))
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def inference_images_per_s(model: torch.nn.Module, batch: int = 64, bf16: bool = False) -> float:
    model = model.eval()
    x = torch.randn(batch, 1, 28, 28)
    amp = autocast_dtype("auto", torch.device("cpu")) if bf16 else None
    times = []
    with torch.no_grad():
        for i in range(8):
            t0 = time.perf_counter()
            with autocast(torch.device("cpu"), amp):
                model(x)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def run_one(name: str, kwargs: dict, budget_s: float, data_dir: str, baseline: bool) -> dict:
    from cnnkit.train import fit

    card = model_card(name, (1, 28, 28), 10, timing=False, **kwargs)
    model = create(name, 10, 1, img_size=28, **kwargs)
    ips = max(train_images_per_s(model, steps=3), train_images_per_s(model, steps=5))  # the first call runs cold
    images = ips * budget_s * 0.92  # leave room for data loading and checkpoint writes
    epochs = max(1, math.ceil(images / TRAIN_IMAGES))  # whole epochs over a subset sized to fill the budget
    subset = int(images / epochs) if images < epochs * TRAIN_IMAGES - 1000 else None
    subset = max(subset, 2560) if subset else None
    opts = dict(recipe="fast") if baseline else dict(recipe=None, **RECIPE)
    print(f"{name}: {ips:.0f} train img/s -> {epochs} epoch(s) of {subset or TRAIN_IMAGES} images", flush=True)
    result = fit(model=name, model_kwargs=kwargs, data="fashion-mnist", data_dir=data_dir, epochs=epochs,
                 train_images=subset, val_fraction=0.0, seed=0, out=f"/tmp/cnnkit-zoo/{name}", overwrite=True,
                 progress=False, **opts)
    ev = evaluate(result.last_checkpoint, data="fashion-mnist", data_dir=data_dir)
    row = {"model": name, "kwargs": kwargs, "baseline": baseline, "params": card.params, "macs": card.macs,
           "planned_train_img_s": ips, "epochs": epochs, "train_images": subset or TRAIN_IMAGES,
           "train_seconds": result.seconds, "train_img_s": statistics.mean(h["images_per_s"] for h in result.history),
           "test_acc": ev.metrics["top1"],
           "infer_img_s_b64": inference_images_per_s(create(name, 10, 1, img_size=28, **kwargs))}
    print(f"  {row['test_acc']:.4f} in {row['train_seconds'] / 60:.2f} min", flush=True)
    return row


def mixer_comparison(repeats: int = 5) -> dict:
    """Inception depthwise mixer vs ConvNeXt's 7×7 depthwise mixer in the same network: `repeats` rounds,
    the two alternating within each round, medians reported."""
    models = {}
    for mixer in ("inception", "dw7"):
        torch.manual_seed(0)
        models[mixer] = create("inception_next_mini", 10, 1, img_size=28, mixer=mixer)
    keys = ("train_img_s_bf16", "infer_img_s_fp32_b64", "infer_img_s_bf16_b64")
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in models}
    for r in range(repeats):
        for mixer in (("inception", "dw7") if r % 2 == 0 else ("dw7", "inception")):
            m = models[mixer]
            samples[mixer]["train_img_s_bf16"].append(train_images_per_s(m, steps=6))
            samples[mixer]["infer_img_s_fp32_b64"].append(inference_images_per_s(m))
            samples[mixer]["infer_img_s_bf16_b64"].append(inference_images_per_s(m, bf16=True))
    out = {}
    for mixer, m in models.items():
        out[mixer] = {"params": sum(p.numel() for p in m.parameters()),
                      "macs": model_card("inception_next_mini", (1, 28, 28), timing=False, mixer=mixer).macs,
                      **{k: statistics.median(v) for k, v in samples[mixer].items()},
                      "samples": samples[mixer]}
    ratio = {k: out["inception"][k] / out["dw7"][k] for k in keys}
    return {"repeats": repeats, "runs": out, "inception_over_dw7": ratio}


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n / 1e3:.1f} K"


def table(rows: list[dict], budget_min: float) -> str:
    lines = ["| model | test acc | params | MACs | epochs × images | train min | train img/s | infer img/s (b64) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: -r["test_acc"]):
        name = r["model"] + (" (spine default, `fast` recipe)" if r["baseline"] else "")
        lines.append(f"| {name} | {100 * r['test_acc']:.2f}% | {_count(r['params'])} | {r['macs'] / 1e6:.1f} M | "
                     f"{r['epochs']} × {r['train_images']:,} | {r['train_seconds'] / 60:.2f} | "
                     f"{r['train_img_s']:,.0f} | {r['infer_img_s_b64']:,.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnkit.report.plots import save_figure

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        ax.scatter(r["train_seconds"] / 60, 100 * r["test_acc"], s=20 + 30 * math.log10(max(r["macs"], 1e6) / 1e6),
                   color="crimson" if r["baseline"] else "steelblue")
        ax.annotate(r["model"], (r["train_seconds"] / 60, 100 * r["test_acc"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("training wall-clock (min, 2 CPU cores)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("Small-input zoo at one budget per model (marker size ~ log MACs; red: spine default)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def chained_command(previous: str | None) -> str:
    """The command of a result this run updates in place: the run that wrote it, then this one."""
    this = command_line("benchmarks.zoo")
    return f"{previous} && {this}" if previous else this


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-min", type=float, default=3.0)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--models", nargs="*", default=ZOO)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--mixer-only", action="store_true", help="Re-measure only the mixer comparison.")
    ap.add_argument("--infer-only", action="store_true",
                    help="Re-measure inference throughput of every row: 3 interleaved rounds, median.")
    args = ap.parse_args()
    if args.infer_only:
        saved = json.loads((RESULTS / "zoo.json").read_text())
        saved.pop("benchmark", None), saved.pop("machine", None)
        samples: dict[str, list[float]] = {r["model"]: [] for r in saved["rows"]}
        for _ in range(3):
            for r in saved["rows"]:
                samples[r["model"]].append(inference_images_per_s(create(r["model"], 10, 1, img_size=28,
                                                                         **r["kwargs"])))
        for r in saved["rows"]:
            r["infer_img_s_b64"], r["infer_samples"] = statistics.median(samples[r["model"]]), samples[r["model"]]
        saved["command"] = chained_command(saved.get("command"))
        write_result("zoo", saved)
        (RESULTS / "zoo.md").write_text(table(saved["rows"], saved["budget_min"]) + "\n")
        print(table(saved["rows"], saved["budget_min"]))
        return
    if args.mixer_only:
        saved = json.loads((RESULTS / "zoo.json").read_text())
        saved.pop("benchmark", None), saved.pop("machine", None)
        saved["mixer"] = mixer_comparison()
        print(json.dumps(saved["mixer"]["inception_over_dw7"]))
        saved["command"] = chained_command(saved.get("command"))
        write_result("zoo", saved)
        return
    if args.plot_only:
        saved = json.loads((RESULTS / "zoo.json").read_text())
        plot(saved["rows"], RESULTS / "zoo.png")
        (RESULTS / "zoo.md").write_text(table(saved["rows"], saved["budget_min"]) + "\n")
        return
    mixer = mixer_comparison()
    print(json.dumps(mixer["inception_over_dw7"]), flush=True)
    rows = [run_one(BASELINE[0], BASELINE[1], args.budget_min * 60, args.data_dir, True)]
    for name in args.models:
        rows.append(run_one(name, {}, args.budget_min * 60, args.data_dir, False))
        write_result("zoo", {"budget_min": args.budget_min, "recipe": RECIPE, "rows": rows, "mixer": mixer,
                             "partial": True, "command": command_line("benchmarks.zoo")})
    best = max((r for r in rows if not r["baseline"]), key=lambda r: r["test_acc"])
    base = rows[0]
    write_result("zoo", {"budget_min": args.budget_min, "recipe": RECIPE, "rows": rows, "mixer": mixer,
                         "best_zoo_model": best["model"], "best_beats_baseline": best["test_acc"] > base["test_acc"],
                         "command": command_line("benchmarks.zoo")})
    plot(rows, RESULTS / "zoo.png")
    (RESULTS / "zoo.md").write_text(table(rows, args.budget_min) + "\n")
    print(table(rows, args.budget_min))


if __name__ == "__main__":
    main()
