"""Photographs for restoration (super-resolution and denoising), which needs no labels: `photographs`, the real
photographs that installed packages ship (scikit-image's sample images, scikit-learn's two and matplotlib's
portrait of Grace Hopper), split by photograph into training and test images that never overlap; or
`photofolder:DIR`, any folder of images of any size and mode (DIR/train and DIR/test when both are there, else a
seeded share of the files held out as the test split); or `pairfolder:DIR`, pairs of images matched by name:
DIR/low and DIR/high (super-resolution: each high image 2, 3 or 4 times its low one, the same factor for all),
or DIR/noisy and DIR/clean (denoising: the same sizes), again with train/ and test/ above them or a share held
out. A pair is held as one image of twice the channels: the clean image, then the given one enlarged by
repeating each pixel (`ImageData.given_scale`), so that patches, flips and batches keep the two together.

The training split is cut into square patches (`--img-size`, default 96, which ×2, ×3 and ×4 divide) with a
stride of half a patch, as SRCNN cuts its sub-images, a photograph larger than 512×512 at a wider stride so that it
gives no more patches than one of 512×512 (each photograph weighs about the same); a photograph smaller than a
patch is left out of training, counted. The test split keeps every photograph whole: padded at the bottom and right to the largest (each
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
PAIR_ROLES = (("low", "high"), ("noisy", "clean"))  # a pair folder's sub-folders: (given, clean)
BALANCE_SIDE = 512  # a photograph gives at most as many training patches as one of 512×512 pixels (`patches`)
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


_YCBCR = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0]) / 255


def ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """YCbCr of ITU-R BT.601 in studio range, as MATLAB's rgb2ycbcr: N×3×H×W on the 0..1 scale in and out (its Y
    is `luma`'s)."""
    return torch.einsum("oc,nchw->nohw", _YCBCR.to(rgb), rgb) + _YCBCR_OFFSET.to(rgb).view(1, 3, 1, 1)


def rgb_from_ycbcr(ycc: torch.Tensor) -> torch.Tensor:
    """The inverse of `ycbcr` (MATLAB's ycbcr2rgb), not clipped."""
    inverse = torch.linalg.inv(_YCBCR.double()).to(ycc)
    return torch.einsum("oc,nchw->nohw", inverse, ycc - _YCBCR_OFFSET.to(ycc).view(1, 3, 1, 1))


def decode_photo(path: Path, in_chans: int, name: str | None = None) -> torch.Tensor:
    """A photograph as uint8 C×H×W: RGB, or its luma (see `luma`) for one channel; its decoded size bounded."""
    image = convert_mode(load_image_file(path, max_pixels=MAX_PHOTO_PIXELS, name=name), 3)
    rgb = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    if in_chans == 3:
        return rgb
    return luma(rgb.float() / 255).mul(255).round().clamp(0, 255).to(torch.uint8)


