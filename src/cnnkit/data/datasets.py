"""Named datasets read through torchvision, image folders, and the bundled sample, as in-memory uint8 tensors."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of `per_class` images of each class (all of a smaller class), chosen by `seed`, sorted."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)][:per_class])
    return torch.sort(torch.cat(keep)).values


def train_val_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seed-deterministic split of indices into (train, val); with a positive `val_fraction`
    every class of two or more images gives at least one to val (and keeps at least one)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        if val_fraction > 0 and len(idx) >= 2:  # small classes: never an empty val split, never an empty class
            n_val = min(len(idx) - 1, max(1, n_val))
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


_IDX_MAX_BYTES = 1 << 30  # the largest published IDX file (MNIST's training images) is 47 MB


def _copy_bounded(src: IO[bytes], dst: IO[bytes], limit: int, name: Path) -> None:
    """Copy at most `limit` bytes; DataError past it (a .gz that inflates without end fills no disk)."""
    total = 0
    while chunk := src.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise DataError(f"cannot decompress {name}: it inflates to more than {limit >> 20} MiB, far more than "
                            f"an IDX file of this data set; it is not the published archive")
        dst.write(chunk)


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
                _copy_bounded(src, dst, _IDX_MAX_BYTES, f)
            os.replace(tmp, target)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            Path(tmp).unlink(missing_ok=True)
            raise DataError(f"cannot decompress {f}: {e}") from None
        except DataError:
            Path(tmp).unlink(missing_ok=True)
            raise
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


CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta", "readme.html")
_CIFAR10_MEMBER_BYTES = 256 << 20  # each published file is under 32 MB


def extract_cifar10(archive: Path, dest: Path) -> None:
    """Extract the CIFAR-10 python archive's own files (`cifar-10-batches-py/<name>` for the names the publisher
    ships, regular files of bounded size) into `dest`, and nothing else: an entry that is absolute, climbs out
    with `..`, is a link or a device, or has any other name is never written (torchvision's `extract_archive`
    calls `tarfile.extractall` without a filter, which writes such entries where they say)."""
    wanted = {f"cifar-10-batches-py/{n}" for n in CIFAR10_FILES}
    (dest / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tf:
        for info in tf:  # names are compared whole, so "./x", "../x" and "/x" never match
            if info.name not in wanted or not info.isreg() or info.size > _CIFAR10_MEMBER_BYTES:
                continue
            src = tf.extractfile(info)
            if src is None:
                continue
            target = dest / info.name
            with src, open(target, "xb") as out:  # "x": never through a file or link already there
                shutil.copyfileobj(src, out, length=1 << 20)


def _load_cifar10(root: Path, train: bool, download: bool) -> ImageData:
    folder = root / "cifar-10-batches-py"
    archive = root / "cifar-10-python.tar.gz"
    if folder.is_dir():
        tv_root = root
    elif archive.exists():
        tv_root = cache_dir() / "extracted" / "cifar10"
        if not (tv_root / "cifar-10-batches-py").is_dir():
            try:
                cache_dir().mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".cifar-"))
            except OSError as e:
                raise DataError(f"cannot create the cache folder {cache_dir()} ({e.strerror or e}); "
                                f"point CNNKIT_CACHE at a writable folder") from None
            try:
                extract_cifar10(archive, tmp)
                if not (tmp / "cifar-10-batches-py").is_dir():
                    raise DataError(f"cifar10: {archive} holds no cifar-10-batches-py/ folder; it is not the "
                                    f"CIFAR-10 python archive: delete it and download cifar-10-python.tar.gz again")
                tv_root.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / "cifar-10-batches-py", tv_root / "cifar-10-batches-py")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # what tarfile/gzip raise on a bad file
                raise DataError(f"cifar10: cannot extract {archive} ({' '.join(str(e).split())[:120]}); it is "
                                f"damaged or incomplete: delete it and download it again") from None
            finally:
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
        raise DataError(f"cifar10: cannot read {tv_root / 'cifar-10-batches-py'} ({str(e).splitlines()[0]}); "
                        f"its files are damaged or incomplete: delete that folder and place a fresh "
                        f"cifar-10-python.tar.gz in {root}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:  # a batch that passes the checksum but not pickle
        raise DataError(f"cifar10: cannot read {tv_root / 'cifar-10-batches-py'} ({type(e).__name__}); "
                        f"delete that folder and place a fresh cifar-10-python.tar.gz in {root}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageData(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes), "cifar10",
                     "train" if train else "test")


def _load_sample(train: bool) -> ImageData:
    data = _load_mnist_like("fashion-mnist", SAMPLE_ROOT, train, download=False)
    data.name = "sample"
    return data


ImageSize = int | tuple[int, int] | list[int]


def image_size(img_size: ImageSize | None) -> tuple[int, int] | None:
    """`img_size` as (H, W): an int N means N×N; None stays None. DataError for anything else."""
    if img_size is None:
        return None
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        size: tuple = (img_size, img_size)
    elif isinstance(img_size, (tuple, list)) and len(img_size) == 2:
        size = tuple(img_size)
    else:
        size = ()
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise DataError(f"image size must be a positive side N or a pair (H, W) of positive ints, got {img_size!r}")
    return int(size[0]), int(size[1])


def held_out_test(files: list[str], labels: list[int], test_fraction: float, seed: int) -> list[bool]:
    """Which files form the held-out test split: per class, the `test_fraction` (at least one image, and
    never all of a class that has two or more) ranked first by a seeded hash of each file's name, so the
    split depends only on the file names, the fraction and the seed, and is stratified by class."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be strictly between 0 and 1, got {test_fraction}")
    # A seeded hash of the name rather than a permutation of positions: adding or removing an image moves
    # no other image between the splits.
    rank = [hashlib.sha256(f"{seed}\0{f}".encode()).hexdigest() for f in files]
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    test = [False] * len(files)
    for idx in by_class.values():
        n = len(idx)
        n_test = 0 if n < 2 else min(n - 1, max(1, round(n * test_fraction)))
        for i in sorted(idx, key=lambda i: (rank[i], files[i]))[:n_test]:
            test[i] = True
    return test


