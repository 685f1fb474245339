"""WebDataset shards of an image folder: `cnnkit data shard` writes them, training and evaluation read them.

A shard is a plain (ustar) tar file holding, per image, the original encoded file under its extension
(`<key>.jpg` or `<key>.png`) and its integer label (`<key>.cls`): the layout WebDataset, and any tar
reader, reads. `manifest.json` beside the shards records the classes, the format images are decoded to,
normalization statistics and, per split (train, val, test), the shards with their image counts, so that a
reader knows an epoch's length and every rank its shards without opening one.

Reading: a rank takes its own shards of the epoch's (seeded) shard order and each DataLoader worker of
the rank its own shards of those; samples are shuffled in a seeded buffer, decoded and augmented in the
workers (`DecodeImages.read`, with the same per-image seeds as a streamed image folder), and every rank
yields exactly `len(loader)` batches, so that DDP ranks never wait on one another.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from cnnkit.artifacts.files import (MANIFEST, DiskWriteError, OutputDir, atomic_write_text, claim_dir,
                                    finish_temp_file, temp_path_for)
from cnnkit.data.base import FileSet, ImageData, ImageSize, LoadOptions, TrainingData
from cnnkit.data.imagefolder import scan_imagefolder
from cnnkit.data.images import IMAGE_EXTENSIONS, load_image_file, to_model_input
from cnnkit.data.loader import Normalize, epoch_order
from cnnkit.data.splits import train_val_split
from cnnkit.data.stream import (DecodeImages, collate_readable, default_workers, finish_batches, worker_context,
                                 sample_channel_stats)
from cnnkit.data.settings import AugmentConfig
from cnnkit.data.transforms import BatchAugment
from cnnkit.errors import ConfigError, DataError, error_line

FORMAT = "cnnkit-webdataset/1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
DEFAULT_SHARD_SIZE = 1 << 30  # 1 GiB

_BLOCK = 512  # tar: every header and every file's data take whole 512-byte blocks
_END = 2 * _BLOCK  # the two zero blocks that end an archive
_RECORD = 20 * _BLOCK  # tarfile pads the archive to whole records of 10240 bytes
_SHARD_NAME = re.compile(r"(train|val|test)-\d{6}\.tar")
MAX_MEMBER_BYTES = 256 << 20  # the largest image file a shard sample may hold (read into memory whole)
_IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS} | {"jpg"}
_PASS_STRIDE = 1 << 40  # augmentation index of an image's k-th reading in one epoch: its index + k * this


# -- sizes ---------------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int, option: str = "--shard-size") -> int:
    """A size in bytes from `500MB`, `1GB`, `64KiB`, `1.5GiB` or plain bytes (`4096`): KB, MB, GB, TB are
    powers of 1000, KiB, MiB, GiB, TiB powers of 1024, case-insensitive. ConfigError for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ConfigError(f"{option} must be a size such as 500MB, 1GB, 64KiB or a number of bytes; got {text!r}")
    number = m.group(1)
    size = int(number) * _UNITS[unit] if number.isdigit() else round(float(number) * _UNITS[unit])
    if size < 1:
        raise ConfigError(f"{option} must be at least 1 byte; got {text!r}")
    return size


