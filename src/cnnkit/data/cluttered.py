"""cluttered-fashion-mnist: a localization benchmark generated deterministically from Fashion-MNIST.

Each image is a 64×64 canvas holding one Fashion-MNIST object, scaled by a factor drawn uniformly from
0.8–1.6 and placed at a uniformly drawn position where it fits whole, plus `fragments` square clutter
patches cut from the centres of other images of the same split. The ground truth is the tight box of the
object's pixels (x0, y0, x1, y1; x1 and y1 exclusive). Clutter never overlaps that box: a fragment whose
random position would overlap it is re-drawn up to 16 times, then dropped, so the box holds the object
only. The object's placement and the clutter come from separate random streams, so the same seed places
the object identically whatever the clutter settings.

Everything is batched: one `affine_grid`/`grid_sample` places the objects of a few thousand images, one
`scatter_reduce` pastes all their fragments.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnkit.data.base import ImageData, Loader, LoadOptions, cache_dir

GENERATOR_VERSION = 1
INK = 32  # a pixel above this (of 255) belongs to the object's box
_TRIES = 16
MADE_FROM = {"cluttered-fashion-mnist": "fashion-mnist", "cluttered-sample": "sample"}  # the set each is made from
SPLIT_SEEDS = {"train": 20140624, "test": 20140625}  # one per split, so the splits share no layout


def load(name: str, split: str, options: LoadOptions, clean: Loader) -> ImageData:
    """The source loader of `cluttered-fashion-mnist` and `cluttered-sample`: `split` made from the same split
    of the set `clean` loads (see MADE_FROM), read from the cache when it was made before."""
    source = clean(MADE_FROM[name], split, LoadOptions(data_dir=options.data_dir, download=options.download))
    return cached_cluttered(source, SPLIT_SEEDS[split], cache_dir() / "cluttered", name)


def _tight_boxes(obj: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """N×4 boxes around the pixels above INK of N×H×W images (`fallback` where an image has none)."""
    ink = obj > INK
    rows, cols = ink.any(2), ink.any(1)
    h, w = obj.shape[1:]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    empty = ~rows.any(1)
    return torch.where(empty[:, None], fallback, boxes)


def make_cluttered(source: ImageData, seed: int, canvas: int = 64, scale: tuple[float, float] = (0.8, 1.6),
                   fragments: int = 6, fragment_size: int = 8, name: str | None = None,
                   chunk: int = 4096) -> ImageData:
    """The cluttered version of a single-channel image set (see the module docstring)."""
    n, c, h, w = source.images.shape
    if c != 1:
        raise ValueError("make_cluttered needs single-channel images")
    g_obj = torch.Generator().manual_seed(seed)
    side = torch.empty(n).uniform_(*scale, generator=g_obj) * w  # the object's frame, in canvas pixels
    if float(side.max()) > canvas:
        raise ValueError(f"a {w}-pixel image scaled by {scale[1]} does not fit a {canvas}-pixel canvas")
    corner = torch.rand(n, 2, generator=g_obj) * (canvas - side)[:, None]  # (x0, y0) of the frame
    g_clut = torch.Generator().manual_seed(seed + 7919)
    fs, k = fragment_size, fragments
    donor = (torch.arange(n)[:, None] + torch.randint(1, max(n, 2), (n, k), generator=g_clut)) % n
    lo, hi = (h - fs) // 4, (h - fs) - (h - fs) // 4  # fragments come from the central region, where ink is
    crop = torch.randint(lo, hi + 1, (n, k, 2), generator=g_clut)
    spots = torch.randint(0, canvas - fs + 1, (n, k, _TRIES, 2), generator=g_clut)

    images = torch.empty(n, 1, canvas, canvas, dtype=torch.uint8)
    boxes = torch.empty(n, 4)
    ar = torch.arange(fs)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        s, xy = side[a:b], corner[a:b]
        theta = torch.zeros(b - a, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = canvas / s
        theta[:, :, 2] = (canvas - 2 * xy) / s[:, None] - 1
        grid = F.affine_grid(theta, [b - a, 1, canvas, canvas], align_corners=False)
        obj = F.grid_sample(source.images[a:b].float(), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)[:, 0]
        frame = torch.cat([xy, xy + s[:, None]], 1).clamp(0, canvas)
        box = _tight_boxes(obj, frame)
        boxes[a:b] = box
        # clutter: the first position of each fragment that keeps clear of the box, else none
        p = spots[a:b]  # m × k × T × (x, y)
        clear = ((p[..., 0] + fs <= box[:, None, None, 0]) | (p[..., 0] >= box[:, None, None, 2])
                 | (p[..., 1] + fs <= box[:, None, None, 1]) | (p[..., 1] >= box[:, None, None, 3]))
        first = clear.float().argmax(2)
        ok = clear.any(2)  # m × k
        pos = p.gather(2, first[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]  # m × k × 2
        src = source.images[donor[a:b].flatten(), 0].view(b - a, k, h, w)
        ys = crop[a:b, :, 1, None] + ar  # m × k × fs
        xs = crop[a:b, :, 0, None] + ar
        patch = src.gather(2, ys[..., None].expand(-1, -1, -1, w)).gather(3, xs[:, :, None, :].expand(-1, -1, fs, -1))
        patch = patch.float() * ok[..., None, None]
        flat = ((pos[..., 1, None, None] + ar[:, None]) * canvas + pos[..., 0, None, None] + ar[None, :])
        out = obj.flatten(1)
        out = out.scatter_reduce(1, flat.flatten(1), patch.flatten(1), reduce="amax")
        images[a:b, 0] = out.view(-1, canvas, canvas).round().clamp(0, 255).to(torch.uint8)
    return ImageData(images, source.labels.clone(), list(source.classes), name or f"cluttered-{source.name}",
                     source.split, boxes=boxes)


def cached_cluttered(source: ImageData, seed: int, cache: Path, name: str, **kwargs) -> ImageData:
    """`make_cluttered`, read from (or written atomically to) a cache file keyed by the source's content,
    the seed, the parameters and the generator version. An unreadable cache file is regenerated."""
    key = hashlib.sha256(repr((source.fingerprint(), seed, sorted(kwargs.items()), GENERATOR_VERSION)).encode())
    path = cache / f"{name}-{source.split}-{key.hexdigest()[:16]}.pt"
    if path.exists():
        try:
            d = torch.load(path, weights_only=True)
            return ImageData(d["images"], d["labels"], list(source.classes), name, source.split, boxes=d["boxes"])
        except Exception:  # a truncated or foreign file: make it again
            path.unlink(missing_ok=True)
    data = make_cluttered(source, seed, name=name, **kwargs)
    from cnnkit.artifacts import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"images": data.images, "labels": data.labels, "boxes": data.boxes}, buf)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return data
