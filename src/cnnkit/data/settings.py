"""The data layer's settings, importable without torch (the CLI builds its options from them at start-up):
which augmentations a run applies, and the share of training images held out for validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cnnkit.errors import ConfigError, close_matches

DEFAULT_VAL_FRACTION = 0.1  # `cnnkit train`'s share of the training split held out for validation
# the names of cnnkit.data.sources.DATASETS (their loaders import torch; the options' help is made from these,
# and tests/cli/test_train_options.py checks both lists name the same sets): those training reads, then the
# corruption benchmarks, which only evaluation reads
TRAINING_DATASETS = ("sample", "fashion-mnist", "mnist", "cifar10", "cluttered-fashion-mnist", "cluttered-sample",
                     "fashion-scenes", "fashion-scenes-full", "imagefolder:<dir>", "masks:<dir>", "voc:<dir>",
                     "coco:<file.json>", "yolo:<dir or data.yaml>", "voc-boxes:<dir>", "coco-boxes:<file.json>",
                     "webdataset:<dir>", "photographs", "photofolder:<dir>",
                     "pairfolder:<dir>")
BENCHMARK_DATASETS = ("fashion-mnist-c", "mnist-c", "cifar10-c", "sample-c")
# the data sets whose targets are a class per pixel (a name, or a source before its "name:" argument): training
# on them is the `segment` task unless told otherwise
SEGMENTATION_DATASETS = ("fashion-scenes", "fashion-scenes-full", "masks", "voc", "coco")
# the sources whose targets are boxes of classes (cnnkit.data.boxfiles): training on them is the `detect` task
# unless told otherwise
DETECTION_SOURCES = ("yolo", "voc-boxes", "coco-boxes")
# the sources of clean photographs (cnnkit.data.photos): training on them is the `restore` task
RESTORATION_SOURCES = ("photographs", "photofolder", "pairfolder")
# the sources whose argument is a path (made absolute where a run's options enter, and in reports)
PATH_SOURCES = ("imagefolder", "webdataset", "masks", "voc", "coco", *DETECTION_SOURCES, "photofolder",
                "pairfolder")
POLICIES = ("none", "trivialaugment", "randaugment")
# a segmentation mask's value for pixels that count nowhere (unlabelled, VOC's object boundaries, COCO's crowds)
IGNORE = 255


def is_segmentation_data(data: str) -> bool:
    """Whether `data` (`fashion-scenes`, `voc:DIR`, ...) labels each pixel (see SEGMENTATION_DATASETS)."""
    return data.partition(":")[0] in SEGMENTATION_DATASETS


def is_restoration_data(data: str) -> bool:
    """Whether `data` (`photographs`, `photofolder:DIR`, `pairfolder:DIR`) is photographs to restore
    (RESTORATION_SOURCES)."""
    return data.partition(":")[0] in RESTORATION_SOURCES


def is_detection_data(data: str) -> bool:
    """Whether `data` (`yolo:DIR`, `voc-boxes:DIR`, `coco-boxes:FILE.json`) is boxes from files (DETECTION_SOURCES)."""
    return data.partition(":")[0] in DETECTION_SOURCES


@dataclass
class AugmentConfig:
    """Which augmentations to apply; all off by default."""

    crop_padding: int = 0  # padded random crop: pad by this many pixels, crop back to size
    resized_crop: float = 0.0  # random-resized crop (Inception/ImageNet style): smallest area share, e.g. 0.08; 0 off
    hflip: bool = False  # horizontal flip with probability 1/2
    policy: str = "none"  # 'trivialaugment' or 'randaugment' (torchvision.transforms.v2)
    erasing: float = 0.0  # RandomErasing probability
    mixup: float = 0.0  # MixUp alpha (0 = off)
    cutmix: float = 0.0  # CutMix alpha (0 = off)

    def __post_init__(self) -> None:
        def number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(self.policy, str) or self.policy not in POLICIES:
            raise ConfigError(f"unknown augmentation policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        checks = [
            ("crop_padding", isinstance(self.crop_padding, int) and not isinstance(self.crop_padding, bool)
             and self.crop_padding >= 0, "a whole number of pixels, 0 or more (e.g. 4)"),
            ("resized_crop", number(self.resized_crop) and 0.0 <= self.resized_crop <= 1.0,
             "the smallest share of the image's area a crop keeps, in (0, 1] (e.g. 0.08), or 0 (off)"),
            ("hflip", isinstance(self.hflip, bool), "true or false"),
            ("erasing", number(self.erasing) and 0.0 <= self.erasing <= 1.0, "a probability in [0, 1] (e.g. 0.25)"),
            ("mixup", number(self.mixup) and self.mixup >= 0, "an alpha of 0 (off) or more (e.g. 0.2)"),
            ("cutmix", number(self.cutmix) and self.cutmix >= 0, "an alpha of 0 (off) or more (e.g. 1.0)"),
        ]
        for key, ok, need in checks:
            if not ok:
                raise ConfigError(f"augmentation {key}={getattr(self, key)!r} is not valid: give {need}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AugmentConfig:
        """An AugmentConfig from key=value options; ConfigError names an unknown key and the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ConfigError(f"unknown augmentation {unknown[0]!r}{close_matches(unknown[0], known)}; "
                              f"the keys are: {', '.join(known)}")
        return cls(**values)

    @property
    def soft_targets(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0
