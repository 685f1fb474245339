"""Named datasets read through torchvision, image folders, and the bundled sample, as in-memory uint8 tensors."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tvd

from cnnkit.errors import DataError, close_matches
from cnnkit.data.images import load_image_file, to_model_input

SAMPLE_ROOT = Path(__file__).parent / "sample"

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass
class ImageData:
    """A labelled image set held in memory: uint8 images N×C×H×W, int64 labels, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str
    skipped: list[str] = field(default_factory=list)
    boxes: torch.Tensor | None = None  # N×4 ground-truth boxes (x0, y0, x1, y1; x1, y1 exclusive), if any

    def __post_init__(self) -> None:
        if self.boxes is not None and tuple(self.boxes.shape) != (len(self.images), 4):
            raise DataError(f"{self.name}: boxes must be {len(self.images)}×4 (x0, y0, x1, y1), "
                            f"got {tuple(self.boxes.shape)}")
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.classes):
                raise DataError(f"{self.name} ({self.split}): label {hi if hi >= len(self.classes) else lo} is out of "
                                f"range for {len(self.classes)} classes (labels must be 0..{len(self.classes) - 1})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    @property
    def img_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Content hash of images and labels (first 16 hex digits of SHA-256)."""
        h = hashlib.sha256()
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().astype(np.int64).tobytes())
        if self.boxes is not None:
            h.update(self.boxes.float().numpy().tobytes())
        return h.hexdigest()[:16]

    def subset(self, index: torch.Tensor, split: str) -> ImageData:
        """The images at `index` as a new set named `split`."""
        return ImageData(self.images[index], self.labels[index], self.classes, self.name, split,
                         boxes=None if self.boxes is None else self.boxes[index])


def train_val_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seed-deterministic split of indices into (train, val)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.sort(torch.cat(train_idx)).values, torch.sort(torch.cat(val_idx)).values


def resolve_data_root(data_dir: str | os.PathLike | None) -> Path:
    """The data root: `data_dir`, else $CNNKIT_DATA, else ~/.cache/cnnkit/data."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("CNNKIT_DATA"):
        return Path(os.environ["CNNKIT_DATA"]).expanduser()
    return cache_dir() / "data"


def cache_dir() -> Path:
    """Where cnnkit extracts archives: $CNNKIT_CACHE, else ~/.cache/cnnkit."""
    return Path(os.environ.get("CNNKIT_CACHE") or Path.home() / ".cache" / "cnnkit").expanduser()


def _gunzip_into_cache(files: list[Path], subdir: str) -> Path:
    """Decompress `.gz` files into a cache folder keyed by their content; return that cache root."""
    key = hashlib.sha256()
    for f in files:
        st = f.stat()
        key.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    root = cache_dir() / "extracted" / key.hexdigest()[:16]
    raw = root / subdir
    raw.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = raw / f.name[:-3]
        if target.exists():
            continue
        # Decompress next to the target and rename, so an interrupted extraction never leaves a half file.
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=".extract-")
        try:
            with gzip.open(f, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            os.replace(tmp, target)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            Path(tmp).unlink(missing_ok=True)
            raise DataError(f"cannot decompress {f}: {e}") from None
    return root


_MNIST_LIKE = {
    "fashion-mnist": (tvd.FashionMNIST, "FashionMNIST"),
    "mnist": (tvd.MNIST, "MNIST"),
}


# torchvision's MNIST classes check that both splits' files exist before reading either.
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"]


def _load_mnist_like(name: str, root: Path, train: bool, download: bool) -> ImageData:
    cls, folder = _MNIST_LIKE[name]
    raw = root / folder / "raw"
    wanted = MNIST_FILES
    if all((raw / w).exists() for w in wanted):
        tv_root = root
    elif all((raw / f"{w}.gz").exists() for w in wanted):
        tv_root = _gunzip_into_cache([raw / f"{w}.gz" for w in wanted], f"{folder}/raw")
    elif download:
        tv_root = root
    else:
        raise DataError(f"{name}: missing {', '.join(w + '[.gz]' for w in wanted)} in {raw} "
                        f"(set --data-dir or CNNKIT_DATA, or pass --download where the network is reachable)")
    try:
        ds = cls(str(tv_root), train=train, download=download and tv_root == root)
    except (RuntimeError, OSError, ValueError, AssertionError) as e:
        if download and tv_root == root:
            raise DataError(f"{name}: download failed ({' '.join(str(e).split())[:160]}); place "
                            f"{', '.join(w + '[.gz]' for w in wanted)} in {raw} instead") from None
        raise DataError(f"{name}: cannot read the IDX files in {raw}: {str(e).splitlines()[0]}") from None
    images = ds.data.unsqueeze(1).contiguous()
    return ImageData(images, ds.targets.long(), list(ds.classes), name, "train" if train else "test")


def _load_cifar10(root: Path, train: bool, download: bool) -> ImageData:
    folder = root / "cifar-10-batches-py"
    archive = root / "cifar-10-python.tar.gz"
    if folder.is_dir():
        tv_root = root
    elif archive.exists():
        from torchvision.datasets.utils import extract_archive

        tv_root = cache_dir() / "extracted" / "cifar10"
        if not (tv_root / "cifar-10-batches-py").is_dir():
            tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".cifar-"))
            extract_archive(str(archive), str(tmp))
            tv_root.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "cifar-10-batches-py", tv_root / "cifar-10-batches-py")
            shutil.rmtree(tmp, ignore_errors=True)
    elif download:
        tv_root = root
    else:
        raise DataError(f"cifar10: missing {folder} (data_batch_1..5, test_batch, batches.meta) or {archive} "
                        f"(set --data-dir or CNNKIT_DATA, or pass --download where the network is reachable)")
    try:
        ds = tvd.CIFAR10(str(tv_root), train=train, download=download)
    except (RuntimeError, OSError) as e:
        if download and tv_root == root:
            raise DataError(f"cifar10: download failed ({' '.join(str(e).split())[:160]}); place "
                            f"cifar-10-python.tar.gz or cifar-10-batches-py/ in {root} instead") from None
        raise DataError(f"cifar10: cannot read {tv_root / 'cifar-10-batches-py'}: {str(e).splitlines()[0]}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageData(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes), "cifar10",
                     "train" if train else "test")


