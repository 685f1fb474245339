"""Streaming image folders: the same images as in memory, deterministic augmentation whatever the workers,
mid-epoch starts, unreadable files skipped and counted, and the memory/stream choice."""

from __future__ import annotations

import warnings

import pytest
import torch

from cnnkit.data import BatchLoader, Normalize
from cnnkit.data.imagefolder import decode_files, scan_imagefolder
from cnnkit.data.stream import StreamLoader, choose_mode
from cnnkit.data.settings import AugmentConfig
from tests.conftest import write_imagefolder

RAW = Normalize([0.0], [1 / 255])  # leaves the uint8 values as they are, as floats


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sample_train):
    return write_imagefolder(tmp_path_factory.mktemp("stream") / "photos", sample_train, per_class=12)


def _batches(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_streaming_gives_the_images_and_labels_of_memory_mode(folder):
    files = scan_imagefolder(folder, "train", img_size=28, in_chans=1)
    memory = decode_files(files)
    assert files.in_chans == memory.in_chans and len(files) == len(memory) == 30
    for shuffle in (False, True):
        streamed = _batches(StreamLoader(files, 8, RAW, shuffle=shuffle, seed=5, workers=2), epoch=1)
        held = _batches(BatchLoader(memory, 8, RAW, shuffle=shuffle, seed=5), epoch=1)
        assert len(streamed) == len(held) == 4
        for (xs, ys), (xm, ym) in zip(streamed, held):
            assert torch.equal(ys, ym) and torch.equal(xs, xm)


def test_augmentation_is_the_same_whatever_the_workers_and_resumes_mid_epoch(folder):
    files = scan_imagefolder(folder, "train", img_size=24, in_chans=3)
    aug = AugmentConfig(resized_crop=0.3, hflip=True, crop_padding=2)
    norm = Normalize([0.0] * 3, [1 / 255] * 3)
    in_process = _batches(StreamLoader(files, 8, norm, shuffle=True, seed=1, augment=aug, workers=0))
    two = StreamLoader(files, 8, norm, shuffle=True, seed=1, augment=aug, workers=2)
    in_workers = _batches(two)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(in_process, in_workers))
    assert in_process[0][0].shape == (8, 3, 24, 24)
    plain = _batches(StreamLoader(files, 8, norm, shuffle=True, seed=1, workers=0))
    assert not torch.equal(plain[0][0], in_process[0][0])  # augmented
    assert not torch.equal(_batches(two, epoch=1)[0][0], in_workers[0][0])  # another epoch, other draws
    resumed = _batches(two, epoch=0, start=2)  # the epoch's last steps, as in the uninterrupted epoch
    assert len(resumed) == len(in_workers) - 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, in_workers[2:]))


def test_two_ranks_stream_disjoint_halves_of_each_global_batch(folder):
    files = scan_imagefolder(folder, "train", img_size=28, in_chans=1)
    whole = _batches(StreamLoader(files, 8, RAW, shuffle=True, seed=2, workers=0, drop_last=True))
    halves = [_batches(StreamLoader(files, 8, RAW, shuffle=True, seed=2, workers=0, rank=r, world=2))
              for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == len(whole) == 3
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *halves):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_unreadable_files_are_skipped_and_counted(tmp_path, sample_train):
    root = write_imagefolder(tmp_path / "photos", sample_train, per_class=4, mixed=False)
    files = scan_imagefolder(root, "train", img_size=28, test_fraction=0.25)
    bad = files.files[1]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated after the folder was listed, as a disk may do
    loader = StreamLoader(files, 4, RAW, workers=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = sum(len(y) for _, y in loader)
    assert seen == len(files) - 1 and len(loader.skipped) == 1
    assert any(f"{bad.parent.name}/{bad.name}" in str(w.message) for w in caught)


def test_auto_streams_only_what_would_not_fit(folder, monkeypatch):
    files = scan_imagefolder(folder, "train", img_size=28, in_chans=1)
    need = 30 * 28 * 28
    monkeypatch.setattr("cnnkit.data.stream.available_memory", lambda: 8 * need)
    assert choose_mode("auto", files)[0] == "memory"
    assert choose_mode("auto", files, processes=4)[0] == "stream"  # each process would hold its own copy
    monkeypatch.setattr("cnnkit.data.stream.available_memory", lambda: 3 * need)
    mode, why = choose_mode("auto", files)
    assert mode == "stream" and "quarter" in why
    assert choose_mode("memory", files)[0] == "memory"
