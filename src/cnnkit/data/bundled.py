"""The bundled sample: a small slice of Fashion-MNIST shipped with cnnkit (`data/sample/`), so that every
command runs with no download and no data of one's own."""

from __future__ import annotations

from pathlib import Path

from cnnkit.data.base import ImageData, LoadOptions
from cnnkit.data.published import load_mnist_like

SAMPLE_ROOT = Path(__file__).parent / "sample"


def load(name: str, split: str, options: LoadOptions) -> ImageData:
    """The source loader of `sample`: its `split`, named "sample" (the options have nothing to say here)."""
    data = load_mnist_like("fashion-mnist", SAMPLE_ROOT, split == "train", download=False)
    data.name = "sample"
    return data
