"""The data door: one table from a source's name to its module's loader, and the sets' shared protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnkit.data import DATASETS, FileSet, ImageSet, IndexedImageSet, load_dataset
from cnnkit.data.shards import WebDatasetSet
from cnnkit.data.sources import SOURCES, Source
from cnnkit.errors import DataError


def test_each_name_goes_to_its_sources_loader_and_only_names_a_source_takes(monkeypatch):
    assert DATASETS == ["sample", "fashion-mnist", "mnist", "cifar10", "cluttered-fashion-mnist", "cluttered-sample",
                        "fashion-scenes", "fashion-scenes-full", "fashion-mnist-c", "mnist-c", "cifar10-c", "sample-c", "imagefolder:<dir>",
                        "masks:<dir>", "voc:<dir>", "coco:<file.json>", "yolo:<dir or data.yaml>", "voc-boxes:<dir>",
                        "coco-boxes:<file.json>", "webdataset:<dir>", "photographs", "photofolder:<dir>",
                        "pairfolder:<dir>"]
    asked = []
    fake = Source(lambda name, split, options: asked.append((name, split, options.seed)), argument="<dir>")
    monkeypatch.setitem(SOURCES, "imagefolder", fake)
    load_dataset("imagefolder:some/dir", "test", seed=3)
    assert asked == [("imagefolder:some/dir", "test", 3)]
    for name in ("mnist:x", "sample:1", "imagefolder", "webdataset", "cluttered-sample:x", "nope", "photographs:x",
                 "photofolder", "pairfolder"):
        with pytest.raises(DataError, match="unknown dataset"):
            load_dataset(name)


def test_every_set_meets_the_protocol_and_those_picked_by_position_the_indexed_one(sample_train):
    files = FileSet([], sample_train.labels[:0], sample_train.classes, "f", "train", 1, (28, 28))
    shards = WebDatasetSet(Path("s"), "train", ["a"], 1, (28, 28), [0.5], [0.2], [], [])
    assert all(isinstance(s, ImageSet) for s in (sample_train, files, shards))
    assert isinstance(sample_train, IndexedImageSet) and isinstance(files, IndexedImageSet)
    assert not isinstance(shards, IndexedImageSet)
