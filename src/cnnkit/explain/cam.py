"""Class activation maps, batched over images: Grad-CAM (Selvaraju et al. 2017), Grad-CAM++
(Chattopadhyay et al. 2018), Smooth Grad-CAM++ (Omeiza et al. 2019), Score-CAM (Wang et al. 2020) and
Eigen-CAM (Muhammad & Yeasin 2020); for segmentation models, Seg-Grad-CAM (Vinogradova et al. 2020): Grad-CAM
(or Grad-CAM++) of a class's logits summed over a region of the output, by default the pixels predicted as it.

One forward and one backward pass serve the whole batch: the summed target logits are differentiated once,
and in eval mode every image's gradient depends only on that image.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.runtime import owns_threads
from cnnkit.errors import ExplainError, close_matches
from cnnkit.models.base import stage_modules


CAM_METHODS = ("gradcam", "gradcam++", "smoothgradcam++", "scorecam", "eigencam")
# the methods that explain a segmentation model (N×K×H×W logits): their score is a region's summed class logits
SEGMENT_METHODS = ("gradcam", "gradcam++")
_OPTIONS = {"smoothgradcam++": ("samples", "noise", "seed", "channels", "neurons"),
            "smoothgrad": ("samples", "noise"), "integrated_gradients": ("steps", "baseline"),
            "lrp": ("rule", "epsilon"), "scorecam": ("precision",)}


@dataclass
class Explanation:
    """Maps for a batch: `maps` (B×H×W, resized to the input, each scaled to [0, 1]); `raw`, un-normalized:
    for CAM methods the map at the layer's resolution before the ReLU, for gradient methods the input-shaped
    attributions (B×C×H×W); the explained `targets`; which images had a constant map (left at zero rather
    than divided by zero); for a segmentation model, the `regions` (B×H×W, 1 where the score was summed)."""

    maps: torch.Tensor
    raw: torch.Tensor
    targets: torch.Tensor
    layer: str
    method: str
    zero_maps: list[int] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    regions: torch.Tensor | None = None


def resolve_layer(model: nn.Module, layer: str = "auto") -> tuple[str, nn.Module]:
    """The named layer, or for 'auto' the last convolutional stage (the last Conv2d when the model names
    no stages). Unknown names list the valid ones."""
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ExplainError(f"{type(model).__name__} has no convolutional layers; CAM methods need one")
    stages = [n for n in stage_modules(model) if isinstance(modules.get(n), nn.Module)]
    if layer == "auto":
        name = stages[-1] if stages else convs[-1]
        return name, modules[name]
    if layer not in modules or not layer:
        valid = [n for n in modules if n and not n.endswith((".act", ".bn"))]
        raise ExplainError(f"unknown layer {layer!r}{close_matches(layer, valid)}; layers ending a stage: "
                           f"{', '.join(stages or convs[-5:])}")
    return layer, modules[layer]


def decoder_layer(model: nn.Module, images: torch.Tensor) -> tuple[str, nn.Module]:
    """Seg-Grad-CAM's default layer: the last block (a module holding layers) to give a feature map wider than
    1×1 before the classifier (the last convolution to run) starts, e.g. U-Net's last decoder block, DeepLab's
    ASPP head or decoder, a torchvision model's last backbone stage. Found by tracing one image."""
    done: list[str] = []
    classifier_start = [0]
    hooks = []

    def finished(name: str):
        def hook(module, _i, out):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[-2:]) > 1 and any(module.children()):
                done.append(name)
        return hook

    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(finished(name)))
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_pre_hook(lambda *_: classifier_start.__setitem__(0, len(done))))
    try:
        with torch.no_grad():
            model(images[:1].detach().to(model_dtype(model)))
    finally:
        for h in hooks:
            h.remove()
    if not done[:classifier_start[0]]:
        return resolve_layer(model)
    name = done[classifier_start[0] - 1]
    return name, model.get_submodule(name)


