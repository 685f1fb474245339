"""Image restoration networks: an image in, an image out (super-resolution and denoising).

Each takes a degraded image with values in [0, 1] (N×C×H×W, C = `in_chans`) and returns the restored one with
the same channels: the super-resolution networks `scale` times larger on each side, the denoisers the same size.
They are the papers' layer definitions, parameter counts included (tests/models/test_restore.py counts them
against each paper's own arithmetic):

- `srcnn`: SRCNN (Dong et al. 2014/2016), the 9-1-5 network (64 and 32 filters). The paper feeds it the image
  already enlarged by bicubic interpolation; cnnkit's `srcnn` does that enlargement itself (the Keys cubic with
  a = -0.5, MATLAB's and PIL's, as torch computes it with `antialias=True`) so that every super-resolution model
  takes the small image. The paper's convolutions have no padding (its output loses 12 pixels per side); here
  they are zero-padded to keep the size, as most reimplementations do.
- `espcn`: ESPCN (Shi et al. 2016), convolutions on the small image (5×5 64, 3×3 32, 3×3 C·r², tanh between)
  and a sub-pixel convolution (`PixelShuffle`) at the end.
- `edsr`: EDSR baseline (Lim et al. 2017): 16 residual blocks of 64 features without batch normalization, a
  global skip, the sub-pixel upsampler (×4 as two ×2), the data's mean subtracted and added back; `blocks`,
  `features` and `res_scale` (the paper's large model: 32, 256, 0.1).
- `dncnn`: DnCNN (Zhang et al. 2017): 17 layers (20 for the blind DnCNN-B), conv+ReLU, conv+BN+ReLU, conv;
  residual learning (the network predicts the noise, subtracted from its input), `residual=false` for the
  ablation that predicts the clean image.
- `cbdnet`: CBDNet (Guo et al. 2019), blind denoising of real photographs: a noise-estimation subnetwork (five
  3×3 convolutions of 32 channels with ReLU) gives a per-pixel noise level map, which a U-Net (the non-blind
  subnetwork, its input the image and the map) uses to predict the residual. Its loss adds the asymmetric loss
  on the map and its total variation when the noise's true level is known (`noise_level_loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import ModelError
from cnnkit.models.registry import register_model

SCALES = (2, 3, 4)
NOISE_MODELS = ("camera", "gaussian")  # what a blind denoiser is trained on (cnnkit.tasks.restore.degrade)
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # EDSR's MeanShift: DIV2K's RGB mean


class RestorationNet(nn.Module):
    """A restoration network: the output's size is `scale` times the input's (1 for denoisers). What it restores
    is part of the network, as its options say: a super-resolution network's `scale` (its input is the image
    shrunk by bicubic interpolation), a denoiser's `noise` (the Gaussian noise's standard deviation on the 0..255
    scale, one value or a (low, high) range to draw each image's from: a blind denoiser's)."""

    scale: int = 1
    noise: tuple[float, float] | None = None
    noise_model: str = "gaussian"  # or "camera" (CBDNet's realistic noise, cnnkit.tasks.restore.camera_noise)
    #: the smallest input side the network takes (the U-Net's poolings need some)
    min_side: int = 1
    #: a multiple that tiles' offsets in the input keep (the U-Net's poolings: 4), so that a tile is computed as
    #: the whole image would be
    align: int = 1

    @property
    def radius(self) -> int:
        """How far, in input pixels, an output pixel can see from its own place: a tile run with this margin on
        each inner side gives, inside the margin, exactly what the whole image gives (`cnnkit.evaluate.restore`;
        tested against the gradient's reach)."""
        raise NotImplementedError


def _noise(noise, default: float) -> tuple[float, float]:  # noqa: ANN001
    """A denoiser's `noise` option as (low, high) on the 0..255 scale."""
    if noise is None:
        return (default, default)
    values = list(noise) if isinstance(noise, (list, tuple)) else [noise]
    ok = (len(values) in (1, 2) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 255
                                        for v in values) and values[0] <= values[-1])
    if not ok:
        raise ModelError(f"noise is the Gaussian noise's standard deviation on the 0..255 scale: one number (e.g. "
                         f"25) or a range [low, high] (e.g. [0, 55]), got {noise!r}")
    return (float(values[0]), float(values[-1]))


