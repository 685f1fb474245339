"""Restoration: an image in, an image out (super-resolution and denoising, `cnnkit.models.restore`).

What a network restores is part of the network (its `scale` or its `noise`, see `RestorationNet`). The data
are clean images on the 0..1 scale (a restoration run does not normalize them; `cnnkit.data.photos`), and the
task makes each network's input from them: for super-resolution the image shrunk `scale` times by antialiased
bicubic interpolation (the Keys kernel of MATLAB's `imresize`) and rounded to 8 bits, as the papers' small images
are saved; for denoising the image plus Gaussian noise of the network's σ (not clipped, as DnCNN trains).
Training draws new noise for each batch; validation and evaluation draw it from a fixed seed, so scores repeat.

The loss is each paper's: mean squared error (SRCNN, ESPCN, DnCNN, CBDNet's reconstruction) or L1 (EDSR). The
score is PSNR in dB on the luma Y (BT.601, MATLAB's `rgb2ycbcr`; a one-channel network's own channel) with
`scale` pixels cut from every border, as the super-resolution papers compute it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ConfigError
from cnnkit.tasks.base import Objective, Task, refuse_augmentations, register_task

EVAL_SEED = 0  # the noise validation and evaluation draw
PAPER_LOSS = {"edsr": "l1"}  # every other restoration network's paper trains on the mean squared error


def restoration_net(model: nn.Module) -> nn.Module:
    """The restoration network inside wrappers (EMA's averaged copy, DDP, torch.compile): what carries its
    `scale` and `noise`."""
    seen = 0
    while not hasattr(model, "scale") and seen < 4:
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
        seen += 1
    if not hasattr(model, "scale"):
        raise ConfigError(f"{type(model).__name__} is not a restoration network (it has no scale)")
    return model


def shrink(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The small image a super-resolution network is given: `x` (N×C×H×W on 0..1, sides divisible by `scale`)
    shrunk by antialiased bicubic interpolation, clipped and rounded to 8 bits."""
    from cnnkit.models.restore import bicubic

    h, w = x.shape[-2:]
    small = bicubic(x.float(), size=(h // scale, w // scale))
    return small.clamp(0, 1).mul(255).round().div(255)


def add_noise(x: torch.Tensor, noise: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """`x` plus Gaussian noise, each image's σ (0..255 scale) drawn uniformly from `noise`'s range."""
    lo, hi = noise
    device = x.device if generator is None else generator.device
    sigma = lo + (hi - lo) * torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=device)
    eps = torch.randn(x.shape, generator=generator, device=device)
    return x + (eps * sigma / 255.0).to(x.device)


CAMERA_NOISE = {"shot": (0.0, 0.16), "read": (0.0, 0.06), "jpeg_quality": (60, 100), "gamma": 2.2}


def camera_noise(x: torch.Tensor, generator: torch.Generator | None = None, shot: float | None = None,
                 read: float | None = None, jpeg: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Realistic camera noise as CBDNet models it (Guo et al. 2019, section 3.1), its camera response a gamma of
    2.2 (the paper draws one of 201 measured responses): the image `x` (N×3×H×W, 0..1) taken back to irradiance
    L, heteroscedastic Gaussian noise of variance σs²·L + σc² (σs from 0 to 0.16 and σc from 0 to 0.06, drawn per
    image), a Bayer RGGB mosaic demosaicked bilinearly (which correlates the noise across pixels and channels),
    the response again, and JPEG at a quality drawn from 60 to 100. `shot` and `read` fix σs and σc, and
    `jpeg=False` leaves the compression out. Returns the noisy image and the noise's standard deviation per pixel
    on the output's scale (before demosaicking and JPEG, the map CBDNet's estimator is taught)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    n, c = x.shape[:2]
    device = x.device if generator is None else generator.device

    def draw(lo: float, hi: float) -> torch.Tensor:  # one value per image
        return (lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator, device=device)).to(x.device)

    gamma = CAMERA_NOISE["gamma"]
    irradiance = x.float().clamp(0, 1).pow(gamma)
    s_shot = draw(*CAMERA_NOISE["shot"]) if shot is None else torch.tensor(float(shot), device=x.device)
    s_read = draw(*CAMERA_NOISE["read"]) if read is None else torch.tensor(float(read), device=x.device)
    std = (s_shot.pow(2) * irradiance + s_read.pow(2)).sqrt()
    noisy = irradiance + std * torch.randn(x.shape, generator=generator, device=device).to(x.device)
    if c == 3:
        noisy = _demosaicked(noisy)
    out = noisy.clamp(0, 1).pow(1 / gamma)
    # the response's slope carries the irradiance's noise to the output's scale (at most 1: near black the slope
    # of a gamma curve has no bound)
    sigma = (std * irradiance.clamp_min(1e-4).pow(1 / gamma - 1) / gamma).clamp_max(1.0)
    if not jpeg:
        return out, sigma
    lo, hi = CAMERA_NOISE["jpeg_quality"]
    quality = torch.randint(lo, hi + 1, (n,), generator=generator, device=device).tolist()
    pixels = out.mul(255).round().to(torch.uint8).cpu()
    decoded = [decode_jpeg(encode_jpeg(p, quality=q)) for p, q in zip(pixels, quality)]
    return torch.stack(decoded).to(x.device).float().div(255), sigma


def _demosaicked(x: torch.Tensor) -> torch.Tensor:
    """An RGB image sampled through a Bayer RGGB mosaic (one colour per pixel) and demosaicked bilinearly."""
    h, w = x.shape[-2:]
    mask = torch.zeros(3, h, w, device=x.device)
    mask[0, 0::2, 0::2] = mask[2, 1::2, 1::2] = 1
    mask[1, 0::2, 1::2] = mask[1, 1::2, 0::2] = 1
    rb = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=x.device) / 4
    g = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device) / 4
    kernels = torch.stack([rb, g, rb]).unsqueeze(1)
    sampled = F.pad(x * mask, (1, 1, 1, 1), mode="reflect")
    return F.conv2d(sampled, kernels.to(x.dtype), groups=3)


