"""Model soups (Wortsman et al. 2022) on Fashion-MNIST, beside the paper's ImageNet figure.

A ResNet-9 (width 16) is trained with the fast recipe (the base); ingredients are fine-tuned from its best
checkpoint with `--init-from BASE/best.safetensors --split-seed 0` and different seeds, learning rates and
augmentations, as a hyperparameter sweep would make them; then `cnnkit.merge.make_soup` makes the uniform
and the greedy soup. Every ingredient and both soups are scored on the images of the validation split that no
run trained on (the held-out set the greedy soup is chosen on) and on the 10,000 test images. As an ablation
the uniform soup is also scored with its BatchNorm statistics averaged rather than re-measured.

The paper's reference (CLIP ViT-B/32, 72 fine-tuned ingredients, ImageNet top-1, from the authors' released
result files in github.com/mlfoundations/model-soups): best individual model on held-out 80.39, uniform soup
79.97, greedy soup 81.03.

Check: the greedy soup's test accuracy is at least that of the best single ingredient (best on held-out, as
the paper chooses it).

    python -m benchmarks.soups           # writes benchmarks/results/soups.json and soups.md (about 20 minutes on 2 cores)
    python -m benchmarks.soups --quick   # a smoke run on the bundled sample (about 2 minutes; soups_quick.*)
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, SHARED_DATA, command_line, paired_bootstrap, write_result

PAPER = {"model": "CLIP ViT-B/32, 72 ingredients, ImageNet top-1", "best_individual": 80.39, "uniform_soup": 79.97,
         "greedy_soup": 81.03,
         "source": "individual_model_results.jsonl, uniform_soup_results.jsonl, greedy_soup_results.jsonl of "
                   "github.com/mlfoundations/model-soups (the best individual model is the best on held-out "
                   "ImageNet2p, model_43)"}

# (name, seed, peak learning rate, augmentation): a small sweep around the fast recipe (flip, no crop)
SWEEP = [
    ("s1-lr0.02", 1, 0.02, {"hflip": True}),
    ("s2-lr0.05", 2, 0.05, {"hflip": True}),
    ("s3-lr0.01-noaug", 3, 0.01, {"hflip": False}),
    ("s4-lr0.02-crop2", 4, 0.02, {"hflip": True, "crop_padding": 2}),
    ("s5-lr0.05-erase", 5, 0.05, {"hflip": True, "erasing": 0.25}),
    ("s6-lr0.1-crop2", 6, 0.1, {"hflip": True, "crop_padding": 2}),
    ("s7-lr0.02-mixup", 7, 0.02, {"hflip": True, "mixup": 0.2}),
    ("s8-lr0.05-noaug", 8, 0.05, {"hflip": False}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--base-epochs", type=int, default=4)
    ap.add_argument("--ingredient-epochs", type=int, default=2)
    ap.add_argument("--ingredients", type=int, default=6, help=f"how many of the sweep's {len(SWEEP)}")
    ap.add_argument("--bn-images", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default); 1 is faster on a "
                                                           "machine that other jobs keep busy")
    ap.add_argument("--quick", action="store_true", help="a smoke run on the bundled sample: 2 + 1 epochs, "
                                                         "6 ingredients, 1,000 BatchNorm images")
    args = ap.parse_args()
    data = "fashion-mnist"
    if args.quick:  # the bundled sample (4,500 training, 500 validation, 1,000 test images)
        args.base_epochs, args.ingredient_epochs, args.ingredients, args.bn_images = 2, 1, 6, 1000
        data = "sample"
    import torch

    from cnnkit.artifacts import load
    from cnnkit.data.compat import load_checkpoint_data
    from cnnkit.merge import Scorer, average_states, held_out_indices, load_ingredients, make_soup
    from cnnkit.train import fit

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cnnkit-soups-bench-"))
    common = dict(model="resnet9", model_kwargs={"width": args.width}, data=data, data_dir=args.data_dir,
                  threads=args.threads, progress=False)
    timing: dict[str, float] = {}
    sweep = SWEEP[:args.ingredients]
    try:
        t = time.perf_counter()
        base = fit(**common, epochs=args.base_epochs, seed=0, split_seed=0, out=str(work / "base"))
        timing["base"] = time.perf_counter() - t
        print("base", base.history[-1], flush=True)
        init = str(base.run_dir / "best.safetensors")
        runs, recipes = [], {}
        t = time.perf_counter()
        for name, seed, lr, augment in sweep:
            # fine-tuning: a short cosine decay from the peak rate after a brief warm-up, not the base's one-cycle
            r = fit(**common, epochs=args.ingredient_epochs, init_from=init, seed=seed, split_seed=0, lr=lr,
                    augment=augment, schedule="cosine", warmup_epochs=0.2, out=str(work / name))
            runs.append(str(r.run_dir))
            recipes[name] = {"seed": seed, "lr": lr, "augment": augment, "epochs": args.ingredient_epochs,
                             "best_val_acc_tta": r.best_val_acc}
            print(name, r.history[-1], flush=True)
        timing["ingredients"] = time.perf_counter() - t
        t = time.perf_counter()
        soup = make_soup(runs, "both", out=work / "soup", bn_images=args.bn_images, device="cpu", progress=True)
        timing["soups"] = time.perf_counter() - t
        # the base, and the uniform soup with its BatchNorm statistics averaged (not re-measured), on the same images
        t = time.perf_counter()
        ings = load_ingredients(runs)
        first = ings[0].ckpt
        train = load_checkpoint_data(first, None, "train")
        held = train.subset(held_out_indices(ings, train.labels, train.name), "held-out")
        test = load_checkpoint_data(first, None, "test")
        dev = torch.device("cpu")
        score_held, score_test = Scorer(held, dev, 512), Scorer(test, dev, 512)
        b = load(base.run_dir)
        base_scores = {"heldout_acc": score_held(b.model, b.normalization),
                       "test_acc": score_test(b.model, b.normalization)}
        chef = next(i for i in ings if i.name == soup.kept[0]).ckpt  # the best ingredient: the soups' metadata
        plain = copy.deepcopy(chef.model)
        plain.load_state_dict(average_states([i.state for i in ings]))
        nobn = {"name": "uniform soup, BatchNorm averaged", "kind": "uniform soup (no BN recompute)",
                "heldout_acc": score_held(plain, chef.normalization), "test_acc": score_test(plain, chef.normalization),
                "kept": None, "ingredients": [i.name for i in ings], "checkpoint": None}
        timing["base_and_ablation"] = time.perf_counter() - t
        # per-image test correctness of the best single ingredient (chosen on held-out) and of both soups, for
        # paired bootstraps over the test images (one base, one sweep: seeds would cost a whole run each)
        from cnnkit.evaluate import evaluate

        chosen = max((r for r in soup.rows if r.kind == "ingredient"), key=lambda r: r.heldout_acc)
        paths = {"best single": chosen.checkpoint,
                 "greedy soup": soup.row("greedy soup").checkpoint, "uniform soup": soup.row("uniform soup").checkpoint}
        hits = {}
        for k, path in paths.items():
            ev = evaluate(path, data_dir=args.data_dir, device="cpu")
            hits[k] = (ev.probs.argmax(1) == ev.labels).numpy()
        differences = {"greedy_minus_best_single": paired_bootstrap(hits["greedy soup"], hits["best single"]),
                       "uniform_minus_best_single": paired_bootstrap(hits["uniform soup"], hits["best single"]),
                       "greedy_minus_uniform": paired_bootstrap(hits["greedy soup"], hits["uniform soup"])}
        print(json.dumps(differences, indent=1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ingredients = [r for r in soup.rows if r.kind == "ingredient"]
    best = max(ingredients, key=lambda r: r.heldout_acc)  # first of equals, as the greedy soup starts
    greedy, uniform = soup.row("greedy soup"), soup.row("uniform soup")
    checks = {
        "greedy_soup_test_at_least_best_single_ingredient": greedy.test_acc >= best.test_acc,
        "greedy_soup_ahead_of_best_single_interval_above_0": differences["greedy_minus_best_single"]["interval_points"][0] > 0,
        "greedy_soup_heldout_at_least_best_single_ingredient": greedy.heldout_acc >= best.heldout_acc,
        "bn_recompute_helps_the_uniform_soup": uniform.test_acc >= nobn["test_acc"],
    }
    payload = {
        "budget": {"model": f"resnet9 width {args.width}", "data": data, "train_images": "all but the validation "
                   "split (10%)", "base_epochs": args.base_epochs, "ingredient_epochs": args.ingredient_epochs,
                   "ingredients": len(sweep), "bn_images": soup.bn_images, "heldout_images": soup.heldout_images,
                   "seconds": timing},
        "base": base_scores, "recipes": recipes,
        "rows": [vars(r) for r in soup.rows] + [nobn],
        "greedy_steps": [vars(s) for s in soup.steps], "greedy_kept": soup.kept,
        "best_single": {"name": best.name, "heldout_acc": best.heldout_acc, "test_acc": best.test_acc},
        "best_single_on_test": max(r.test_acc for r in ingredients),
        "test_differences_paired_bootstrap": differences,
        "checks": checks, "paper": PAPER, "command": command_line("benchmarks.soups")}
    name = "soups_quick" if args.quick else "soups"
    path = write_result(name, payload)
    write_markdown(payload, RESULTS / f"{name}.md")
    print(json.dumps(checks, indent=2), path)


def write_markdown(p: dict, out: Path) -> None:
    def pct(v: float) -> str:
        return f"{100 * v:.2f}"

    lines = ["| ingredient / soup | held-out acc | test acc | in greedy soup |", "| --- | ---: | ---: | --- |",
             f"| base (the ingredients' start) | {pct(p['base']['heldout_acc'])} | {pct(p['base']['test_acc'])} | — |"]
    n = sum(r["kind"] == "ingredient" for r in p["rows"])
    for r in p["rows"]:
        kept = ("yes" if r["kept"] else "no") if r["kept"] is not None else f"{len(r['ingredients'])} of {n}"
        lines.append(f"| {r['name']} | {pct(r['heldout_acc'])} | {pct(r['test_acc'])} | {kept} |")
    b = p["best_single"]
    greedy = next(r for r in p["rows"] if r["kind"] == "greedy soup")
    uniform = next(r for r in p["rows"] if r["kind"] == "uniform soup")
    paper = p["paper"]
    lines += ["", "| | best single (on held-out) | uniform soup | greedy soup |", "| --- | ---: | ---: | ---: |",
              f"| this benchmark, test acc | {pct(b['test_acc'])} ({b['name']}) | {pct(uniform['test_acc'])} | "
              f"{pct(greedy['test_acc'])} |",
              f"| paper, {paper['model']} | {paper['best_individual']:.2f} | {paper['uniform_soup']:.2f} | "
              f"{paper['greedy_soup']:.2f} |",
              "", "Greedy search: " + "; ".join(
                  f"{s['name']} {pct(s['heldout_acc'])}" + ("" if s["before"] is None else
                                                             f" ({'kept' if s['kept'] else 'left out'})")
                  for s in p["greedy_steps"]) + ".",
              "", "Paired differences on the test images (points, 95% bootstrap interval; one base, one sweep):", ""]
    lines += [f"- {k}: {d['difference_points']:+.2f} ({d['interval_points'][0]:+.2f} to {d['interval_points'][1]:+.2f})"
              for k, d in p["test_differences_paired_bootstrap"].items()]
    lines += ["", "| check | met |", "| --- | --- |"] + [f"| {k} | {'yes' if v else 'no'} |"
                                                          for k, v in p["checks"].items()]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
