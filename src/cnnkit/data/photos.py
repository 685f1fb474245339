"""Photographs for restoration (super-resolution and denoising), which needs no labels: `photographs`, the real
photographs that installed packages ship (scikit-image's sample images, scikit-learn's two and matplotlib's
portrait of Grace Hopper), split by photograph into training and test images that never overlap; or
`photofolder:DIR`, any folder of images of any size and mode (DIR/train and DIR/test when both are there, else a
seeded share of the files held out as the test split).

The training split is cut into square patches (`--img-size`, default 96, which ×2, ×3 and ×4 divide) with a
stride of half a patch, as SRCNN cuts its sub-images; a photograph smaller than a patch is left out of training,
counted. The test split keeps every photograph whole: padded at the bottom and right to the largest (each
image's own height and width in `sizes`), so that restoration evaluates each at its own size.

With one channel (`in_chans` 1) a photograph is its luma Y as MATLAB's `rgb2ycbcr` computes it (ITU-R BT.601,
16 to 235), the channel the super-resolution papers train and score on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnkit.data.base import ImageData, LoadOptions, TrainingData, image_size
from cnnkit.data.images import IMAGE_EXTENSIONS, convert_mode, load_image_file
from cnnkit.errors import DataError

PATCH = 96  # default training patch side: divisible by 2, 3 and 4
MAX_PHOTO_PIXELS = 40_000_000  # a photograph's decoded size is bounded: 40 Mpixel, a large camera's
CLASSES = ["photo"]
# the bundled photographs, by name: test (five, as Set5 has) and training never share one
BUNDLED_TEST = ("astronaut", "chelsea", "coffee", "grace_hopper", "flower")
BUNDLED_TRAIN = ("china", "rocket", "hubble_deep_field", "ihc", "motorcycle_left", "retina", "camera", "moon",
                 "brick", "grass", "gravel", "coins", "clock_motion")
_SKIMAGE_FILES = {"astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png",
                  "rocket": "rocket.jpg", "hubble_deep_field": "hubble_deep_field.jpg", "ihc": "ihc.png",
                  "motorcycle_left": "motorcycle_left.png", "retina": "retina.jpg", "camera": "camera.png",
                  "moon": "moon.png", "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png",
                  "coins": "coins.png", "clock_motion": "clock_motion.png"}


def bundled_photo_files() -> dict[str, Path]:
    """Each bundled photograph's file, found inside the package that ships it (nothing is downloaded)."""
    try:
        import matplotlib
        import skimage
        import sklearn
    except ImportError as e:  # scikit-image is one of cnnkit's dependencies; a trimmed install may lack it
        raise DataError(f"the bundled photographs come from installed packages, and {e.name} is missing: "
                        f"pip install scikit-image scikit-learn matplotlib") from None
    files = {"china": Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
             "flower": Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
             "grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}
    files.update({k: Path(skimage.__file__).parent / "data" / v for k, v in _SKIMAGE_FILES.items()})
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"a bundled photograph is missing from its package: {missing[0]}; reinstall it with "
                        f"`make dev` (the pinned versions ship it)")
    return files


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """Y of ITU-R BT.601 in studio range (16 to 235), as MATLAB's rgb2ycbcr: float C×H×W or N×C×H×W RGB on the
    0..1 scale in, Y on the same scale out (one channel)."""
    r, g, b = rgb.unbind(-3)
    return ((16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0).unsqueeze(-3)


def decode_photo(path: Path, in_chans: int, name: str | None = None) -> torch.Tensor:
    """A photograph as uint8 C×H×W: RGB, or its luma (see `luma`) for one channel; its decoded size bounded."""
    image = convert_mode(load_image_file(path, max_pixels=MAX_PHOTO_PIXELS, name=name), 3)
    rgb = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    if in_chans == 3:
        return rgb
    return luma(rgb.float() / 255).mul(255).round().clamp(0, 255).to(torch.uint8)


def patches(images: list[torch.Tensor], size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Every `size` patch at `stride` steps of each image (each image's last row and column of patches flush with
    its bottom and right edges), uint8 N×C×H×W."""
    out = []
    for im in images:
        h, w = im.shape[-2:]
        if h < size[0] or w < size[1]:
            continue
        tops = sorted({*range(0, h - size[0] + 1, stride[0]), h - size[0]})
        lefts = sorted({*range(0, w - size[1] + 1, stride[1]), w - size[1]})
        out += [im[:, t:t + size[0], s:s + size[1]] for t in tops for s in lefts]
    if not out:
        raise DataError(f"no photograph is at least {size[0]}×{size[1]} pixels: give a smaller --img-size")
    return torch.stack(out).contiguous()


def padded(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of any sizes as one uint8 N×C×H×W (zero-padded at the bottom and right to the largest) and each
    one's (H, W)."""
    sizes = torch.tensor([list(im.shape[-2:]) for im in images], dtype=torch.int64)
    h, w = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    out = torch.zeros(len(images), images[0].shape[0], h, w, dtype=torch.uint8)
    for i, im in enumerate(images):
        out[i, :, :im.shape[1], :im.shape[2]] = im
    return out, sizes


def _folder_files(root: Path, split: str, options: LoadOptions) -> list[Path]:
    """The image files of `split` in a photo folder: DIR/train and DIR/test, else a seeded share held out."""
    if not root.is_dir():
        raise DataError(f"photofolder: {root} is not a folder")
    listed = lambda d: sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS  # noqa: E731
                              and p.is_file())
    if (root / "train").is_dir() and (root / "test").is_dir():
        files = listed(root / split)
        if not files:
            raise DataError(f"photofolder: {root / split} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    files = listed(root)
    if len(files) < 2:
        raise DataError(f"photofolder: {root} holds {len(files)} image file(s); a test split needs at least 2 (or give "
                        f"{root}/train and {root}/test)")
    g = torch.Generator().manual_seed(options.seed)
    order = torch.randperm(len(files), generator=g).tolist()
    held = max(1, round(options.test_fraction * len(files)))
    test = set(order[:held])
    return [f for i, f in enumerate(files) if (i in test) == (split == "test")]


def open_training(name: str, options: LoadOptions, mode: str, processes: int, validation: bool) -> TrainingData:
    """The training patches, in memory, with the statistics that leave them on the 0..1 scale (restoration
    networks take images as they are, not normalized)."""
    full = load(name, "train", options)
    return TrainingData(full, note="in memory (patches)", stats=([0.0] * full.in_chans, [1.0] * full.in_chans))


def load(name: str, split: str, options: LoadOptions) -> ImageData:
    """The source loader of `photographs` and `photofolder:DIR`: the training split as patches, the test split whole."""
    in_chans = options.in_chans or 3
    if in_chans not in (1, 3):
        raise DataError(f"photos are read as RGB (3 channels) or their luma (1), not {in_chans} channels")
    _, colon, folder = name.partition(":")
    if colon:
        root = Path(folder).expanduser()
        files = [(str(p.relative_to(root)), p) for p in _folder_files(root, split, options)]
    else:
        bundled = bundled_photo_files()
        files = [(k, bundled[k]) for k in (BUNDLED_TRAIN if split == "train" else BUNDLED_TEST)]
    images = [decode_photo(path, in_chans, label) for label, path in files]
    if split == "test":
        pixels, sizes = padded(images)
        return ImageData(pixels, torch.zeros(len(images), dtype=torch.int64), list(CLASSES), name, split,
                         sizes=sizes)
    size = image_size(options.img_size) or (PATCH, PATCH)
    small = [label for (label, _), im in zip(files, images) if im.shape[1] < size[0] or im.shape[2] < size[1]]
    cut = patches(images, size, (max(1, size[0] // 2), max(1, size[1] // 2)))
    return ImageData(cut, torch.zeros(len(cut), dtype=torch.int64), list(CLASSES), name, split,
                     skipped=[f"{label}: smaller than a {size[0]}×{size[1]} patch" for label in small])