def _imagefolder_layout(root: Path, split: str) -> tuple[Path, bool]:
    """The folder holding `split`'s class folders, and whether the test split must be held out of it:
    `<root>/train` and `<root>/test` (or `val`) when present, else `<root>` (or `<root>/train`) split in two."""
    train = root / "train" if (root / "train").is_dir() else None
    test = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if train is not None and test is not None:
        return (train if split == "train" else test), False
    if test is not None:
        if split == "test":
            return test, False
        raise DataError(f"imagefolder: {root} has {test.name}/ but no train/; add {root}/train/<class>/ or put "
                        f"the class folders directly in {root} to hold a test split out of them")
    return (train or root), True


def _split_name(split: str, test_fraction: float, seed: int) -> str:
    pct = f"{100 * test_fraction:g}%"
    if split == "test":
        return f"test (held out {pct}, seed {seed})"
    return f"train (all but the {pct} held out for test, seed {seed})"


@dataclass
class FileSet:
    """A labelled image folder as a list of files, decoded only when read (`cnnkit.data.stream`): what the
    in-memory ImageData holds as pixels, it holds as paths. Same split and subset interface as ImageData."""

    files: list[Path]
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str
    in_chans: int
    img_size: tuple[int, int]
    root: Path | None = None  # fingerprints name files relative to it, so a moved folder keeps its fingerprint
    skipped: list[str] = field(default_factory=list)
    boxes: None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Hash of each file's relative name, size and label (first 16 hex digits of SHA-256): reading every
        byte of a folder larger than memory at each start or resume would cost as much as an epoch."""
        h = hashlib.sha256()
        for f, y in zip(self.files, self.labels.tolist()):
            name = f.relative_to(self.root).as_posix() if self.root else f.name
            h.update(f"{name}\0{f.stat().st_size}\0{y}\n".encode())
        return h.hexdigest()[:16]

    def subset(self, index: torch.Tensor, split: str) -> FileSet:
        keep = index.tolist()
        return FileSet([self.files[i] for i in keep], self.labels[index], self.classes, self.name, split,
                       self.in_chans, self.img_size, self.root)


def _image_format(files: list[Path], in_chans: int | None, size: tuple[int, int] | None,
                  sample: int = 4096) -> tuple[int, tuple[int, int]]:
    """Channels (1 if every image is grayscale, else 3) and size (the one all images share, else 64×64) from
    the files' headers, no pixel decoded; past `sample` files, from a fixed sample of that many."""
    if in_chans is not None and size is not None:
        return in_chans, size
    from PIL import Image

    if len(files) > sample:
        g = torch.Generator().manual_seed(0)
        files = [files[i] for i in torch.randperm(len(files), generator=g)[:sample].tolist()]
    modes, sizes = set(), Counter()
    for f in files:
        try:
            with Image.open(f) as im:  # the header only
                modes.add(im.mode)
                # EXIF orientation 5-8 swaps the sides (applied at decoding)
                swap = im.format in ("JPEG", "TIFF", "WEBP", "PNG") and im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
                sizes[(im.width, im.height) if swap else (im.height, im.width)] += 1
        except Exception:  # an unreadable file is skipped when decoded (and counted there); not a format vote
            continue
    if in_chans is None:
        in_chans = 1 if modes and modes <= {"1", "L", "I", "I;16", "F"} else 3
    if size is None:
        size = next(iter(sizes)) if len(sizes) == 1 else (64, 64)
    return in_chans, size


