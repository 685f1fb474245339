"""Corruption benchmarks: the 15 corruptions of Hendrycks and Dietterich (ICLR 2019) at 5 severities.

`fashion-mnist-c`, `mnist-c`, `cifar10-c` (where CIFAR-10 is present) and `sample-c` (the bundled sample, for
a quick look) are the test split of their clean set under each corruption and severity: 75 cells, generated
deterministically (one seed per cell) and cached like the cluttered set.

The `imagecorruptions` package (1.1.2, the latest) does not run with today's libraries: it calls scikit-image's
`gaussian(..., multichannel=True)`, an argument scikit-image no longer has, and imports
`scipy.ndimage.interpolation` and `pkg_resources`. So every corruption is written here with torch operations,
batched over thousands of images, after the published generator's recipe and its parameter tables for
CIFAR-10-C (32×32 images, the closest to 28×28). Where the recipe is not a formula it is approximated:
- motion blur: the kernel is a one-sided Gaussian trail (ImageMagick's motion blur, which CIFAR-10-C used)
  drawn along a random angle and applied as a convolution;
- frost: the published set overlays crops of five frost photographs; they are not bundled, so the frost layer
  here is procedural (ridged fractal noise: bright vein-like crystals), blended with the same weights;
- fog: the plasma fractal (diamond-square) is replaced by fractal noise with the same spectral decay:
  diamond-square divides each finer octave's amplitude by `wibbledecay`, i.e. amplitude ∝ f^-log2(decay).
Everything else follows the recipe: additive Gaussian, Poisson (shot) and salt-and-pepper (impulse) noise;
defocus (an aliased disk kernel), glass (Gaussian blur, local pixel swaps, blur again), zoom blur (the mean of
centre zooms); snow (a thresholded, zoomed, motion-blurred noise layer); brightness (the HSV value channel);
contrast (per channel, about the mean); elastic (a random affine then a smoothed displacement field);
pixelate (box down-sampling, nearest up-sampling); JPEG at the table's quality.

The mean corruption error reported by `cnnkit eval` is the plain mean of the 75 cells' top-1 errors (the
"mCE" of CIFAR-10-C papers such as Tent); ImageNet-C's mCE divides each corruption's error by AlexNet's,
which has no counterpart on these sets.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnkit.data.base import ImageData, Loader, LoadOptions, cache_dir
from cnnkit.errors import DataError, close_matches

GENERATOR_VERSION = 1
BASE_SEED = 20190506  # ICLR 2019; each cell's seed adds 100 × corruption index + severity

# The parameter tables of the CIFAR-10-C generator, severity 1..5.
PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [0.06, 0.11, 0.16, 0.21, 0.26],  # zooms 1.00, 1.01, ... below this bound
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}
CORRUPTIONS = list(PARAMS)  # the paper's order: noise, blur, weather, digital
SEVERITIES = (1, 2, 3, 4, 5)
BENCHMARKS = {"fashion-mnist-c": "fashion-mnist", "mnist-c": "mnist", "cifar10-c": "cifar10", "sample-c": "sample"}


# -- building blocks (float images in [0, 1], N×C×H×W) ---------------------------------------------------------
def _conv_same(x: torch.Tensor, kernel: torch.Tensor, mode: str = "replicate") -> torch.Tensor:
    """Each image convolved (correlated) with its own kernel: `kernel` is K×K for all, or N×K×K."""
    n, c, h, w = x.shape
    k = kernel.expand(n, *kernel.shape[-2:]) if kernel.ndim == 2 else kernel
    kh, kw = k.shape[-2:]
    padded = F.pad(x.reshape(1, n * c, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), mode=mode)
    weight = k.repeat_interleave(c, 0)[:, None]
    return F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)


def _gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    r = max(1, int(truncate * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur (scikit-image's default edge mode, 'nearest', is replicate padding)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel1d(sigma, truncate)
    r = len(k) // 2
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return flat.view(n, c, h, w)


def _disk_kernel(radius: float, alias_sigma: float) -> torch.Tensor:
    """An aliased disk, smoothed by a 3×3 Gaussian, normalized: the defocus kernel."""
    r = 8 if radius <= 8 else int(math.ceil(radius))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).float()
    disk /= disk.sum()
    g = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * alias_sigma ** 2))
    g = (g / g.sum())
    disk = _conv_same(disk[None, None], torch.outer(g, g), mode="reflect")[0, 0]
    return disk / disk.sum()


def _motion_kernels(n: int, radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """N one-sided motion-blur kernels (2·radius+1 square): Gaussian weights along a trail behind each pixel
    in the direction of its angle (degrees), splatted bilinearly."""
    width = 2 * radius + 1
    steps = torch.arange(width, dtype=torch.float32)
    weights = torch.exp(-steps ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    size = 2 * width + 1  # the trail reaches `width` pixels from the centre
    theta = torch.deg2rad(angles)[:, None]
    px = width + steps[None] * torch.cos(theta)
    py = width - steps[None] * torch.sin(theta)
    k = torch.zeros(n, size * size)
    for ox in (0, 1):
        for oy in (0, 1):
            xi, yi = px.floor() + ox, py.floor() + oy
            wgt = (1 - (px - xi).abs()) * (1 - (py - yi).abs()) * weights[None]
            k.scatter_add_(1, (yi.long().clamp(0, size - 1) * size + xi.long().clamp(0, size - 1)), wgt)
    return k.view(n, size, size)


def motion_blur_layer(x: torch.Tensor, radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    return _conv_same(x, _motion_kernels(len(x), radius, sigma, angles))


def centre_zoom(x: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Zoom into the centre by `factor` (>= 1), keeping the size (bilinear)."""
    n = len(x)
    f = torch.as_tensor(factor, dtype=torch.float32).expand(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / f
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def fractal_noise(n: int, h: int, w: int, decay: float, g: torch.Generator) -> torch.Tensor:
    """N maps of fractal noise in [0, 1] whose amplitude falls as f^-log2(decay) (a plasma fractal's spectrum)."""
    size = 1 << max(h, w, 2).bit_length()  # periodic on a larger square, cropped: no wrap-around seam
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    f = torch.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    amplitude = f ** (-math.log2(decay))
    amplitude[0, 0] = 0.0
    phase = torch.rand(n, *amplitude.shape, generator=g) * 2 * math.pi
    spectrum = amplitude * torch.polar(torch.ones_like(phase), phase)
    maps = torch.fft.irfft2(spectrum, s=(size, size))[:, :h, :w]
    lo = maps.flatten(1).amin(1)[:, None, None]
    hi = maps.flatten(1).amax(1)[:, None, None]
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


# -- the corruptions: fn(x, parameters, generator) -> x ---------------------------------------------------------
def _gaussian_noise(x, c, g):
    return x + torch.randn(x.shape, generator=g) * c


def _shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x, c, g):
    u = torch.rand(x.shape, generator=g)
    salt = torch.rand(x.shape, generator=g) < 0.5
    hit = u < c
    return torch.where(hit, salt.float(), x)


