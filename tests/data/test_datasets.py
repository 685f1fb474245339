from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import FASHION_MNIST_CLASSES, load_dataset, load_imagefolder, train_val_split
from cnnkit.data.bundled import SAMPLE_ROOT
from cnnkit.data.published import MNIST_FILES
from cnnkit.errors import DataError
from tests.conftest import SHARED_DATA, write_imagefolder


def write_idx(path: Path, array: np.ndarray) -> None:
    """Test fixture writer for the IDX format (ubyte): magic, big-endian dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, n: int = 20, label_max: int = 9) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % (label_max + 1))
    return root


def test_sample_is_real_balanced_fashion_mnist_under_3mb(sample_train):
    size = sum(f.stat().st_size for f in SAMPLE_ROOT.rglob("*.gz"))
    assert size <= 3 * 1024 * 1024
    assert sample_train.images.shape == (5000, 1, 28, 28) and sample_train.images.dtype == torch.uint8
    assert sample_train.labels.bincount().tolist() == [500] * 10
    assert sample_train.classes == FASHION_MNIST_CLASSES
    test = load_dataset("sample", "test")
    assert len(test) == 1000 and test.labels.bincount().tolist() == [100] * 10


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/datasets not present")
def test_full_fashion_mnist_from_gz_extracts_into_cache_not_source(isolated_cache):
    before = sorted(os.listdir(SHARED_DATA / "FashionMNIST" / "raw"))
    test = load_dataset("fashion-mnist", "test", data_dir=SHARED_DATA)
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.labels.bincount().tolist() == [1000] * 10
    assert sorted(os.listdir(SHARED_DATA / "FashionMNIST" / "raw")) == before
    assert list(isolated_cache.rglob("t10k-images-idx3-ubyte"))
    # The bundled sample is a subset of the published training set, byte for byte.
    full = load_dataset("fashion-mnist", "train", data_dir=SHARED_DATA)
    sample = load_dataset("sample", "train")
    first = full.images[full.labels == 0][:500]
    assert torch.equal(first, sample.images[sample.labels == 0])


def test_data_root_from_environment(tmp_path, monkeypatch):
    fake_mnist(tmp_path)
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path))
    data = load_dataset("mnist", "train")
    assert data.images.shape == (20, 1, 28, 28) and data.num_classes == 10


def test_missing_dataset_names_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*FashionMNIST/raw.*--download"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_unknown_dataset_suggests_close_match():
    with pytest.raises(DataError, match="did you mean: fashion-mnist"):
        load_dataset("fashion-mnst")


def test_label_out_of_range_is_rejected(tmp_path):
    fake_mnist(tmp_path, label_max=12)
    with pytest.raises(DataError, match="label 12 is out of range for 10 classes"):
        load_dataset("mnist", data_dir=tmp_path)


def write_raw_files(raw: Path, suffix: str, content: bytes) -> None:
    """The four MNIST-layout files with the same (broken) content."""
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / f"{name}{suffix}").write_bytes(content)


def test_truncated_gz_is_a_clear_error(tmp_path):
    truncated = gzip.compress(np.random.default_rng(0).bytes(5000))[:3000]
    write_raw_files(tmp_path / "FashionMNIST" / "raw", ".gz", truncated)
    with pytest.raises(DataError, match="cannot decompress .*train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_invalid_idx_content_is_a_clear_error(tmp_path):
    write_raw_files(tmp_path / "MNIST" / "raw", "", b"\x00\x00\x08\x03" + b"\x00" * 100)
    with pytest.raises(DataError, match="mnist: cannot read the IDX files in"):
        load_dataset("mnist", data_dir=tmp_path)


def test_split_is_stratified_disjoint_and_seeded(sample_train):
    tr, va = train_val_split(sample_train.labels, 0.1, seed=3)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 5000
    assert sample_train.labels[va].bincount().tolist() == [50] * 10
    tr2, va2 = train_val_split(sample_train.labels, 0.1, seed=3)
    assert torch.equal(va, va2)
    assert not torch.equal(va, train_val_split(sample_train.labels, 0.1, seed=4)[1])


def test_imagefolder_mixed_sizes_and_modes(tmp_path, sample_train):
    write_imagefolder(tmp_path, sample_train)
    data = load_imagefolder(tmp_path)
    assert data.classes == ["Sneaker", "T-shirt-top", "Trouser"]
    # a flat folder: the train split is all but the 20% of each class held out for test (12 - 2 per class)
    assert data.images.shape == (30, 3, 64, 64)  # RGB present, sizes differ: RGB at the default 64×64
    gray = load_imagefolder(tmp_path, img_size=28, in_chans=1)
    assert gray.images.shape == (30, 1, 28, 28)


def test_imagefolder_same_size_gray_keeps_size_and_channels(tmp_path, sample_train):
    write_imagefolder(tmp_path, sample_train, mixed=False)
    data = load_imagefolder(tmp_path)
    assert data.images.shape == (30, 1, 28, 28)
    assert load_imagefolder(tmp_path, "test").images.shape == (6, 1, 28, 28)


def test_imagefolder_16bit_png_is_rescaled_not_clipped(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    arr = (np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 80)
    Image.fromarray(arr).save(d / "x.png")
    data = load_imagefolder(tmp_path)
    assert data.images.max() > 200 and data.images.min() == 0


def test_imagefolder_skips_corrupt_images_with_warning_or_stops_when_strict(tmp_path, sample_train):
    write_imagefolder(tmp_path, sample_train, mixed=False)
    bad = tmp_path / "Trouser" / "broken.png"
    good = (tmp_path / "Trouser" / "0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG
    (tmp_path / "Trouser" / "junk.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped [12] unreadable"):
        parts = [load_imagefolder(tmp_path, split) for split in ("train", "test")]
    assert sum(map(len, parts)) == 36 and sum(len(d.skipped) for d in parts) == 2
    errors = []
    for split in ("train", "test"):
        try:
            load_imagefolder(tmp_path, split, strict=True)
        except DataError as e:
            errors.append(str(e))
    assert any("broken.png" in e for e in errors) or any("junk.jpg" in e for e in errors)


def test_imagefolder_empty_class_and_no_images(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="has no PNG or JPEG images"):
        load_imagefolder(tmp_path)
    with pytest.raises(DataError, match="no class sub-folders"):
        load_imagefolder(tmp_path / "cats")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_imagefolder_uses_train_and_test_subfolders(tmp_path, sample_train):
    write_imagefolder(tmp_path / "train", sample_train, mixed=False)
    write_imagefolder(tmp_path / "test", sample_train, per_class=4, mixed=False)
    assert len(load_dataset(f"imagefolder:{tmp_path}", "train")) == 36
    assert len(load_dataset(f"imagefolder:{tmp_path}", "test")) == 12


def _add(tf, name: str, data: bytes = b"x", **kind) -> None:  # noqa: ANN001 - a tarfile.TarFile
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = 0 if kind else len(data)
    for k, v in kind.items():
        setattr(info, k, v)
    tf.addfile(info, None if kind else io.BytesIO(data))


def test_a_crafted_cifar_archive_writes_nothing_outside_the_cache(tmp_path, monkeypatch):
    """Entries that climb out with `..`, absolute names, links out and device files: none is written anywhere
    (torchvision's extract_archive wrote the first two where they said); the archive is then not CIFAR-10."""
    import tarfile

    cache = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("CNNKIT_CACHE", str(cache))
    root = tmp_path / "data"
    root.mkdir()
    outside = tmp_path / "absolute-escape"
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tf:
        _add(tf, "../../escaped-up")
        _add(tf, "cifar-10-batches-py/../../../../escaped-deep")
        _add(tf, str(outside))
        _add(tf, "cifar-10-batches-py/data_batch_1", type=tarfile.SYMTYPE, linkname=str(tmp_path / "linked"))
        _add(tf, "cifar-10-batches-py/data_batch_2", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        _add(tf, "cifar-10-batches-py/test_batch", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _add(tf, "cifar-10-batches-py/../escaped-sideways")
    with pytest.raises(DataError, match="cifar10"):
        load_dataset("cifar10", data_dir=root)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_dir())
    assert written == ["data/cifar-10-python.tar.gz"], written  # nothing extracted stays, nothing escaped
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_cifar_extraction_takes_only_the_publishers_files(tmp_path):
    import tarfile

    from cnnkit.data.published import extract_cifar10

    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        _add(tf, "cifar-10-batches-py/data_batch_1", b"batch one")
        _add(tf, "cifar-10-batches-py/batches.meta", b"meta")
        _add(tf, "cifar-10-batches-py/extra.py", b"print('hi')")
        _add(tf, "cifar-10-batches-py/sub/data_batch_2", b"nested")
    dest = tmp_path / "dest"
    extract_cifar10(archive, dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["cifar-10-batches-py/batches.meta", "cifar-10-batches-py/data_batch_1"]
    assert (dest / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"batch one"


def test_a_gzip_that_inflates_without_end_is_refused(tmp_path):
    """An IDX .gz that decompresses to more than any published file is stopped, and its partial output removed."""
    from cnnkit.data import cache_dir, published

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    big = raw / "train-images-idx3-ubyte.gz"
    with gzip.open(big, "wb", compresslevel=1) as f:
        chunk = b"\0" * (1 << 20)
        for _ in range(8):
            f.write(chunk)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(published, "IDX_MAX_BYTES", 4 << 20)  # the real limit is 1 GiB; the test inflates 8 MiB
        with pytest.raises(DataError, match="inflates to more than"):
            published.gunzip_into_cache([big], "FashionMNIST/raw")
    assert not [p for p in (cache_dir() / "extracted").rglob("*") if p.is_file() and ".extract-" in p.name]
