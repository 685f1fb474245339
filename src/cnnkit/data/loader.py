"""Batches from in-memory uint8 images: shuffled by (seed, epoch), augmented and normalized on the device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from cnnkit.data.datasets import ImageData
from cnnkit.data.transforms import AugmentConfig, BatchAugment


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.float().div_(255)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


class Normalize:
    """uint8 N×C×H×W -> float normalized, in the memory format the model runs in."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                 channels_last: bool = False):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device, non_blocking=True).float().sub_(self.mean).mul_(self.inv_std)
        return x.contiguous(memory_format=self.memory_format)


class BatchLoader:
    """Iterates (inputs, targets) over an ImageData, one tensor operation per batch, no per-sample Python.

    Data order depends only on (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, data: ImageData, batch_size: int, normalize: Normalize, shuffle: bool = False,
                 seed: int = 0, augment: AugmentConfig | None = None, drop_last: bool = False):
        self.data = data
        self.batch_size = batch_size
        self.normalize = normalize
        self.shuffle = shuffle
        self.seed = seed
        self.augment = BatchAugment(augment, data.num_classes) if augment else None
        self.drop_last = drop_last
        self.epoch = 0
        device = normalize.mean.device
        # Hold the whole set on the device once: small images make this cheap and remove all copies per step.
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order().to(self.images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            images, labels = self.images[idx], self.labels[idx]
            if self.augment is not None:
                images = self.augment.geometric(images)
                x, y = self.augment.erase_and_mix(self.normalize(images), labels)
                yield x.contiguous(memory_format=self.normalize.memory_format), y
            else:
                yield self.normalize(images), labels
