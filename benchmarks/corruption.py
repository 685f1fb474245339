"""Test-time BatchNorm adaptation on a corruption benchmark (Fashion-MNIST-C): the mean corruption error of the
source model against prediction-time BN (Schneider et al., 2020), alpha-BN (You, Li and Zhao, 2021) and Tent
(Wang et al., 2021), at test batch sizes 1, 16 and 128.

The source model is ResNet-9 (width 16) trained with cnnkit's fast recipe on full Fashion-MNIST (or `--source
RUN`). Fashion-MNIST-C is cnnkit's generation of the 15 corruptions × 5 severities of Hendrycks and Dietterich
(2019) from the 10,000 test images (see cnnkit.data.corruptions). At batch 128 every image of every cell is
evaluated; at batch 16 and 1 a stratified, seeded subset of each cell (the same images in every cell), because
batch 1 runs a forward (and for Tent a backward) pass per image. Each cell starts from the source model.
Evaluation in float32 (`--amp off`), so the numbers do not depend on the CPU's bf16 support.

    python -m benchmarks.corruption   # writes benchmarks/results/corruption.json and .md (about 40 minutes)

alpha-bn's α is chosen on validation data, never on the test split: `--alphas 0,0.05,0.1,0.2,0.3,0.5,1` evaluates
each α on the same 75 corruption cells made from the source run's validation images (training images it held
out), picks the lowest mean corruption error per test batch size, and then reads the test split once per batch
size, at the chosen α and for the source model and plain BN (fixed in advance): corruption_alpha.json and .md.
The main table's α (0.1) was fixed before any run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, SHARED_DATA, command_line, machine, write_result

PAPER = ("Schneider et al. (NeurIPS 2020): prediction-time BN lowers ResNet-50's ImageNet-C mCE from 76.7 to 62.2 "
         "(AlexNet-normalized mCE, large batches); You et al. (2021): alpha-BN keeps its gain at batch size 1, "
         "where plain prediction-time BN degrades; Wang et al. (ICLR 2021): Tent improves on BN on CIFAR-10/100-C "
         "and ImageNet-C.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--source", default=None, help="a trained Fashion-MNIST run (default: train one)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--per-cell", default="128:all,16:1000,1:200",
                    help="batch size: images per cell (all = the 10,000)")
    ap.add_argument("--val-per-cell", default=None, help="with --alphas: images per cell of the validation cells, per "
                                                         "batch size (default: as --per-cell)")
    ap.add_argument("--quick", action="store_true", help="smoke run: sample data, 2 corruptions, tiny subsets")
    ap.add_argument("--alphas", default=None, help="instead: choose alpha-bn's α among these (e.g. 0,0.05,0.1,0.2,"
                                                   "0.3,0.5,1) on corrupted validation images, then read the test "
                                                   "split once: corruption_alpha.json/.md")
    args = ap.parse_args()
    from cnnkit.evaluate import evaluate_corruptions
    from cnnkit.train import fit

    work = Path(tempfile.mkdtemp(prefix="cnnkit-corruption-"))
    data, bench = ("sample", "sample-c:fog,contrast:3,5") if args.quick else ("fashion-mnist", "fashion-mnist-c")
    plan = {int(b): (None if n == "all" else int(n)) for b, n in (p.split(":") for p in args.per_cell.split(","))}
    if args.quick:
        plan = {128: None, 16: 200, 1: 20}
    try:
        if args.source:
            from cnnkit.artifacts import read_meta
            from cnnkit.artifacts.checkpoint import resolve_checkpoint

            source = Path(args.source)
            meta = read_meta(resolve_checkpoint(source))
            val_acc = meta["metrics"].get("val_acc")
            cfg = meta["config"]
            source_note = (f"{cfg['model']} {cfg['model_kwargs']}, {cfg['epochs']} epochs on {cfg['data'].split('/')[-1]}, "
                           f"seed {cfg['seed']}, amp {cfg['amp']} (val acc {val_acc:.4f})")
        else:
            t = time.perf_counter()
            run = fit(model="resnet9", model_kwargs={"width": 16}, data=data, data_dir=args.data_dir,
                      epochs=1 if args.quick else args.epochs, out=str(work / "source"), progress=False)
            source, val_acc = run.best_checkpoint, run.best_val_acc
            source_note = f"resnet9 width 16, fast recipe, {args.epochs} epochs on {data} (val acc {val_acc:.4f})"
            print(f"source model trained in {time.perf_counter() - t:.0f} s, val acc {val_acc:.4f}", flush=True)
        rows = []
        if args.alphas:
            _alpha_sweep(args, source, source_note, bench, plan)
            return
        for batch, per_cell in sorted(plan.items(), reverse=True):
            for adapt in (None, "bn", "alpha-bn", "tent"):
                t = time.perf_counter()
                r = evaluate_corruptions(source, bench, data_dir=args.data_dir, batch_size=batch, device="cpu",
                                         adapt=adapt, alpha=args.alpha if adapt == "alpha-bn" else None,
                                         images_per_cell=per_cell)
                rows.append({"batch": batch, "images_per_cell": per_cell or "all", "adapt": adapt or "source",
                             "clean_error": r.clean_error, "mce": r.mean_corruption_error,
                             "per_corruption": r.metrics["per_corruption"],
                             "severity5": sum(row[5] for row in r.errors.values() if 5 in row)
                             / max(1, sum(5 in row for row in r.errors.values())),
                             "seconds": time.perf_counter() - t})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_corruption"}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def mce(batch, adapt):
        return next(r["mce"] for r in rows if r["batch"] == batch and r["adapt"] == adapt)

    big, one = max(plan), min(plan)
    checks = {
        f"adaptation lowers the mCE at batch {big}": all(mce(big, a) < mce(big, "source") for a in ("bn", "alpha-bn", "tent")),
        f"alpha-bn holds at batch {one} (mCE not above the source's)": mce(one, "alpha-bn") <= mce(one, "source"),
        f"plain bn falls apart at batch {one} (mCE above the source's)": mce(one, "bn") > mce(one, "source"),
        f"alpha-bn beats plain bn at batch {one}": mce(one, "alpha-bn") < mce(one, "bn"),
    }
    payload = {"machine": machine(), "source": source_note,
               "benchmark": bench, "alpha": args.alpha, "tent": "Adam lr 1e-3, one step per batch, online within a cell",
               "rows": rows, "checks": checks, "paper": PAPER, "quick": args.quick,
               "command": command_line("benchmarks.corruption")}
    name = "corruption_quick" if args.quick else "corruption"
    write_result(name, payload)
    lines = [f"Mean corruption error (%) on {bench}, source model and test-time adaptation (alpha-bn α = {args.alpha}).",
             "", "| test batch | images per cell | source | bn | alpha-bn | tent | clean (source / bn) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batch in sorted(plan, reverse=True):
        by = {r["adapt"]: r for r in rows if r["batch"] == batch}
        lines.append(f"| {batch} | {by['source']['images_per_cell']} | "
                     + " | ".join(f"{100 * by[a]['mce']:.2f}" for a in ("source", "bn", "alpha-bn", "tent"))
                     + f" | {100 * by['source']['clean_error']:.2f} / {100 * by['bn']['clean_error']:.2f} |")
    lines += ["", "| check | met |", "| --- | --- |"] + [f"| {k} | {'yes' if v else 'no'} |" for k, v in checks.items()]
    lines += ["", f"Per corruption at batch {big} (error %):", "",
              "| corruption | source | bn | alpha-bn | tent |", "| --- | ---: | ---: | ---: | ---: |"]
    by = {r["adapt"]: r for r in rows if r["batch"] == big}
    for c in by["source"]["per_corruption"]:
        lines.append(f"| {c} | " + " | ".join(f"{100 * by[a]['per_corruption'][c]:.2f}"
                                            for a in ("source", "bn", "alpha-bn", "tent")) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _alpha_sweep(args, source, source_note: str, bench: str, plan: dict) -> None:
    """alpha-bn's α chosen per test batch size on corruptions of the source run's validation images (training
    images it held out), then the test split read once per batch size: at the chosen α, and for the source
    model (α 0) and prediction-time BN (α 1), both fixed in advance."""
    from cnnkit.evaluate import evaluate_corruptions

    alphas = sorted({float(a) for a in args.alphas.split(",")})
    val_rows, test_rows = [], []

    def run(split, batch, per_cell, alpha):
        t = time.perf_counter()
        adapt = None if alpha == 0 else "bn" if alpha == 1 else "alpha-bn"
        r = evaluate_corruptions(source, bench, data_dir=args.data_dir, batch_size=batch, device="cpu", adapt=adapt,
                                 alpha=alpha if adapt == "alpha-bn" else None, images_per_cell=per_cell, split=split)
        row = {"split": split, "batch": batch, "images_per_cell": per_cell or "all", "alpha": alpha,
               "clean_error": r.clean_error, "mce": r.mean_corruption_error, "seconds": time.perf_counter() - t}
        print(json.dumps(row), flush=True)
        return row

    val_plan = dict(plan)
    if args.val_per_cell and not args.quick:
        val_plan.update({int(b): (None if n == "all" else int(n))
                         for b, n in (p.split(":") for p in args.val_per_cell.split(","))})
    chosen = {}
    for batch, per_cell in sorted(val_plan.items(), reverse=True):
        if batch not in plan:
            continue
        here = [run("val", batch, per_cell, a) for a in alphas]
        val_rows += here
        chosen[batch] = min(here, key=lambda r: (r["mce"], r["alpha"]))["alpha"]
    for batch, per_cell in sorted(plan.items(), reverse=True):  # the test split, once per setting
        for alpha in sorted({0.0, 1.0, chosen[batch]}):
            test_rows.append({**run("test", batch, per_cell, alpha), "chosen": alpha == chosen[batch]})
    name = "corruption_alpha_quick" if args.quick else "corruption_alpha"
    write_result(name, {
        "machine": machine(), "source": source_note, "benchmark": bench, "alphas": alphas,
        "selection": "α with the lowest mean corruption error on the corrupted validation images (the source run's "
                     "held-out training images, same 75 cells), per test batch size; ties to the smaller α",
        "chosen_alpha": {str(b): a for b, a in chosen.items()}, "validation": val_rows, "test": test_rows,
        "command": command_line("benchmarks.corruption")})
    lines = [f"alpha-bn on {bench}: α chosen on the corrupted validation images, then the test split read once.",
             "", "Validation (the source run's held-out training images, corrupted): mean corruption error (%) against "
             "α (0 = source, 1 = bn).", "",
             "| test batch | images per cell | " + " | ".join(f"α {a:g}" for a in alphas) + " | chosen α |",
             "| ---: | ---: | " + " | ".join("---:" for _ in alphas) + " | ---: |"]
    for batch in sorted(plan, reverse=True):
        by = {r["alpha"]: r for r in val_rows if r["batch"] == batch}
        lines.append(f"| {batch} | {by[alphas[0]]['images_per_cell']} | "
                     + " | ".join(f"{100 * by[a]['mce']:.2f}" for a in alphas) + f" | {chosen[batch]:g} |")
    lines += ["", "Test (read once per setting): mean corruption error / clean error (%).", "",
              "| test batch | source (α 0) | bn (α 1) | alpha-bn at the chosen α |", "| ---: | ---: | ---: | ---: |"]
    for batch in sorted(plan, reverse=True):
        by = {r["alpha"]: r for r in test_rows if r["batch"] == batch}
        lines.append(f"| {batch} | " + " | ".join(f"{100 * by[a]['mce']:.2f} / {100 * by[a]['clean_error']:.1f}"
                                                 for a in (0.0, 1.0, chosen[batch])) + f" (α {chosen[batch]:g}) |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
