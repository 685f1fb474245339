"""Image folders larger than memory: images decoded and augmented in DataLoader worker processes, a batch
at a time, in the same order and with the same sharding as the in-memory loader.

Every image's random augmentation is drawn from a generator seeded by (seed, epoch, image), so what a
worker does does not depend on which worker does it, and a run resumed mid-epoch sees the same pixels.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cnnkit.data.base import FileSet
from cnnkit.data.images import convert_mode, load_image_file, to_model_input
from cnnkit.data.loader import Normalize, ShardedBatches
from cnnkit.data.settings import AugmentConfig
from cnnkit.data.transforms import BatchAugment, random_crop_flip
from cnnkit.errors import DataError

DATA_MODES = ("auto", "memory", "stream")
FATAL = "\0fatal:"  # a worker's message that stops training (a bad mask) rather than skipping the image


def image_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) & 0x7FFF_FFFF_FFFF_FFFF


class DecodeImages(Dataset):
    """Reads item (index, epoch): the file decoded, converted to the set's format and, when training,
    augmented per image (random-resized crop from the full image, padded crop, flip, policy); an unreadable
    file gives (None, its path) instead, for the collate function to drop and count."""

    def __init__(self, files: FileSet, augment: AugmentConfig | None, seed: int):
        self.files, self.labels = files.files, files.labels.tolist()  # a WebDataset set has neither: it calls read
        self.in_chans, self.size = files.in_chans, tuple(files.img_size)
        self.augment, self.seed = augment, seed
        self.policy = BatchAugment(augment, files.num_classes).policy if augment else None
        self.crop = (v2.RandomResizedCrop(self.size, scale=(augment.resized_crop, 1.0), antialias=True)
                     if augment and augment.resized_crop > 0 else None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor | None, int | str]:
        index, epoch = item
        return self.read(self.files[index], self.labels[index], index, epoch)

    def read(self, source: str | os.PathLike | IO[bytes], label: int, index: int, epoch: int,
             name: str | None = None) -> tuple[torch.Tensor | None, int | str]:
        """One image (a path or a binary file object) as (uint8 C×H×W in the set's format, augmented for
        (epoch, index) when training, `label`), or (None, the one-line reason) when it cannot be read."""
        # A random-resized crop starts from the full image, decoded at no more than twice the target side
        # (JPEG's reduced-scale decoding): a crop of a 12-megapixel photo costs no more than one of 0.2.
        reduce = 2 * max(self.size) if self.crop is not None else None
        try:
            image = load_image_file(source, reduce_to=reduce, name=name)
        except DataError as e:
            return None, str(e)
        if self.augment is None:
            return to_model_input(image, self.in_chans, self.size), label
        if get_worker_info() is None:  # in this process: leave the training's own random state as it was
            with torch.random.fork_rng(devices=[]):
                return self._augment(image, epoch, index), label
        return self._augment(image, epoch, index), label

    def _augment(self, image, epoch: int, index: int) -> torch.Tensor:
        # the CPU generator alone (torch.manual_seed would also seed every other device: 100× slower)
        torch.default_generator.manual_seed(image_seed(self.seed, epoch, index))
        a = self.augment
        if self.crop is not None:  # crop and resize the PIL image, then convert only the crop
            image = convert_mode(image, self.in_chans)
            top, left, h, w = v2.RandomResizedCrop.get_params(image, self.crop.scale, self.crop.ratio)
            image = image.resize(self.size[::-1], Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
            x = TF.pil_to_tensor(image)
        else:
            x = to_model_input(image, self.in_chans, self.size)
        if a.crop_padding:
            x = random_crop_flip(x[None], a.crop_padding, a.hflip)[0]
        elif a.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.policy is not None:
            x = self.policy(x)
        return x.contiguous()


def collate_readable(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the readable images of a batch; the unreadable ones' messages come back as the third item. In a
    worker, torch's default_collate stacks straight into shared memory: a batch stacked in the worker's own
    heap and then copied out leaves that heap growing with every image decoded (glibc's allocator)."""
    good = [(x, y) for x, y in items if x is not None]
    bad = [msg for x, msg in items if x is None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    images, labels = default_collate(good)
    return images, labels, bad


def worker_context() -> multiprocessing.context.BaseContext | None:
    """How decoding workers start: forked from a server process that imported torch and the decoders before
    any thread ran (forkserver), never forked from the training process itself, whose threads (gloo's under
    torchrun, TensorBoard's writer, a pin-memory thread) may hold a lock at the instant of the fork and leave the
    worker waiting on it forever while the training waits on the worker (pytorch/pytorch#130610; an intermittent
    hang of `--nproc 2` streaming here). None (the platform's default, spawn) where there is no forkserver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "cnnkit.data.stream", "cnnkit.data.segfolders", "cnnkit.data.shards"])
    return context


def default_workers(world: int = 1) -> int:
    """Decoding processes per training process: the CPUs this process may use shared among the processes
    of the run, at least 1 and at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // max(world, 1)))


class StreamLoader:
    """Iterates (inputs, targets) over a FileSet with worker processes that decode and augment; the same
    interface, order and sharding as `BatchLoader` (see `ShardedBatches`). Erasing and MixUp/CutMix run
    on the whole batch here, after normalization, as in memory. Memory stays bounded by the workers'
    prefetched batches, whatever the folder's size."""

    def __init__(self, files: FileSet, batch_size: int, normalize: Normalize, shuffle: bool = False,
                 seed: int = 0, augment: AugmentConfig | None = None, drop_last: bool = False,
                 rank: int = 0, world: int = 1, workers: int | None = None):
        self.files = files
        self.normalize = normalize
        self.sampler = ShardedBatches(len(files), batch_size, shuffle, seed, drop_last, rank, world)
        self.mixing = BatchAugment(augment, files.num_classes) if augment else None
        self.workers = default_workers(world) if workers is None else workers
        self.epoch = 0
        self.skipped: list[str] = []  # messages of the unreadable images met so far
        device = normalize.mean.device
        self._loader = DataLoader(
            files.decoder(augment, seed) if hasattr(files, "decoder") else DecodeImages(files, augment, seed),
            batch_sampler=_EpochBatches(self), num_workers=self.workers,
            multiprocessing_context=worker_context() if self.workers > 0 else None,
            collate_fn=collate_readable, pin_memory=device.type == "cuda",
            persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers > 0 else None,
            generator=torch.Generator().manual_seed(seed))  # its own: starting workers leaves the training's RNG be

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = self.sampler.epoch = epoch
        self.sampler.start = start

    def close(self) -> None:
        """Stop the decoding workers now (they also stop when the loader is freed)."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader._iterator = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return finish_batches(self._loader, self.normalize, self.mixing, self.skipped)


def finish_batches(batches: Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]], normalize: Normalize,
                   mixing: BatchAugment | None, skipped: list[str]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Workers' (uint8 images, labels, unreadable images' messages) batches as the training loop takes them:
    normalized on the device, erased and mixed per batch; the unreadable ones warned about and added to
    `skipped`; a FATAL message (a segmentation set's bad mask) raised as a DataError."""
    for images, labels, bad in batches:
        fatal = [msg[len(FATAL):] for msg in bad if msg.startswith(FATAL)]
        if fatal:
            raise DataError(fatal[0])
        if bad:
            skipped += bad
            for msg in bad:
                warnings.warn(msg, stacklevel=3)
        if not len(labels):
            continue
        labels = labels.to(normalize.mean.device, non_blocking=True)
        x = normalize(images)
        if mixing is not None and (mixing.erase is not None or mixing.mixer is not None):
            x, labels = mixing.erase_and_mix(x, labels)
            x = x.contiguous(memory_format=normalize.memory_format)
        yield x, labels


class _EpochBatches:
    """The DataLoader's batch sampler: the loader's current epoch's batches, as (index, epoch) items. It holds
    its loader weakly: a loader nobody uses any more is freed at once, and its workers stop with it."""

    def __init__(self, loader: StreamLoader):
        self._loader = weakref.ref(loader)

    @property
    def loader(self) -> StreamLoader:
        return self._loader()

    def __len__(self) -> int:
        s = self.loader.sampler
        return max(len(s) - s.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.loader.epoch
        for batch in self.loader.sampler.batches():
            yield [(i, epoch) for i in batch.tolist()]


def decoded_bytes(files: FileSet) -> int:
    """Bytes the set would take decoded in memory (uint8 at its format)."""
    h, w = files.img_size
    return len(files) * files.in_chans * h * w


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable on Linux; physical memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def choose_mode(mode: str, files: FileSet, processes: int = 1) -> tuple[str, str]:
    """'memory' or 'stream' for `mode` ('auto' streams when the decoded set, once per process of the run,
    would take more than a quarter of the available memory), and why."""
    if mode not in DATA_MODES:
        raise DataError(f"unknown data mode {mode!r}; choose one of {', '.join(DATA_MODES)}")
    need, have = decoded_bytes(files) * max(processes, 1), available_memory()
    if mode != "auto":
        return mode, f"--data-mode {mode}"
    if need > have // 4:
        return "stream", (f"auto: decoded it would take {need / 2**30:.1f} GiB, more than a quarter of the "
                          f"{have / 2**30:.1f} GiB available: streamed from disk")
    return "memory", f"auto: decoded it takes {need / 2**30:.2f} GiB of {have / 2**30:.1f} GiB available: in memory"


def sample_channel_stats(files: FileSet, images: int = 2000, workers: int | None = None
                         ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of a fixed sample of up to `images` of the set, decoded by
    worker processes: normalization statistics without reading the whole folder."""
    n = len(files)
    g = torch.Generator().manual_seed(0)
    pick = torch.sort(torch.randperm(n, generator=g)[:images]).values
    loader = StreamLoader(files.subset(pick, files.split), 256, Normalize([0.0] * files.in_chans,
                          [1 / 255] * files.in_chans), workers=min(default_workers(), 4) if workers is None else workers)
    total = torch.zeros(files.in_chans, dtype=torch.float64)
    squares = torch.zeros(files.in_chans, dtype=torch.float64)
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable files are reported when training meets them
        try:
            for x, _ in loader:
                x = x.double().div_(255)
                total += x.sum(dim=(0, 2, 3))
                squares += x.square().sum(dim=(0, 2, 3))
                count += x.shape[0] * x.shape[2] * x.shape[3]
        finally:
            loader.close()
    if not count:
        raise DataError(f"{files.name}: none of {len(pick)} sampled images could be read")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).mul(count / max(count - 1, 1)).sqrt()
    return mean.tolist(), std.tolist()
