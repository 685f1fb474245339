"""Evaluating a restoration network on whole images, each at its own size, as the papers score them.

Each clean test image (cropped at the bottom and right to sides divisible by the network's scale, MATLAB's
`modcrop`) is degraded as the network expects (`cnnkit.tasks.restore.degrade`, noise from a fixed seed),
restored, clipped and rounded to 8 bits (the image as saved, as the papers score it), and scored against the
clean image: PSNR and SSIM (Wang et al. 2004: an 11×11 Gaussian window of σ 1.5, torchmetrics') on the luma Y
and on every channel, `scale` pixels cut from each border for super-resolution. Beside the network, the baselines the papers print: bicubic enlargement of the same small
image for super-resolution; for denoising the noisy image itself and Gaussian filters of σ 0.5, 1, 1.5 and 2
pixels, each reported (none is chosen here: choosing on the test images would flatter the baseline).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from cnnkit.runtime import autocast

FILTER_SIGMAS = (0.5, 1.0, 1.5, 2.0)


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
    from cnnkit.tasks.restore import EVAL_SEED, RESTORE, degrade, modcrop, restoration_net

    model.eval()
    net = restoration_net(model)
    border = net.scale if net.scale > 1 else 0
    per_image, per_baseline = [], {}
    for i in range(len(images)):
        h, w = (int(v) for v in sizes[i]) if sizes is not None else images.shape[-2:]
        clean = modcrop(images[i:i + 1, :, :h, :w].to(device).float() / 255, net.scale)
        with autocast(device, amp):
            restored = RESTORE.infer(model, clean, tta)
        per_image.append(image_scores(restored, clean, border))
        g = torch.Generator(device=clean.device).manual_seed(EVAL_SEED)
        for name, out in baselines(net, clean, degrade(net, clean, g)).items():
            per_baseline.setdefault(name, []).append(image_scores(out, clean, border))
    result: dict[str, Any] = {**_mean(per_image), "images": len(per_image), "border": border}
    result["baselines"] = {name: _mean(rows) for name, rows in per_baseline.items()}
    result["per_image"] = per_image
    return result
