"""Evaluating a restoration network on whole images, each at its own size, as the papers score them.

Each clean test image (cropped at the bottom and right to sides divisible by the network's scale, MATLAB's
`modcrop`) is degraded as the network expects (`cnnkit.tasks.restore.degrade`, noise from a fixed seed),
restored, clipped and rounded to 8 bits (the image as saved, as the papers score it), and scored against the
clean image: PSNR and SSIM (Wang et al. 2004: an 11×11 Gaussian window of σ 1.5, torchmetrics') on the luma Y
and on every channel, `scale` pixels cut from each border for super-resolution. Beside the network, the baselines the papers print: bicubic enlargement of the same small
image for super-resolution; for denoising the noisy image itself and Gaussian filters of σ 0.5, 1, 1.5 and 2
pixels, each reported (none is chosen here: choosing on the test images would flatter the baseline).

Large images are restored in tiles (`restore_tiled`): the image is cut into squares of `tile` input pixels, each
run with a margin of the network's receptive-field radius (`RestorationNet.radius`) of real neighbours on every
inner side, and only its square kept; what a tile keeps then saw exactly what it sees in the whole image, so the
tiled result equals the whole image's (up to float rounding), without seams, in the memory of one tile.
`predict` writes restored images with it (`RestoredFolder`).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.evaluate.masks import MaskFolder
from cnnkit.runtime import autocast

FILTER_SIGMAS = (0.5, 1.0, 1.5, 2.0)
DEFAULT_TILE = 512  # input pixels per tile side: EDSR's features for a 512² tile and its margins take ~90 MB a layer
MAX_OUTPUT_PIXELS = 100_000_000  # a restored image's bound (300 MB as 8-bit RGB): larger ones are refused
RESTORED_FILE = "restored.json"
COMPARE_SIDE = 256  # the side-by-side crop's side, in output pixels


def tile_spans(length: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Along one side of `length` pixels: each tile's kept span (start, end) and the span it is run on (start,
    end), `margin` wider on each inner side. One span for the whole side when `tile` is 0 or covers it."""
    if tile <= 0 or length <= tile:
        return [(0, length, 0, length)]
    return [(s, min(s + tile, length), max(0, s - margin), min(length, s + tile + margin))
            for s in range(0, length, tile)]


def tiling(net: nn.Module, tile: int, margin: int | None = None) -> tuple[int, int]:
    """The tile side and margin used for `net`: the margin its radius (or `margin`), both rounded up to the
    network's alignment (a U-Net's poolings)."""
    align = getattr(net, "align", 1)
    margin = net.radius if margin is None else margin
    return math.ceil(tile / align) * align, math.ceil(margin / align) * align


def check_tile(tile: int) -> None:
    """Refuse, in one line, a tile side that is not 0 (whole) or at least 16 pixels."""
    from cnnkit.errors import ConfigError

    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0 or (0 < tile < 16):
        raise ConfigError(f"--tile is a tile's side in input pixels, 16 or more (0: the whole image at once), "
                          f"got {tile!r}")


@torch.no_grad()
def restore_tiled(model: nn.Module, x: torch.Tensor, tile: int = DEFAULT_TILE, margin: int | None = None,
                  tta: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`model`'s restoration of the degraded images `x` (N×C×h×w on 0..1), tile by tile (see the module's
    docstring); `dtype` uint8 keeps the result as 8-bit pixels (clipped and rounded per tile: a large image's
    float copy is never held). `margin` defaults to the network's radius; with flip `tta`, each tile is averaged
    with its mirror's restoration."""
    from cnnkit.tasks.restore import restoration_net

    net = restoration_net(model)
    s = net.scale
    tile, margin = tiling(net, tile, margin)
    n, c, h, w = x.shape
    out = torch.empty(n, c, h * s, w * s, dtype=dtype, device=x.device)
    for ys, ye, yr, yre in tile_spans(h, tile, margin):
        for xs, xe, xr, xre in tile_spans(w, tile, margin):
            part = x[..., yr:yre, xr:xre]
            y = model(part).float()
            if tta:
                y = 0.5 * (y + model(part.flip(3)).float().flip(3))
            y = y[..., (ys - yr) * s:(ye - yr) * s, (xs - xr) * s:(xe - xr) * s]
            if dtype == torch.uint8:
                y = y.clamp(0, 1).mul(255).round()
            out[..., ys * s:ye * s, xs * s:xe * s] = y.to(dtype)
    return out