def scan_imagefolder(root: str | os.PathLike, split: str = "train", img_size: ImageSize | None = None,
                     in_chans: int | None = None, test_fraction: float = 0.2, seed: int = 0) -> FileSet:
    """An image folder's `split` as a FileSet: the files, their labels and the format they are decoded to,
    without decoding any (see `load_imagefolder` for the layouts, the split and the format rules)."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    size = image_size(img_size)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a folder")
    folder, hold_out = _imagefolder_layout(base, split)
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
    split_name = split
    if hold_out:
        in_test = held_out_test([p.relative_to(folder).as_posix() for p, _ in samples], [c for _, c in samples],
                                test_fraction, seed)
        samples = [s for s, t in zip(samples, in_test) if t == (split == "test")]
        split_name = _split_name(split, test_fraction, seed)
        if not samples:
            raise DataError(f"imagefolder: {folder} has too few images to hold out a test split "
                            f"(each class needs at least 2); add images or give it train/ and test/ sub-folders")
    files = [p for p, _ in samples]
    chans, size = _image_format(files, in_chans, size)
    return FileSet(files, torch.tensor([c for _, c in samples], dtype=torch.long), classes, f"imagefolder:{base}",
                   split_name, chans, size, root=base)


def decode_files(files: FileSet, strict: bool = False) -> ImageData:
    """Decode a FileSet into memory (uint8, its format); unreadable images are skipped with a warning (or
    raise with `strict`), one image decoded at a time so that peak memory is the decoded set's."""
    # one tensor filled image by image: the peak is the decoded set, not that and a list of its images
    images = torch.empty((len(files), files.in_chans, *files.img_size), dtype=torch.uint8)
    labels, skipped = [], []
    for path, label in zip(files.files, files.labels.tolist()):
        try:
            images[len(labels)] = to_model_input(load_image_file(path), files.in_chans, files.img_size)
            labels.append(label)
        except DataError as e:
            if strict:
                raise
            warnings.warn(str(e), stacklevel=3)
            skipped.append(str(path))
    if not labels:
        raise DataError(f"imagefolder: no readable images in {files.name.split(':', 1)[-1]}")
    data = ImageData(images[:len(labels)] if skipped else images, torch.tensor(labels, dtype=torch.long),
                     files.classes, files.name, files.split, skipped)
    if skipped:
        warnings.warn(f"imagefolder: skipped {len(skipped)} unreadable image(s) in {files.name.split(':', 1)[-1]}",
                      stacklevel=3)
    return data


def load_imagefolder(root: str | os.PathLike, split: str = "train", img_size: ImageSize | None = None,
                     in_chans: int | None = None, strict: bool = False, test_fraction: float = 0.2,
                     seed: int = 0) -> ImageData:
    """A folder per class of PNG/JPEG images of any size and mode, decoded into memory.

    With `<root>/train` and `<root>/test` (or `val`) sub-folders each split is its own folder; otherwise
    (a flat folder of class folders) `test_fraction` of each class is held out as the test split, chosen
    by `seed` (see `held_out_test`), and the train split is the rest. Corrupt images are skipped with a
    warning (or raise with `strict`). Images are converted to `in_chans` (default: 1 if every image is
    grayscale, else 3) and to `img_size`, an int N (N×N) or (H, W) (default: the size all images share,
    or 64×64 when they differ), both read from the files' headers.
    """
    return decode_files(scan_imagefolder(root, split, img_size, in_chans, test_fraction, seed), strict)


DATASETS = ["sample", "fashion-mnist", "mnist", "cifar10", "cluttered-fashion-mnist", "cluttered-sample",
            "fashion-mnist-c", "mnist-c", "cifar10-c", "sample-c", "imagefolder:<dir>", "webdataset:<dir>"]
CLUTTERED_SEEDS = {"train": 20140624, "test": 20140625}  # one per split, so the splits share no layout


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False, strict: bool = False, img_size: ImageSize | None = None,
                 in_chans: int | None = None, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """Load a named dataset split ('train' or 'test') into memory.

    `img_size` (N or (H, W)), `in_chans`, `test_fraction` and `seed` apply to image folders: a flat folder
    of class folders holds `test_fraction` of each class out, chosen by `seed`, as its test split."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    if name.startswith("imagefolder:"):
        return load_imagefolder(name.split(":", 1)[1], split, img_size=img_size, in_chans=in_chans, strict=strict,
                                test_fraction=test_fraction, seed=seed)
    if name.startswith("webdataset:"):  # shards written by `cnnkit data shard`: decoded into memory
        from cnnkit.data.shards import load_webdataset

        return load_webdataset(name.split(":", 1)[1], split, strict)
    if name == "sample":
        return _load_sample(train)
    from cnnkit.data.corruptions import benchmark_cells, parse_benchmark

    parsed = parse_benchmark(name)
    if parsed is not None:  # a corruption benchmark: test sets only, one cell at a time
        base, corruptions, severities = parsed
        if train or len(corruptions) != 1 or len(severities) != 1:
            raise DataError(f"{name.split(':')[0]} is a corruption benchmark for evaluation (cnnkit eval --data "
                            f"{name}); as a dataset, name one test cell, e.g. {name.split(':')[0]}:fog:3, and train "
                            f"on {base}")
        return next(benchmark_cells(name, lambda b: load_dataset(b, "test", data_dir, download),
                                    cache_dir() / "corrupted"))[2]
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