def _defocus_blur(x, c, g):
    return _conv_same(x, _disk_kernel(*c), mode="reflect")


def _glass_blur(x, c, g):
    sigma, delta, iterations = c
    x = (gaussian_blur(x, sigma) * 255).to(torch.uint8).float() / 255  # the recipe quantizes here
    n, _, h, w = x.shape
    ar = torch.arange(n)
    for _ in range(iterations):  # swap each pixel with a random neighbour, bottom-right to top-left, in order
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                d = torch.randint(-delta, delta, (n, 2), generator=g)
                r2, c2 = row + d[:, 1], col + d[:, 0]
                here = x[:, :, row, col].clone()
                x[:, :, row, col] = x[ar, :, r2, c2]
                x[ar, :, r2, c2] = here
    return gaussian_blur(x, sigma)


def _motion_blur(x, c, g):
    angles = torch.rand(len(x), generator=g) * 90 - 45
    return motion_blur_layer(x, c[0], c[1], angles)


def _zoom_blur(x, c, g):
    zooms = [1 + 0.01 * i for i in range(int(round(c / 0.01)))]
    out = sum(centre_zoom(x, z) for z in zooms)
    return (x + out) / (len(zooms) + 1)


def _gray(x):
    if x.shape[1] == 3:
        return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    return x


def _snow(x, c, g):
    loc, scale, zoom, threshold, radius, sigma, blend = c
    n, _, h, w = x.shape
    layer = torch.randn(n, 1, h, w, generator=g) * scale + loc
    layer = centre_zoom(layer, zoom) if zoom != 1 else layer
    layer = torch.where(layer < threshold, 0.0, layer).clamp(0, 1)
    angles = torch.rand(n, generator=g) * 90 - 135
    layer = motion_blur_layer(layer, radius, sigma, angles)
    layer = (layer * 255).round() / 255
    x = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(2, 3)