def restoration_pixels(image: Any, in_chans: int) -> torch.Tensor:
    """A PIL image as a restoration network takes it, uint8 C×h×w at its own size: RGB for an RGB network; for
    a one-channel (luma) network, a grey image's one channel, a colour image's RGB (restored through its luma,
    `restore_pixels`)."""
    import torchvision.transforms.functional as TF

    from cnnkit.data.images import convert_mode

    grey = image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    return TF.pil_to_tensor(convert_mode(image, 1 if in_chans == 1 and grey else 3))


def restore_pixels(model: nn.Module, x: torch.Tensor, in_chans: int, tile: int = DEFAULT_TILE,
                   tta: bool = False) -> torch.Tensor:
    """Restored uint8 images for uint8 N×C×h×w `x` (`restoration_pixels`'): in tiles (`restore_tiled`); a colour
    image given to a one-channel network restored as the papers do, its luma Y by the network and its chroma
    enlarged by bicubic interpolation (a denoiser's kept as it is), back to RGB."""
    from cnnkit.data.photos import rgb_from_ycbcr, ycbcr
    from cnnkit.models.restore import bicubic
    from cnnkit.tasks.restore import restoration_net

    pixels = x.float().div(255)
    if in_chans == 3 or x.shape[1] == 1:
        return restore_tiled(model, pixels, tile, tta=tta, dtype=torch.uint8)
    ycc = ycbcr(pixels)
    luma = restore_tiled(model, ycc[:, :1], tile, tta=tta)
    s = restoration_net(model).scale
    chroma = bicubic(ycc[:, 1:], size=tuple(luma.shape[-2:])) if s > 1 else ycc[:, 1:]
    return rgb_from_ycbcr(torch.cat([luma, chroma], 1)).clamp(0, 1).mul(255).round().to(torch.uint8)


