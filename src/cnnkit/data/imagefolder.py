"""Image folders: a folder per class of PNG/JPEG images of any size and mode, listed as a `FileSet` (read
later by the streaming loader or decoded into memory here), split into train and test by its sub-folders or,
for a flat folder, by holding a seeded share of each class out. The classes are the class folders sorted by
name, or those `<dir>/classes.json` lists, in its order and by its names (a name a folder cannot have)."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path

import torch

from cnnkit.data.base import FileSet, ImageData, ImageSize, LoadOptions, TrainingData, image_size
from cnnkit.data.images import load_image_file, to_model_input
from cnnkit.data.splits import held_out_test
from cnnkit.errors import DataError

# `{"classes": [{"folder": "T-shirt_top", "name": "T-shirt/top"}, ...]}`: the classes in label order, each
# read from its folder under its name (what `cnnkit data export-sample` writes)
CLASS_FILE = "classes.json"
MAX_CLASS_FILE_BYTES = 4 << 20  # far above any class list (100,000 classes fit); a larger file is refused


def load(name: str, split: str, options: LoadOptions) -> ImageData:
    """The source loader of `imagefolder:DIR`: `split` of the folder DIR, decoded into memory."""
    return load_imagefolder(name.split(":", 1)[1], split, img_size=options.img_size, in_chans=options.in_chans,
                            strict=options.strict, test_fraction=options.test_fraction, seed=options.seed)


def open_training(name: str, options: LoadOptions, mode: str, processes: int, validation: bool) -> TrainingData:
    """The training split of `imagefolder:DIR`, listed first, then decoded now or streamed by the loader's
    workers as `mode` says ('auto': streamed when decoding it once per process would not fit in memory)."""
    from cnnkit.data.stream import choose_mode

    files = scan_imagefolder(name.split(":", 1)[1], "train", options.img_size, None, options.test_fraction,
                             options.seed)
    mode, note = choose_mode(mode, files, processes)
    return TrainingData(decode_files(files, options.strict) if mode == "memory" else files, note=note)


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


def _class_folders(base: Path, folder: Path) -> list[tuple[str, str]]:
    """(folder, class name) of each class in label order: `base/classes.json`'s entries when it is there (a
    listed folder may be missing from a split, so that a split lacking a class keeps the others' labels),
    else the class folders of `folder` sorted by name, each naming its class."""
    present = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    path = base / CLASS_FILE
    if not path.is_file():
        return [(d, d) for d in present]
    try:
        if path.stat().st_size > MAX_CLASS_FILE_BYTES:  # a handed folder's file: read within bounds
            raise ValueError("too large")
        listed = json.loads(path.read_text(encoding="utf-8"))["classes"]
        pairs = [(e["folder"], e["name"]) for e in listed]
        ok = bool(pairs) and all(isinstance(f, str) and isinstance(n, str) and f and n and "/" not in f
                                 and f not in (".", "..") for f, n in pairs)
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(f"imagefolder: {path} is not a class list: it must hold {{\"classes\": [{{\"folder\": "
                        f"..., \"name\": ...}}, ...]}}, one entry per class in label order")
    for what, values in (("folder", [f for f, _ in pairs]), ("class name", [n for _, n in pairs])):
        twice = sorted(v for v, n in Counter(values).items() if n > 1)
        if twice:
            raise DataError(f"imagefolder: {path} lists the {what} {twice[0]!r} twice")
    unlisted = [d for d in present if d not in {f for f, _ in pairs}]
    if unlisted:
        raise DataError(f"imagefolder: {folder} has class folders {path} does not list: "
                        f"{', '.join(unlisted[:5])}; add them to it or move them out")
    return pairs


def _split_name(split: str, test_fraction: float, seed: int) -> str:
    pct = f"{100 * test_fraction:g}%"
    if split == "test":
        return f"test (held out {pct}, seed {seed})"
    return f"train (all but the {pct} held out for test, seed {seed})"


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
    class_folders = _class_folders(base, folder)
    if not any((folder / f).is_dir() for f, _ in class_folders):
        raise DataError(f"imagefolder: {folder} has no class sub-folders (expected {folder}/<class>/<image>.png)")
    exts = (".png", ".jpg", ".jpeg")
    samples: list[tuple[Path, int]] = []
    for ci, (c, _) in enumerate(class_folders):
        if not (folder / c).is_dir():  # listed in classes.json, absent from this split
            continue
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
    classes = [name for _, name in class_folders]
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
