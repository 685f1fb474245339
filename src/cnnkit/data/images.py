"""Decoding image files and converting them to what a model expects."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cnnkit.errors import DataError, error_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# the longest side an image may have, in multiples of its shortest, checked from the header: a 1×1,000,000 strip
# is 1 Mpixel, but nothing a camera or a scanner makes (panoramas stay under about 10:1)
MAX_ASPECT_RATIO = 100


class ImageTooLarge(DataError):
    """An image refused from its header: more pixels than the limit (`size` its width and height, when the
    header could be read), or an extreme aspect ratio."""

    def __init__(self, message: str, size: tuple[int, int] | None = None, limit: int | None = None):
        super().__init__(message)
        self.size, self.limit = size, limit


def load_image_file(path: str | os.PathLike | IO[bytes] | Image.Image, max_pixels: int | None = None,
                    name: str | None = None, reduce_to: int | None = None, orient: bool = True) -> Image.Image:
    """Open and fully decode an image (EXIF orientation applied, unless `orient` is False: a segmentation mask
    is drawn on the pixels as stored) from a path, a binary file object or an image PIL has opened (its header
    read, nothing decoded yet);
    DataError if corrupt, truncated or larger than `max_pixels` (default PIL's limit), checked from the
    header before any pixel is decoded. `name` is what error messages call it (default the path).
    `reduce_to`: a JPEG may be decoded at a reduced scale (1/2 to 1/8) whose sides stay at least this."""
    name = name or str(path)
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # the size check below turns PIL's bomb warning into the error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = path if isinstance(path, Image.Image) else Image.open(path)
        with im:
            # PIL raises DecompressionBombError past twice its pixel limit but only warns below, then decodes
            if limit and im.width * im.height > limit:
                raise ImageTooLarge(f"cannot read image {name}: it claims {im.width}×{im.height} pixels, more "
                                    f"than {limit} (a decompression bomb?); {_BOMB_HINT}", im.size, limit)
            if max(im.size) > MAX_ASPECT_RATIO * max(1, min(im.size)):
                raise ImageTooLarge(f"cannot read image {name}: it is {im.width}×{im.height} pixels, an aspect ratio "
                                f"beyond {MAX_ASPECT_RATIO}:1; crop it to the part that matters first")
            if reduce_to and im.format == "JPEG" and im.mode in ("L", "RGB"):
                im.draft(im.mode, (reduce_to, reduce_to))
            im.load()
            return ImageOps.exif_transpose(im) if orient else im
    except MemoryError:  # a header whose size passes the pixel limit but whose decoder buffers do not fit
        raise ImageTooLarge(f"cannot read image {name}: not enough memory to decode it; {_BOMB_HINT}") from None
    except Image.DecompressionBombError:  # PIL's own refusal, past twice its limit, while reading the header
        raise ImageTooLarge(f"cannot read image {name}: it claims more than {limit} pixels (a decompression "
                            f"bomb?); {_BOMB_HINT}", None, limit) from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {name}: not an image format PIL can decode; give PNG, JPEG, BMP, "
                        f"WebP, TIFF or GIF files") from None
    # TypeError: PIL's TIFF decoder on tag values of the wrong type (a float or fraction as a strip offset)
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:
        raise DataError(f"cannot read image {name}: {error_line(e)}") from None


_BOMB_HINT = "resize it to fewer pixels first"


def convert_mode(image: Image.Image, in_chans: int) -> Image.Image:
    """A PIL image of any mode as 8-bit gray (`in_chans` 1) or RGB (3): 16/32-bit gray rescaled, not clipped;
    transparency composited on white."""
    if in_chans not in (1, 3):
        raise DataError(f"images can be converted to 1 or 3 channels, not {in_chans}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grayscale: rescale to 8 bits, not clip
        arr = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "P", "PA"):  # composite transparency on white
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    mode = "L" if in_chans == 1 else "RGB"
    try:
        return image if image.mode == mode else image.convert(mode)
    except (ValueError, OSError) as e:  # modes PIL decodes but cannot convert (LAB, some 16-bit and TIFF modes)
        raise DataError(f"cannot convert an image of mode {image.mode} to {mode}: {error_line(e)}; save it as "
                        f"an 8-bit gray or RGB PNG or JPEG") from None


def to_model_input(image: Image.Image, in_chans: int, size: tuple[int, int]) -> torch.Tensor:
    """A PIL image of any mode and size as uint8 C×H×W: converted to gray or RGB, resized to cover H×W,
    centre-cropped (an image whose aspect ratio is far from H×W's is centre-cropped first, so that the work is
    bounded by the image's and the target's pixels)."""
    t = TF.pil_to_tensor(convert_mode(image, in_chans))
    h, w = t.shape[-2:]
    H, W = size  # noqa: N806
    if h * W > 2 * w * H or w * H > 2 * h * W:
        # the aspect ratio is more than twice the target's: centre-crop to the target's first, so that the resize
        # below makes about H×W pixels instead of a strip as long as the image (28 × 28,000,000 for a 1×1,000,000
        # image resized to cover 28×28); at most twice the target's, the order is as before, to the pixel
        t = v2.CenterCrop([min(h, max(1, round(w * H / W))), min(w, max(1, round(h * W / H)))])(t)
    if tuple(t.shape[-2:]) != tuple(size):
        if size[0] == size[1]:
            t = v2.Resize(min(size), antialias=True)(t)
        else:  # scale so the image covers H×W, then crop: resizing the shorter side alone could leave a side short
            h, w = t.shape[-2:]
            scale = max(size[0] / h, size[1] / w)
            t = v2.Resize([max(size[0], round(h * scale)), max(size[1], round(w * scale))], antialias=True)(t)
        t = v2.CenterCrop(size)(t)
    if not t.is_contiguous():
        # numpy's copy, not torch's: torch's runs on its intra-op threads, and called from a service's decoding
        # threads while the model's forward pass ran there it stalled both (py-spy on benchmarks/serve.py's
        # ResNet-18 server in bf16 at 32 clients: ~2.6 ms per 150 KB copy; gone from the profile after)
        t = torch.from_numpy(np.ascontiguousarray(t.numpy()))
    return t


def list_image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"no such file or folder: {p}")
    if not out:
        raise DataError(f"no image files found in {', '.join(map(str, paths))}")
    return out


def decoded_images(inputs: list[str | os.PathLike], strict: bool) -> Iterator[tuple[Path, Image.Image]]:
    """The image files of `inputs` (folders expanded), decoded one by one; an unreadable one is skipped with a
    warning (raised with `strict`); DataError at the end when none could be read."""
    problems, read = [], 0
    for f in list_image_files(list(inputs)):
        try:
            image = load_image_file(f)
        except DataError as e:
            if strict:
                raise
            problems.append(str(e))
            continue
        read += 1
        yield Path(f), image
    if not read:
        more = f" (and {len(problems) - 1} more unreadable)" if len(problems) > 1 else ""
        raise DataError(f"none of the given images could be read: {problems[0]}{more}")
    for p in problems:
        warnings.warn(p, stacklevel=3)
    if problems:
        warnings.warn(f"skipped {len(problems)} unreadable image(s)", stacklevel=3)


def load_model_inputs(paths: list[str | os.PathLike], in_chans: int, size: tuple[int, int],
                      strict: bool = False) -> tuple[torch.Tensor, list[Path]]:
    """Image files or folders as one uint8 N×C×H×W batch for a model, and the files kept. Unreadable images
    are skipped with a warning (or raise with `strict`); DataError when none can be read."""
    tensors, kept = [], []
    for f, image in decoded_images(paths, strict):
        tensors.append(to_model_input(image, in_chans, size))
        kept.append(f)
    return torch.stack(tensors), kept
