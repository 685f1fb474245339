"""Batches from in-memory uint8 images: shuffled by (seed, epoch), augmented and normalized on the device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from cnnkit.data.base import ImageData
from cnnkit.data.settings import AugmentConfig
from cnnkit.data.transforms import BatchAugment


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.float().div_(255)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


class Normalize:
    """uint8 N×C×H×W -> float normalized, in the memory format the model runs in."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                 channels_last: bool = False):
        # the same value for every channel (a restoration run's 0 and 1) applies to any number of channels
        same = len(set(mean)) == 1 and len(set(std)) == 1
        mean, std = (list(mean)[:1], list(std)[:1]) if same else (mean, std)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device, non_blocking=True).float().sub_(self.mean).mul_(self.inv_std)
        return x.contiguous(memory_format=self.memory_format)


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The order of an epoch's `n` images: a permutation that depends only on (seed, epoch)."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


class ShardedBatches:
    """Which images each step of an epoch gives this process: the epoch's order cut into global batches of
    `batch_size`, and of each global batch the `rank`-th of `world` equal slices; the first `start` steps of
    the epoch are skipped (a run resumed mid-epoch). With several processes the last partial batch is
    dropped, so that every process takes the same number of steps."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool, rank: int = 0,
                 world: int = 1):
        if batch_size % world:
            raise ValueError(f"the batch size {batch_size} must be a multiple of the {world} processes")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last = drop_last or world > 1
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def batches(self) -> Iterator[torch.Tensor]:
        order = epoch_order(self.n, self.shuffle, self.seed, self.epoch)
        per = self.batch_size // self.world
        for i in range(self.start, len(self)):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield batch[self.rank * per:(self.rank + 1) * per] if self.world > 1 else batch


class BatchLoader:
    """Iterates (inputs, targets) over an ImageData, one tensor operation per batch, no per-sample Python.

    Data order depends only on (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
    With `world` processes, each takes its `rank`-th slice of every global batch of `batch_size`; `start`
    (set with `set_epoch`) skips the epoch's first steps, for a run resumed mid-epoch.
    """

    def __init__(self, data: ImageData, batch_size: int, normalize: Normalize, shuffle: bool = False,
                 seed: int = 0, augment: AugmentConfig | None = None, drop_last: bool = False,
                 rank: int = 0, world: int = 1):
        self.data = data
        self.batch_size = batch_size
        self.normalize = normalize
        self.shuffle = shuffle
        self.seed = seed
        self.augment = BatchAugment(augment, data.num_classes) if augment else None
        self.drop_last = drop_last
        self.sampler = ShardedBatches(len(data), batch_size, shuffle, seed, drop_last, rank, world)
        self.epoch = 0
        device = normalize.mean.device
        # Hold the whole set on the device once: small images make this cheap and remove all copies per step.
        self.images = data.images.to(device)
        # the targets: a class per image, or per pixel where the set has masks (augmented with the images)
        self.masks = getattr(data, "masks", None) is not None
        self.objects = not self.masks and getattr(data, "objects", None) is not None  # boxes to detect
        self.labels = (data.masks if self.masks else data.objects if self.objects else data.labels).to(device)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = self.sampler.epoch = epoch
        self.sampler.start = start

    def order(self) -> torch.Tensor:
        return epoch_order(len(self.data), self.shuffle, self.seed, self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.sampler.batches():
            idx = idx.to(self.images.device)
            images, labels = self.images[idx], self.labels[idx]
            if self.augment is not None and self.masks:
                images, labels = self.augment.geometric_with_masks(images, labels)
                yield self.normalize(images).contiguous(memory_format=self.normalize.memory_format), labels
            elif self.augment is not None and self.objects:
                images, labels = self.augment.geometric_with_objects(images, labels)
                yield self.normalize(images).contiguous(memory_format=self.normalize.memory_format), labels
            elif self.augment is not None:
                images = self.augment.geometric(images)
                x, y = self.augment.erase_and_mix(self.normalize(images), labels)
                yield x.contiguous(memory_format=self.normalize.memory_format), y
            else:
                yield self.normalize(images), labels
