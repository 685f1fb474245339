"""Data sets by name (`load_dataset`, the one door: `sources.SOURCES` sends each name to its source's
module: `bundled`, `published`, `cluttered`, `corruptions`, `imagefolder`, `segfolders`, `shards`), the sets they give
(`ImageData` in memory, `FileSet` as files, `shards.WebDatasetSet` as tar shards, all meeting the `ImageSet`
protocol of `base`), splits, batched augmentation, and the loaders that read each set (`BatchLoader`,
`stream.StreamLoader`, `shards.WebDatasetLoader`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnkit.lazy import lazy_getattr

# name -> the module that defines it; imported on first use, so that `import cnnkit.<package>.<module>`
# of a light module (the CLI's start-up) does not import torch
_EXPORTS = {
    "FileSet": "cnnkit.data.base",
    "ImageData": "cnnkit.data.base",
    "ImageSet": "cnnkit.data.base",
    "IndexedImageSet": "cnnkit.data.base",
    "cache_dir": "cnnkit.data.base",
    "resolve_data_root": "cnnkit.data.base",
    "list_image_files": "cnnkit.data.images",
    "load_image_file": "cnnkit.data.images",
    "to_model_input": "cnnkit.data.images",
    "load_imagefolder": "cnnkit.data.imagefolder",
    "BatchLoader": "cnnkit.data.loader",
    "Normalize": "cnnkit.data.loader",
    "channel_stats": "cnnkit.data.loader",
    "FASHION_MNIST_CLASSES": "cnnkit.data.published",
    "DATASETS": "cnnkit.data.sources",
    "load_dataset": "cnnkit.data.sources",
    "open_training_data": "cnnkit.data.sources",
    "per_class_subset": "cnnkit.data.splits",
    "train_val_split": "cnnkit.data.splits",
    "AugmentConfig": "cnnkit.data.transforms",
    "BatchAugment": "cnnkit.data.transforms",
    "random_crop_flip": "cnnkit.data.transforms",
}

if TYPE_CHECKING:  # what static tools (type checkers, the API reference) read
    from cnnkit.data.base import FileSet, ImageData, ImageSet, IndexedImageSet, cache_dir, resolve_data_root
    from cnnkit.data.images import list_image_files, load_image_file, to_model_input
    from cnnkit.data.imagefolder import load_imagefolder
    from cnnkit.data.loader import BatchLoader, Normalize, channel_stats
    from cnnkit.data.published import FASHION_MNIST_CLASSES
    from cnnkit.data.sources import DATASETS, load_dataset, open_training_data
    from cnnkit.data.splits import per_class_subset, train_val_split
    from cnnkit.data.transforms import AugmentConfig, BatchAugment, random_crop_flip

__all__ = ["FileSet", "ImageData", "ImageSet", "IndexedImageSet", "cache_dir", "resolve_data_root",
           "list_image_files", "load_image_file", "to_model_input", "load_imagefolder", "BatchLoader", "Normalize",
           "channel_stats", "FASHION_MNIST_CLASSES", "DATASETS", "load_dataset", "open_training_data", "per_class_subset",
           "train_val_split", "AugmentConfig", "BatchAugment", "random_crop_flip"]


__getattr__ = lazy_getattr(globals(), _EXPORTS)
