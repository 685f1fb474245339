"""fashion-scenes: a segmentation (and detection) benchmark generated deterministically from Fashion-MNIST.

Each scene is a `canvas`×`canvas` grey image on a textured background (smooth random shading plus grain)
holding 1–`max_objects` Fashion-MNIST objects, each scaled by a factor drawn uniformly from `scale` and placed
where it fits whole; later objects are drawn over earlier ones (occlusion). Scene i's first object is image i
of the source split, so every source image appears; the others come from random images of the same split.
An object covers the pixels where its scaled image is above INK (of 255): those pixels show the object and
are labelled with its class in the mask (background is class 0, Fashion-MNIST's classes are 1–10) and with
its number (1, 2, ...) in the instance map; the box around its visible pixels is its detection target
(`objects`). A scene's label (for stratified splits) is the class covering most of its pixels. Each split has
its own seed, so the splits share no layout; everything is made in batches (one `affine_grid`/`grid_sample` per
object slot), and cached as safetensors keyed by the source's content, the parameters and the generator's
version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnkit.data.base import ImageData, Loader, LoadOptions, cache_dir

GENERATOR_VERSION = 1
INK = 32  # a scaled object's pixel above this (of 255) is the object's
BACKGROUND = "background"
MADE_FROM = {"fashion-scenes": "sample", "fashion-scenes-full": "fashion-mnist"}  # the set each is made from
SPLIT_SEEDS = {"train": 20150308, "test": 20150309}
MAX_SCENES = {"train": 12000, "test": 2000}  # full Fashion-MNIST: a share of it, so that a split fits in memory


def load(name: str, split: str, options: LoadOptions, clean: Loader) -> ImageData:
    """The source loader of `fashion-scenes` (from the bundled sample) and `fashion-scenes-full` (from full
    Fashion-MNIST): `split` made from the same split of the clean set, read from the cache when made before."""
    source = clean(MADE_FROM[name], split, LoadOptions(data_dir=options.data_dir, download=options.download))
    return cached_scenes(source, SPLIT_SEEDS[split], cache_dir() / "scenes", name, scenes=MAX_SCENES[split])


def _background(n: int, canvas: int, g: torch.Generator) -> torch.Tensor:
    """n smooth shaded backgrounds with grain, float N×H×W in [0, 255]."""
    coarse = torch.rand(n, 1, 6, 6, generator=g)
    shade = F.interpolate(coarse, size=(canvas, canvas), mode="bicubic", align_corners=False)[:, 0]
    level = torch.empty(n, 1, 1).uniform_(20, 90, generator=g)
    grain = torch.randn(n, canvas, canvas, generator=g) * 6
    return (shade.clamp(0, 1) * level + grain).clamp(0, 255)


def _placed(images: torch.Tensor, side: torch.Tensor, corner: torch.Tensor, canvas: int) -> torch.Tensor:
    """Each uint8 1×h×w image scaled to a `side`-pixel frame with its top-left at `corner`, on an empty canvas."""
    m = len(images)
    theta = torch.zeros(m, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = canvas / side
    theta[:, :, 2] = (canvas - 2 * corner) / side[:, None] - 1
    grid = F.affine_grid(theta, [m, 1, canvas, canvas], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def make_scenes(source: ImageData, seed: int, canvas: int = 96, max_objects: int = 5,
                scale: tuple[float, float] = (0.7, 1.5), scenes: int | None = None, name: str | None = None,
                chunk: int = 2048) -> ImageData:
    """Scenes made from a single-channel image set (see the module docstring): an ImageData whose `masks`
    (N×H×W, 0 background, class + 1 for objects) and `instances` (N×H×W, 0 none, 1.. in drawing order) are
    set, with the classes `background` followed by the source's."""
    n, c, h, w = source.images.shape
    if c != 1:
        raise ValueError("make_scenes needs single-channel images")
    if scale[1] * w > canvas:
        raise ValueError(f"a {w}-pixel image scaled by {scale[1]} does not fit a {canvas}-pixel canvas")
    count = n if scenes is None else min(n, scenes)
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(1, max_objects + 1, (count,), generator=g)
    who = torch.randint(0, n, (count, max_objects), generator=g)
    who[:, 0] = torch.arange(count)  # every scene's first object is its own source image
    side = torch.empty(count, max_objects).uniform_(*scale, generator=g) * w
    corner = torch.rand(count, max_objects, 2, generator=g) * (canvas - side)[..., None]
    images = torch.empty(count, 1, canvas, canvas, dtype=torch.uint8)
    masks = torch.zeros(count, canvas, canvas, dtype=torch.uint8)
    instances = torch.zeros(count, canvas, canvas, dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.int64)
    for a in range(0, count, chunk):
        b = min(a + chunk, count)
        scene = _background(b - a, canvas, g)
        for j in range(max_objects):
            obj = _placed(source.images[who[a:b, j]], side[a:b, j], corner[a:b, j], canvas)
            on = (obj > INK) & (k[a:b] > j)[:, None, None]  # scenes with fewer objects draw none here
            scene = torch.where(on, obj, scene)
            cls = (source.labels[who[a:b, j]] + 1).to(torch.uint8)[:, None, None]
            masks[a:b] = torch.where(on, cls, masks[a:b])
            instances[a:b] = torch.where(on, torch.tensor(j + 1, dtype=torch.uint8), instances[a:b])
        images[a:b, 0] = scene.round().clamp(0, 255).to(torch.uint8)
        area = torch.zeros(b - a, len(source.classes) + 1).scatter_add_(
            1, masks[a:b].long().flatten(1), torch.ones(b - a, canvas * canvas))
        area[:, 0] = -1  # a scene's label: the object class covering most of its pixels
        labels[a:b] = area.argmax(1)
    return ImageData(images, labels, [BACKGROUND, *source.classes], name or f"scenes-{source.name}",
                     source.split, masks=masks, instances=instances, objects=scene_objects(masks, instances, max_objects))


