"""Batched augmentation for in-memory images: whole batches at once, per-sample randomness."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cnnkit.data.settings import AugmentConfig


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool) -> torch.Tensor:
    """Padded random crop and horizontal flip, drawn independently for every image of a batch.

    torchvision.transforms.v2 draws one set of parameters per call, so applied to a batch it would crop
    and flip every image the same way; per-image calls cost Python overhead per sample. This gathers the
    whole batch in one indexing operation instead (same result as v2.RandomCrop(padding=p) and
    v2.RandomHorizontalFlip applied image by image).
    """
    return _crop_flip(images, padding, *_crop_flip_draw(len(images), padding, hflip))


def _crop_flip_draw(b: int, padding: int, hflip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each image's crop offsets (rows, columns, 0..2 × padding into the padded image) and flip (or None)."""
    dy = torch.randint(0, 2 * padding + 1, (b, 1)) if padding > 0 else torch.zeros(b, 1, dtype=torch.long)
    dx = torch.randint(0, 2 * padding + 1, (b, 1)) if padding > 0 else torch.zeros(b, 1, dtype=torch.long)
    return dy, dx, (torch.rand(b, 1) < 0.5) if hflip else None


def _crop_flip(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor,
               flip: torch.Tensor | None) -> torch.Tensor:
    b, c, h, w = images.shape
    device = images.device
    rows = torch.arange(h, device=device).expand(b, h)
    cols = torch.arange(w, device=device).expand(b, w)
    if padding > 0:
        images = F.pad(images, (padding,) * 4)
        rows, cols = rows + dy.to(device), cols + dx.to(device)
    if flip is not None:
        cols = torch.where(flip.to(device), cols.flip(1), cols)
    batch = torch.arange(b, device=device)[:, None, None, None]
    chans = torch.arange(c, device=device)[None, :, None, None]
    return images[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def kept_boxes(objects: torch.Tensor, moved: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Objects (N×M×5: class, x0, y0, x1, y1) after a crop moved their boxes to `moved` (N×M×4, in the new
    image's pixel-edge coordinates): a box whose centre left the image is dropped (class -1, as SSD's crops
    decide), the others are clipped to the image, and one clipped to under a pixel in either side is dropped."""
    cx, cy = (moved[..., 0] + moved[..., 2]) / 2, (moved[..., 1] + moved[..., 3]) / 2
    clipped = torch.stack([moved[..., 0].clamp(0, width), moved[..., 1].clamp(0, height),
                           moved[..., 2].clamp(0, width), moved[..., 3].clamp(0, height)], -1)
    keep = ((objects[..., 0] >= 0) & (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
            & (clipped[..., 2] - clipped[..., 0] >= 1) & (clipped[..., 3] - clipped[..., 1] >= 1))
    out = torch.cat([objects[..., :1], clipped], -1)
    out[~keep] = torch.tensor([-1.0, 0, 0, 0, 0], dtype=out.dtype, device=out.device)
    return out


class BatchAugment:
    """Applies an AugmentConfig to a uint8 batch; `mix` applies MixUp/CutMix to the normalized batch."""

    def __init__(self, config: AugmentConfig, num_classes: int):
        self.config = config
        self.num_classes = num_classes
        self.policy = {"trivialaugment": v2.TrivialAugmentWide(), "randaugment": v2.RandAugment(),
                       "none": None}[config.policy]
        self.erase = v2.RandomErasing(p=config.erasing, value=0) if config.erasing > 0 else None
        mixers = []
        if config.mixup > 0:
            mixers.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
        if config.cutmix > 0:
            mixers.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
        self.mixer = v2.RandomChoice(mixers) if mixers else None

    def geometric(self, images: torch.Tensor) -> torch.Tensor:
        """Crop, flip and policy on uint8 images."""
        cfg = self.config
        if cfg.resized_crop > 0:  # in memory, from the stored image (streaming crops the full-size file)
            crop = v2.RandomResizedCrop(tuple(images.shape[-2:]), scale=(cfg.resized_crop, 1.0), antialias=True)
            images = torch.stack([crop(im) for im in images])
        if cfg.crop_padding or cfg.hflip:
            images = random_crop_flip(images, cfg.crop_padding, cfg.hflip)
        if self.policy is not None:
            # The policies choose an operation per image; v2 has no batched form, so they run image by image.
            images = torch.stack([self.policy(im) for im in images])
        return images

    def geometric_with_masks(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Resized crop, crop and flip applied alike to uint8 images and their N×H×W masks (a crop's padding is
        background, class 0, like the black border it adds; a resized crop resizes the image bilinearly with
        antialiasing and the mask by nearest neighbour: torchvision's v2 on an Image and a Mask). Policies,
        erasing and mixing are refused for masks (the segmentation task's objective says so)."""
        cfg = self.config
        if cfg.resized_crop > 0:
            images, masks = resized_crops_with_masks(images, masks, cfg.resized_crop)
        if cfg.crop_padding or cfg.hflip:
            both = random_crop_flip(torch.cat([images, masks[:, None]], 1), cfg.crop_padding, cfg.hflip)
            images, masks = both[:, :-1], both[:, -1]
        return images, masks

    def geometric_with_objects(self, images: torch.Tensor, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Resized crop (scale jitter), padded crop and flip applied alike to uint8 images and their objects'
        boxes (N×M×5 rows: class, x0, y0, x1, y1 in pixel-edge coordinates; class -1 rows stay as they are). A
        box whose centre leaves the image is dropped, the others are clipped to it (`kept_boxes`). Policies,
        erasing and mixing are refused for boxes (the detection task's objective says so)."""
        cfg = self.config
        if cfg.resized_crop > 0:
            images, objects = resized_crops_with_objects(images, objects, cfg.resized_crop)
        if not (cfg.crop_padding or cfg.hflip):
            return images, objects
        h, w = images.shape[-2:]
        dy, dx, flip = _crop_flip_draw(len(images), cfg.crop_padding, cfg.hflip)
        images = _crop_flip(images, cfg.crop_padding, dy, dx, flip)
        shift = torch.cat([dx, dy, dx, dy], 1).to(objects) - cfg.crop_padding  # the crop's corner in the image
        moved = objects[..., 1:] - shift[:, None, :]
        if flip is not None:
            mirrored = torch.stack([w - moved[..., 2], moved[..., 1], w - moved[..., 0], moved[..., 3]], -1)
            moved = torch.where(flip.to(objects.device)[:, :, None], mirrored, moved)
        return images, kept_boxes(objects, moved, h, w)

    def erase_and_mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RandomErasing (per image) and MixUp/CutMix (per batch) on normalized float images."""
        if self.erase is not None:
            x = torch.stack([self.erase(im) for im in x])
        if self.mixer is not None:
            x, y = self.mixer(x, y)
        return x, y


def resized_crops_with_masks(images: torch.Tensor, masks: torch.Tensor, smallest: float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each uint8 C×H×W image and its H×W mask cropped alike (a random area from `smallest` to all of it, aspect
    3/4 to 4/3) and resized back to H×W: torchvision's v2.RandomResizedCrop on an Image and a Mask, one draw
    per image."""
    from torchvision import tv_tensors

    crop = v2.RandomResizedCrop(tuple(images.shape[-2:]), scale=(smallest, 1.0), antialias=True)
    pairs = [crop(tv_tensors.Image(im), tv_tensors.Mask(m[None])) for im, m in zip(images, masks)]
    return (torch.stack([p[0].as_subclass(torch.Tensor) for p in pairs]),
            torch.stack([p[1][0].as_subclass(torch.Tensor) for p in pairs]))


def resized_crops_with_objects(images: torch.Tensor, objects: torch.Tensor, smallest: float
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each uint8 C×H×W image cropped (a random area from `smallest` to all of it, aspect 3/4 to 4/3: the draw
    of torchvision's RandomResizedCrop) and resized back to H×W, bilinearly with antialiasing, its boxes moved
    and scaled alike (v2's resized_crop on an Image and its BoundingBoxes), then kept or dropped by
    `kept_boxes`."""
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2 import functional as TF

    h, w = images.shape[-2:]
    crops, moved = [], objects[..., 1:].clone()
    for i, im in enumerate(images):
        top, left, ch, cw = RandomResizedCrop.get_params(im, (smallest, 1.0), (3 / 4, 4 / 3))
        crops.append(TF.resized_crop(im, top, left, ch, cw, [h, w], antialias=True))
        scale = moved.new_tensor([w / cw, h / ch, w / cw, h / ch])
        moved[i] = (moved[i] - moved.new_tensor([left, top, left, top])) * scale
    return torch.stack(crops), kept_boxes(objects, moved, h, w)