def _frost(x, c, g):
    a, b = c
    n, _, h, w = x.shape
    ridges = 1 - (2 * fractal_noise(n, h, w, 1.6, g) - 1).abs()  # bright ridges where the noise crosses 0.5
    fine = fractal_noise(n, h, w, 1.3, g)
    layer = (0.75 * ridges ** 3 + 0.25 * fine)[:, None]
    return a * x + b * layer / layer.flatten(1).amax(1)[:, None, None, None].clamp_min(1e-6)


def _fog(x, c, g):
    a, decay = c
    n, _, h, w = x.shape
    top = x.flatten(1).amax(1)[:, None, None, None]
    x = x + a * fractal_noise(n, h, w, decay, g)[:, None]
    return x * top / (top + a)


def _brightness(x, c, g):
    value = x.amax(1, keepdim=True)  # HSV's V; hue and saturation kept: scale the channels with it
    new = (value + c).clamp(0, 1)
    return torch.where(value > 0, x * new / value.clamp_min(1e-12), new.expand_as(x))


def _contrast(x, c, g):
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * c + mean


def _elastic_transform(x, c, g):
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, shift = (v * size for v in c)  # the table is in units of the image side
    # a random affine: three points around the centre, each moved by up to `shift` pixels
    centre = torch.tensor([w / 2, h / 2]).floor()
    s = size // 3
    src = torch.stack([centre + s, torch.stack([centre[0] + s, centre[1] - s]), centre - s])  # 3 × (x, y)
    dst = src[None] + (torch.rand(n, 3, 2, generator=g) * 2 - 1) * shift
    ones = torch.ones(n, 3, 1)
    # the affine taking output pixels back to source pixels: solve [dst 1] A = src
    inverse = torch.linalg.solve(torch.cat([dst, ones], 2), src[None].expand(n, 3, 2))  # n × 3 × 2
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    pix = torch.stack([xs, ys], -1).expand(n, h, w, 2)
    if alpha > 0:  # the smoothed random displacement field, applied after the affine (so looked up first)
        field = torch.rand(n, 2, h, w, generator=g) * 2 - 1
        pix = pix + gaussian_blur(field, sigma, truncate=3.0, mode="reflect").permute(0, 2, 3, 1) * alpha
    warped = (torch.cat([pix, torch.ones(n, h, w, 1)], -1).view(n, h * w, 3) @ inverse).view(n, h, w, 2)
    grid = torch.stack([(warped[..., 0] + 0.5) / w * 2 - 1, (warped[..., 1] + 0.5) / h * 2 - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """n_out × n_in weights of a box filter: output pixel i averages the input pixels whose centres lie in
    [i·s, (i+1)·s), s = n_in / n_out (what Pillow's BOX resampling does)."""
    s = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] * s
    centre = torch.arange(n_in, dtype=torch.float64)[None, :] + 0.5
    inside = ((centre >= lo) & (centre < lo + s)).float()
    return inside / inside.sum(1, keepdim=True).clamp_min(1)


def _pixelate(x, c, g):
    h, w = x.shape[2:]
    small = _box_matrix(h, int(h * c)) @ x @ _box_matrix(w, int(w * c)).T
    return F.interpolate(small, size=(h, w), mode="nearest-exact")  # pixel centres, as Pillow


def _jpeg_compression(x, c, g):
    from PIL import Image

    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for im in u8:  # Pillow's libjpeg, one image at a time (about 20 µs for 28×28)
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if im.shape[2] == 1 else im).save(buf, "JPEG", quality=int(c))
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("L" if im.shape[2] == 1 else "RGB")).copy()))
    return torch.stack(out).view(u8.shape).permute(0, 3, 1, 2).float() / 255


_FUNCTIONS: dict[str, Callable] = {name: globals()[f"_{name}"] for name in CORRUPTIONS}


