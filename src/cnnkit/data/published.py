"""The publishers' formats, read through torchvision: Fashion-MNIST and MNIST (IDX files, plain or
gzipped) and CIFAR-10 (the python archive, or its extracted folder), into memory as uint8 tensors."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import IO

import torch
from torchvision import datasets as tvd

from cnnkit.data.base import ImageData, LoadOptions, cache_dir, resolve_data_root
from cnnkit.errors import DataError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

IDX_MAX_BYTES = 1 << 30  # the largest published IDX file (MNIST's training images) is 47 MB

MNIST_LIKE = {
    "fashion-mnist": (tvd.FashionMNIST, "FashionMNIST"),
    "mnist": (tvd.MNIST, "MNIST"),
}

# torchvision's MNIST classes check that both splits' files exist before reading either.
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta", "readme.html")
_CIFAR10_MEMBER_BYTES = 256 << 20  # each published file is under 32 MB


def load(name: str, split: str, options: LoadOptions) -> ImageData:
    """The source loader of `fashion-mnist`, `mnist` and `cifar10`: `split` from the data root."""
    root = resolve_data_root(options.data_dir)
    if name == "cifar10":
        return load_cifar10(root, split == "train", options.download)
    return load_mnist_like(name, root, split == "train", options.download)


def _copy_bounded(src: IO[bytes], dst: IO[bytes], limit: int, name: Path) -> None:
    """Copy at most `limit` bytes; DataError past it (a .gz that inflates without end fills no disk)."""
    total = 0
    while chunk := src.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise DataError(f"cannot decompress {name}: it inflates to more than {limit >> 20} MiB, far more than "
                            f"an IDX file of this data set; it is not the published archive")
        dst.write(chunk)


def gunzip_into_cache(files: list[Path], subdir: str) -> Path:
    """Decompress `.gz` files (each to at most IDX_MAX_BYTES) into a cache folder keyed by their content;
    return that cache root."""
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
                _copy_bounded(src, dst, IDX_MAX_BYTES, f)
            os.replace(tmp, target)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            Path(tmp).unlink(missing_ok=True)
            raise DataError(f"cannot decompress {f}: {e}") from None
        except DataError:
            Path(tmp).unlink(missing_ok=True)
            raise
    return root


def load_mnist_like(name: str, root: Path, train: bool, download: bool) -> ImageData:
    """Fashion-MNIST or MNIST from `root/<Folder>/raw` (IDX files, plain or gzipped), or downloaded there."""
    cls, folder = MNIST_LIKE[name]
    raw = root / folder / "raw"
    wanted = MNIST_FILES
    if all((raw / w).exists() for w in wanted):
        tv_root = root
    elif all((raw / f"{w}.gz").exists() for w in wanted):
        tv_root = gunzip_into_cache([raw / f"{w}.gz" for w in wanted], f"{folder}/raw")
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


def _extracted_cifar10(archive: Path) -> Path:
    """The cache folder holding `archive` extracted (extracted now if it is not there yet)."""
    tv_root = cache_dir() / "extracted" / "cifar10"
    if (tv_root / "cifar-10-batches-py").is_dir():
        return tv_root
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
    return tv_root


def load_cifar10(root: Path, train: bool, download: bool) -> ImageData:
    """CIFAR-10 from `root/cifar-10-batches-py`, or `root/cifar-10-python.tar.gz` (extracted into the cache),
    or downloaded into `root`."""
    folder = root / "cifar-10-batches-py"
    archive = root / "cifar-10-python.tar.gz"
    if folder.is_dir():
        tv_root = root
    elif archive.exists():
        tv_root = _extracted_cifar10(archive)
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
