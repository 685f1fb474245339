"""What every source of data shares: the `ImageSet` protocol that training and evaluation read a data set
through, the two sets that hold labelled images (`ImageData` in memory, `FileSet` as files), how a source is
asked to load (`LoadOptions`), and where data and caches live. Every source module imports this one; it
imports none of them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from cnnkit.errors import DataError

ImageSize = int | tuple[int, int] | list[int]


@runtime_checkable
class ImageSet(Protocol):
    """A labelled image set as the trainer and the evaluator read it, whatever holds it (`ImageData` in
    memory, `FileSet` as files, `WebDatasetSet` as tar shards): its name and split, its classes, the format
    its images are decoded to (what the model is built for), its size, a content fingerprint (recorded in
    checkpoints, checked on resume), and the ground-truth boxes when the set has them."""

    name: str
    split: str
    classes: list[str]

    @property
    def boxes(self) -> torch.Tensor | None: ...

    @property
    def in_chans(self) -> int: ...

    @property
    def img_size(self) -> tuple[int, int]: ...

    @property
    def num_classes(self) -> int: ...

    def __len__(self) -> int: ...

    def fingerprint(self) -> str: ...


@runtime_checkable
class IndexedImageSet(ImageSet, Protocol):
    """An `ImageSet` whose images can be picked by position (`ImageData`, `FileSet`; shards are read in order
    and cannot): what the trainer splits into train and validation and subsets by class."""

    labels: torch.Tensor

    def subset(self, index: torch.Tensor, split: str) -> IndexedImageSet: ...


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
    masks: torch.Tensor | None = None  # N×H×W uint8 class of each pixel (255: ignored), for segmentation
    instances: torch.Tensor | None = None  # N×H×W uint8 object number of each pixel (0: none), if known
    palette: list[list[int]] | None = None  # the [r, g, b] of each class in masks, when the data has colours
    sizes: torch.Tensor | None = None  # N×2 int64 (H, W) of each image as its file holds it, where recorded
    native_masks: list[torch.Tensor] | None = None  # each mask as its file holds it (uint8 H×W), where resized
    # N×M×5 float32 rows (class, x0, y0, x1, y1 in pixel-edge coordinates; class -1: no object), for detection
    objects: torch.Tensor | None = None
    # restoration pairs (`pairfolder:DIR`): each image holds 2C channels, the clean image then the given input
    # (the low-resolution or the noisy image) enlarged ×given_scale by repeating pixels (0: not pairs)
    given_scale: int = 0

    def __post_init__(self) -> None:
        for what, t in (("masks", self.masks), ("instances", self.instances)):
            if t is not None and (t.dtype != torch.uint8 or tuple(t.shape) != (len(self.images), *self.images.shape[2:])):
                raise DataError(f"{self.name}: {what} must be uint8 N×H×W matching the images "
                                f"{tuple(self.images.shape)}, got {t.dtype} {tuple(t.shape)}")
        if self.boxes is not None and tuple(self.boxes.shape) != (len(self.images), 4):
            raise DataError(f"{self.name}: boxes must be {len(self.images)}×4 (x0, y0, x1, y1), "
                            f"got {tuple(self.boxes.shape)}")
        if self.objects is not None and (self.objects.ndim != 3 or self.objects.shape[0] != len(self.images)
                                         or self.objects.shape[2] != 5 or not self.objects.is_floating_point()):
            raise DataError(f"{self.name}: objects must be float N×M×5 rows (class, x0, y0, x1, y1) for the "
                            f"{len(self.images)} images, got {self.objects.dtype} {tuple(self.objects.shape)}")
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
        return int(self.images.shape[1]) // (2 if self.given_scale else 1)

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
        for extra in (self.boxes, self.masks, self.instances, self.objects):
            if extra is not None:
                h.update(extra.numpy().tobytes() if extra.dtype == torch.uint8 else extra.float().numpy().tobytes())
        return h.hexdigest()[:16]

    def subset(self, index: torch.Tensor, split: str) -> ImageData:
        """The images at `index` (with their boxes, masks, instances, objects and sizes, and the palette) as a new
        set named `split`."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        rows = torch.as_tensor(index)
        rows = rows.nonzero().flatten() if rows.dtype == torch.bool else rows.flatten()
        return ImageData(self.images[index], self.labels[index], self.classes, self.name, split,
                         boxes=pick(self.boxes), masks=pick(self.masks), instances=pick(self.instances),
                         palette=self.palette, sizes=pick(self.sizes), objects=pick(self.objects),
                         given_scale=self.given_scale,
                         native_masks=None if self.native_masks is None else [self.native_masks[int(i)] for i in rows])


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
        """The files at `index` as a new set named `split`."""
        keep = index.tolist()
        return FileSet([self.files[i] for i in keep], self.labels[index], self.classes, self.name, split,
                       self.in_chans, self.img_size, self.root)


@dataclass(frozen=True)
class LoadOptions:
    """How `load_dataset` was asked to load a set, handed to the source's loader: where the files are, whether
    to download them, whether an unreadable image is an error, and, for image folders, the format to decode
    to and how a flat folder's test split is held out (`test_fraction` of each class, chosen by `seed`), and,
    for detection files, whether a bad box is an error ("error") or left out with a warning ("drop")."""

    data_dir: str | os.PathLike | None = None
    download: bool = False
    strict: bool = False
    img_size: ImageSize | None = None
    in_chans: int | None = None
    test_fraction: float = 0.2
    seed: int = 0
    bad_boxes: str = "error"


@dataclass(frozen=True)
class TrainingData:
    """A data set's training split as training reads it: `full` in memory, as files to stream or as shards;
    `val`, the source's own validation split when it has one (`splits_itself`: training holds none out of
    `full`); how it is read (`note`); and the channel statistics when the source records them."""

    full: Any
    val: Any | None = None
    note: str = "in memory"
    splits_itself: bool = False
    stats: tuple[list[float], list[float]] | None = None


# A source's opener for training: (full name, options, data mode 'auto'/'memory'/'stream', processes of the
# run, whether a validation split is wanted) -> its training data.
TrainingOpener = Callable[[str, "LoadOptions", str, int, bool], TrainingData]

# A source's loader: (the dataset's full name, e.g. "imagefolder:DIR" or "fashion-mnist-c:fog:3", the split
# 'train' or 'test', the options) -> the split in memory.
Loader = Callable[[str, str, LoadOptions], ImageData]


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
