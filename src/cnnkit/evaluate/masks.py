"""Segmentation predictions on image files of any size: each image's mask at the image's own resolution, its
classes' areas, and the files `cnnkit predict --masks-out` writes (a palette PNG of the class indices, an
overlay of the mask's colours on the image, and `areas.json`).

How an image of any size reaches the model (`input_size`):
- `model` (the default): the whole image is resized (stretched, not cropped) to the checkpoint's training size,
  the scale the model learnt; images are batched; memory is bounded by the batch at that size.
- `native`: the model, fully convolutional, sees the image at its own size (scaled down first to at most
  NATIVE_MAX_PIXELS pixels), padded at the bottom and right to a multiple of the model's total stride (U-Net:
  2**depth; DeepLab: its output stride; other models: 32) with the normalization's mean; the outputs are
  cropped back. One image at a time.
- `window`: as `native`, but the model sees overlapping windows of its training size (the evaluation's
  sliding window, `cnnkit.tasks.segment.SlidingWindow`), their probabilities averaged where they overlap.
Either way the per-pixel probabilities are resized back to the image's size (bilinear, as F.interpolate with
align_corners=False) and the mask is their argmax, computed in strips of rows so that a very large image never
holds K full-size probability planes at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cnnkit.data.images import convert_mode, decoded_images, load_image_file
from cnnkit.errors import ConfigError, DataError
from cnnkit.tasks import Task
from cnnkit.tasks.segment import test_time_model

INPUT_SIZES = ("model", "native", "window")
NATIVE_MAX_PIXELS = 1024 * 1024  # `native`: a larger image is scaled down to this many pixels for the model
BATCH_PIXELS = 2 ** 25  # decoded pixels held at once while a batch of images forms (`model`)
STRIP_VALUES = 2 ** 24  # probabilities interpolated at once when a mask is resized back (64 MB of float32)
AREAS_FILE = "areas.json"
OVERLAY_ALPHA = 0.5


def check_input_size(input_size: str) -> None:
    """Refuse an unknown `input_size` in one line (ConfigError)."""
    if input_size not in INPUT_SIZES:
        raise ConfigError(f"--input-size must be one of {', '.join(INPUT_SIZES)}, got {input_size!r}")


def model_input(image: Image.Image, in_chans: int, size: tuple[int, int]) -> torch.Tensor:
    """A PIL image of any mode and size as uint8 C×H×W at `size`: the whole image resized (stretched), so that
    every pixel of it has a place in the mask."""
    t = TF.pil_to_tensor(convert_mode(image, in_chans))
    if tuple(t.shape[-2:]) != tuple(size):
        t = TF.resize(t, list(size), antialias=True)
    return t.contiguous()


def native_input(image: Image.Image, in_chans: int, max_pixels: int | None = None) -> torch.Tensor:
    """A PIL image as uint8 C×h×w at its own size, or scaled down (aspect ratio kept) to at most `max_pixels`
    (default NATIVE_MAX_PIXELS)."""
    t = TF.pil_to_tensor(convert_mode(image, in_chans))
    h, w = t.shape[-2:]
    max_pixels = max_pixels or NATIVE_MAX_PIXELS
    if h * w > max_pixels:
        scale = (max_pixels / (h * w)) ** 0.5
        t = TF.resize(t, [max(1, int(h * scale)), max(1, int(w * scale))], antialias=True)
    return t.contiguous()


def stride_of(model: nn.Module) -> int:
    """The multiple of which a fully convolutional model's input sides should be: U-Net 2**depth, DeepLab its
    output stride, another model 32 (a multiple of every stride of the torchvision models)."""
    from cnnkit.models.segment import DeepLab, UNet

    if isinstance(model, UNet):
        return 2 ** len(model.up)
    if isinstance(model, DeepLab):
        return model.output_stride
    return 32


def mask_at(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The argmax (uint8 H×W) of K×h×w per-pixel probabilities resized bilinearly to `size` (as F.interpolate
    with align_corners=False: pixel centres aligned, edges clamped), in strips of rows."""
    k, h, w = probs.shape
    if k > 256:
        raise ConfigError(f"a mask PNG holds at most 256 classes; this model has {k}")
    height, width = size
    if (h, w) == (height, width):
        return probs.max(0).indices.to(torch.uint8)  # argmax over dim 0, as segment.predicted_classes
    # grid_sample, not F.interpolate: it samples any strip of output rows from the whole input, so a large
    # image's K probability planes never exist at full size at once
    out = torch.empty(height, width, dtype=torch.uint8)
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * (2 / width) - 1
    rows = max(1, STRIP_VALUES // (k * width))
    source = probs.float().unsqueeze(0)
    for top in range(0, height, rows):
        ys = (torch.arange(top, min(height, top + rows), dtype=torch.float32) + 0.5) * (2 / height) - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).unsqueeze(0)
        strip = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[top:top + len(ys)] = strip[0].max(0).indices.to(torch.uint8)
    return out


