"""Datasets, the bundled sample, batched augmentation and loading."""

from cnnkit.data.datasets import (DATASETS, FASHION_MNIST_CLASSES, ImageData, load_dataset, load_imagefolder,
                                  per_class_subset, resolve_data_root, train_val_split)
from cnnkit.data.images import list_image_files, load_image_file, to_model_input
from cnnkit.data.loader import BatchLoader, Normalize, channel_stats
from cnnkit.data.transforms import AugmentConfig, BatchAugment, random_crop_flip

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "ImageData", "load_dataset", "load_imagefolder",
           "per_class_subset", "resolve_data_root", "train_val_split", "list_image_files", "load_image_file", "to_model_input",
           "BatchLoader", "Normalize", "channel_stats", "AugmentConfig", "BatchAugment", "random_crop_flip"]