def split_pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's clean images and, for pairs (`pairfolder:DIR`: 2C channels, see `cnnkit.data.photos`), the given
    input enlarged by repeating pixels (None for clean photographs: their input is made here)."""
    c = x.shape[-3]
    return (x, None) if c % 2 else (x[..., :c // 2, :, :], x[..., c // 2:, :, :])


def degrade(net: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """What `net` is given for the images `x`: a pair's given input; else the clean image shrunk by the network's
    scale, or with its noise added."""
    clean, given = split_pair(x)
    if given is not None:
        return given[..., ::net.scale, ::net.scale] if net.scale > 1 else given
    if net.scale > 1:
        return shrink(x, net.scale)
    if getattr(net, "noise_model", "gaussian") == "camera":
        return camera_noise(x, generator)[0]
    if net.noise is not None:
        return add_noise(x, net.noise, generator)
    return x


def check_pair_scale(scale: int, data: Any) -> None:
    """Refuse, in one line, a network whose scale is not the pairs' (when `data` holds pairs)."""
    given = getattr(data, "given_scale", 0)
    if given and scale != given:
        raise ConfigError(f"{data.name}'s pairs are ×{given}, but the network's scale is {scale}: "
                          f"{'give --model-kw scale=' + str(given) if given > 1 else 'use a denoiser'}")


def modcrop(x: torch.Tensor, scale: int) -> torch.Tensor:
    """`x` cropped at the bottom and right to sides divisible by `scale` (the papers' `modcrop`)."""
    h, w = x.shape[-2:]
    return x[..., :h - h % scale, :w - w % scale]


def luma(x: torch.Tensor) -> torch.Tensor:
    """The channel PSNR is computed on: Y of RGB (see `cnnkit.data.photos.luma`), or a one-channel image itself."""
    from cnnkit.data.photos import luma as y

    return y(x) if x.shape[-3] == 3 else x