@torch.no_grad()
def native_predictions(model: nn.Module, loader: Iterable, native_masks: list[torch.Tensor], task: Task, tta: bool,
                       autocast: Callable[[], contextlib.AbstractContextManager]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluation at each image's own resolution: the model's probabilities on the loaded (resized) images,
    resized to each image's mask as its file holds it (`mask_at`); returns every native pixel's predicted and
    true class (1×P each, for the metrics) and, for the report's overlays, the predicted and true masks at the
    loaded size. `loader` yields the images in the data's order (no shuffling)."""
    model.eval()
    native_pred, native_true, kept, targets = [], [], [], []
    for x, y in loader:
        with autocast():
            probs = task.infer(model, x, tta)
        for p in probs.float().cpu():
            truth = native_masks[len(native_true)]
            native_pred.append(mask_at(p, tuple(truth.shape)).flatten())
            native_true.append(truth.flatten())
        kept.append(task.kept(probs).cpu())
        targets.append(task.targets(x, y).cpu())
    return torch.cat(native_pred)[None], torch.cat(native_true)[None], torch.cat(kept), torch.cat(targets)


def class_areas(mask: torch.Tensor, classes: list[str]) -> dict[str, dict[str, Any]]:
    """Each class the mask covers: its share of the pixels and their count, largest first."""
    counts = torch.bincount(mask.flatten().long(), minlength=len(classes)).tolist()
    total = max(mask.numel(), 1)
    order = sorted((i for i, n in enumerate(counts) if n), key=lambda i: -counts[i])
    return {classes[i]: {"share": counts[i] / total, "pixels": int(counts[i])} for i in order}


def mask_png(mask: torch.Tensor, palette: list[tuple[int, int, int]]) -> bytes:
    """A P-mode PNG of the class indices (uint8 H×W), coloured by `palette` (one RGB triple per class)."""
    im = Image.fromarray(mask.numpy())
    im.putpalette([v for colour in palette for v in colour])
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay_png(image: Image.Image, mask: torch.Tensor, palette: list[tuple[int, int, int]], classes: list[str],
                alpha: float = OVERLAY_ALPHA) -> bytes:
    """A PNG of the image (RGB) with the mask's colours blended in at `alpha`; pixels of a class named
    background (any case) are left as they are."""
    base = convert_mode(image, 3)
    coloured = Image.fromarray(mask.numpy())
    coloured.putpalette([v for colour in palette for v in colour])
    keep = np.isin(mask.numpy(), [i for i, c in enumerate(classes) if c.lower() == "background"], invert=True)
    blended = Image.composite(Image.blend(base, coloured.convert("RGB"), alpha), base,
                              Image.fromarray(keep.astype(np.uint8) * 255))
    buf = io.BytesIO()
    blended.save(buf, format="PNG")
    return buf.getvalue()


def read_mask_png(data: bytes, name: str) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """A palette PNG's class indices (uint8 H×W) and its palette (a served answer's mask), decoded within PIL's
    pixel limit; DataError if it is not a palette image."""
    im = load_image_file(io.BytesIO(data), name=name)
    if im.mode != "P":
        raise DataError(f"{name} is not a palette PNG of class indices (mode {im.mode})")
    flat = im.getpalette() or []
    return (torch.from_numpy(np.array(im, dtype=np.uint8)),
            [tuple(flat[i:i + 3]) for i in range(0, len(flat) - 2, 3)])


@dataclass
class SegmentedImage:
    """One image's mask at its own size (uint8 H×W) and the decoded image it was made from."""

    path: Path
    image: Image.Image
    mask: torch.Tensor


def segment_files(model: nn.Module, task: Task, normalize: Callable[[torch.Tensor], torch.Tensor],
                  inputs: list[str | os.PathLike], in_chans: int, img_size: tuple[int, int], input_size: str = "model",
                  tta: bool = False, batch_size: int = 256, strict: bool = False,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                  ) -> Iterator[SegmentedImage]:
    """Each readable image of `inputs` with its predicted mask at its own size (see the module's docstring for
    `input_size`); `normalize` turns a uint8 batch into the model's input, `autocast()` gives its precision."""
    check_input_size(input_size)
    whole = test_time_model(model, task, None, input_size == "window", img_size)  # the model over a whole image
    pending: list[tuple[Path, Image.Image]] = []
    pixels = 0
    for path, image in decoded_images(inputs, strict):
        if input_size != "model":
            yield from _run(whole, task, normalize, [(path, image)], in_chans, None, tta, autocast, stride_of(model))
            continue
        pending.append((path, image))
        pixels += image.width * image.height
        if len(pending) >= batch_size or pixels >= BATCH_PIXELS:
            yield from _run(model, task, normalize, pending, in_chans, img_size, tta, autocast)
            pending, pixels = [], 0
    if pending:
        yield from _run(model, task, normalize, pending, in_chans, img_size, tta, autocast)


def _run(model: nn.Module, task: Task, normalize: Callable[[torch.Tensor], torch.Tensor],
         images: list[tuple[Path, Image.Image]], in_chans: int, img_size: tuple[int, int] | None, tta: bool,
         autocast: Callable[[], contextlib.AbstractContextManager], stride: int = 1) -> Iterator[SegmentedImage]:
    """The masks of a batch at the model's size (`img_size`), or of one image at its own (`img_size` None),
    padded to a multiple of `stride`."""
    if img_size is not None:
        x = normalize(torch.stack([model_input(im, in_chans, img_size) for _, im in images]))
        crop = None
    else:
        x = normalize(native_input(images[0][1], in_chans).unsqueeze(0))
        crop = x.shape[-2:]
        x = F.pad(x, (0, -x.shape[-1] % stride, 0, -x.shape[-2] % stride))  # zeros: the normalization's mean
    with torch.inference_mode(), autocast():
        probs = task.infer(model, x, tta).float().cpu()
    if crop is not None:
        probs = probs[..., :crop[0], :crop[1]]
    for (path, image), p in zip(images, probs):
        yield SegmentedImage(path, image, mask_at(p, (image.height, image.width)))


class MaskFolder:
    """The folder `--masks-out` names: `<stem>.png` (the mask, a palette PNG), `<stem>-overlay.png` per image
    and one `areas.json`; names made unique within a call (`<stem>-2`, ...). Every file is checked before the
    first is written: cnnkit replaces only files it wrote there."""

    summary_file = AREAS_FILE  # the one file that records every image written

    def __init__(self, folder: str | os.PathLike, files: list[Path], option: str = "--masks-out"):
        from cnnkit.artifacts.files import OutputDir, check_out_dir

        self.root, self.option = Path(folder).expanduser(), option
        check_out_dir(self.root, option=option)
        self.names: dict[Path, str] = {}
        taken = {Path(self.summary_file).stem}
        for f in files:
            stem, n = f.stem, 1
            while any(p.stem in taken for p in self.files_of(stem).values()):
                n += 1
                stem = f"{f.stem}-{n}"
            taken |= {p.stem for p in self.files_of(stem).values()}
            self.names[f] = stem
        planned = [p for s in self.names.values() for p in self.files_of(s).values()] + [self.root / self.summary_file]
        OutputDir.of(self.root).check_free(planned, option)
        self.records: list[dict[str, Any]] = []
        self.claimed = False

    def files_of(self, stem: str) -> dict[str, Path]:
        return {"mask": self.root / f"{stem}.png", "overlay": self.root / f"{stem}-overlay.png"}

    def claimed_files(self, path: Path) -> dict[str, Path]:
        """The files of the image at `path`, the folder claimed as cnnkit's before the first is written."""
        from cnnkit.artifacts import claim_dir

        if not self.claimed:
            claim_dir(self.root, option=self.option)
            self.claimed = True
        return self.files_of(self.names[path])

    def write(self, path: Path, image: Image.Image, mask: torch.Tensor, palette: list[tuple[int, int, int]],
              classes: list[str], areas: dict[str, dict[str, Any]], mask_bytes: bytes | None = None) -> dict[str, Path]:
        """Write one image's mask (`mask_bytes` if given, e.g. a service's PNG) and overlay; the files written."""
        from cnnkit.artifacts import atomic_write_bytes

        files = self.claimed_files(path)
        atomic_write_bytes(files["mask"], mask_bytes if mask_bytes is not None else mask_png(mask, palette))
        atomic_write_bytes(files["overlay"], overlay_png(image, mask, palette, classes))
        self.records.append({"image": str(Path(path).absolute()), "height": int(mask.shape[0]),
                             "width": int(mask.shape[1]), "mask": files["mask"].name,
                             "overlay": files["overlay"].name, "areas": areas})
        return files

    def finish(self, source: dict[str, Any], classes: list[str], palette: list[tuple[int, int, int]]) -> Path:
        """Write areas.json: where the masks came from, the classes and palette, and each image's record."""
        from cnnkit.artifacts import atomic_write_text

        path = self.root / self.summary_file
        body = {**source, "classes": classes, **({"palette": [list(c) for c in palette]} if palette else {}),
                "images": self.records}
        atomic_write_text(path, json.dumps(body, indent=2) + "\n")
        return path