def check_inputs(model: nn.Module, images: torch.Tensor, targets) -> None:
    """Refuse, in one line, images that are not a B×C×H×W batch of the channels the model takes."""
    if images.ndim != 4:
        raise ExplainError(f"images must be a batch B×C×H×W, got shape {tuple(images.shape)}")
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != images.shape[1]:
        raise ExplainError(f"the model expects {first.in_channels}-channel images, got {images.shape[1]} "
                           f"(convert them first, e.g. cnnkit.data.images.to_model_input)")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point type of the model's weights (float32 for a model without floating weights)."""
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def largest_class(logits: torch.Tensor) -> torch.Tensor:
    """Per image of N×K×H×W logits, the class predicted on most pixels, class 0 (the background, by the
    convention of fashion-scenes and Pascal VOC) only where no other class is predicted."""
    counts = F.one_hot(logits.argmax(1).flatten(1), logits.shape[1]).sum(1)
    if logits.shape[1] > 1:
        counts[:, 0] = torch.where(counts[:, 1:].sum(1) > 0, -1, counts[:, 0])
    return counts.argmax(1)


def predicted_region(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The pixels of N×K×H×W logits predicted as each image's target class (N×H×W, 1.0 or 0.0)."""
    return (logits.argmax(1) == targets.view(-1, 1, 1)).to(logits.dtype)


def _targets(targets, logits: torch.Tensor, method: str = "gradcam") -> torch.Tensor:
    """The explained classes: given ones (one for all, or one per image), checked, or the predictions
    (segmentation: the largest predicted class, see `largest_class`)."""
    n_classes = logits.shape[1]
    if logits.ndim == 4 and method not in SEGMENT_METHODS:
        raise ExplainError(f"{method} explains a classifier's scores; for a segmentation model use "
                           f"{' or '.join(SEGMENT_METHODS)} (Seg-Grad-CAM)")
    if targets is None:
        return logits.argmax(1) if logits.ndim == 2 else largest_class(logits)
    tgt = torch.as_tensor(targets, dtype=torch.long).flatten()
    tgt = tgt.expand(len(logits)) if tgt.numel() == 1 else tgt
    if len(tgt) != len(logits):
        raise ExplainError(f"{len(tgt)} targets for {len(logits)} images")
    bad = tgt[(tgt < 0) | (tgt >= n_classes)]
    if len(bad):
        raise ExplainError(f"target class {int(bad[0])} is out of range: the model has {n_classes} "
                           f"classes (0–{n_classes - 1})")
    return tgt


def _normalize(cam: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Each map min-max scaled to [0, 1]; a constant map becomes zero and is reported."""
    lo = cam.amin((1, 2), keepdim=True)
    span = cam.amax((1, 2), keepdim=True) - lo
    zero = [i for i, s in enumerate(span.flatten().tolist()) if s <= 0]
    return torch.where(span > 0, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam)), zero


def _explain_input(model: nn.Module, images: torch.Tensor, targets, method: str, **options) -> Explanation:
    from cnnkit.explain.gradients import attribute

    was_training = model.training
    model.eval()
    try:
        x = images.detach().to(model_dtype(model))
        with torch.no_grad():
            tgt = _targets(targets, model(x), method)
        attr, heat, extra = attribute(model, x, tgt, method, **options)
    finally:
        model.train(was_training)
    maps, zero = _normalize(heat)
    return Explanation(maps, attr, tgt, "input", method, zero, extra)


def _weights(method: str, acts: torch.Tensor, grads: torch.Tensor, g2: torch.Tensor | None = None,
             g3: torch.Tensor | None = None) -> torch.Tensor:
    if method == "gradcam":  # global-average-pooled gradients (Selvaraju et al., Eq. 1)
        return grads.mean((2, 3))
    # Grad-CAM++ (Chattopadhyay et al., Eq. 19 with the exponential's higher derivatives as powers of the
    # first): alpha = g² / (2g² + Σ_ab A · g³), zero where the gradient is zero; weights = Σ alpha·ReLU(g).
    # Smooth Grad-CAM++ passes g, g² and g³ each averaged over the noisy copies (Omeiza et al., Eq. 7-9).
    g2 = grads.pow(2) if g2 is None else g2
    g3 = g2 * grads if g3 is None else g3
    alpha = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g3 + 1e-6)
    alpha = torch.where(g2 != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grads.clamp_min(0)).sum((2, 3))


def _noisy_moments(model: nn.Module, x: torch.Tensor, tgt: torch.Tensor, store: dict, samples: int,
                   noise: float, seed: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """The layer's gradients g, g², g³ averaged over `samples` noisy copies of each image (Gaussian noise,
    σ = `noise` × the image's value range). One noise draw is shared by all images, so an image's map does
    not depend on the batch it comes in."""
    b = len(x)
    eps = torch.randn((samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(x)
    span = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).view(b, 1, 1, 1)
    sums = [0.0, 0.0, 0.0]
    per_pass = max(1, batch_size // b)
    for i in range(0, samples, per_pass):
        e = eps[i:i + per_pass]
        noisy = (x[None] + noise * span[None] * e[:, None]).flatten(0, 1)  # sample-major: s*B + image
        _, g, _ = _forward_backward(model, noisy, tgt.repeat(len(e)), store, "the layer")  # targets given
        g = g.view(len(e), b, *g.shape[1:])
        for k in range(3):
            sums[k] = sums[k] + g.pow(k + 1).sum(0)
    return tuple(t / samples for t in sums)


def _subset_masks(shape: torch.Size, channels, neurons) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth Grad-CAM++'s restriction to some feature maps (`channels`) or some neurons (`neurons`: (row,
    column) positions on the layer's grid), as a channel mask and a position mask."""
    c, h, w = shape[1:]
    keep = torch.ones(c)
    if channels is not None:
        idx = torch.as_tensor(channels, dtype=torch.long).flatten()
        if len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= c:
            raise ExplainError(f"channels must be indices in 0–{c - 1} of the layer's {c} feature maps")
        keep = torch.zeros(c).index_fill_(0, idx, 1.0)
    where = torch.ones(h, w)
    if neurons is not None:
        where = torch.zeros(h, w)
        for pos in neurons:
            r, col = (int(v) for v in pos)
            if not (0 <= r < h and 0 <= col < w):
                raise ExplainError(f"neuron {tuple(pos)} is outside the layer's {h}×{w} grid")
            where[r, col] = 1.0
    return keep, where


def _inference_copy(model: nn.Module) -> nn.Module:
    """A copy for pure inference: BatchNorm folded into the convolutions (outputs equal to ~1e-6) and, on a
    CPU, channels-last memory; a plain copy when the model cannot be traced."""
    from cnnkit.errors import ModelError
    from cnnkit.models.fold import fold_batchnorm

    try:
        fast, _ = fold_batchnorm(model)
    except ModelError:
        fast = copy.deepcopy(model).eval()
    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cpu":
        fast = fast.to(memory_format=torch.channels_last)
    return fast


def _score_weights(model: nn.Module, x: torch.Tensor, acts: torch.Tensor, tgt: torch.Tensor,
                   batch_size: int, precision: str = "fp32") -> torch.Tensor:
    """Score-CAM's channel weights: each channel, upsampled (bilinear, corners aligned) and min-max scaled,
    masks the input; the softmax over channels of the target logits is the weight.

    The B×C masked images are pure inference, so they run on an inference copy of the model (BN folded,
    channels-last). On a CPU they go in chunks of 16, which stay in cache (measured faster than larger
    batches on 2 cores), spread over one single-threaded worker per core: small convolutions scale
    poorly across cores inside one op, and independent chunks scale almost linearly. `precision="bf16"`
    runs the masked passes under bfloat16 autocast: faster where the hardware has bf16, but the map then
    differs from the float32 one (measured in benchmarks/explain.py)."""
    if precision not in ("fp32", "bf16"):
        raise ExplainError(f"precision must be fp32 or bf16, got {precision!r}")
    b, c = acts.shape[:2]
    up = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=True)
    lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
    masks = ((up - lo) / (hi - lo + 1e-8)).flatten(0, 1)  # B·C × H × W
    scores = torch.empty(b * c, dtype=acts.dtype, device=acts.device)
    flat_t = tgt.repeat_interleave(c)
    fast = _inference_copy(model)
    cpu = x.device.type == "cpu"
    chunk = 16 if cpu else batch_size
    memory = torch.channels_last if cpu else torch.contiguous_format

    def run(start: int) -> None:
        idx = torch.arange(start, min(start + chunk, b * c), device=x.device)
        with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=precision == "bf16"):
            batch = (x[idx // c] * masks[idx][:, None]).contiguous(memory_format=memory)
            scores[idx] = fast(batch).gather(1, flat_t[idx][:, None])[:, 0].to(acts.dtype)

    starts = range(0, b * c, chunk)
    threads = torch.get_num_threads() if cpu else 1
    # One chunk per core on one thread each runs about twice as fast as all cores inside each op, but
    # torch's thread count is process-wide: only lowered when this process is cnnkit's alone.
    if threads > 1 and len(starts) > 1 and owns_threads():
        from concurrent.futures import ThreadPoolExecutor

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, starts))
        finally:
            torch.set_num_threads(threads)
    else:
        for st in starts:
            run(st)
    return torch.softmax(scores.view(b, c), dim=1)