def png_bytes(image: torch.Tensor) -> bytes:
    """A uint8 C×H×W image (1 or 3 channels) as PNG bytes."""
    from PIL import Image

    array = image.permute(1, 2, 0).cpu().numpy()
    im = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def side_by_side(plain: torch.Tensor, restored: torch.Tensor, side: int = COMPARE_SIDE) -> torch.Tensor:
    """The central `side`×`side` crop (smaller when the image is) of `plain` (the bicubic enlargement or the noisy
    input) beside the same crop of `restored`, 4 white pixels between: uint8 C×H×W."""
    h, w = restored.shape[-2:]
    ch, cw = min(side, h), min(side, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    crops = [t[:, top:top + ch, left:left + cw] for t in (plain, restored)]
    gap = torch.full((restored.shape[0], ch, 4), 255, dtype=torch.uint8)
    return torch.cat([crops[0], gap, crops[1]], dim=2)


def image_scores(restored: torch.Tensor, clean: torch.Tensor, border: int) -> dict[str, float]:
    """PSNR (dB) and SSIM of one restored image (1×C×H×W), rounded to 8 bits, against its clean one, on Y and on
    every channel."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    from cnnkit.tasks.restore import luma, psnr

    a, b = restored.float().clamp(0, 1).mul(255).round().div(255), clean.float()  # as saved: 8 bits
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    scores = {"psnr_y": float(psnr(a, b, on_y=True)[0]), "psnr_rgb": float(psnr(a, b, on_y=False)[0])}
    scores["ssim_y"] = float(ssim(luma(a), luma(b), data_range=1.0))
    scores["ssim_rgb"] = float(ssim(a, b, data_range=1.0))
    return scores


def baselines(net: nn.Module, clean: torch.Tensor, degraded: torch.Tensor) -> dict[str, torch.Tensor]:
    """The simple restorations printed beside the network: bicubic enlargement, or the noisy image and
    Gaussian filters."""
    from cnnkit.data.corruptions import gaussian_blur
    from cnnkit.models.restore import bicubic

    if net.scale > 1:
        return {"bicubic": bicubic(degraded, size=tuple(clean.shape[-2:]))}
    out = {"noisy input": degraded}
    for s in FILTER_SIGMAS:
        out[f"gaussian filter σ {s:g}"] = gaussian_blur(degraded, s)
    return out


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


@torch.no_grad()
def evaluate_restoration(model: nn.Module, images: torch.Tensor, sizes: torch.Tensor | None, device: torch.device,
                         amp: torch.dtype | None, tta: bool = False) -> dict[str, Any]:
    """The network's and the baselines' mean scores over uint8 N×C×H×W `images` (each cut to its (H, W) in
    `sizes`, when given), and each image's."""
    from cnnkit.tasks.restore import EVAL_SEED, degrade, modcrop, restoration_net, split_pair

    model.eval()
    net = restoration_net(model)
    border = net.scale if net.scale > 1 else 0
    per_image, per_baseline = [], {}
    for i in range(len(images)):
        h, w = (int(v) for v in sizes[i]) if sizes is not None else images.shape[-2:]
        x = modcrop(images[i:i + 1, :, :h, :w].to(device).float() / 255, net.scale)
        clean = split_pair(x)[0]
        g = torch.Generator(device=clean.device).manual_seed(EVAL_SEED)
        degraded = degrade(net, x, g)  # the same as RESTORE.infer's (a pair's own input)
        with autocast(device, amp):  # large images in tiles
            restored = restore_tiled(model, degraded, tta=tta)
        per_image.append(image_scores(restored, clean, border))
        for name, out in baselines(net, clean, degraded).items():
            per_baseline.setdefault(name, []).append(image_scores(out, clean, border))
    result: dict[str, Any] = {**_mean(per_image), "images": len(per_image), "border": border}
    result["baselines"] = {name: _mean(rows) for name, rows in per_baseline.items()}
    result["per_image"] = per_image
    result["baselines_per_image"] = per_baseline
    return result


class RestoredFolder(MaskFolder):
    """The folder `--images-out` names: `<stem>.png` per image (the restored image), `<stem>-compare.png` with
    `compare` (see `side_by_side`), and one restored.json; names made unique within a call, every file checked
    before the first is written (as `--masks-out`'s folder)."""

    summary_file = RESTORED_FILE

    def __init__(self, folder: str | os.PathLike, files: list[Path], compare: bool = False):
        self.compare = compare
        super().__init__(folder, files, option="--images-out")

    def files_of(self, stem: str) -> dict[str, Path]:
        return {"restored": self.root / f"{stem}.png",
                **({"compare": self.root / f"{stem}-compare.png"} if self.compare else {})}

    def write_restored(self, path: Path, png: bytes, size: tuple[int, int], compare: bytes | None = None
                       ) -> dict[str, Path]:
        """Write one image's restoration (`png`, of `size` (H, W)) and, with `compare`, its side-by-side crop
        (PNG bytes); the files written."""
        from cnnkit.artifacts import atomic_write_bytes

        files = self.claimed_files(path)
        atomic_write_bytes(files["restored"], png)
        if self.compare and compare is not None:
            atomic_write_bytes(files["compare"], compare)
        self.records.append({"image": str(Path(path).absolute()), "height": size[0], "width": size[1],
                             **{k: f.name for k, f in files.items()}})
        return files

    def finish_restored(self, source: dict[str, Any]) -> Path:
        """Write restored.json: where the images came from and each image's record."""
        return self.finish(source, [], [])