def _check_scale(scale: int) -> int:
    if scale not in SCALES or isinstance(scale, bool):
        raise ModelError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    return int(scale)


def _positive(name: str, value, most: int = 1024) -> int:  # noqa: ANN001
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
        raise ModelError(f"{name} must be a whole number from 1 to {most}, got {value!r}")
    return value


def bicubic(x: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Bicubic resize with the Keys kernel at a = -0.5 (MATLAB's `imresize` and PIL's), antialiased when it
    shrinks: torch's `antialias=True` path (its plain bicubic uses a = -0.75)."""
    return F.interpolate(x, size=size, scale_factor=None if size else scale, mode="bicubic", align_corners=False,
                         antialias=True)


class SRCNN(RestorationNet):
    def __init__(self, channels: int, scale: int, n1: int = 64, n2: int = 32, f1: int = 9, f2: int = 1,
                 f3: int = 5) -> None:
        super().__init__()
        self.scale = scale
        self.patch = nn.Conv2d(channels, n1, f1, padding=f1 // 2)  # patch extraction and representation
        self.mapping = nn.Conv2d(n1, n2, f2, padding=f2 // 2)  # non-linear mapping
        self.reconstruct = nn.Conv2d(n2, channels, f3, padding=f3 // 2)

    @property
    def radius(self) -> int:  # bicubic's 2 input pixels, then the three filters' half-widths on the large image
        half = sum(c.kernel_size[0] // 2 for c in (self.patch, self.mapping, self.reconstruct))
        return 2 + math.ceil(half / self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = bicubic(x, self.scale)
        return self.reconstruct(F.relu(self.mapping(F.relu(self.patch(y)))))


class ESPCN(RestorationNet):
    def __init__(self, channels: int, scale: int, n1: int = 64, n2: int = 32) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(channels, n1, 5, padding=2), nn.Tanh(),
                                  nn.Conv2d(n1, n2, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(n2, channels * scale * scale, 3, padding=1))
        self.shuffle = nn.PixelShuffle(scale)

    radius = 4  # 5×5, 3×3, 3×3 on the small image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.body(x))


class ResBlock(nn.Module):
    """EDSR's residual block: conv, ReLU, conv, scaled, added to the input (no batch normalization)."""

    def __init__(self, features: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, features, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


def upsampler(features: int, scale: int) -> nn.Sequential:
    """Sub-pixel upsampling as EDSR builds it: ×2 and ×3 one conv + PixelShuffle, ×4 two ×2 stages."""
    stages = [2, 2] if scale == 4 else [scale]
    layers: list[nn.Module] = []
    for r in stages:
        layers += [nn.Conv2d(features, features * r * r, 3, padding=1), nn.PixelShuffle(r)]
    return nn.Sequential(*layers)


class EDSR(RestorationNet):
    def __init__(self, channels: int, scale: int, blocks: int = 16, features: int = 64, res_scale: float = 1.0,
                 mean: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.scale = scale
        mean = mean if mean is not None else (DIV2K_MEAN if channels == 3 else (sum(DIV2K_MEAN) / 3,) * channels)
        if len(mean) != channels:
            raise ModelError(f"mean must give one value per channel ({channels}), got {len(mean)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.head = nn.Conv2d(channels, features, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(features, res_scale) for _ in range(blocks)],
                                  nn.Conv2d(features, features, 3, padding=1))
        self.tail = nn.Sequential(upsampler(features, scale), nn.Conv2d(features, channels, 3, padding=1))

    @property
    def radius(self) -> int:  # head, two 3×3 per block, the body's last; the upsampler's and tail's at most 3 more
        return 2 * len(self.body) + 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x - self.mean)
        return self.tail(h + self.body(h)) + self.mean


class DnCNN(RestorationNet):
    def __init__(self, channels: int, depth: int = 17, features: int = 64, residual: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        self.residual = residual

    @property
    def radius(self) -> int:  # one pixel per 3×3 layer
        return sum(1 for m in self.body if isinstance(m, nn.Conv2d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x) if self.residual else self.body(x)


def _double_conv(cin: int, cout: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods)


class CBDNet(RestorationNet):
    """CBDNet: noise estimation (`estimate`) and a U-Net over the image and the estimated map; `forward` returns
    the restored image, `noise_map` the last estimate (for the asymmetric loss)."""

    min_side = 4
    align = 4
    # the estimator's 5, then the U-Net: 2 at full size, 3 at half (6, and 1 for the pooling cell), 6 at a quarter
    # (24, and 2), 3 at half on the way up (6), 2 and the output's 1 at full size: 49, kept to a multiple of 4
    radius = 52

    def __init__(self, channels: int, width: int = 64, estimator_width: int = 32) -> None:
        super().__init__()
        est: list[nn.Module] = []
        for i in range(5):
            last = i == 4
            est += [nn.Conv2d(channels if i == 0 else estimator_width, channels if last else estimator_width, 3,
                              padding=1), nn.ReLU(inplace=True)]
        self.estimate = nn.Sequential(*est)
        w = width
        # the non-blind subnetwork: a U-Net of three scales (w, 2w, 4w) and 16 convolutions (2, 3, 6, 3, 2), average
        # pooling down, transposed convolutions up, skips added rather than concatenated
        self.enc1 = _double_conv(2 * channels, w)
        self.enc2 = _double_conv(w, 2 * w, 3)
        self.mid = _double_conv(2 * w, 4 * w, 6)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _double_conv(2 * w, 2 * w, 3)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _double_conv(w, w, 2)
        self.out = nn.Conv2d(w, channels, 3, padding=1)
        self.noise_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # the two poolings need sides divisible by 4: pad by repeating the edge (always, if by nothing: an exported
        # graph then takes every size), crop after
        xp = F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="replicate")
        sigma = self.estimate(xp)
        self.noise_map = sigma[..., :h, :w]
        e1 = self.enc1(torch.cat([xp, sigma], 1))
        e2 = self.enc2(F.avg_pool2d(e1, 2))
        m = self.mid(F.avg_pool2d(e2, 2))
        d2 = self.dec2(self.up2(m) + e2)
        d1 = self.dec1(self.up1(d2) + e1)
        return (xp + self.out(d1))[..., :h, :w]


def noise_level_loss(estimated: torch.Tensor, true_sigma: torch.Tensor, alpha: float = 0.3) -> torch.Tensor:
    """CBDNet's asymmetric loss on the noise map (under-estimates cost 1 − α, over-estimates α: the paper's
    α = 0.3 penalizes under-estimation more) and the map's total variation, weighted as in the paper (λ_asymm 0.5,
    λ_TV 0.05)."""
    diff = estimated - true_sigma
    weight = torch.where(diff < 0, 1 - alpha, alpha)
    asym = (weight * diff.pow(2)).mean()
    tv = (estimated[..., 1:, :] - estimated[..., :-1, :]).pow(2).mean() + \
        (estimated[..., :, 1:] - estimated[..., :, :-1]).pow(2).mean()
    return 0.5 * asym + 0.05 * tv


@register_model("srcnn", min_size=1, paper="Dong et al. 2014, SRCNN (9-1-5)", task="restore",
                default_input="3x32x32")
def srcnn(num_classes: int = 0, in_chans: int = 1, img_size=None, scale: int = 3, n1: int = 64, n2: int = 32,
          f1: int = 9, f2: int = 1, f3: int = 5) -> nn.Module:
    """SRCNN: bicubic enlargement by `scale`, then patch extraction (f1×f1, n1), mapping (f2×f2, n2) and
    reconstruction (f3×f3); the paper's base network is 9-1-5 with 64 and 32 filters."""
    for name, v in (("n1", n1), ("n2", n2)):
        _positive(name, v)
    for name, v in (("f1", f1), ("f2", f2), ("f3", f3)):
        if _positive(name, v, 15) % 2 == 0:
            raise ModelError(f"{name} must be odd (a centred filter), got {v}")
    return SRCNN(in_chans, _check_scale(scale), n1, n2, f1, f2, f3)


@register_model("espcn", min_size=1, paper="Shi et al. 2016, ESPCN (sub-pixel convolution)", task="restore",
                default_input="3x32x32")
def espcn(num_classes: int = 0, in_chans: int = 1, img_size=None, scale: int = 3, n1: int = 64,
          n2: int = 32) -> nn.Module:
    """ESPCN: three convolutions on the small image (5×5 n1, 3×3 n2, 3×3 C·scale², tanh between), then
    PixelShuffle(scale)."""
    return ESPCN(in_chans, _check_scale(scale), _positive("n1", n1), _positive("n2", n2))


@register_model("edsr", min_size=1, paper="Lim et al. 2017, EDSR (baseline: 16 blocks, 64 features)",
                task="restore", default_input="3x32x32")
def edsr(num_classes: int = 0, in_chans: int = 3, img_size=None, scale: int = 2, blocks: int = 16,
         features: int = 64, res_scale: float = 1.0, mean=None) -> nn.Module:
    """EDSR: `blocks` residual blocks without batch normalization of `features` channels, residual scaling
    `res_scale` (the baseline's 1; the large model's 0.1), a global skip and a sub-pixel upsampler; `mean`: the
    per-channel mean subtracted at the input and added at the output (default: DIV2K's, as the paper)."""
    if isinstance(res_scale, bool) or not isinstance(res_scale, (int, float)) or not 0 < res_scale <= 1:
        raise ModelError(f"res_scale must be a number in (0, 1], got {res_scale!r}")
    return EDSR(in_chans, _check_scale(scale), _positive("blocks", blocks, 64), _positive("features", features),
                float(res_scale), None if mean is None else tuple(float(m) for m in mean))


@register_model("dncnn", min_size=1, paper="Zhang et al. 2017, DnCNN (residual learning, batch normalization)",
                task="restore", default_input="3x40x40")
def dncnn(num_classes: int = 0, in_chans: int = 1, img_size=None, depth: int = 17, features: int = 64,
          residual: bool = True, noise=None) -> nn.Module:
    """DnCNN: `depth` layers (17: DnCNN-S for one noise level; 20: DnCNN-B, blind), `features` channels; with
    `residual` (the paper's) the network's output is the noise, subtracted from the input; `noise`: the Gaussian
    σ it removes (0..255 scale; default 25, DnCNN-S's; a range [0, 55] for DnCNN-B)."""
    if _positive("depth", depth, 64) < 3:
        raise ModelError(f"depth must be at least 3 (first, middle and last layers), got {depth}")
    if not isinstance(residual, bool):
        raise ModelError(f"residual must be true or false, got {residual!r}")
    net = DnCNN(in_chans, depth, _positive("features", features), residual)
    net.noise = _noise(noise, 25.0)
    return net


@register_model("cbdnet", min_size=4, paper="Guo et al. 2019, CBDNet (blind denoising of real photographs)",
                task="restore", default_input="3x64x64")
def cbdnet(num_classes: int = 0, in_chans: int = 3, img_size=None, width: int = 64,
           estimator_width: int = 32, noise=None, noise_model: str = "camera") -> nn.Module:
    """CBDNet: a noise-estimation subnetwork (five 3×3 convolutions, `estimator_width` channels) and a U-Net of
    three scales (`width`, 2×, 4×) over the image and its estimated noise map, predicting the residual;
    `noise_model`: what it is trained on, `camera` (the paper's realistic noise: signal-dependent, demosaicked,
    JPEG-compressed; `cnnkit.tasks.restore.camera_noise`, and its noise map is taught with the paper's asymmetric
    loss) or `gaussian` (σ drawn from `noise`'s range on the 0..255 scale; default [0, 55])."""
    if noise_model not in NOISE_MODELS:
        raise ModelError(f"noise_model must be one of {', '.join(NOISE_MODELS)}, got {noise_model!r}")
    if noise_model == "camera" and in_chans != 3:
        raise ModelError("the camera noise model is of colour photographs (a Bayer mosaic): train CBDNet on RGB, "
                         "or give noise_model=gaussian")
    net = CBDNet(in_chans, _positive("width", width), _positive("estimator_width", estimator_width))
    net.noise = _noise(noise if noise is not None else [0, 55], 0.0)
    net.noise_model = noise_model
    return net