def psnr(restored: torch.Tensor, clean: torch.Tensor, border: int = 0, on_y: bool = True) -> torch.Tensor:
    """Each image's PSNR in dB (peak 1: 255 on 8 bits), on Y (`on_y`) or on every channel, `border` pixels cut
    from each side; the restored image is clipped to 0..1 first, as a saved image would be; at most 100 dB."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = restored.float().clamp(0, 1), clean.float()
    if on_y:
        a, b = luma(a), luma(b)
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    # torchmetrics' PSNR; an exact image (infinite PSNR) counts as 100 dB, so that means stay finite
    return peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp_max(100.0)


class RestorationLoss(Objective):
    """The paper's reconstruction loss on the network's output for the degraded batch (degraded here, with new
    noise each batch)."""

    flip_invariant = True  # a mirrored image, restored, is the restored image mirrored

    def __init__(self, loss: str) -> None:
        super().__init__()
        self.kind = loss
        self.noise_level: torch.Tensor | None = None  # CBDNet's loss on its noise map for the batch in progress

    def forward(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Any:
        net = restoration_net(model)
        clean, given = split_pair(x)
        if getattr(net, "noise_model", None) == "camera" and hasattr(net, "noise_map") and given is None:
            from cnnkit.models.restore import noise_level_loss

            noisy, sigma = camera_noise(clean)  # the true noise map, which CBDNet's estimator learns
            out = model(noisy)
            self.noise_level = noise_level_loss(net.noise_map.float(), sigma)
            return out
        return model(degrade(net, x))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "l1":
            loss = F.l1_loss(outputs.float(), targets.float())
        else:
            loss = F.mse_loss(outputs.float(), targets.float())
        if self.noise_level is not None:  # CBDNet: its reconstruction loss, asymmetric and TV losses on the map
            loss, self.noise_level = loss + self.noise_level, None
        return loss


class Restoration(Task):
    """An image in, an image out: outputs and targets are N×C×H×W images on the 0..1 scale."""

    name = "restore"
    score = "psnr"
    output = "image"
    outputs_are_classes = False
    any_size = True
    not_yet = ("explain",)  # next (issue 36)
    # validation patches: a photograph set cuts into thousands (13,114 of 40 pixels for the bundled photographs), and
    # scoring a tenth of them took DnCNN 19 s per epoch of a 10-minute budget; 512 rank checkpoints as well
    max_val_items = 512
    score_is_fraction = False  # PSNR, in decibels

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return split_pair(x)[0]

    def model_options(self, model: str, options: dict[str, Any], data: Any) -> dict[str, Any]:
        """For pairs, the scale they are at (`scale` where the user's options have none); a model that does not
        fit the pairs is refused in one line."""
        scale = getattr(data, "given_scale", 0)
        if not scale or model.startswith("timm/"):
            return {}
        from cnnkit.models import get_entry

        enlarges = "scale" in get_entry(model).options()
        if enlarges != (scale > 1):
            kind, want = (("low and high", "super-resolution model (srcnn, espcn, edsr)") if scale > 1 else
                          ("noisy and clean", "denoiser (dncnn, cbdnet)"))
            raise ConfigError(f"{data.name} pairs {kind} images: train a {want}, not {model}")
        check_pair_scale(options.get("scale", scale), data)
        return {"scale": scale} if enlarges and "scale" not in options else {}

    def objective(self, cfg: Any) -> Objective:
        refuse_augmentations(cfg.augment, ("crop_padding", "resized_crop", "policy", "erasing", "mixup", "cutmix"),
                             "restoration", "its images are its targets: a crop or a policy would change what is "
                             "restored", "hflip")
        if cfg.pretext or cfg.distill or cfg.label_smoothing or cfg.dice:
            raise ConfigError("RotNet, distillation, label smoothing and Dice are for classification and "
                              "segmentation; a restoration network trains on its paper's reconstruction loss")
        return RestorationLoss(PAPER_LOSS.get(cfg.model, "mse"))

    def infer(self, model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """The restored images for the clean images `x`: degraded (noise from a fixed seed), then restored;
        with flip TTA, averaged with the mirrored image's, mirrored back."""
        net = restoration_net(model)
        g = torch.Generator(device=x.device).manual_seed(EVAL_SEED)
        small = degrade(net, x, g)
        y = model(small).float()
        if tta:
            y = 0.5 * (y + model(small.flip(3)).float().flip(3))
        return y

    def example_input(self, in_chans: int, img_size: Sequence[int], batch: int = 2,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Images on the 0..1 scale, as a restoration network is given them."""
        return torch.rand(batch, in_chans, *img_size, generator=generator)

    def model_inputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The degraded images (noise from the evaluation's seed), as the network is given them."""
        return degrade(restoration_net(model), x, torch.Generator(device=x.device).manual_seed(EVAL_SEED))

    def export_meta(self, model: nn.Module) -> dict[str, Any]:
        """What an exported restoration network's sidecar records of it, for tiling and the service: its scale,
        receptive-field radius, alignment and noise (set on the loaded artifact, `cnnkit.artifacts.exported`)."""
        net = restoration_net(model)
        return {"restoration": {"scale": net.scale, "radius": net.radius, "align": net.align,
                                "noise": list(net.noise) if net.noise is not None else None,
                                "noise_model": getattr(net, "noise_model", "gaussian")}}

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each image's mean squared error, summed over the images."""
        return (outputs.float() - targets.float()).pow(2).flatten(1).mean(1).sum()

    def score_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each image's PSNR on Y, summed (validation patches whole; `evaluate` cuts the papers' border from whole
        images, cnnkit.evaluate.restore)."""
        return psnr(outputs, targets).sum().reshape(1)

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
        values = psnr(outputs, targets)
        return {"psnr_y": float(values.mean()), "images": len(values)}

    def predictions(self, outputs: torch.Tensor, names: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
        return [[("restored", float(o.float().mean()))] for o in outputs]

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """PSNR and SSIM on Y, and each baseline's PSNR beside them."""
        shown = {"PSNR (Y, dB)": metrics["psnr_y"]}
        if "ssim_y" in metrics:
            shown["SSIM (Y)"] = metrics["ssim_y"]
        for name, scores in (metrics.get("baselines") or {}).items():
            shown[f"{name}: PSNR (Y, dB)"] = scores["psnr_y"]
        return shown

    def format_value(self, value: float) -> str:
        return f"{value:.2f} dB" if math.isfinite(value) else str(value)


RESTORE = register_task(Restoration())
