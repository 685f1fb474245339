"""RotNet (Gidaris et al. 2018) on Fashion-MNIST, checked against the paper's findings:

1. probes on RotNet features beat the same network at random initialization, block by block, and the best
   block is a middle one (Table 1);
2. the best RotNet probe comes within 5 points of the supervised network (Table 1: 89.06 against 92.80);
3. RotNet initialization beats training from scratch with few labels (Figure 5(b));
4. four rotations are at least as good as two (0°/180°) (Table 2: 89.06 against 87.46).

Budget (2 CPU cores, about 25 minutes): NIN-4 at width 0.25 (48 channels instead of 192), 20,000 training
images (2,000 per class, stratified), RotNet pretraining for 8 epochs, the supervised network for 15; probes
(RotNet's non-linear classifier, and logistic regression) on 3×3-grid-pooled block outputs, trained on 20,000
training images' features and scored on the full test set (10,000); the few-label runs fine-tune every layer
for about 450 steps. Everything is seeded; every run is `cnnkit.train.fit`, the code
`cnnkit pretrain` and `cnnkit train` run.

    python -m benchmarks.rotnet      # writes benchmarks/results/rotnet.json, rotnet.md, rotnet_fewlabels.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, SHARED_DATA, write_result

PAPER = {  # CIFAR-10, NIN-4 RotNet, non-linear probes per block; supervised NIN; rotations ablation
    "probe_blocks": [85.07, 89.06, 86.21, 61.73], "supervised": 92.80, "rot4": 89.06, "rot2": 87.46}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--supervised-epochs", type=int, default=15)
    ap.add_argument("--probe-epochs", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1,000 images, 1 epoch each, K = 20, 100")
    args = ap.parse_args()
    # (images per class, epochs, batch): about 400-500 optimizer steps each
    schedule = ((20, 60, 32), (100, 15, 32), (400, 8, 64), (1000, 6, 128))
    if args.quick:
        args.images, args.pretrain_epochs, args.supervised_epochs, args.probe_epochs = 1000, 1, 1, 2
        schedule = ((20, 2, 32), (100, 1, 32))
    from cnnkit.represent import probe
    from cnnkit.train import fit

    work = Path(tempfile.mkdtemp(prefix="cnnkit-rotnet-bench-"))
    common = dict(model="nin4", model_kwargs={"width": args.width}, data="fashion-mnist", data_dir=args.data_dir,
                  train_images=args.images, progress=False, seed=0)
    timing: dict[str, float] = {}
    try:
        runs = {}
        for name, extra, epochs in (("rot4", {"pretext": "rotnet", "rotations": 4}, args.pretrain_epochs),
                                    ("rot2", {"pretext": "rotnet", "rotations": 2}, args.pretrain_epochs),
                                    ("supervised", {}, args.supervised_epochs)):
            t = time.perf_counter()
            runs[name] = fit(**common, **extra, epochs=epochs, out=str(work / name))
            timing[name] = time.perf_counter() - t
            print(name, runs[name].history[-1], flush=True)
        # probes: RotNet (4 and 2 rotations), random init, supervised; linear and non-linear heads, every block
        t = time.perf_counter()
        rows = probe([str(runs["rot4"].run_dir), str(runs["rot2"].run_dir), str(runs["supervised"].run_dir)],
                     "fashion-mnist", "blocks", ["linear", "mlp"], "avg3", args.data_dir, train_limit=args.images,
                     random_baseline=True, pixels=True, epochs=args.probe_epochs, device="cpu")
        conv_rows = probe([str(runs["rot4"].run_dir)], "fashion-mnist", "blocks.block2", ["conv"], "avg3",
                          args.data_dir, train_limit=args.images, random_baseline=True, epochs=args.probe_epochs,
                          device="cpu")
        timing["probes"] = time.perf_counter() - t
        from cnnkit.evaluate import evaluate

        supervised_test = evaluate(runs["supervised"].run_dir, data_dir=args.data_dir).metrics["top1"]
        # few labels: fine-tune from RotNet against from scratch, K images per class
        few = []
        t = time.perf_counter()
        for k, epochs, batch in schedule:
            for init in ("rotnet", "scratch"):
                r = fit(model="nin4", model_kwargs={"width": args.width}, data="fashion-mnist",
                        data_dir=args.data_dir, train_images_per_class=k, epochs=epochs, val_fraction=0.0,
                        batch_size=batch,
                        init_from=str(runs["rot4"].run_dir) if init == "rotnet" else None, progress=False, seed=0,
                        out=str(work / f"few-{k}-{init}"))
                acc = evaluate(r.run_dir, data_dir=args.data_dir).metrics["top1"]
                few.append({"per_class": k, "init": init, "epochs": epochs, "batch": batch, "test_acc": acc,
                            "test_error": 1 - acc})
                print(few[-1], flush=True)
        timing["few_labels"] = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def best(source_prefix: str, head: str | None = None) -> dict:
        cand = [r for r in rows + conv_rows if r.source.startswith(source_prefix) and (head is None or r.head == head)]
        return max(cand, key=lambda r: r.test_acc).__dict__

    rot4, rot2, sup = (str(runs[n].run_dir) for n in ("rot4", "rot2", "supervised"))
    per_block = {}
    for r in rows:
        if r.head == "mlp":
            who = {rot4: "rotnet4", rot2: "rotnet2", sup: "supervised"}.get(r.source, "random" if r.source.startswith("random") else r.source)
            per_block.setdefault(r.layer, {})[who] = r.test_acc
    blocks = [b for b in per_block if b.startswith("blocks.")]
    rot_beats_random = all(per_block[b]["rotnet4"] > per_block[b]["random"] for b in blocks)
    best_block = max(blocks, key=lambda b: per_block[b]["rotnet4"])
    best_rot = max(r.test_acc for r in rows + conv_rows if r.source == rot4)
    best_rot2 = max(r.test_acc for r in rows if r.source == rot2)
    fewd = {(f["per_class"], f["init"]): f["test_acc"] for f in few}
    checks = {
        "rotnet_beats_random_at_every_block": rot_beats_random,
        "best_block_is_a_middle_one": best_block not in (blocks[0], blocks[-1]),
        "best_rotnet_probe_within_5_points_of_supervised": supervised_test - best_rot <= 0.05,
        "rotnet_init_beats_scratch_at_20_per_class": fewd[(20, "rotnet")] > fewd[(20, "scratch")],
        "rotnet_init_beats_scratch_at_100_per_class": fewd[(100, "rotnet")] > fewd[(100, "scratch")],
        "four_rotations_at_least_two": best_rot >= best_rot2,
    }
    payload = {
        "budget": {"model": f"nin4 width {args.width}", "train_images": args.images,
                   "pretrain_epochs": args.pretrain_epochs, "supervised_epochs": args.supervised_epochs,
                   "probe_epochs": args.probe_epochs, "probe_pool": "avg3 (3×3 grid of averages)",
                   "seconds": timing},
        "rotation_accuracy": {n: runs[n].best_val_acc for n in ("rot4", "rot2")},
        "supervised_test_acc": supervised_test, "probe_rows": [r.__dict__ for r in rows + conv_rows],
        "per_block_mlp": per_block, "best_block": best_block, "best_rotnet_probe": best_rot,
        "best_rotnet2_probe": best_rot2, "few_labels": few, "checks": checks, "paper": PAPER,
        "command": "python -m benchmarks.rotnet"}
    name = "rotnet_quick" if args.quick else "rotnet"
    path = write_result(name, payload)
    write_markdown(payload, RESULTS / f"{name}.md")
    plot_few(few, RESULTS / f"{name}_fewlabels.png")
    print(json.dumps(checks, indent=2), path)


def write_markdown(p: dict, out: Path) -> None:
    pb = p["per_block_mlp"]
    blocks = [b for b in pb if b.startswith("blocks.")]
    lines = ["| block | RotNet (4 rot.) | RotNet (2 rot.) | random init | supervised | paper RotNet (CIFAR-10) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for i, b in enumerate(blocks):
        lines.append(f"| {b} | {100 * pb[b]['rotnet4']:.2f} | {100 * pb[b]['rotnet2']:.2f} | "
                     f"{100 * pb[b]['random']:.2f} | {100 * pb[b]['supervised']:.2f} | {PAPER['probe_blocks'][i]:.2f} |")
    lines += ["", f"Supervised NIN-4 (same images, same budget), test accuracy: {100 * p['supervised_test_acc']:.2f} "
                  f"(paper: {PAPER['supervised']:.2f}). Best RotNet probe: {100 * p['best_rotnet_probe']:.2f}; "
                  f"with two rotations: {100 * p['best_rotnet2_probe']:.2f} (paper: {PAPER['rot4']} vs {PAPER['rot2']}).",
              "", "| images per class | RotNet init, test error | scratch, test error | epochs |", "| ---: | ---: | ---: | ---: |"]
    few = {(f["per_class"], f["init"]): f for f in p["few_labels"]}
    for k in sorted({f["per_class"] for f in p["few_labels"]}):
        lines.append(f"| {k} | {100 * few[(k, 'rotnet')]['test_error']:.2f} | {100 * few[(k, 'scratch')]['test_error']:.2f} "
                     f"| {few[(k, 'rotnet')]['epochs']} |")
    lines += ["", "| check | met |", "| --- | --- |"] + [f"| {k} | {'yes' if v else 'no'} |" for k, v in p["checks"].items()]
    out.write_text("\n".join(lines) + "\n")


def plot_few(few: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for init, style in (("rotnet", "o-"), ("scratch", "s--")):
        pts = sorted((f["per_class"], 100 * f["test_error"]) for f in few if f["init"] == init)
        ax.plot([k for k, _ in pts], [e for _, e in pts], style, label="RotNet init" if init == "rotnet" else "scratch")
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test error (%)")
    ax.set_title("Fashion-MNIST, NIN-4 (cf. RotNet Fig. 5b)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