def _load_sample(train: bool) -> ImageData:
    data = _load_mnist_like("fashion-mnist", SAMPLE_ROOT, train, download=False)
    data.name = "sample"
    return data


def _imagefolder_split_root(root: Path, split: str) -> Path:
    """`<root>/train` or `<root>/test` (also `val`) when present, else `<root>` itself."""
    names = ["train"] if split == "train" else ["test", "val"]
    for n in names:
        if (root / n).is_dir():
            return root / n
    return root


def load_imagefolder(root: str | os.PathLike, split: str = "train", img_size: int | None = None,
                     in_chans: int | None = None, strict: bool = False) -> ImageData:
    """A folder per class of PNG/JPEG images of any size and mode, decoded into memory.

    Corrupt images are skipped with a warning (or raise with `strict`). Images are converted to
    `in_chans` (default: 1 if every image is grayscale, else 3) and to `img_size` (default: the size
    all images share, or 64 when they differ).
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a folder")
    folder = _imagefolder_split_root(base, split)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder: {folder} has no class sub-folders (expected {folder}/<class>/<image>.png)")
    exts = (".png", ".jpg", ".jpeg")
    samples: list[tuple[Path, int]] = []
    for ci, c in enumerate(classes):
        files = sorted(p for p in (folder / c).rglob("*") if p.suffix.lower() in exts and p.is_file())
        if not files:
            raise DataError(f"imagefolder: class folder {folder / c} has no PNG or JPEG images")
        samples += [(p, ci) for p in files]
    decoded, labels, skipped = [], [], []
    for path, label in samples:
        try:
            decoded.append(load_image_file(path))
            labels.append(label)
        except DataError as e:
            if strict:
                raise
            warnings.warn(str(e), stacklevel=2)
            skipped.append(str(path))
    if not decoded:
        raise DataError(f"imagefolder: no readable images in {folder}")
    if in_chans is None:
        in_chans = 1 if all(im.mode in ("1", "L", "I", "I;16", "F") for im in decoded) else 3
    if img_size is None:
        sizes = Counter((im.height, im.width) for im in decoded)
        size = next(iter(sizes)) if len(sizes) == 1 else (64, 64)
    else:
        size = (img_size, img_size)
    images = torch.stack([to_model_input(im, in_chans, size) for im in decoded])
    data = ImageData(images, torch.tensor(labels, dtype=torch.long), classes, f"imagefolder:{base}", split, skipped)
    if skipped:
        warnings.warn(f"imagefolder: skipped {len(skipped)} unreadable image(s) in {folder}", stacklevel=2)
    return data


DATASETS = ["sample", "fashion-mnist", "mnist", "cifar10", "cluttered-fashion-mnist", "cluttered-sample",
            "imagefolder:<dir>"]
CLUTTERED_SEEDS = {"train": 20140624, "test": 20140625}  # one per split, so the splits share no layout


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False, strict: bool = False, img_size: int | None = None,
                 in_chans: int | None = None) -> ImageData:
    """Load a named dataset split ('train' or 'test') into memory."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    if name.startswith("imagefolder:"):
        return load_imagefolder(name.split(":", 1)[1], split, img_size=img_size, in_chans=in_chans, strict=strict)
    if name == "sample":
        return _load_sample(train)
    if name in ("cluttered-fashion-mnist", "cluttered-sample"):
        from cnnkit.data.cluttered import cached_cluttered

        source = (_load_sample(train) if name == "cluttered-sample"
                  else _load_mnist_like("fashion-mnist", resolve_data_root(data_dir), train, download))
        return cached_cluttered(source, CLUTTERED_SEEDS[split], cache_dir() / "cluttered", name)
    root = resolve_data_root(data_dir)
    if name in _MNIST_LIKE:
        return _load_mnist_like(name, root, train, download)
    if name == "cifar10":
        return _load_cifar10(root, train, download)
    raise DataError(f"unknown dataset {name!r}{close_matches(name, DATASETS)}; choose one of {', '.join(DATASETS)}")
