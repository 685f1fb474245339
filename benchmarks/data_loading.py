"""Streaming image folders: images/s of cnnkit's StreamLoader against two torchvision ImageFolder + DataLoader
pipelines on a folder of real photographs at ImageNet-like sizes, alone and feeding a training step, and peak
memory as the folder grows 4×.

The folder: 10 classes built from scikit-image's bundled photographs (astronaut, coffee, chelsea, rocket, Hubble
deep field, immunohistochemistry, retina, the stereo motorcycle pair, and the grayscale camera/moon and brick/
grass/gravel photographs as RGB), each turned into many different JPEGs by a random crop (25–100% of the area,
aspect 3/4–4/3), a random flip, slight brightness/contrast jitter and sensor-like noise, resized so the shorter
side is 300–500 px, saved at JPEG quality 90. Generated once (seeded) into `--work` and reused; building it needs
scikit-image (one of cnnkit's dependencies, for `--data photographs`).

The three arms (same files, worker processes, batch 64 and augmentation: random-resized crop to 224×224 with
scale (0.08, 1), ratio (3/4, 4/3) and antialiasing, horizontal flip, ImageNet normalization to float32):
  cnnkit             StreamLoader: PIL decode, crop+resize of the PIL image in one call, flip of the uint8 crop,
                     uint8 batches shipped, converted and normalized per batch in the main process.
  torchvision-float  torchvision's reference preset (PIL backend): v2 RandomResizedCrop + RandomHorizontalFlip on
                     the PIL image, ToImage, ToDtype(float32, scale) and Normalize per image in the worker; float32
                     batches shipped (4× the bytes).
  torchvision-uint8  the fair baseline: `torchvision.io.decode_image` (libjpeg-turbo, RGB) to a uint8 tensor, v2
                     RandomResizedCrop (antialias) + RandomHorizontalFlip on that uint8 tensor in the worker; uint8
                     batches shipped, `to_dtype(float32, scale=True)` + `normalize` per batch in the main process.
Both torchvision arms: DataLoader(shuffle=True, persistent_workers=True, default prefetch_factor 2); cnnkit's
loader uses prefetch_factor 4 and persistent workers.

Timing method (benchmarks/README.md's rules): every timed measurement runs in a fresh process (this script
re-invoked with the hidden `--one ARM --phase PHASE`, printing one JSON line), so no earlier allocation, thread
pool, worker or cache of another arm shapes it. The parent reads every file once first (page cache warm for all).
Arms are rotated: round r runs them in the order of ARMS rotated by r (each arm in each position equally often
over 6 rounds); `--rounds` (default 6) rounds, so 6 pairs for every ratio. Per round, the paired ratios
cnnkit / torchvision-float, cnnkit / torchvision-uint8 and torchvision-uint8 / torchvision-float of images/s;
the figure is the median over rounds with its distribution-free 95% interval (`benchmarks.common.paired_ratio`:
for 6 pairs the smallest and largest ratio, 96.9% coverage).
  Throughput phase, over every 2nd image of the folder (2,000 of 4,000; hard links; --quick: all 200), in each
  fresh process: `--warmup-batches` (default 4) batches of epoch 0 are drawn (worker start-up, first decodes,
  first allocations) and that epoch abandoned; then epoch 1 is iterated in full and timed from the arrival (and
  normalization) of its first batch to the end of its last, i.e. over all its images but the first batch (1,936
  images), so that the abandoned epoch's prefetched batches, which the next `iter` drains, stay outside the
  timing. The main process only receives and normalizes batches.
  Training phase, in each fresh process: the same loader feeds a training step per batch, the same for all arms:
  torchvision's resnet18 (10 classes, seed 0 initialization, float32, contiguous format, torch's default
  threads) forward + cross-entropy + backward + SGD (lr 0.01, momentum 0.9). `--train-warmup` (default 1) steps
  excluded (oneDNN primitives, allocator, the loader's prefetch queue filling: the queue is full when timing
  starts), then `--train-batches` (default 2, 128 images) steps timed, each including the wait for its batch;
  images/s over those steps, and the time spent waiting for batches. The workers' CPU competes with the model's
  threads here, which is what decides whether the loader matters once a model trains on a CPU.
  `--train-batches 0` skips the phase.
Other processes' CPU time during each timed window is recorded (from /proc/stat, less the timed process and its
workers): the machine may be shared.

Peak memory (separate from throughput): one epoch of the streaming loader over N and 4N images, each in a fresh
process (main process plus its decoding workers), against the in-memory mode (`decode_files`) at the same sizes;
then (diagnostics) the workers' memory over `--long-epochs` epochs of the N folder, with cnnkit's collate and
with one stacking into shared memory. Per-image costs on one thread in the parent process are a diagnostic.

Cost of the default run on 2 cores (4,000 images, 2 workers), sized to stay within about 15 minutes: throughput
3 arms × 6 rounds = 18 processes of about 11–14 s (start-up, 4 warm-up batches, a 2,000-image epoch at ~400–550
images/s) ≈ 4 min; training 18 processes of about 25 s (start-up, 1 + 2 resnet18 steps of batch 64 at ~5–7 s
each on 2 cores: ~12 CPU s per step) ≈ 7.5 min; memory and diagnostics ≈ 2 min; per-image costs ≈ 15 s: about
13–14 minutes, plus about 2 to build the folder once (reused afterwards). The JSON's `seconds` records each
phase's wall time. (--quick: about 5 minutes on 2 shared cores.)

    python -m benchmarks.data_loading           # writes benchmarks/results/data_loading.json and .md
    python -m benchmarks.data_loading --quick   # smoke run: 200 images, 2 rounds, 1 timed training step,
                                                # data_loading_quick.json and .md (not a result: 2 pairs)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, command_line, machine, paired_ratio, write_result

BATCH, SIZE, SCALE = 64, 224, (0.08, 1.0)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, on both sides
FOLDER_VERSION = 1


# -- the folder ------------------------------------------------------------------------------------------------
def _sources() -> dict[str, list[np.ndarray]]:
    """Class name -> the photographs its JPEGs are cut from (RGB uint8 H×W×3)."""
    import skimage.data as d

    def rgb(a: np.ndarray) -> np.ndarray:
        return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]

    left, right, _ = d.stereo_motorcycle()
    return {"astronaut": [d.astronaut()], "coffee": [d.coffee()], "chelsea": [d.chelsea()], "rocket": [d.rocket()],
            "hubble": [d.hubble_deep_field()], "ihc": [d.immunohistochemistry()], "retina": [d.retina()],
            "motorcycle": [left, right], "camera_moon": [rgb(d.camera()), rgb(d.moon())],
            "textures": [rgb(d.brick()), rgb(d.grass()), rgb(d.gravel())]}


def _one_jpeg(src: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = src.shape[:2]
    for _ in range(20):  # a random crop of 25–100% of the area, aspect ratio 3/4–4/3 (log-uniform)
        area = h * w * rng.uniform(0.25, 1.0)
        ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = int(round((area * ratio) ** 0.5)), int(round((area / ratio) ** 0.5))
        if cw <= w and ch <= h:
            break
    else:
        cw, ch = min(h, w), min(h, w)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = src[y:y + ch, x:x + cw].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    short = int(rng.integers(300, 501))
    scale = short / min(ch, cw)
    size = (max(short, round(cw * scale)), max(short, round(ch * scale)))
    im = Image.fromarray(crop.clip(0, 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    a = np.asarray(im, dtype=np.float32)
    a = (a - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-20, 20)  # contrast, brightness
    a += rng.normal(0, rng.uniform(1.5, 4.0), a.shape)  # sensor-like noise
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def build_folder(work: Path, images: int, seed: int) -> Path:
    """`work`/photos-…/train/<class>/*.jpg (`images` JPEGs) and test/<class>/ (2 per class), built once."""
    root = work / f"photos-v{FOLDER_VERSION}-n{images}-s{seed}"
    if (root / "manifest.json").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = _sources()
    classes = sorted(sources)
    t = time.perf_counter()
    sizes, count = [], 0
    for split, per_class in (("train", [images // len(classes) + (i < images % len(classes))
                                         for i in range(len(classes))]), ("test", [2] * len(classes))):
        for ci, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class[ci]):
                rng = np.random.default_rng([seed, ci, j, split == "test"])
                src = sources[name][int(rng.integers(len(sources[name])))]
                path = folder / f"{name}_{j:05d}.jpg"
                _one_jpeg(src, rng).save(path, quality=90)
                if split == "train":
                    sizes.append(path.stat().st_size)
                count += 1
    manifest = {"images": images, "seed": seed, "classes": classes, "seconds_to_build": time.perf_counter() - t,
                "mean_kb": sum(sizes) / len(sizes) / 1024, "total_mb": sum(sizes) / 2**20}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def every_nth(root: Path, share: int) -> Path:
    """A folder with every `share`-th image of `root`'s train split (hard links), the same test split."""
    small = root.with_name(root.name + f"-every{share}")
    if (small / "done").exists():
        return small
    shutil.rmtree(small, ignore_errors=True)
    for split in ("train", "test"):
        for cls in sorted((root / split).iterdir()):
            files = sorted(cls.glob("*.jpg"))
            (small / split / cls.name).mkdir(parents=True, exist_ok=True)
            for f in files[::share] if split == "train" else files:
                try:
                    os.link(f, small / split / cls.name / f.name)
                except OSError:
                    shutil.copy2(f, small / split / cls.name / f.name)
    (small / "done").write_text("")
    return small


def folder_stats(root: Path) -> dict:
    files = sorted((root / "train").rglob("*.jpg"))
    short, pixels, drafted = [], [], 0
    for f in files:
        with Image.open(f) as im:
            short.append(min(im.size))
            pixels.append(im.width * im.height)
            before = im.size
            im.draft("RGB", (2 * SIZE, 2 * SIZE))  # what cnnkit asks of a JPEG when a random-resized crop follows
            drafted += im.size != before
    return {"train_images": len(files), "shorter_side_px": [min(short), statistics.median(short), max(short)],
            "mean_megapixels": sum(pixels) / len(pixels) / 1e6,
            "mean_kb": sum(f.stat().st_size for f in files) / len(files) / 1024,
            "files_decoded_at_reduced_scale_by_cnnkit": drafted}


# -- the three loaders -------------------------------------------------------------------------------------------
def cnnkit_loader(root: Path, workers: int):
    from cnnkit.data import AugmentConfig, Normalize
    from cnnkit.data.imagefolder import scan_imagefolder
    from cnnkit.data.stream import StreamLoader

    files = scan_imagefolder(root, "train", img_size=SIZE)
    assert files.in_chans == 3 and len(files) == len(list((root / "train").rglob("*.jpg")))
    return StreamLoader(files, BATCH, Normalize(MEAN, STD), shuffle=True, seed=0,
                        augment=AugmentConfig(resized_crop=SCALE[0], hflip=True), workers=workers)


def torchvision_transform():
    import torch
    from torchvision.transforms import v2

    # torchvision's reference ImageNet training preset (PIL backend): crop and flip on the PIL image, then tensor
    return v2.Compose([v2.RandomResizedCrop(SIZE, scale=SCALE, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def torchvision_loader(root: Path, workers: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets

    ds = datasets.ImageFolder(str(root / "train"), transform=torchvision_transform())
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def read_rgb_uint8(path: str):
    """torchvision's own decoder (libjpeg-turbo): the file as a uint8 3×H×W tensor."""
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(path, mode=ImageReadMode.RGB)


def torchvision_uint8_transform():
    from torchvision.transforms import v2

    # torchvision's tensor backend: crop (antialiased resize of the uint8 tensor) and flip, no conversion
    return v2.Compose([v2.RandomResizedCrop(SIZE, scale=SCALE, antialias=True), v2.RandomHorizontalFlip()])


def torchvision_uint8_loader(root: Path, workers: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets

    ds = datasets.ImageFolder(str(root / "train"), loader=read_rgb_uint8, transform=torchvision_uint8_transform())
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def normalize_uint8_batch(x):
    """The torchvision-uint8 arm's per-batch step in the main process: uint8 -> float32 in [0, 1], normalized."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), MEAN, STD)


ARMS = ("cnnkit", "torchvision-float", "torchvision-uint8")
PAIRS = {"cnnkit_over_torchvision_float": ("cnnkit", "torchvision-float"),
         "cnnkit_over_torchvision_uint8": ("cnnkit", "torchvision-uint8"),
         "torchvision_uint8_over_torchvision_float": ("torchvision-uint8", "torchvision-float")}


def make_arm(arm: str, root: Path, workers: int):
    """(loader, finish): what the training loop iterates, and what it does to each batch's images before use
    (cnnkit's loader already yields normalized float batches: it normalizes inside its iterator)."""
    if arm == "cnnkit":
        return cnnkit_loader(root, workers), lambda x: x
    if arm == "torchvision-float":
        return torchvision_loader(root, workers), lambda x: x
    if arm == "torchvision-uint8":
        return torchvision_uint8_loader(root, workers), normalize_uint8_batch
    raise ValueError(arm)


def _jiffies_busy() -> int:
    """CPU time all processes of this machine have used (clock ticks): /proc/stat's busy columns."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4]  # all but idle and iowait


def _jiffies_mine() -> int:
    """CPU time of this process and its live children (the decoding workers)."""
    total = 0
    for pid in [os.getpid()] + _children(os.getpid()):
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        total += int(f[11]) + int(f[12])
    return total


class CpuWindow:
    """CPU seconds used by this process and its workers, and by the machine's other processes, in a window."""

    def __init__(self):
        self.busy, self.mine = _jiffies_busy(), _jiffies_mine()

    def close(self) -> dict:
        busy, mine, tick = _jiffies_busy() - self.busy, _jiffies_mine() - self.mine, os.sysconf("SC_CLK_TCK")
        return {"own_cpu_s": mine / tick, "other_processes_cpu_s": max(busy - mine, 0) / tick}


def run_epoch(loader, epoch: int) -> tuple[int, float, tuple, float]:
    """Images, seconds, the batch's shape and dtype, and the CPU seconds other processes of the machine used
    meanwhile (the memory children's epochs)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    n, shape = 0, None
    cpu, t = CpuWindow(), time.perf_counter()
    for x, y in loader:
        n += len(y)
        shape = (tuple(x.shape), str(x.dtype))
    seconds = time.perf_counter() - t
    return n, seconds, shape, cpu.close()["other_processes_cpu_s"]


def _set_epoch(loader, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


def one_arm(arm: str, phase: str, root: Path, workers: int, warmup: int, train_batches: int) -> dict:
    """Runs in a fresh process: one arm's timed measurement (see the module docstring for the method)."""
    import torch

    out: dict = {"arm": arm, "phase": phase, "workers": workers, "torch_threads": torch.get_num_threads()}
    if phase == "train":  # the model first, so that building it is outside everything timed
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(x, y) -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    t_start = time.perf_counter()
    loader, finish = make_arm(arm, root, workers)
    if phase == "throughput":
        _set_epoch(loader, 0)
        n = batches = 0
        for x, y in loader:  # warm-up: worker start-up, first decodes; the rest of epoch 0 is abandoned
            x = finish(x)
            n, batches = n + len(y), batches + 1
            if batches >= warmup:
                break
        out["warmup"] = {"batches": batches, "images": n, "seconds_since_start": time.perf_counter() - t_start}
        _set_epoch(loader, 1)
        count, batches, t0, cpu = 0, 0, None, None
        for x, y in loader:
            x = finish(x)
            batches += 1
            if t0 is None:  # the first batch (and the drain of epoch 0's prefetched batches) is not timed
                out["batch"] = [list(x.shape), str(x.dtype)]
                t0, cpu = time.perf_counter(), CpuWindow()
                continue
            count += len(y)
        seconds = time.perf_counter() - t0
        out.update(timed_images=count, timed_batches=batches - 1, seconds=seconds, images_per_s=count / seconds,
                   **cpu.close())
    else:
        _set_epoch(loader, 0)
        it = iter(loader)
        for _ in range(warmup):
            x, y = next(it)
            step(finish(x), y)
        out["warmup"] = {"steps": warmup, "seconds_since_start": time.perf_counter() - t_start}
        count, wait, cpu, t0 = 0, 0.0, CpuWindow(), time.perf_counter()
        for _ in range(train_batches):
            tw = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                raise SystemExit(f"the epoch has fewer than {warmup} + {train_batches} batches: use more images")
            x = finish(x)
            wait += time.perf_counter() - tw
            step(x, y)
            count += len(y)
        seconds = time.perf_counter() - t0
        out.update(batch=[list(x.shape), str(x.dtype)], model="torchvision resnet18", timed_images=count,
                   timed_batches=train_batches, seconds=seconds, images_per_s=count / seconds,
                   waiting_for_batches_s=wait, **cpu.close())
        del it
    if hasattr(loader, "close"):
        loader.close()
    return out


def run_one(arm: str, phase: str, root: Path, workers: int, warmup: int, train_batches: int) -> dict:
    """`one_arm` in a fresh process: this script re-invoked with the hidden --one option; its last stdout line."""
    cmd = [sys.executable, "-m", "benchmarks.data_loading", "--one", arm, "--phase", phase, "--root", str(root),
           "--workers", str(workers), "--warmup-batches" if phase == "throughput" else "--train-warmup",
           str(warmup), "--train-batches", str(train_batches)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=900)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t
    return result


def paired_runs(phase: str, root: Path, workers: int, rounds: int, warmup: int, train_batches: int) -> dict:
    """`rounds` rounds of the three arms, each in a fresh process, the order rotated every round; per arm its
    images/s per round, and the paired ratios' medians with their intervals."""
    runs: dict = {arm: [] for arm in ARMS}
    orders = []
    for r in range(rounds):
        order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
        orders.append(list(order))
        for arm in order:
            res = run_one(arm, phase, root, workers, warmup, train_batches)
            runs[arm].append(res)
            print(f"{phase} round {r + 1}/{rounds} {arm}: {res['timed_images']} images in {res['seconds']:.2f} s = "
                  f"{res['images_per_s']:.1f} images/s (process {res['process_seconds']:.0f} s; other processes: "
                  f"{res['other_processes_cpu_s']:.1f} CPU s)", flush=True)
    rates = {arm: [x["images_per_s"] for x in runs[arm]] for arm in ARMS}
    ratios = {key: _finite(paired_ratio([ra / rb for ra, rb in zip(rates[a], rates[b])]))
              for key, (a, b) in PAIRS.items()}
    for key, p in ratios.items():
        print(f"{phase} {key}: median {p['median']:.3f}, interval {p['interval']} over {p['pairs']} pairs",
              flush=True)
    return {"rounds": rounds, "orders": orders,
            "arms": {arm: {"images_per_s": rates[arm], "median_images_per_s": statistics.median(rates[arm]),
                           "runs": runs[arm]} for arm in ARMS},
            "paired_ratios": ratios}


def _finite(p: dict) -> dict:
    """paired_ratio's answer with NaN (no interval: too few pairs) as null, so that the JSON stays JSON."""
    p["interval"] = [None if v != v else v for v in p["interval"]]
    return p


def read_all(root: Path) -> int:
    """Reads every file of the train split once (the page cache, warm for every arm alike); bytes read."""
    return sum(len(f.read_bytes()) for f in sorted((root / "train").rglob("*.jpg")))


def per_image_costs(root: Path, count: int) -> dict:
    """Milliseconds per image in this process on one thread (what one decoding worker does), `count` files
    spread over the folder: decoding, and each side's augmentation on the decoded image (a diagnostic: one
    process, not paired)."""
    import torch
    from torchvision.datasets.folder import pil_loader

    from cnnkit.data import AugmentConfig
    from cnnkit.data.imagefolder import scan_imagefolder
    from cnnkit.data.images import load_image_file
    from cnnkit.data.stream import DecodeImages

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    files = scan_imagefolder(root, "train", img_size=SIZE)
    idx = np.linspace(0, len(files) - 1, min(count, len(files))).astype(int).tolist()
    paths = [files.files[i] for i in idx]
    decode = DecodeImages(files, AugmentConfig(resized_crop=SCALE[0], hflip=True), seed=0)
    tv, tv8 = torchvision_transform(), torchvision_uint8_transform()

    def ms(fn) -> float:
        for i, p in list(zip(idx, paths))[:5]:
            fn(i, p)
        t = time.perf_counter()
        for i, p in zip(idx, paths):
            fn(i, p)
        return (time.perf_counter() - t) / len(paths) * 1e3

    decoded = {p: load_image_file(p, reduce_to=2 * SIZE) for p in paths}
    rgb = {p: pil_loader(p) for p in paths}
    u8 = {p: read_rgb_uint8(str(p)) for p in paths}
    try:
        with torch.random.fork_rng(devices=[]):
            return {"images": len(paths), "torch_threads": 1, "steps_ms": {
                "cnnkit: decode (load_image_file, reduce_to=448)": ms(
                    lambda i, p: load_image_file(p, reduce_to=2 * SIZE)),
                "cnnkit: augment the decoded image (DecodeImages._augment, as in a worker)": ms(
                    lambda i, p: decode._augment(decoded[p], 0, i)),
                "cnnkit: both (DecodeImages.read)": ms(lambda i, p: decode.read(p, 0, i, 0)),
                "torchvision-float: decode (pil_loader)": ms(lambda i, p: pil_loader(p)),
                "torchvision-float: augment the decoded image (the transform)": ms(lambda i, p: tv(rgb[p])),
                "torchvision-float: both": ms(lambda i, p: tv(pil_loader(p))),
                "torchvision-uint8: decode (torchvision.io.decode_image, RGB)": ms(
                    lambda i, p: read_rgb_uint8(str(p))),
                "torchvision-uint8: augment the decoded tensor (the uint8 transform)": ms(lambda i, p: tv8(u8[p])),
                "torchvision-uint8: both": ms(lambda i, p: tv8(read_rgb_uint8(str(p))))}}
    finally:
        torch.set_num_threads(threads)


# -- peak memory, measured in a fresh process ---------------------------------------------------------------------
def _status(pid: int, key: str) -> int:
    """kB of a /proc/<pid>/status field (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


class Sampler(threading.Thread):
    """Samples this process's and its children's resident memory every `every` seconds."""

    def __init__(self, every: float = 0.05):
        super().__init__(daemon=True)
        self.every, self.stop = every, threading.Event()
        self.peak_rss = self.peak_pss = self.peak_workers_rss = 0
        self.worker_hwm: dict[int, int] = {}
        self.samples = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            kids = _children(me)
            rss = [_status(k, "VmRSS") for k in kids]
            for k in kids:
                self.worker_hwm[k] = max(self.worker_hwm.get(k, 0), _status(k, "VmHWM"))
            self.peak_workers_rss = max(self.peak_workers_rss, sum(rss))
            self.peak_rss = max(self.peak_rss, _status(me, "VmRSS") + sum(rss))
            if self.samples % 4 == 0:  # smaps_rollup costs more
                self.peak_pss = max(self.peak_pss, _pss(me) + sum(_pss(k) for k in kids))
            self.samples += 1
            self.stop.wait(self.every)


def child(mode: str, root: Path, workers: int) -> dict:
    """Runs in a fresh process: `mode` is 'stream' (one epoch of the streaming loader), 'memory' (decode_files)
    or 'baseline' (imports and the folder scan only)."""
    from cnnkit.data.imagefolder import decode_files, scan_imagefolder

    sampler = Sampler()
    sampler.start()
    t = time.perf_counter()
    files = scan_imagefolder(root, "train", img_size=SIZE)
    out: dict = {"mode": mode, "images": len(files)}
    if mode.startswith("stream"):  # 'stream', or 'stream-long[-shm]': EPOCHS epochs, worker RSS each second
        loader = cnnkit_loader(root, workers)
        if mode.endswith("-shm"):
            loader._loader.collate_fn = collate_into_shared_memory
        epochs = int(os.environ.get("BENCH_EPOCHS", "1")) if mode != "stream" else 1
        timeline, t0, n, s = [], time.perf_counter(), 0, 0.0
        for e in range(epochs):
            ne, se, _, _ = run_epoch(loader, e)
            n, s = n + ne, s + se
            timeline.append({"images_so_far": n, "seconds": round(time.perf_counter() - t0, 1),
                             "workers_rss_mb": [_status(k, "VmRSS") // 1024 for k in _children(os.getpid())]})
        out.update(images_per_s=n / s, workers=loader.workers, images_streamed=n)
        if epochs > 1:
            out["timeline"] = timeline
        time.sleep(0.2)
        sampler.stop.set()
        sampler.join()
        for k in _children(os.getpid()):  # the workers' own peaks, read while they are still alive
            sampler.worker_hwm[k] = max(sampler.worker_hwm.get(k, 0), _status(k, "VmHWM"))
        loader.close()
    elif mode == "memory":
        data = decode_files(files)
        out["decoded_mb"] = data.images.numel() / 2**20
        sampler.stop.set()
        sampler.join()
    else:
        sampler.stop.set()
        sampler.join()
    main_hwm = _status(os.getpid(), "VmHWM")
    workers_hwm = sum(sampler.worker_hwm.values())
    out.update(seconds=time.perf_counter() - t, main_peak_rss_mb=main_hwm / 1024,
               workers_peak_rss_mb=workers_hwm / 1024, worker_processes=len(sampler.worker_hwm),
               total_peak_rss_mb=(main_hwm + workers_hwm) / 1024,
               total_peak_rss_sampled_mb=sampler.peak_rss / 1024, total_peak_pss_sampled_mb=sampler.peak_pss / 1024,
               samples=sampler.samples)
    return out


def collate_into_shared_memory(items: list):
    """cnnkit's collate_readable, but stacking straight into shared memory inside a worker, as torch's
    default_collate does (diagnostic only: not cnnkit's code)."""
    import torch
    from torch.utils.data import get_worker_info

    good = [(x, y) for x, y in items if x is not None]
    bad = [msg for x, msg in items if x is None]
    xs = [x for x, _ in good]
    out = None
    if get_worker_info() is not None and xs:
        storage = xs[0]._typed_storage()._new_shared(sum(x.numel() for x in xs), device=xs[0].device)
        out = xs[0].new(storage).resize_(len(xs), *xs[0].shape)
    return torch.stack(xs, out=out), torch.tensor([y for _, y in good], dtype=torch.long), bad


def in_fresh_process(mode: str, root: Path, workers: int, env: dict | None = None, extra: tuple = ()) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.data_loading", "--child", mode, "--root", str(root),
           "--workers", str(workers), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                       env={**os.environ, **(env or {})})
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items() if k != "timeline"}),
          flush=True)
    return result


def memory(small: Path, large: Path, workers: int) -> dict:
    rows = {}
    for mode in ("baseline", "stream", "memory"):
        for label, root in (("N", small), ("4N", large)):
            rows[f"{mode}_{label}"] = in_fresh_process(mode, root, workers)
    g = {mode: rows[f"{mode}_4N"]["total_peak_rss_mb"] / rows[f"{mode}_N"]["total_peak_rss_mb"]
         for mode in ("stream", "memory")}
    above = {mode: (rows[f"{mode}_4N"]["total_peak_rss_mb"] - rows["baseline_4N"]["total_peak_rss_mb"])
             / max(rows[f"{mode}_N"]["total_peak_rss_mb"] - rows["baseline_N"]["total_peak_rss_mb"], 1e-9)
             for mode in ("stream", "memory")}
    pss = rows["stream_4N"]["total_peak_pss_sampled_mb"] / rows["stream_N"]["total_peak_pss_sampled_mb"]
    return {"rows": rows, "growth_total_peak_rss": g, "growth_above_baseline": above, "growth_stream_pss": pss}


def source_hashes() -> dict[str, str]:
    """Git blob ids of the cnnkit files this benchmark measures (`git hash-object FILE`), as they were read."""
    import hashlib

    import cnnkit.data

    base = Path(cnnkit.data.__file__).parent
    out = {}
    for name in ("stream.py", "images.py", "base.py", "imagefolder.py", "loader.py", "transforms.py"):
        raw = (base / name).read_bytes()
        out[f"src/cnnkit/data/{name}"] = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    return out


# -- report ------------------------------------------------------------------------------------------------------
def _interval(p: dict) -> str:
    lo, hi = p["interval"]
    if lo is None:
        return f"no interval from {p['pairs']} pairs"
    return f"{lo:.3f}–{hi:.3f} ({100 * p['coverage']:.1f}% coverage)"


def _phase_lines(ph: dict, label: str) -> list[str]:
    lines = ["| arm | images/s, median of rounds | per round (images/s) |", "| --- | ---: | --- |"]
    for arm in ARMS:
        a = ph["arms"][arm]
        lines.append(f"| {arm} | {a['median_images_per_s']:.1f} | {', '.join(f'{v:.1f}' for v in a['images_per_s'])} |")
    lines += ["", f"Paired ratios of images/s ({label}; per round, then the median over rounds with its "
              "distribution-free 95% interval):", "", "| ratio | median | 95% interval | per round |",
              "| --- | ---: | --- | --- |"]
    for key, p in ph["paired_ratios"].items():
        a, b = PAIRS[key]
        lines.append(f"| {a} / {b} | **{p['median']:.3f}** | {_interval(p)} | "
                     f"{', '.join(f'{v:.3f}' for v in p['ratios'])} |")
    runs = [r for arm in ARMS for r in ph["arms"][arm]["runs"]]
    other = max(r["other_processes_cpu_s"] for r in runs)
    cores = max(r["other_processes_cpu_s"] / r["seconds"] for r in runs)
    lines += ["", f"Other processes on the machine used {other:.1f} CPU s at most during a timed window, "
              f"{cores:.2f} cores at most on average over a window (from /proc/stat, less the timed process and its "
              f"workers): {'the measurements had the machine to themselves' if cores < 0.1 else 'something else ran'}"
              f".", ""]
    return lines


def _share(total: int, part: int) -> str:
    n = round(total / part)
    return "the folder above" if n == 1 else f"every {n}{'nd' if n == 2 else 'th'} image of the folder above"


def _verdict(p: dict) -> str:
    lo, hi = p["interval"]
    if lo is None:
        return "too few pairs for an interval"
    if lo > 1:
        return "cnnkit faster (the interval lies above 1)"
    if hi < 1:
        return "cnnkit slower (the interval lies below 1)"
    return "no measurable difference (the interval holds 1)"


def report(payload: dict, name: str) -> str:
    m, tp, stats = payload["machine"], payload["throughput"], payload["folder"]
    tr = payload.get("training")
    mem = payload["memory"] or {"rows": {}}
    meth = payload["method"]
    lines = [
        "# Streaming image folders: cnnkit `StreamLoader` vs torchvision `ImageFolder` + `DataLoader`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, ISA {', '.join(m['isa'])}, torch {m['torch']}, cnnkit "
        f"{m['cnnkit']}, Python {m['python']}, no GPU (CPU only). Command: `{payload['command']}`.", "",
        f"Folder: {stats['train_images']} JPEGs (quality 90) in 10 classes cut from scikit-image's bundled "
        f"photographs, "
        f"shorter side {stats['shorter_side_px'][0]}–{stats['shorter_side_px'][2]} px (median "
        f"{stats['shorter_side_px'][1]:.0f}), {stats['mean_megapixels']:.3f} megapixels and {stats['mean_kb']:.0f} kB "
        f"on average (ImageNet's training images: about 0.18 megapixels and 110 kB on average).", "",
        "## Method", "",
        f"Three arms, the same files, {payload['workers']} worker processes, batch {BATCH} and augmentation (random-"
        f"resized crop to {SIZE}×{SIZE}, scale {SCALE}, antialiased; horizontal flip; ImageNet normalization to "
        f"float32):", "",
        "- **cnnkit**: `StreamLoader`; workers decode with PIL, crop and resize the PIL image in one call, flip the "
        "uint8 crop and ship uint8 batches; the main process converts and normalizes a batch at a time.",
        "- **torchvision-float**: torchvision's reference preset (PIL backend): v2 `RandomResizedCrop` + "
        "`RandomHorizontalFlip` on the PIL image, `ToImage`, `ToDtype(float32, scale=True)`, `Normalize` per image "
        "in the worker; float32 batches shipped.",
        "- **torchvision-uint8** (the fair baseline): `torchvision.io.decode_image` to a uint8 tensor, v2 "
        "`RandomResizedCrop` (antialias) + `RandomHorizontalFlip` on the uint8 tensor in the worker; uint8 batches "
        "shipped; `to_dtype(float32, scale=True)` + `normalize` per batch in the main process.", "",
        f"Every timed measurement runs in a fresh process; {meth['rounds']} rounds, the three arms' order rotated "
        f"every round (orders: {'; '.join(' → '.join(o) for o in tp['orders'])}); the page cache was warmed by "
        f"reading every file once before the first round. Ratios are taken within a round (paired) and the "
        f"figure is their median with a distribution-free 95% interval (order statistics; for 6 pairs the smallest "
        f"and largest ratio)."
        + (f" **Only {meth['rounds']} rounds: below the rules' 6 pairs; a smoke run, not a result.**"
           if meth["rounds"] < 6 else ""), "",
        "## Throughput (the loader alone)", "",
        f"In each fresh process {meth['warmup_batches']} batch(es) of epoch 0 are drawn as a warm-up (worker "
        f"start-up, first decodes) and the epoch abandoned; epoch 1 of a {tp['folder']['train_images']}-image "
        f"folder ({_share(stats['train_images'], tp['folder']['train_images'])}) is then iterated in full and timed "
        f"from the arrival of its first batch to the end of its last "
        f"({tp['arms']['cnnkit']['runs'][0]['timed_images']} images timed per process); the main process only "
        f"receives and normalizes batches.", ""]
    lines += _phase_lines(tp, "the loader alone")
    lines += [f"cnnkit against torchvision-float: {_verdict(tp['paired_ratios']['cnnkit_over_torchvision_float'])}; "
              f"against torchvision-uint8: {_verdict(tp['paired_ratios']['cnnkit_over_torchvision_uint8'])}.", ""]
    if tr:
        waits = {arm: statistics.median(r["waiting_for_batches_s"] / r["seconds"] for r in tr["arms"][arm]["runs"])
                 for arm in ARMS}
        lines += ["## Inside a training step", "",
                  f"The same loaders, each batch feeding one training step of torchvision's resnet18 (10 classes, "
                  f"seed-0 initialization, float32, {tr['arms']['cnnkit']['runs'][0]['torch_threads']} torch threads "
                  f"in the training process): forward, cross-entropy, backward, SGD (lr 0.01, momentum 0.9). In each "
                  f"fresh process {meth['train_warmup']} step(s) excluded (the loader's prefetch queue is full when "
                  f"timing starts), then {meth['train_batches']} step(s) timed, each including the wait for its batch "
                  f"({meth['train_batches'] * BATCH} images per process). The decoding workers share the CPU with "
                  f"the model's threads.", ""]
        lines += _phase_lines(tr, "training steps")
        lines += ["Share of the timed window spent waiting for a batch (median of rounds): "
                  + ", ".join(f"{arm} {100 * w:.1f}%" for arm, w in waits.items()) + ".", "",
                  f"cnnkit against torchvision-float: "
                  f"{_verdict(tr['paired_ratios']['cnnkit_over_torchvision_float'])}; against torchvision-uint8: "
                  f"{_verdict(tr['paired_ratios']['cnnkit_over_torchvision_uint8'])}.", ""]
    if payload.get("per_image"):
        p = payload["per_image"]
        lines += [f"Per image on one thread in one process (a diagnostic, not paired: what one worker does; "
                  f"{p['images']} images spread over the folder):", "", "| step | ms per image |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.2f} |" for k, v in p["steps_ms"].items()] + [""]
    lines += ["What differs between the arms (same files, workers, batch size and augmentation otherwise):", ""]
    lines += [f"- {d}" for d in payload["differences"]] + [""]
    if mem["rows"]:
        lines += [f"## Peak memory as the folder grows 4× ({mem['rows']['stream_N']['images']} → "
                  f"{mem['rows']['stream_4N']['images']} images)", "",
                  "Each in a fresh process; main process VmHWM plus the sum of its decoding workers' VmHWM (an upper "
                  "bound: shared pages count once per process); the sampled simultaneous RSS and PSS sums (every 50 "
                  "ms) beside it. MB here are MiB (/proc's kB / 1024). The baseline process imports torch and cnnkit "
                  "and scans the folder, nothing more.", "",
                  "| mode | images | main peak RSS (MB) | workers peak RSS (MB) | total peak RSS (MB) "
                  "| sampled total RSS (MB) | sampled total PSS (MB) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for key, row in mem["rows"].items():
            lines.append(f"| {key.split('_')[0]} | {row['images']} | {row['main_peak_rss_mb']:.0f} | "
                         f"{row['workers_peak_rss_mb']:.0f} | {row['total_peak_rss_mb']:.0f} | "
                         f"{row['total_peak_rss_sampled_mb']:.0f} | {row['total_peak_pss_sampled_mb']:.0f} |")
        gs, gm = mem["growth_total_peak_rss"]["stream"], mem["growth_total_peak_rss"]["memory"]
        lines += ["", f"Streaming: total peak RSS grows **{gs:.2f}×** for 4× the images (target ≤ 1.2×: "
                  f"{'met' if gs <= 1.2 else 'not met'}); PSS {mem['growth_stream_pss']:.2f}×. In memory "
                  f"(`decode_files`): {gm:.2f}× in total, {mem['growth_above_baseline']['memory']:.2f}× above the "
                  f"baseline process (imports and folder scan only).", ""]
    diag = payload.get("diagnostics")
    if diag:
        long = diag["worker_memory_long"]
        lines += ["## Diagnostics (not part of the comparison)", "",
                  f"Worker memory over {len(long['stream-long']['timeline'])} epochs of the "
                  f"{long['stream-long']['images']}-image folder, each in a fresh process: the decoding workers' RSS "
                  "(MB) after each epoch, with cnnkit's `collate_readable` and with the same collate stacking straight "
                  "into shared memory inside the worker (as torch's `default_collate` does; a patch made here, not "
                  "cnnkit's code).", "",
                  "| images streamed | workers' RSS, cnnkit's collate | workers' RSS, collate into shared memory |",
                  "| ---: | --- | --- |"]
        for a, b in zip(long["stream-long"]["timeline"], long["stream-long-shm"]["timeline"]):
            lines.append(f"| {a['images_so_far']} | {' + '.join(map(str, a['workers_rss_mb']))} | "
                         f"{' + '.join(map(str, b['workers_rss_mb']))} |")
        lines += ["", f"Peak RSS of main + workers: {long['stream-long']['total_peak_rss_mb']:.0f} MB with cnnkit's "
                  f"collate, {long['stream-long-shm']['total_peak_rss_mb']:.0f} MB collating into shared memory "
                  f"(one epoch of the same folder above: {mem['rows']['stream_N']['total_peak_rss_mb']:.0f} MB); "
                  f"images/s {long['stream-long']['images_per_s']:.0f} and "
                  f"{long['stream-long-shm']['images_per_s']:.0f}."
                  if mem["rows"] else "", ""]
    if payload.get("findings"):
        lines += ["## Found in cnnkit's code (src/, as measured: see `sources_measured` in the JSON)", ""]
        lines += [f"- {f}" for f in payload["findings"]] + [""]
    if payload.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in payload["notes"]] + [""]
    text = "\n".join(lines)
    (RESULTS / f"{name}.md").write_text(text)
    return text
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="JPEGs in the folder, the memory test's 4N; the "
                                                              "throughput epoch takes every 2nd (default 4000; "
                                                              "--quick: 200, all of them)")
    ap.add_argument("--work", default="/tmp/cnnkit-bench-data-loading", help="where the folder is built and kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="worker processes, every arm (default: "
                                                              "cnnkit.data.stream.default_workers())")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of fresh processes, one per arm, the order "
                                                             "rotated each round: the pairs of every ratio "
                                                             "(default 6; --quick: 2)")
    ap.add_argument("--warmup-batches", type=int, default=None, help="throughput: warm-up batches of epoch 0 before "
                                                                     "the timed epoch (default 4; --quick: 1)")
    ap.add_argument("--train-warmup", type=int, default=1, help="training: steps excluded (default 1)")
    ap.add_argument("--train-batches", type=int, default=None, help="training: resnet18 steps timed per process "
                                                                    "(default 2; --quick: 1; 0 skips the phase)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 images, 2 rounds, 1 timed training step")
    ap.add_argument("--diagnostics", action=argparse.BooleanOptionalAction, default=True,
                    help="also: worker memory over --long-epochs epochs of the N folder, with cnnkit's collate and "
                         "with one into shared memory")
    ap.add_argument("--long-epochs", type=int, default=10)
    ap.add_argument("--child", choices=("stream", "memory", "baseline", "stream-long", "stream-long-shm"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--one", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=("throughput", "train"), help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from cnnkit.data.stream import default_workers

    workers = default_workers() if args.workers is None else args.workers
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), workers)))
        return
    if args.one:
        warmup = args.warmup_batches if args.phase == "throughput" else args.train_warmup
        print(json.dumps(one_arm(args.one, args.phase, Path(args.root), workers, warmup, args.train_batches or 0)),
              flush=True)
        return
    command = command_line("benchmarks.data_loading")
    args.images = args.images or (200 if args.quick else 4000)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.warmup_batches = args.warmup_batches or (1 if args.quick else 4)
    if args.train_batches is None:
        args.train_batches = 1 if args.quick else 2
    seconds: dict[str, float] = {}
    t_all = t = time.perf_counter()
    work = Path(args.work)
    large = build_folder(work, args.images, args.seed)
    seconds["folder"] = time.perf_counter() - t
    print(f"folder {large} ({seconds['folder']:.0f} s)", flush=True)
    small = every_nth(large, 4)
    stats = folder_stats(large)
    print(stats, flush=True)
    t = time.perf_counter()
    per_image = per_image_costs(large, 100 if args.quick else 300)
    seconds["per_image"] = time.perf_counter() - t
    print(per_image, flush=True)
    tp_root = large if args.quick else every_nth(large, 2)  # the throughput epoch: every 2nd image (--quick: all)
    read_all(large)  # the page cache, warm for every arm alike (tp_root's files are hard links to these)
    t = time.perf_counter()
    tp = paired_runs("throughput", tp_root, workers, args.rounds, args.warmup_batches, 0)
    tp["folder"] = {"root": str(tp_root), "train_images": len(list((tp_root / "train").rglob("*.jpg")))}
    seconds["throughput"] = time.perf_counter() - t
    tr = None
    if args.train_batches > 0:
        t = time.perf_counter()
        tr = paired_runs("train", large, workers, args.rounds, args.train_warmup, args.train_batches)
        seconds["training"] = time.perf_counter() - t
    t = time.perf_counter()
    mem = None if args.skip_memory else memory(small, large, workers)
    diag = None
    if args.diagnostics:
        epochs = {"BENCH_EPOCHS": str(2 if args.quick else args.long_epochs)}
        diag = {"worker_memory_long": {mode: in_fresh_process(mode, small, workers, epochs)
                                       for mode in ("stream-long", "stream-long-shm")}}
    seconds["memory_and_diagnostics"] = time.perf_counter() - t
    differences = [
        f"JPEG decoding: cnnkit asks PIL for reduced-scale decoding (`Image.draft`, DCT scaling 1/2–1/8) so that the "
        f"shorter side stays at least 2×224 = 448 px when a random-resized crop follows; torchvision's `pil_loader` "
        f"(torchvision-float) and `decode_image` (torchvision-uint8) always decode at full size. At these sizes "
        f"(shorter side ≤ 500 px) draft can only halve, which would go below 448, so it applies to "
        f"{stats['files_decoded_at_reduced_scale_by_cnnkit']} of {stats['train_images']} files: all decode at full "
        f"size here. On multi-megapixel photographs cnnkit would decode 4–64× fewer pixels; this folder does not "
        f"measure that advantage.",
        "Decoder: cnnkit and torchvision-float decode with PIL (libjpeg-turbo inside Pillow); torchvision-uint8 with "
        "torchvision.io's own libjpeg-turbo build, straight to a tensor.",
        "Crop: cnnkit and torchvision-float crop and resize the PIL image with PIL's antialiased bilinear filter "
        "(cnnkit in one `Image.resize(..., box=crop)` call, torchvision-float's v2.RandomResizedCrop as a crop then "
        "a resize); torchvision-uint8 crops the uint8 tensor and resizes it with torch's antialiased bilinear "
        "interpolation (its uint8 path). Same scale (0.08, 1), ratio (3/4, 4/3) and 224×224 output everywhere.",
        "Flip, conversion and normalization: cnnkit converts only the 224×224 crop to a uint8 tensor, flips it "
        "(`x.flip(-1)`) and ships uint8 batches, normalizing each batch to float in the main process; "
        "torchvision-uint8 likewise ships uint8 batches and converts and normalizes per batch in the main process "
        "(`to_dtype(float32, scale=True)` then `normalize`: three passes where cnnkit's `Normalize` makes two); "
        "torchvision-float flips the PIL image, converts and normalizes each image to float in the worker and "
        "ships float32 batches (4× the bytes through shared memory).",
        "Randomness: cnnkit seeds the CPU generator for each image from (seed, epoch, index), so what an image gets "
        "does not depend on which worker decodes it; torchvision draws from each worker's own stream.",
        "DataLoader settings: cnnkit's loader uses prefetch_factor 4 and persistent workers; both torchvision arms "
        "use DataLoader's default prefetch_factor 2 and persistent_workers=True. Neither pins memory (CPU).",
    ]
    findings = []
    if diag:
        a, b = diag["worker_memory_long"]["stream-long"], diag["worker_memory_long"]["stream-long-shm"]
        if a["total_peak_rss_mb"] > 1.1 * b["total_peak_rss_mb"]:
            findings.append(
                f"stream.py `collate_readable` stacks each batch in the worker's private memory ({BATCH}×3×224×224 "
                f"uint8 = {BATCH * 3 * SIZE * SIZE / 2**20:.1f} MiB), which is then copied into shared memory when "
                f"sent; torch's `default_collate` stacks straight into shared memory inside a worker. With the extra "
                f"large allocation per batch the workers' heaps grow with the number of images decoded (glibc raises "
                f"its mmap threshold to the size of a freed large block, and these blocks then come from a "
                f"fragmenting heap): over {a['images_streamed']} images the workers reached "
                f"{a['workers_peak_rss_mb']:.0f} MB together against {b['workers_peak_rss_mb']:.0f} MB with the same "
                f"collate stacking into shared memory (diagnostics table). Setting MALLOC_MMAP_THRESHOLD_=131072 "
                f"also keeps them flat, which confirms the cause.")
    if mem:
        m_n, m_4n = mem["rows"]["memory_N"], mem["rows"]["memory_4N"]
        b_n, b_4n = mem["rows"]["baseline_N"], mem["rows"]["baseline_4N"]
        above = m_4n["main_peak_rss_mb"] - b_4n["main_peak_rss_mb"]
        if above > 1.5 * m_4n["decoded_mb"]:
            findings.append(
                f"imagefolder.py `decode_files` keeps the list of decoded images while `torch.stack` copies it into one "
                f"tensor, so its peak is about twice the decoded set: {above:.0f} MB above the baseline process for "
                f"{m_4n['decoded_mb']:.0f} MB decoded at 4N ({m_n['main_peak_rss_mb'] - b_n['main_peak_rss_mb']:.0f} "
                f"MB for {m_n['decoded_mb']:.0f} MB at N); its docstring says the peak is the decoded set's. "
                f"Filling a preallocated N×C×H×W tensor would halve it.")
    notes = []
    if diag and mem:
        long = diag["worker_memory_long"]["stream-long"]
        if long["total_peak_rss_mb"] > 1.2 * mem["rows"]["stream_N"]["total_peak_rss_mb"]:
            notes.append(
                f"The streaming loader's peak does not depend on the folder's size as such but on how many images "
                f"its workers have decoded: {long['images_streamed']} images streamed from the "
                f"{long['images']}-image folder reach {long['total_peak_rss_mb']:.0f} MB, "
                f"{long['total_peak_rss_mb'] / mem['rows']['stream_N']['total_peak_rss_mb']:.2f}× the one-epoch peak "
                f"at N, so the 4× test above (one epoch each) flatters it; collating into shared memory keeps it at "
                f"{diag['worker_memory_long']['stream-long-shm']['total_peak_rss_mb']:.0f} MB.")
    notes.append("Absolute images/s drift between runs on this virtual machine (its host is shared); the ratios are "
                 "paired within rounds of back-to-back fresh processes, so slow drift cancels in them. The cnnkit "
                 "code measured is recorded in the JSON's `sources_measured` (git blob ids).")
    if args.rounds < 6:
        notes.append(f"{args.rounds} rounds: fewer than the 6 pairs the benchmark rules ask for; not a result.")
    fair = tp["paired_ratios"]["cnnkit_over_torchvision_uint8"]
    payload = {"machine": machine(), "sources_measured": source_hashes(), "workers": workers, "batch_size": BATCH,
               "img_size": SIZE, "scale": SCALE,
               "method": {"arms": list(ARMS), "rounds": args.rounds, "order": "rotated every round",
                          "fresh_process_per_measurement": True, "warmup_batches": args.warmup_batches,
                          "throughput_timed": "epoch 1 in full, from the arrival of its first batch",
                          "train_model": "torchvision resnet18, SGD lr 0.01 momentum 0.9, float32",
                          "train_warmup": args.train_warmup, "train_batches": args.train_batches,
                          "ratio": "median of per-round ratios, benchmarks.common.paired_ratio (95%)"},
               "folder": {**stats, "root": str(large),
                          **json.loads((large / "manifest.json").read_text())},
               "per_image": per_image, "throughput": tp, "training": tr, "memory": mem, "diagnostics": diag,
               "differences": differences, "findings": findings,
               "targets": {"throughput_ratio_vs_torchvision_float_at_least_1":
                               tp["paired_ratios"]["cnnkit_over_torchvision_float"]["median"] >= 1.0,
                           "throughput_ratio_vs_torchvision_uint8_at_least_1": fair["median"] >= 1.0,
                           **({"stream_peak_growth_at_most_1.2": mem["growth_total_peak_rss"]["stream"] <= 1.2}
                              if mem else {})},
               "notes": notes, "quick": args.quick, "seconds": {**seconds, "total": time.perf_counter() - t_all},
               "command": command}
    name = "data_loading_quick" if args.quick else "data_loading"
    print(write_result(name, payload))
    print(report(payload, name))


if __name__ == "__main__":
    main()
