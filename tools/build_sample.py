"""Rebuild the bundled `sample` dataset: a class-balanced subset of Fashion-MNIST in the official IDX format.

    python tools/build_sample.py ../shared/datasets

Takes the first 500 training and 100 test images of each class (in file order) and writes them as
gzip-compressed IDX files under src/cnnkit/data/sample/FashionMNIST/raw/.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import torch

from cnnkit.data import load_dataset

OUT = Path(__file__).resolve().parents[1] / "src/cnnkit/data/sample/FashionMNIST/raw"
PER_CLASS = {"train": 500, "test": 100}


def write_idx(path: Path, array: torch.Tensor) -> None:
    """IDX: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, then the raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(header + array.numpy().tobytes())


def main(data_dir: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_dataset("fashion-mnist", split, data_dir=data_dir)
        idx = torch.cat([torch.nonzero(data.labels == c).flatten()[:PER_CLASS[split]] for c in range(10)])
        idx = torch.sort(idx).values
        write_idx(OUT / f"{prefix}-images-idx3-ubyte.gz", data.images[idx, 0].contiguous())
        write_idx(OUT / f"{prefix}-labels-idx1-ubyte.gz", data.labels[idx].to(torch.uint8))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets")