def _tar_bytes(sizes: Iterable[int]) -> int:
    """Bytes that members of these sizes take in a tar archive (a header block each, data in whole blocks)."""
    return sum(_BLOCK + -(-n // _BLOCK) * _BLOCK for n in sizes)


def _tar_file_bytes(members: int) -> int:
    """The size of a tar file whose members take `members` bytes: end blocks, padded to whole records."""
    return -(-(members + _END) // _RECORD) * _RECORD


# -- writing -------------------------------------------------------------------------------------------------

class _ReadChecked(Dataset):
    """Item i: (i, the file's bytes, '') when it opens as an image, else (i, None, the one-line reason)."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, bytes | None, str]:
        path = self.files[i]
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            return i, None, f"cannot read image {path}: {e.strerror or e}"
        try:
            load_image_file(io.BytesIO(data), name=str(path))
        except DataError as e:
            return i, None, str(e)
        return i, data, ""


def _as_list(items: list) -> list:
    return items


class _ShardSink:
    """The tar shards of one split, `<split>-000000.tar`, ...: a new one begins when the next sample would
    make the current file larger than `limit` bytes. Each is written to a temporary file (recorded in the
    folder's claim first, so an interrupted write is still cnnkit's), fsynced and renamed into place."""

    def __init__(self, out: OutputDir, folder: Path, split: str, limit: int):
        self.out, self.folder, self.split, self.limit = out, folder, split, limit
        self.shards: list[dict[str, Any]] = []
        self.hash = hashlib.sha256()
        self.images = 0
        self._file = self._writer = self._tmp = self._path = None
        self._count = self._bytes = 0

    def add(self, key: str, ext: str, data: bytes, label: int) -> None:
        from webdataset import TarWriter

        cls = str(label).encode()
        size = _tar_bytes([len(data), len(cls)])
        if self._writer is not None and self._count and _tar_file_bytes(self._bytes + size) > self.limit:
            self._finish()
        if self._writer is None:
            self._path = self.folder / f"{self.split}-{len(self.shards):06d}.tar"
            self.out.record(self._path)
            try:
                self._tmp = temp_path_for(self._path)
                self._file = open(self._tmp, "wb")
            except OSError as e:
                raise DiskWriteError(f"cannot write {self._path}: {e.strerror or e}") from None
            # encoder=False: the bytes go in as they are; a fixed owner and time (an int: a float takes a pax
            # header per member) make the shards reproducible
            self._writer = TarWriter(self._file, encoder=False, user="cnnkit", group="cnnkit", mtime=0)
            self._count = 0
        try:
            self._writer.write({"__key__": key, ext: data, "cls": cls})
        except OSError as e:
            raise DiskWriteError(f"cannot write {self._path}: {e.strerror or e}") from None
        self._count += 1
        self._bytes = self._writer.tarstream.offset  # where the archive stands, headers included
        self.images += 1
        self.hash.update(f"{key}\0{label}\0{hashlib.sha256(data).hexdigest()}\n".encode())

    def _finish(self) -> None:
        try:
            self._writer.close()  # the end blocks; the file object stays ours to close
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            finish_temp_file(self._tmp, self._path)
        except OSError as e:
            self.abort()
            raise DiskWriteError(f"cannot write {self._path}: {e.strerror or e}") from None
        self.shards.append({"name": self._path.name, "images": self._count, "bytes": self._path.stat().st_size})
        self._file = self._writer = self._tmp = None

    def close(self) -> dict[str, Any]:
        if self._writer is not None:
            self._finish()
        return {"images": self.images, "bytes": sum(s["bytes"] for s in self.shards),
                "fingerprint": self.hash.hexdigest()[:16], "shards": self.shards}

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            Path(self._tmp).unlink(missing_ok=True)
        self._file = self._writer = self._tmp = None


def _check_out(root: Path, overwrite: bool) -> None:
    """Refuse, before anything is read or written, an --out that is a file, a folder holding files cnnkit
    did not write, or (without `overwrite`) one that already holds shards."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root} is a file; give a new folder (or one `cnnkit data shard` wrote)")
    if not root.is_dir():
        return
    ours = OutputDir(root) if (root / MANIFEST).is_file() else None
    foreign = [p for p in sorted(root.rglob("*")) if not p.is_dir() and (ours is None or not ours.owns(p))]
    if foreign:
        names = ", ".join(p.relative_to(root).as_posix() for p in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ConfigError(f"refusing to write shards into {root}: it holds files cnnkit did not write "
                          f"({names}{more}); choose a new --out")
    if (root / MANIFEST_NAME).exists() and not overwrite:
        raise ConfigError(f"{root} already holds shards ({MANIFEST_NAME}); pass --overwrite to replace them, "
                          f"or choose another --out")


def _relabel(files: FileSet, classes: list[str]) -> FileSet:
    """A test split scanned from its own folder, labelled by the train split's class list."""
    if files.classes == classes:
        return files
    unknown = [c for c in files.classes if c not in classes]
    if unknown:
        raise DataError(f"imagefolder: the test split has class folders the train split lacks: "
                        f"{', '.join(unknown[:5])}; give both the same classes")
    index = [classes.index(c) for c in files.classes]
    labels = torch.tensor([index[y] for y in files.labels.tolist()], dtype=torch.long)
    return FileSet(files.files, labels, classes, files.name, files.split, files.in_chans, files.img_size,
                   files.root)


def write_shards(source: str, out: str | os.PathLike, shard_size: int = DEFAULT_SHARD_SIZE,
                 val_fraction: float = 0.1, split_seed: int = 0, test_fraction: float = 0.2,
                 img_size: ImageSize | None = None, in_chans: int | None = None, overwrite: bool = False,
                 workers: int | None = None) -> dict[str, Any]:
    """Write `source` (`imagefolder:DIR`) as WebDataset tar shards `train-000000.tar`, `val-...`,
    `test-...` into the folder `out`, and `manifest.json` last; return the manifest.

    The train and test splits are `scan_imagefolder`'s (a flat folder holds `test_fraction` of each class
    out, chosen by `split_seed`); val is `val_fraction` of train, stratified, by `split_seed`: the splits
    `cnnkit train --data imagefolder:DIR --split-seed S` uses. Each sample is the original file's bytes
    under its extension, its label as `cls` and as key its position in the source split's file list;
    samples are written in an order shuffled by `split_seed`, so that every shard mixes the classes. A shard
    is closed before it would pass `shard_size` bytes (a single larger image gets a shard of its own).
    Every image is opened before it is written (by `workers` processes); unreadable ones are skipped with
    a warning and listed in the manifest. Normalization statistics come from a fixed sample of the train
    split. `out` must be new, or a folder cnnkit wrote (`overwrite` replaces shards written before)."""
    folder = _shard_source(source, shard_size, val_fraction, test_fraction)
    root = Path(out).expanduser()
    _check_out(root, overwrite)
    train_all = scan_imagefolder(folder, "train", img_size, in_chans, test_fraction, split_seed)
    test = _relabel(scan_imagefolder(folder, "test", train_all.img_size, train_all.in_chans, test_fraction,
                                     split_seed), train_all.classes)
    tr, va = train_val_split(train_all.labels, val_fraction, split_seed)
    splits = {"train": (train_all, tr), "val": (train_all, va), "test": (test, torch.arange(len(test)))}
    workers = min(default_workers(), 4) if workers is None else workers

    out_dir = claim_dir(root, overwrite=overwrite)
    base = Path(folder).expanduser()
    manifest_splits = {split: _write_split(out_dir, root, split, files, index, base, shard_size, split_seed, workers)
                       for split, (files, index) in splits.items()}
    skipped_total = sum(len(e["skipped"]) for e in manifest_splits.values())
    if skipped_total:
        warnings.warn(f"imagefolder: skipped {skipped_total} unreadable image(s) in {base}", stacklevel=2)
    # After the reading above, not before: the loader sample_channel_stats leaves behind (persistent workers,
    # in a reference cycle) must not be inherited by the reading workers' forks.
    mean, std = sample_channel_stats(train_all.subset(tr, "train"), workers=workers)
    fingerprint = hashlib.sha256(json.dumps(
        [train_all.classes, train_all.in_chans, list(train_all.img_size),
         [manifest_splits[s]["fingerprint"] for s in SPLITS]]).encode()).hexdigest()[:16]
    manifest = {
        "format": FORMAT,
        "source": f"imagefolder:{base.resolve()}",
        "classes": list(train_all.classes),
        "in_chans": train_all.in_chans,
        "img_size": list(train_all.img_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "test_fraction": test_fraction,
        "shard_size": shard_size,
        "keys": "the image's position in the source split's sorted file list (val: in the train split's)",
        "skipped": skipped_total,
        "fingerprint": fingerprint,
        "splits": manifest_splits,
    }
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    _remove_stale_shards(out_dir, root, {s["name"] for e in manifest_splits.values() for s in e["shards"]})
    return manifest


def _shard_source(source: str, shard_size: int, val_fraction: float, test_fraction: float) -> str:
    """The image folder `write_shards` reads, its options checked before anything is read or written."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard size must be a positive number of bytes, got {shard_size!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be strictly between 0 and 1, got {test_fraction}")
    kind, _, folder = str(source).partition(":")
    if kind != "imagefolder" or not folder:
        raise DataError(f"cnnkit data shard reads an image folder: give imagefolder:<dir>, got {source!r}")
    return folder


def _write_split(out_dir: OutputDir, root: Path, split: str, files: FileSet, index: torch.Tensor, base: Path,
                 shard_size: int, split_seed: int, workers: int) -> dict[str, Any]:
    """The images `index` of `files` written as `split`'s shards, in an order seeded by (split_seed, split),
    each opened first (by `workers` processes); its manifest entry, with the unreadable images skipped."""
    # Each split's own order: the same seed, a different permutation per split.
    g = torch.Generator().manual_seed(split_seed * 1_000_003 + SPLITS.index(split))
    order = index[torch.randperm(len(index), generator=g)].tolist()
    sink = _ShardSink(out_dir, root, split, shard_size)
    skipped: list[str] = []
    width = max(8, len(str(len(files))))
    loader = DataLoader(_ReadChecked(files.files), batch_size=8, sampler=order, num_workers=workers,
                        collate_fn=_as_list, multiprocessing_context=worker_context() if workers > 0 else None)
    try:
        for batch in loader:
            for i, data, reason in batch:
                path = files.files[i]
                if data is None:
                    warnings.warn(reason, stacklevel=3)
                    skipped.append(path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path))
                    continue
                ext = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
                sink.add(f"{i:0{width}d}", ext, data, int(files.labels[i]))
    except BaseException:
        sink.abort()
        raise
    entry = sink.close()
    if split != "val" and len(index) and not entry["images"]:
        raise DataError(f"imagefolder: none of the {len(index)} images of the {split} split of {base} "
                        f"could be read")
    return {**entry, "skipped": skipped}


def _remove_stale_shards(out_dir: OutputDir, root: Path, keep: set[str]) -> None:
    """Shards (and their temporaries) that cnnkit wrote here before and this manifest does not list: those of
    an interrupted earlier run, or of a run that wrote more shards."""
    for p in root.iterdir():
        name = p.name
        if name.startswith(".") and name.endswith(".tmp"):
            name = name[1:].split(".tar.", 1)[0] + ".tar"
            stale = True
        else:
            stale = name not in keep
        if stale and _SHARD_NAME.fullmatch(name) and p.is_file() and out_dir.owns(p):
            p.unlink()


# -- the manifest and its splits -----------------------------------------------------------------------------

@dataclass
class WebDatasetSet:
    """One split of a shard folder written by `cnnkit data shard`: an `ImageSet` (what training and evaluation
    read of a data set: classes, format, size, fingerprint), its normalization, and the shards that hold its
    images (read in order: it has no labels to split by, no `subset`)."""

    root: Path
    split: str
    classes: list[str]
    in_chans: int
    img_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    shards: list[Path]
    shard_images: list[int]
    name: str = ""
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    skipped: list[str] = field(default_factory=list)
    boxes: None = None

    def __post_init__(self) -> None:
        self.name = self.name or f"webdataset:{self.root}"

    def __len__(self) -> int:
        return sum(self.shard_images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """The split's content hash, computed when the shards were written (keys, labels, image bytes)."""
        return self.manifest["splits"][self.split]["fingerprint"]


def _damaged(path: Path, why: str) -> DataError:
    return DataError(f"webdataset: {path} is damaged ({why}); write the shards again with "
                     f"`cnnkit data shard`")


def _check_manifest(m: Any, path: Path) -> None:
    """DataError naming the first thing wrong with a manifest's structure."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _damaged(path, f"not a {FORMAT} manifest")

    def want(ok: bool, what: str) -> None:
        if not ok:
            raise _damaged(path, what)

    classes, size = m.get("classes"), m.get("img_size")
    want(isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes), "classes")
    want(m.get("in_chans") in (1, 3), "in_chans")
    want(isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size), "img_size")
    for k in ("mean", "std"):
        v = m.get(k)
        want(isinstance(v, list) and len(v) == m["in_chans"] and all(isinstance(x, (int, float)) for x in v), k)
    splits = m.get("splits")
    want(isinstance(splits, dict) and all(s in splits for s in SPLITS), "splits")
    for s in SPLITS:
        e = splits[s]
        want(isinstance(e, dict) and isinstance(e.get("shards"), list) and isinstance(e.get("fingerprint"), str),
             f"split {s}")
        for sh in e["shards"]:
            want(isinstance(sh, dict) and isinstance(sh.get("name"), str) and _SHARD_NAME.fullmatch(sh["name"])
                 is not None and isinstance(sh.get("images"), int) and sh["images"] >= 0
                 and isinstance(sh.get("bytes"), int), f"a shard entry of split {s}")


def open_webdataset(path: str | os.PathLike, split: str) -> WebDatasetSet:
    """The `split` ('train', 'val' or 'test') of the shard folder `path`, its manifest checked and every
    shard present with the size the manifest records; one-line DataError otherwise."""
    if split not in SPLITS:
        raise DataError(f"webdataset: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"webdataset: {root} is not a folder; write shards there with "
                        f"`cnnkit data shard imagefolder:<dir> --out {root}`")
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise DataError(f"webdataset: {root} has no {MANIFEST_NAME}: it is not a folder `cnnkit data shard` "
                        f"wrote, or the writing did not finish; write the shards again")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # unreadable, not UTF-8, not JSON, nested too deep
        raise _damaged(mpath, error_line(e)) from None
    _check_manifest(manifest, mpath)
    entry = manifest["splits"][split]
    shards, counts = [], []
    for sh in entry["shards"]:
        p = root / sh["name"]
        if not p.is_file():
            raise DataError(f"webdataset: shard {p} is missing ({len(entry['shards'])} {split} shards listed in "
                            f"{mpath}); copy it back or write the shards again")
        if p.stat().st_size != sh["bytes"]:
            raise DataError(f"webdataset: shard {p} has {p.stat().st_size} bytes, {mpath} says {sh['bytes']}: it "
                            f"is damaged or incomplete; copy it again or write the shards again")
        shards.append(p)
        counts.append(sh["images"])
    return WebDatasetSet(root.absolute(), split, list(manifest["classes"]), int(manifest["in_chans"]),
                         (int(manifest["img_size"][0]), int(manifest["img_size"][1])),
                         [float(v) for v in manifest["mean"]], [float(v) for v in manifest["std"]],
                         shards, counts, manifest=manifest, skipped=list(entry.get("skipped") or []))


def load(name: str, split: str, options: LoadOptions) -> ImageData:
    """The source loader of `webdataset:DIR`: the `split` shards of the folder DIR, decoded into memory."""
    return load_webdataset(name.split(":", 1)[1], split, options.strict)


def open_training(name: str, options: LoadOptions, mode: str, processes: int, validation: bool) -> TrainingData:
    """The train shards of `webdataset:DIR`, read in order as they stream, with the val shards as the
    validation split (none when they are empty or none is wanted) and the statistics the manifest records."""
    path = name.split(":", 1)[1]
    full = open_webdataset(path, "train")
    val = open_webdataset(path, "val") if validation else None
    return TrainingData(full, val if val is not None and len(val) else None,
                        "WebDataset shards (validation: the val shards)", True, (list(full.mean), list(full.std)))


def load_webdataset(path: str | os.PathLike, split: str, strict: bool = False) -> ImageData:
    """A split of a shard folder decoded into memory, in the manifest's order (what `cnnkit eval --data
    webdataset:DIR` scores: the test shards); unreadable samples are skipped with a warning, or raise with
    `strict`."""
    data = open_webdataset(path, split)
    images, labels, skipped = [], [], []
    for shard in data.shards:
        for s in _shard_samples(shard, data.num_classes):
            try:
                if s.data is None:
                    raise DataError(s.error)
                image = load_image_file(io.BytesIO(s.data), name=s.where)
                images.append(to_model_input(image, data.in_chans, data.img_size))
                labels.append(s.label)
            except DataError as e:
                if strict:
                    raise
                warnings.warn(str(e), stacklevel=2)
                skipped.append(s.where)
    if not images:
        raise DataError(f"webdataset: no readable {split} images in {data.root}")
    return ImageData(torch.stack(images), torch.tensor(labels, dtype=torch.long), data.classes, data.name, split,
                     skipped)

# -- reading -------------------------------------------------------------------------------------------------
#
# The shards are read with `tarfile`, not webdataset's pipeline: its shuffling and splitting stages
# (shuffle, detshuffle, split_by_node, split_by_worker) take their seeds and ranks from torch.distributed,
# the worker info and environment variables, whereas here the order must be a function of (seed, epoch,
# rank, world, workers) alone, every rank must stop after exactly len(loader) steps, and a run resumed
# mid-epoch must skip samples without decoding them. A sequential read of a tar file is all that the
# pipeline would do for us.


class _Sample(NamedTuple):
    key: str
    data: bytes | None  # the encoded image; None when the sample cannot be used
    label: int  # -1 when the sample cannot be used
    error: str  # why it cannot be used ('' when it can)
    where: str  # shard/key, for messages


def _shard_samples(path: Path, num_classes: int) -> Iterator[_Sample]:
    """The samples of one shard in file order: members grouped by key (the name up to the first dot of its
    last component, as WebDataset groups them). A damaged shard ends in one unusable sample."""

    def sample(key: str, members: dict[str, bytes]) -> _Sample:
        where = f"{path}:{key}"
        exts = [e for e in members if e in _IMAGE_EXTS]
        try:
            label = int(members["cls"].decode().strip()) if "cls" in members else None
        except ValueError:
            label = None
        if not exts or label is None or not 0 <= label < num_classes:
            what = "no image" if not exts else ("no label" if label is None else f"label {label} out of range")
            return _Sample(key, None, -1, f"cannot read sample {where}: {what}", where)
        return _Sample(key, members[exts[0]], label, "", where)

    key, members = None, {}
    try:
        with tarfile.open(path, "r|") as tf:  # a stream: the members in order, each read once
            for info in tf:
                if not info.isfile():
                    continue
                folder, _, base = info.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                k = f"{folder}/{stem}" if folder else stem
                if k != key and key is not None:
                    yield sample(key, members)
                    members = {}
                key = k
                if info.size > MAX_MEMBER_BYTES:  # read into memory whole: a member's size is bounded first
                    members[ext.lower()] = b""
                    continue
                f = tf.extractfile(info)
                members[ext.lower()] = f.read() if f is not None else b""
        if key is not None:
            yield sample(key, members)
    except (tarfile.TarError, OSError, EOFError) as e:
        yield _Sample(f"{path.name}:damaged", None, -1, f"cannot read shard {path}: {error_line(e)}; the "
                                                         f"rest of it is skipped", str(path))


def _key_index(key: str) -> int:
    """The image index that seeds a sample's augmentation: its key when numeric (cnnkit's keys are)."""
    if key.isdigit():
        return int(key)
    return int(hashlib.sha256(key.encode()).hexdigest()[:10], 16)


def _rng(*parts: int) -> random.Random:
    """A generator seeded by a tuple of ints, the same on every platform and process."""
    return random.Random(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:16], 16))


def _buffered(samples: Iterable, size: int, rng: random.Random) -> Iterator:
    """Samples shuffled within a buffer of `size` (each yielded from a random slot the next one refills)."""
    buf: list = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        j = rng.randrange(size)
        buf[j], s = s, buf[j]
        yield s
    rng.shuffle(buf)
    yield from buf


def _strided(paths: list[Path], num_classes: int, offset: int, stride: int) -> Iterator[_Sample]:
    """The samples of these shards, in order, keeping those at positions offset, offset + stride, ..."""
    pos = 0
    for p in paths:
        for s in _shard_samples(p, num_classes):
            if pos % stride == offset:
                yield s
            pos += 1


class _ShardStream(IterableDataset):
    """One rank's batches of an epoch, made by the DataLoader's workers; each item is (uint8 images,
    labels, messages of unreadable samples, error). Which worker makes which step is fixed: step i of the
    epoch comes from worker (i - start) % W, in the order the DataLoader collects them."""

    def __init__(self, data: WebDatasetSet, decoder: DecodeImages, batch_size: int, shuffle: bool, seed: int,
                 exact: bool, steps: int, rank: int, world: int, workers: int, buffer: int):
        self.shards, self.counts, self.num_classes = list(data.shards), list(data.shard_images), data.num_classes
        self.total = len(data)
        self.decoder, self.batch_size, self.shuffle, self.seed = decoder, batch_size, shuffle, seed
        self.exact, self.steps, self.rank, self.world = exact, steps, rank, world
        self.per = batch_size // world
        self.workers, self.buffer = max(workers, 1), buffer
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        w = 0 if info is None else info.id
        try:
            yield from (self._exact(w) if self.exact else self._cycled(w))
        except DataError as e:  # to the main process as one line, not as a worker's traceback
            yield torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), [], str(e)

    def epoch_shards(self) -> list[Path]:
        """The epoch's shard order: the manifest's, or a permutation seeded by (seed, epoch)."""
        return [self.shards[i] for i in epoch_order(len(self.shards), self.shuffle, self.seed, self.epoch).tolist()]

    def _decode(self, samples: list[_Sample], index_offset: list[int]) -> tuple[list, list[str]]:
        items, bad = [], []
        for s, extra in zip(samples, index_offset):
            if s.error:
                bad.append(s.error)
                continue
            x, y = self.decoder.read(io.BytesIO(s.data), s.label, _key_index(s.key) + extra, self.epoch,
                                     name=s.where)
            if x is None:
                bad.append(y)
            else:
                items.append((x, y))
        return items, bad

    def _batch(self, items: list, bad: list[str]) -> tuple:
        images, labels, more = collate_readable(items)
        return images, labels, bad + more, ""

    # Evaluation order (one process, every image once, a last partial batch): the epoch's shards read in
    # order (buffer-shuffled when shuffling) make one stream, step i is its images [i*B, (i+1)*B), and
    # each worker decodes its own steps, reading past the others' samples without decoding them.
    def _exact(self, w: int) -> Iterator[tuple]:
        steps = range(self.start + w, self.steps, self.workers)
        if not steps:
            return
        stream: Iterable[_Sample] = _strided(self.epoch_shards(), self.num_classes, 0, 1)
        if self.shuffle:
            stream = _buffered(stream, self.buffer, _rng(self.seed, self.epoch, -1))
        mine, batch = iter(steps), []
        target = next(mine)
        for pos, s in enumerate(stream):
            step = pos // self.batch_size
            if step > target:
                yield self._batch(*self._decode(batch, [0] * len(batch)))
                batch = []
                target = next(mine, None)
                if target is None:
                    return
            if step == target:
                batch.append(s)
        if batch:
            yield self._batch(*self._decode(batch, [0] * len(batch)))

    def slot_shards(self, L: int) -> tuple[list[Path], int, int]:
        """The shards logical worker L of this rank reads this epoch, and which of their samples it keeps
        (offset, stride). Rank r takes shards r::world of the epoch's order and its worker L shards L::W of
        those; with fewer shards than ranks (or than a rank's workers) they read every shard and keep every
        world-th (W-th) sample instead, so that they still see disjoint images."""
        order = self.epoch_shards()
        offset, stride = 0, 1
        if len(order) >= self.world:
            mine = order[self.rank::self.world]
        else:
            mine, offset, stride = order, self.rank, self.world
        if stride == 1 and len(mine) >= self.workers:
            return mine[L::self.workers], 0, 1
        return mine, offset + stride * L, stride * self.workers

    def _slot_stream(self, L: int) -> Iterator[tuple[_Sample, int]]:
        """Logical worker L's samples, its shards cycled (pass k reshuffles them when shuffling), with the
        augmentation index offset of the pass."""
        shards, offset, stride = self.slot_shards(L)
        for k in count():
            order = shards
            if k and self.shuffle:
                order = list(shards)
                _rng(self.seed, self.epoch, self.rank, L, k).shuffle(order)
            stream: Iterable[_Sample] = _strided(order, self.num_classes, offset, stride)
            if self.shuffle:  # within the pass: a worker that needs no more than its shards sees each image once
                stream = _buffered(stream, self.buffer, _rng(self.seed, self.epoch, self.rank, L, k, -1))
            n = 0
            for s in stream:
                n += 1
                yield s, k * _PASS_STRIDE
            if n:
                continue
            rank_stride = stride // self.workers  # the worker filter sits on the rank's (see slot_shards)
            if self.workers > 1 and stride % self.workers == 0 and rank_stride < stride:
                # fewer samples than workers: this worker reads what the rank's other workers read
                offset, stride = offset % rank_stride, rank_stride
                continue
            raise DataError(f"webdataset: shards {', '.join(p.name for p in shards[:3])} hold no samples")

    # Training order (DDP, or dropping the last partial batch): every rank makes exactly `steps` batches of
    # batch_size/world images. Logical worker L makes the steps i with i % W == L from its own shards, cycled
    # when they run out; the DataLoader's worker w plays logical worker (start + w) % W, so that a run resumed
    # at step `start` sees the same batches as an uninterrupted one (the samples of the steps before `start`
    # are skipped without decoding).
    def _cycled(self, w: int) -> Iterator[tuple]:
        L = (self.start + w) % self.workers
        steps = range(self.start + w, self.steps, self.workers)
        if not steps:
            return
        stream = self._slot_stream(L)
        before = len(range(L, self.start, self.workers))  # this logical worker's steps already taken
        for _ in range(before * self.per):
            next(stream)
        limit = sum(self.counts) + 1  # more unreadable samples in a row than there are samples: give up
        for _ in steps:
            items, bad, failed = [], [], 0
            while len(items) < self.per:  # an unreadable sample is replaced by the next: full batches
                s, extra = next(stream)
                got, msgs = self._decode([s], [extra])
                items += got
                bad += msgs
                failed = 0 if got else failed + 1
                if failed > limit:
                    raise DataError(f"webdataset: no readable images in {self.shards[0].parent} "
                                    f"({self.total} listed)")
            yield self._batch(items, bad)


class WebDatasetLoader:
    """Iterates (inputs, targets) over a WebDatasetSet: the interface of `StreamLoader` (len, set_epoch,
    iteration on normalize's device, erasing and MixUp/CutMix on the batch), read from tar shards.

    Each epoch the shard list is shuffled by (seed, epoch) when `shuffle`; rank `rank` of `world` takes its
    own shards of that order and each of its `workers` DataLoader workers its own shards of those; samples
    are shuffled in a seeded buffer of `buffer` and decoded and augmented in the workers. Every rank yields
    exactly len(self) batches of batch_size/world images (a rank whose shards run out reads them again), so
    DDP ranks never wait on one another; with uneven shards an epoch may then see some images twice and
    others not at all. With one process and no dropped batch (evaluation), every image is read exactly once,
    in the manifest's order without `shuffle`. Iteration depends only on (seed, epoch, rank, world, workers).
    """

    def __init__(self, data: WebDatasetSet, batch_size: int, normalize: Normalize, shuffle: bool = False,
                 seed: int = 0, augment: AugmentConfig | None = None, drop_last: bool = False,
                 rank: int = 0, world: int = 1, workers: int | None = None, buffer: int = 1000):
        if batch_size < 1 or batch_size % world:
            raise ConfigError(f"the batch size {batch_size} must be a positive multiple of the {world} processes")
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is not one of the {world} processes")
        self.data, self.batch_size, self.normalize = data, batch_size, normalize
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.drop_last = drop_last or world > 1
        self.workers = default_workers(world) if workers is None else workers
        self.mixing = BatchAugment(augment, data.num_classes) if augment else None
        self.epoch, self.start = 0, 0
        self.skipped: list[str] = []  # messages of the unreadable samples met so far
        n = len(data)
        self._steps = n // batch_size if self.drop_last else -(-n // batch_size)
        spec = SimpleNamespace(files=[], labels=torch.empty(0, dtype=torch.long), in_chans=data.in_chans,
                               img_size=tuple(data.img_size), num_classes=data.num_classes)
        decoder = DecodeImages(spec, augment, seed)  # type: ignore[arg-type]  # only read() is used
        self.stream = _ShardStream(data, decoder, batch_size, shuffle, seed, not self.drop_last, self._steps,
                                   rank, world, self.workers, max(int(buffer), 1))
        if self.drop_last and world > 1 and len(data.shards) < world:
            warnings.warn(f"{data.name}: {len(data.shards)} {data.split} shard(s) for {world} processes: every "
                          f"process reads every shard (write smaller shards: --shard-size)", stacklevel=2)
        device = normalize.mean.device
        self._loader = DataLoader(self.stream, batch_size=None, num_workers=self.workers,
                                  multiprocessing_context=worker_context() if self.workers > 0 else None,
                                  pin_memory=device.type == "cuda",
                                  prefetch_factor=4 if self.workers > 0 else None,
                                  generator=torch.Generator().manual_seed(seed))  # leaves the training's RNG be

    def __len__(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to read next, and the steps of it already taken (skipped, not decoded)."""
        self.epoch = self.stream.epoch = epoch
        self.start = self.stream.start = start

    def rank_shards(self, epoch: int | None = None) -> list[Path]:
        """The shards this rank reads in `epoch` (default the current one)."""
        saved = self.stream.epoch
        self.stream.epoch = self.epoch if epoch is None else epoch
        try:
            if self.stream.exact:
                return self.stream.epoch_shards()
            seen: list[Path] = []
            for L in range(self.stream.workers):
                seen += [p for p in self.stream.slot_shards(L)[0] if p not in seen]
            return seen
        finally:
            self.stream.epoch = saved

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        def checked() -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
            for images, labels, bad, error in self._loader:
                if error:
                    raise DataError(error)
                yield images, labels, bad

        return finish_batches(checked(), self.normalize, self.mixing, self.skipped)

    def close(self) -> None:
        """Nothing to stop: the workers live for one epoch's iteration."""