def cached_scenes(source: ImageData, seed: int, cache: Path, name: str, **kwargs) -> ImageData:
    """`make_scenes`, read from (or written atomically to) a safetensors cache file keyed by the source's
    content, the seed, the parameters and the generator version. An unreadable cache file is made again."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    key = hashlib.sha256(repr((source.fingerprint(), seed, sorted(kwargs.items()), GENERATOR_VERSION)).encode())
    path = cache / f"{name}-{source.split}-{key.hexdigest()[:16]}.safetensors"
    classes = [BACKGROUND, *source.classes]
    if path.exists():
        try:
            d = load_file(str(path))
            return ImageData(d["images"], d["labels"], classes, name, source.split, masks=d["masks"],
                             instances=d["instances"], objects=scene_objects(d["masks"], d["instances"]))
        except (SafetensorError, KeyError, OSError, RuntimeError, ValueError):  # truncated or foreign: make it again
            path.unlink(missing_ok=True)
    data = make_scenes(source, seed, name=name, **kwargs)
    from cnnkit.artifacts import atomic_write_bytes

    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"images": data.images, "labels": data.labels, "masks": data.masks,
                                   "instances": data.instances}))
    return data


def scene_objects(masks: torch.Tensor, instances: torch.Tensor, max_objects: int = 5) -> torch.Tensor:
    """Each scene's visible objects as detection targets: float N×`max_objects`×5 rows (class, x0, y0, x1, y1),
    the class as in the masks (1.. for objects) and the box the tightest around the object's visible pixels in
    pixel-edge coordinates (x1 and y1 one past the last pixel); rows of objects hidden entirely by later ones,
    and of slots a scene does not use, are (-1, 0, 0, 0, 0)."""
    n, h, w = instances.shape
    out = torch.zeros(n, max_objects, 5)
    out[..., 0] = -1
    cols, rows = torch.arange(w), torch.arange(h)
    for j in range(max_objects):
        on = instances == j + 1
        in_col, in_row = on.any(1), on.any(2)  # N×W, N×H
        seen = in_col.any(1)
        x0 = torch.where(in_col, cols, w).amin(1)
        x1 = torch.where(in_col, cols, -1).amax(1) + 1
        y0 = torch.where(in_row, rows, h).amin(1)
        y1 = torch.where(in_row, rows, -1).amax(1) + 1
        cls = torch.where(on, masks.long(), 0).flatten(1).amax(1)
        out[:, j] = torch.where(seen[:, None], torch.stack([cls, x0, y0, x1, y1], 1).float(), out[:, j])
    return out
