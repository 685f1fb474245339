"""The one door to data by name: `load_dataset` looks the name up in SOURCES and hands the request to that
source's module (the bundled sample, the publishers' formats, generated benchmarks, image folders, shards)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

from cnnkit.data import (boxfiles, bundled, cluttered, corruptions, imagefolder, photos, published, scenes,
                         segfolders, shards)
from cnnkit.data.base import ImageData, ImageSize, Loader, LoadOptions, TrainingData, TrainingOpener
from cnnkit.errors import ConfigError, DataError, close_matches


@dataclass(frozen=True)
class Source:
    """A source of named data sets: its loader, and what its name may carry after a colon: nothing
    (`sample`), a folder it needs (`imagefolder:<dir>`), or a selection it may take (`fashion-mnist-c:fog:3`)."""

    load: Loader
    train: TrainingOpener | None = None  # how training opens it, when not by `load` into memory
    argument: str | None = None  # what must follow "name:", as the list of datasets shows it ("<dir>")
    selects: bool = False  # "name:selection" may follow

    def takes(self, colon: bool) -> bool:
        """Whether a name with (or without) a colon after this source's name is one of its data sets."""
        return colon == bool(self.argument) or self.selects


def _source(name: str) -> Source:
    key, colon, _ = name.partition(":")
    source = SOURCES.get(key)
    if source is None or not source.takes(bool(colon)):
        raise DataError(f"unknown dataset {name!r}{close_matches(name, DATASETS)}; choose one of "
                        f"{', '.join(DATASETS)}")
    return source


def _load(name: str, split: str, options: LoadOptions) -> ImageData:
    """Dispatch a full name (`imagefolder:DIR`, `fashion-mnist-c:fog:3`, `mnist`) to its source's loader."""
    return _source(name).load(name, split, options)


SOURCES: dict[str, Source] = {
    "sample": Source(bundled.load),
    "fashion-mnist": Source(published.load),
    "mnist": Source(published.load),
    "cifar10": Source(published.load),
    "cluttered-fashion-mnist": Source(partial(cluttered.load, clean=_load)),
    "cluttered-sample": Source(partial(cluttered.load, clean=_load)),
    "fashion-scenes": Source(partial(scenes.load, clean=_load)),  # segmentation: masks of 1-5 objects per scene
    "fashion-scenes-full": Source(partial(scenes.load, clean=_load)),
    **{name: Source(partial(corruptions.load, clean=_load), selects=True) for name in corruptions.BENCHMARKS},
    "imagefolder": Source(imagefolder.load, imagefolder.open_training, argument="<dir>"),
    # segmentation in the user's formats: images/ and masks/ folders, the Pascal VOC layout, a COCO instances file
    "masks": Source(segfolders.load, segfolders.open_training, argument="<dir>"),
    "voc": Source(segfolders.load, segfolders.open_training, argument="<dir>"),
    "coco": Source(segfolders.load, segfolders.open_training, argument="<file.json>"),
    # detection in the user's formats (in memory only): the YOLO layout, Pascal VOC's boxes, a COCO file's boxes
    "yolo": Source(boxfiles.load, argument="<dir or data.yaml>"),
    "voc-boxes": Source(boxfiles.load, argument="<dir>"),
    "coco-boxes": Source(boxfiles.load, argument="<file.json>"),
    # shards written by `cnnkit data shard`: streamed for training, decoded into memory otherwise
    "webdataset": Source(shards.load, shards.open_training, argument="<dir>"),
    # restoration: clean photographs (the bundled ones, or a folder), training as patches, testing whole
    "photographs": Source(photos.load, photos.open_training),
    "photofolder": Source(photos.load, photos.open_training, argument="<dir>"),
    "pairfolder": Source(photos.load, photos.open_training, argument="<dir>"),
}
DATASETS = [f"{name}:{source.argument}" if source.argument else name for name, source in SOURCES.items()]


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False, strict: bool = False, img_size: ImageSize | None = None,
                 in_chans: int | None = None, test_fraction: float = 0.2, seed: int = 0,
                 bad_boxes: str = "error") -> ImageData:
    """Load a named dataset split ('train' or 'test') into memory.

    `img_size` (N or (H, W)), `in_chans`, `test_fraction` and `seed` apply to image folders: a flat folder
    of class folders holds `test_fraction` of each class out, chosen by `seed`, as its test split (likewise
    the segmentation folders `masks:DIR` without train/ and test/, and `coco:FILE.json`, and the detection
    files). `bad_boxes` "drop" leaves a detection file's bad boxes out (with a warning) instead of refusing them."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return _load(name, split, LoadOptions(data_dir, download, strict, img_size, in_chans, test_fraction, seed,
                                          bad_boxes))


def open_training_data(name: str, mode: str = "auto", processes: int = 1, validation: bool = True,
                       data_dir: str | os.PathLike | None = None, download: bool = False, strict: bool = False,
                       img_size: ImageSize | None = None, test_fraction: float = 0.2, seed: int = 0,
                       bad_boxes: str = "error", in_chans: int | None = None) -> TrainingData:
    """The training split of a named dataset as training reads it (see `TrainingData`): in memory, or as the
    source streams it (image folders by `mode`; WebDataset shards, with their own validation split)."""
    source = _source(name)
    options = LoadOptions(data_dir, download, strict, img_size, in_chans, test_fraction, seed, bad_boxes)
    if source.train is not None:
        return source.train(name, options, mode, processes, validation)
    if mode == "stream":
        raise ConfigError(f"--data-mode stream reads folders of files (imagefolder:, masks:, voc:, coco:); {name} is "
                          f"loaded in memory")
    return TrainingData(_load(name, "train", options))