def _eigen_projection(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM: the activations (positions × channels), centred per channel, projected on their first
    principal direction. SVD leaves the sign arbitrary; it is fixed so that the map correlates positively
    with gradient × activation, i.e. points the way the target score rises."""
    b, c, h, w = acts.shape
    a = acts.flatten(2).transpose(1, 2)  # B × HW × C
    a = a - a.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(a.double(), full_matrices=False)
    proj = (a.double() @ vh[:, 0, :, None])[..., 0].float()  # B × HW
    evidence = (grads * acts).sum(1).flatten(1)
    sign = torch.where((proj * evidence).sum(1) < 0, -1.0, 1.0)
    return (proj * sign[:, None]).view(b, h, w)


def _check_region(region, logits: torch.Tensor) -> torch.Tensor | None:
    """A given region as N×H×W weights of the output's size (one H×W region serves every image)."""
    if region is None:
        return None
    if logits.ndim != 4:
        raise ExplainError("a region applies to a segmentation model's per-pixel outputs; this model gives "
                           "one score per class")
    r = torch.as_tensor(region).to(logits)
    r = r.expand(len(logits), -1, -1) if r.ndim == 2 else r
    if r.shape != (len(logits), *logits.shape[2:]):
        raise ExplainError(f"the region must be H×W or B×H×W like the outputs {tuple(logits.shape[2:])}, "
                           f"got shape {tuple(torch.as_tensor(region).shape)}")
    return r


def _forward_backward(model: nn.Module, x: torch.Tensor, targets, store: dict, name: str, method: str = "gradcam",
                      region=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The explained classes, the gradient of their summed logits at the hooked layer's output, and for a
    segmentation model the region the logits were summed over (Seg-Grad-CAM's score; default: the pixels
    predicted as the class)."""
    store.pop("acts", None)
    with torch.no_grad():
        logits = model(x)
    if "acts" not in store:
        raise ExplainError(f"layer {name!r} is not used by the model's forward pass")
    tgt = _targets(targets, logits.detach(), method)
    region = _check_region(region, logits)
    if logits.ndim == 4:
        region = predicted_region(logits.detach(), tgt) if region is None else region
        score = (logits.gather(1, tgt.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[2:]))[:, 0] * region).sum()
    else:
        score = logits.gather(1, tgt[:, None]).sum()
    (grads,) = torch.autograd.grad(score, store["acts"], allow_unused=True)
    if grads is None:  # the layer does not reach the logits
        grads = torch.zeros_like(store["acts"])
    return tgt, grads, region


def explain(model: nn.Module, images: torch.Tensor, targets: int | list[int] | torch.Tensor | None = None,
            method: str = "gradcam", layer: str = "auto", batch_size: int = 256, region=None,
            **options) -> Explanation:
    """Explain `model`'s scores for `targets` (default: its predicted classes) on a batch of images. For a
    segmentation model (N×K×H×W logits) the score is the class's logits summed over `region` (H×W or B×H×W
    weights, e.g. a box's 0/1 mask; default: the pixels predicted as the class): Seg-Grad-CAM."""
    from cnnkit.explain.gradients import GRADIENT_METHODS

    methods = CAM_METHODS + GRADIENT_METHODS
    if method not in methods:
        raise ExplainError(f"unknown method {method!r}{close_matches(method, methods)}; "
                           f"choose from: {', '.join(methods)}")
    allowed = _OPTIONS.get(method, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ExplainError(f"{method} takes no option {unknown[0]!r}"
                           + (f"; its options: {', '.join(allowed)}" if allowed else ""))
    check_inputs(model, images, targets)
    if region is not None and method not in SEGMENT_METHODS:
        raise ExplainError(f"a region is explained by {' or '.join(SEGMENT_METHODS)} (Seg-Grad-CAM), not {method}")
    if method in GRADIENT_METHODS:
        return _explain_input(model, images, targets, method, **options)
    segmenter = getattr(model, "task", None) == "segment"
    name, module = decoder_layer(model, images) if segmenter and layer == "auto" else resolve_layer(model, layer)
    was_training = model.training
    model.eval()
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            got = f"a {out.ndim}-d tensor" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ExplainError(f"layer {name!r} gives {got}, not a B×C×H×W feature map; "
                               f"CAM methods need a convolutional layer")
        # Record the autograd graph only from this layer on: the forward runs without gradients up to here,
        # and the backward stops here (no weight gradients, no backward through the earlier layers).
        leaf = out.detach().requires_grad_(True)
        store["acts"] = leaf
        torch.set_grad_enabled(True)  # for the rest of this forward; the caller's no_grad() restores it
        return leaf.clone()  # a non-leaf, so an in-place op after the layer is allowed

    handle = module.register_forward_hook(hook)
    try:
        x = images.detach().to(model_dtype(model))
        tgt, grads, region = _forward_backward(model, x, targets, store, name, method, region)
        acts = store["acts"].detach()
        if method == "scorecam":
            handle.remove()  # Score-CAM's masked passes run without gradients and must not reach the hook
        if method == "eigencam":  # the map itself uses no gradients; they only fix the SVD's sign
            raw = _eigen_projection(acts, grads)
        elif method == "smoothgradcam++":  # the gradients of the chosen neurons only, averaged over noise
            keep, where = _subset_masks(acts.shape, options.get("channels"), options.get("neurons"))
            m1, m2, m3 = _noisy_moments(model, x, tgt, store, int(options.get("samples", 16)),
                                        float(options.get("noise", 0.15)), int(options.get("seed", 0)),
                                        batch_size)
            acts = acts * where.to(acts)
            weights = _weights(method, acts, *(m * where.to(m) for m in (m1, m2, m3))) * keep.to(acts)
            raw = (weights[:, :, None, None] * acts).sum(1)
        else:
            weights = (_score_weights(model, x, acts, tgt, batch_size, options.get("precision", "fp32"))
                       if method == "scorecam"
                       else _weights(method, acts, grads))
            raw = (weights[:, :, None, None] * acts).sum(1)
    finally:
        handle.remove()
        model.train(was_training)
    cam = F.interpolate(raw.clamp_min(0)[:, None], size=images.shape[-2:], mode="bilinear",
                        align_corners=False)[:, 0]
    maps, zero = _normalize(cam)
    return Explanation(maps, raw, tgt, name, method, zero, regions=region)