def corrupt(images: torch.Tensor, corruption: str, severity: int, seed: int = 0, chunk: int = 2048) -> torch.Tensor:
    """uint8 N×C×H×W images under `corruption` at `severity` (1–5): uint8 of the same shape, the same for the
    same seed on every machine (CPU generators)."""
    if corruption not in _FUNCTIONS:
        raise DataError(f"unknown corruption {corruption!r}{close_matches(corruption, CORRUPTIONS)}; choose "
                        f"from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise DataError(f"severity must be 1 to 5, got {severity!r}")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise DataError(f"corrupt needs uint8 N×C×H×W images, got {images.dtype} {tuple(images.shape)}")
    fn, params = _FUNCTIONS[corruption], PARAMS[corruption][severity - 1]
    g = torch.Generator().manual_seed(seed)
    out = torch.empty_like(images)
    with torch.no_grad():
        for a in range(0, len(images), chunk):
            x = images[a:a + chunk].float() / 255
            out[a:a + chunk] = (fn(x, params, g).clamp(0, 1) * 255).round().to(torch.uint8)
    return out


def cell_seed(corruption: str, severity: int) -> int:
    return BASE_SEED + 100 * CORRUPTIONS.index(corruption) + severity


# -- the benchmark sets ----------------------------------------------------------------------------------------
def load(name: str, split: str, options: LoadOptions, clean: Loader) -> ImageData:
    """The source loader of the corruption benchmarks: one test cell (`fashion-mnist-c:fog:3`), made from the
    clean test split that `clean` loads (for evaluation over every cell, see `benchmark_cells`)."""
    base, corruptions, severities = parse_benchmark(name)
    if split == "train" or len(corruptions) != 1 or len(severities) != 1:
        raise DataError(f"{name.split(':')[0]} is a corruption benchmark for evaluation (cnnkit eval --data "
                        f"{name}); as a dataset, name one test cell, e.g. {name.split(':')[0]}:fog:3, and train "
                        f"on {base}")
    clean_options = LoadOptions(data_dir=options.data_dir, download=options.download)
    return next(benchmark_cells(name, lambda b: clean(b, "test", clean_options), cache_dir() / "corrupted"))[2]


def parse_benchmark(name: str) -> tuple[str, list[str], list[int]] | None:
    """`fashion-mnist-c` -> (its clean set, all corruptions, all severities); `fashion-mnist-c:fog` or
    `fashion-mnist-c:fog:5` picks one corruption (and severity). None when `name` is not a corruption set."""
    base, *rest = name.split(":")
    if base not in BENCHMARKS:
        return None
    corruptions, severities = list(CORRUPTIONS), list(SEVERITIES)
    if rest:
        wanted = rest[0].split(",")
        for c in wanted:
            if c not in CORRUPTIONS:
                raise DataError(f"{name}: unknown corruption {c!r}{close_matches(c, CORRUPTIONS)}; choose from "
                                f"{', '.join(CORRUPTIONS)}")
        corruptions = wanted
    if len(rest) > 1:
        try:
            severities = [int(s) for s in rest[1].split(",")]
        except ValueError:
            severities = []
        if not severities or any(s not in SEVERITIES for s in severities):
            raise DataError(f"{name}: severities must be 1 to 5 (e.g. {base}:fog:5 or {base}:fog:1,3), got {rest[1]!r}")
    if len(rest) > 2:
        raise DataError(f"{name}: write NAME, NAME:CORRUPTION or NAME:CORRUPTION:SEVERITY")
    return BENCHMARKS[base], corruptions, severities


def cached_cell(clean: ImageData, corruption: str, severity: int, cache: Path, name: str) -> ImageData:
    """One cell of a corruption benchmark, read from (or written atomically to) a cache file keyed by the clean
    set's content, the cell and the generator version. An unreadable cache file is made again."""
    key = hashlib.sha256(repr((clean.fingerprint(), corruption, severity, GENERATOR_VERSION)).encode())
    path = cache / f"{name}-{corruption}-{severity}-{key.hexdigest()[:16]}.pt"
    cell_name = f"{name}:{corruption}:{severity}"
    if path.exists():
        try:
            images = torch.load(path, weights_only=True)
            if isinstance(images, torch.Tensor) and images.shape == clean.images.shape and images.dtype == torch.uint8:
                return ImageData(images, clean.labels.clone(), list(clean.classes), cell_name, clean.split)
        except Exception:  # a truncated or foreign file: make it again
            pass
        path.unlink(missing_ok=True)
    images = corrupt(clean.images, corruption, severity, cell_seed(corruption, severity))
    from cnnkit.artifacts import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(images, buf)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return ImageData(images, clean.labels.clone(), list(clean.classes), cell_name, clean.split)


def benchmark_cells(name: str, clean_loader: Callable[[str], ImageData], cache: Path,
                    ) -> Iterator[tuple[str, int, ImageData]]:
    """(corruption, severity, images) for every cell `name` selects, made from the clean test split."""
    parsed = parse_benchmark(name)
    if parsed is None:
        raise DataError(f"{name} is not a corruption benchmark; choose from {', '.join(BENCHMARKS)}")
    base, corruptions, severities = parsed
    clean = clean_loader(base)
    for c in corruptions:
        for s in severities:
            yield c, s, cached_cell(clean, c, s, cache, name.split(":")[0])