def _corners(n: int, k: int, stride: int, align: int) -> list[int]:
    """Where patches of side `k` start along a side of `n` pixels: every `stride`, and one flush with the end."""
    return sorted({*range(0, n - k + 1, stride), (n - k) // align * align})


def patches(images: list[torch.Tensor], size: tuple[int, int], stride: tuple[int, int], align: int = 1,
            most: int | None = None) -> torch.Tensor:
    """Every `size` patch at `stride` steps of each image (each image's last row and column of patches flush with
    its bottom and right edges; every corner at a multiple of `align`), uint8 N×C×H×W. With `most`, an image that
    would give more patches is cut at a wider stride, still over all of it, into at most `most`: a large photograph
    then weighs in training as much as the others (scikit-image's 1411×1411 retina scan, mostly black, gave 36% of
    the bundled photographs' 40-pixel patches, their 1000×872 Hubble field another 16%)."""
    out = []
    for im in images:
        h, w = im.shape[-2:]
        if h < size[0] or w < size[1]:
            continue
        (sh, sw), tops, lefts = stride, [], []
        while True:
            tops, lefts = _corners(h, size[0], sh, align), _corners(w, size[1], sw, align)
            if most is None or len(tops) * len(lefts) <= max(most, 1):
                break
            sh, sw = (-(-int(v * 1.1 + 1) // align) * align for v in (sh, sw))  # wider, on the grid
        out += [im[:, t:t + size[0], s:s + size[1]] for t in tops for s in lefts]
    if not out:
        raise DataError(f"no photograph is at least {size[0]}×{size[1]} pixels: give a smaller --img-size")
    return torch.stack(out).contiguous()


def balanced_share(size: tuple[int, int], stride: tuple[int, int], align: int = 1) -> int:
    """The patches a BALANCE_SIDE-square photograph gives: the most that any one photograph gives for training."""
    return len(_corners(BALANCE_SIDE, min(size[0], BALANCE_SIDE), stride[0], align)) * len(
        _corners(BALANCE_SIDE, min(size[1], BALANCE_SIDE), stride[1], align))


def padded(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of any sizes as one uint8 N×C×H×W (zero-padded at the bottom and right to the largest) and each
    one's (H, W)."""
    sizes = torch.tensor([list(im.shape[-2:]) for im in images], dtype=torch.int64)
    h, w = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    out = torch.zeros(len(images), images[0].shape[0], h, w, dtype=torch.uint8)
    for i, im in enumerate(images):
        out[i, :, :im.shape[1], :im.shape[2]] = im
    return out, sizes


def _listed(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _held_out(items: list, split: str, options: LoadOptions) -> list:
    """`split`'s share of `items`: a seeded `test_fraction` of them (at least one) is the test split."""
    g = torch.Generator().manual_seed(options.seed)
    order = torch.randperm(len(items), generator=g).tolist()
    test = set(order[:max(1, round(options.test_fraction * len(items)))])
    return [f for i, f in enumerate(items) if (i in test) == (split == "test")]


def _split_root(source: str, root: Path) -> Path | None:
    """DIR/train's parent when the folder is split (DIR/train and DIR/test), else None."""
    if not root.is_dir():
        raise DataError(f"{source}: {root} is not a folder")
    return root if (root / "train").is_dir() and (root / "test").is_dir() else None


def _folder_files(root: Path, split: str, options: LoadOptions) -> list[Path]:
    """The image files of `split` in a photo folder: DIR/train and DIR/test, else a seeded share held out."""
    if _split_root("photofolder", root) is not None:
        files = _listed(root / split)
        if not files:
            raise DataError(f"photofolder: {root / split} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    files = _listed(root)
    if len(files) < 2:
        raise DataError(f"photofolder: {root} holds {len(files)} image file(s); a test split needs at least 2 (or give "
                        f"{root}/train and {root}/test)")
    return _held_out(files, split, options)


def _pair_files(root: Path, split: str, options: LoadOptions) -> tuple[list[tuple[str, Path, Path]], bool]:
    """`split`'s pairs in a pair folder as (name, given file, clean file), matched by their path without the
    extension, and whether they are low and high (else noisy and clean); a file without its partner is refused
    (DataError, one line)."""
    base = root / split if _split_root("pairfolder", root) is not None else root
    roles = [r for r in PAIR_ROLES if (base / r[0]).is_dir() and (base / r[1]).is_dir()]
    if not roles:
        raise DataError(f"pairfolder: {base} needs two sub-folders of images matched by name: low and high "
                        f"(super-resolution) or noisy and clean (denoising)")
    folders = [base / role for role in roles[0]]
    named = [{str(p.relative_to(d).with_suffix("")): p for p in _listed(d)} for d in folders]
    for mine, theirs, other in ((0, 1, folders[1]), (1, 0, folders[0])):
        alone = sorted(set(named[mine]) - set(named[theirs]))
        if alone:
            more = f" (and {len(alone) - 1} more without one)" if len(alone) > 1 else ""
            raise DataError(f"pairfolder: {named[mine][alone[0]]} has no partner of the same name in {other}{more}")
    pairs = [(name, named[0][name], named[1][name]) for name in sorted(named[0])]
    if not pairs:
        raise DataError(f"pairfolder: {folders[0]} and {folders[1]} hold no image files")
    if base == root:
        if len(pairs) < 2:
            raise DataError(f"pairfolder: {root} holds {len(pairs)} pair; a test split needs at least 2 (or give "
                            f"{root}/train and {root}/test)")
        pairs = _held_out(pairs, split, options)
    return pairs, roles[0][0] == "low"


def _pair(given: torch.Tensor, clean: torch.Tensor, files: tuple[Path, Path], low_high: bool
          ) -> tuple[torch.Tensor, int]:
    """A pair as one 2C×H×W image (the clean one cut to `scale` times the given one, then the given one enlarged
    by repeating pixels) and its scale; sizes that are not a pair's are refused (DataError, one line)."""
    (gh, gw), (ch, cw) = given.shape[-2:], clean.shape[-2:]
    scale = ch // gh if gh else 0
    fits = (scale in (2, 3, 4) and cw // gw == scale and ch - scale * gh < scale and cw - scale * gw < scale
            if low_high else (gh, gw) == (ch, cw))
    if not fits:
        want = ("2, 3 or 4 times its partner's sides (the same factor for both)" if low_high
                else "the same size as its partner")
        raise DataError(f"pairfolder: {files[1]} is {cw}×{ch} pixels and {files[0]} {gw}×{gh}: a clean image must be "
                        f"{want}")
    scale = scale if low_high else 1
    enlarged = given.repeat_interleave(scale, 1).repeat_interleave(scale, 2) if scale > 1 else given
    return torch.cat([clean[:, :gh * scale, :gw * scale], enlarged]), scale


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
    source, colon, folder = name.partition(":")
    if source == "pairfolder":
        return _load_pairs(name, Path(folder).expanduser(), split, options, in_chans)
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
    stride = (max(1, size[0] // 2), max(1, size[1] // 2))
    cut = patches(images, size, stride, most=balanced_share(size, stride))
    return ImageData(cut, torch.zeros(len(cut), dtype=torch.int64), list(CLASSES), name, split,
                     skipped=[f"{label}: smaller than a {size[0]}×{size[1]} patch" for label in small])


def _load_pairs(name: str, root: Path, split: str, options: LoadOptions, in_chans: int) -> ImageData:
    """`pairfolder:DIR`'s split as pairs (see the module's docstring): patches for training (corners on the
    scale's grid), whole pairs for testing."""
    held, scales = [], set()
    pairs, low_high = _pair_files(root, split, options)
    for label, given, clean in pairs:
        pair, scale = _pair(decode_photo(given, in_chans, f"{label} (given)"),
                            decode_photo(clean, in_chans, f"{label} (clean)"), (given, clean), low_high)
        scales.add(scale)
        if len(scales) > 1:
            raise DataError(f"pairfolder: {root}'s pairs are at different scales ({', '.join(map(str, sorted(scales)))}"
                            f"); one folder holds pairs of one scale")
        held.append(pair)
    scale = scales.pop()
    if split == "test":
        pixels, sizes = padded(held)
        return ImageData(pixels, torch.zeros(len(held), dtype=torch.int64), list(CLASSES), name, split, sizes=sizes,
                         given_scale=scale)
    size = image_size(options.img_size) or (PATCH, PATCH)
    if size[0] % scale or size[1] % scale:
        raise DataError(f"pairfolder: the ×{scale} pairs need patches whose sides {scale} divides; --img-size "
                        f"{size[0]}x{size[1]} is not one")
    stride = tuple(max(scale, n // 2 // scale * scale) for n in size)
    cut = patches(held, size, stride, align=scale, most=balanced_share(size, stride, scale))
    return ImageData(cut, torch.zeros(len(cut), dtype=torch.int64), list(CLASSES), name, split, given_scale=scale)
