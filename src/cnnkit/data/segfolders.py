"""Segmentation data in the user's formats: images with a class per pixel, read from an images/masks folder
pair (`masks:<dir>`), the Pascal VOC layout (`voc:<dir>`) or a COCO instances file (`coco:<file.json>`).

Every layout is first listed as samples (an image file and how to get its mask) per split, then decoded into
an `ImageData` with `masks`: images and masks are checked against each other (same size, class indices below
the number of classes, 255 ignored), resized together to one size (images bilinear with antialiasing, masks
nearest: torchvision's `v2.Resize` on an `Image` and a `Mask`), and their original sizes kept (`sizes`). The
size and channels default from the headers of every image of the set (both splits), so that both splits
and every later load agree: the median height and width, each rounded to a multiple of 16."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cnnkit.data.base import FileSet, ImageData, LoadOptions, TrainingData, image_size
from cnnkit.data.imagefolder import CLASS_FILE, MAX_CLASS_FILE_BYTES
from cnnkit.data.settings import IGNORE, AugmentConfig
from cnnkit.data.transforms import random_crop_flip, resized_crops_with_masks
from cnnkit.data.images import IMAGE_EXTENSIONS, convert_mode, load_image_file
from cnnkit.data.splits import held_out_test
from cnnkit.errors import DataError, error_line

SIZE_STEP = 16  # the default size's sides are multiples of this: a U-Net of depth 4 or an output stride 16 fits
BACKGROUND = "background"
VOC_CLASSES = (BACKGROUND, "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
GRAY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F"}
MAX_COCO_FILE_BYTES = 2 << 30  # COCO 2017's train instances are ~450 MB; a larger file is refused


@dataclass(frozen=True)
class Sample:
    """One image of a set: its file, and its mask as a uint8 H×W array (read or drawn when asked)."""

    image: Path
    mask: Callable[[], np.ndarray]
    key: str  # its name within the set: what the seeded test split hashes
    mask_file: Path | None = None  # the mask's PNG, for layouts that have one


@dataclass(frozen=True)
class Layout:
    """A set as listed, no pixel decoded: the samples of each split, the split names a run records, the class
    names (None: "class0".."classK" from the largest index any mask holds) and the palette (None: none)."""

    splits: dict[str, list[Sample]]
    split_names: dict[str, str]
    classes: list[str] | None
    palette: list[list[int]] | None


def _listed(name: str, options: LoadOptions) -> tuple[Layout, list[str], list[list[int]] | None, int, tuple[int, int]]:
    """The set `name` listed: its layout, classes, palette, channels and size (no image decoded)."""
    kind, _, where = name.partition(":")
    layout = LAYOUTS[kind](Path(where).expanduser(), options)
    everything = [s for samples in layout.splits.values() for s in samples]
    classes = layout.classes or [f"class{k}" for k in range(_largest_index(everything) + 1)]
    palette = layout.palette[:len(classes)] if layout.palette and len(layout.palette) >= len(classes) else None
    chans, size = image_format([s.image for s in everything], options.in_chans, image_size(options.img_size))
    return layout, classes, palette, chans, size


def load(name: str, split: str, options: LoadOptions) -> ImageData:
    """The source loader of `masks:DIR`, `voc:DIR` and `coco:FILE.json`: `split` decoded into memory."""
    layout, classes, palette, chans, size = _listed(name, options)
    return decode_samples(layout.splits[split], classes, palette, chans, size, name,
                          layout.split_names[split], options.strict)


def open_training(name: str, options: LoadOptions, mode: str, processes: int, validation: bool) -> TrainingData:
    """The training split as training reads it: decoded into memory, or (`mode` stream, or auto when decoding
    it once per process would not fit in memory) listed as a `MaskFileSet` whose images and masks the
    loader's workers read, resize and augment together."""
    from cnnkit.data.stream import choose_mode

    layout, classes, palette, chans, size = _listed(name, options)
    samples = layout.splits["train"]
    files = MaskFileSet([s.image for s in samples], torch.zeros(len(samples), dtype=torch.long), classes,
                        name, layout.split_names["train"], chans, size, samples=samples, palette=palette)
    mode, note = choose_mode(mode, files, processes)
    if mode == "memory":
        return TrainingData(decode_samples(samples, classes, palette, chans, size, files.name, files.split,
                                           options.strict), note=note)
    return TrainingData(files, note=note)


@dataclass
class MaskFileSet(FileSet):
    """A segmentation set as files, decoded a batch at a time by the loader's workers (`DecodeMasked`): images
    with their masks. Labels are all 0 (a mask is not read to list the set), so a held-out validation split of
    it is drawn at random rather than stratified."""

    samples: list[Sample] = field(default_factory=list)
    palette: list[list[int]] | None = None
    streams_masks: bool = True  # what training checks: the targets are masks

    def subset(self, index: torch.Tensor, split: str) -> MaskFileSet:
        keep = index.tolist()
        return MaskFileSet([self.files[i] for i in keep], self.labels[index], self.classes, self.name, split,
                           self.in_chans, self.img_size, self.root, samples=[self.samples[i] for i in keep],
                           palette=self.palette)

    def decoder(self, augment: AugmentConfig | None, seed: int) -> DecodeMasked:
        return DecodeMasked(self, augment, seed)


class DecodeMasked(Dataset):
    """Reads item (index, epoch) of a MaskFileSet in a worker: the image and its mask decoded, checked against
    each other, resized together to the set's size and, when training, augmented alike (resized crop, padded
    crop, flip, as in memory; seeded by (seed, epoch, image), as streamed classification is). An unreadable
    image gives (None, why) to skip and count; a bad mask gives (None, FATAL + why), which stops training with
    that line."""

    def __init__(self, files: MaskFileSet, augment: AugmentConfig | None, seed: int):
        self.samples, self.classes = files.samples, len(files.classes)
        self.in_chans, self.size = files.in_chans, tuple(files.img_size)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | str]:
        from cnnkit.data.stream import FATAL, image_seed

        index, epoch = item
        sample = self.samples[index]
        try:
            image = load_image_file(sample.image, orient=False)
        except DataError as e:
            return None, str(e)
        try:
            mask = _checked(sample.mask(), image, sample, self.classes)
        except DataError as e:
            return None, FATAL + str(e)
        x, m = (t.as_subclass(torch.Tensor) for t in v2.Resize(list(self.size), antialias=True)(
            tv_tensors.Image(TF.pil_to_tensor(convert_mode(image, self.in_chans))),
            tv_tensors.Mask(torch.from_numpy(mask)[None])))
        a = self.augment
        if a is not None and (a.resized_crop or a.crop_padding or a.hflip):
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(image_seed(self.seed, epoch, index))
                if a.resized_crop:
                    x, m = (t[0] for t in resized_crops_with_masks(x[None], m, a.resized_crop))
                    m = m[None]
                both = random_crop_flip(torch.cat([x, m])[None], a.crop_padding, a.hflip)[0]
            x, m = both[:-1], both[-1:]
        return x.contiguous(), m[0].contiguous()


def decode_samples(samples: list[Sample], classes: list[str], palette: list[list[int]] | None, in_chans: int,
                   size: tuple[int, int], name: str, split: str, strict: bool = False) -> ImageData:
    """Images and masks decoded, checked against each other and resized together to `size`: an ImageData
    whose label per image is the class other than 0 covering most of its pixels (0 if none), for stratified
    splits. An unreadable image is skipped with a warning (or raises with `strict`); a bad mask raises."""
    resize = v2.Resize(list(size), antialias=True)  # bilinear for the Image, nearest for the Mask
    images = torch.empty((len(samples), in_chans, *size), dtype=torch.uint8)
    masks = torch.empty((len(samples), *size), dtype=torch.uint8)
    labels, sizes, skipped, native = [], [], [], []
    for s in samples:
        image = stored_image(s.image, strict, skipped)  # as stored: the mask labels the stored pixels
        if image is None:
            continue
        mask = _checked(s.mask(), image, s, len(classes))
        i = len(labels)
        images[i], masks[i] = resize(tv_tensors.Image(TF.pil_to_tensor(convert_mode(image, in_chans))),
                                     tv_tensors.Mask(torch.from_numpy(mask)[None]))
        counts = np.bincount(mask.ravel(), minlength=256)[1:len(classes)]
        labels.append(int(counts.argmax()) + 1 if counts.any() else 0)
        sizes.append((image.height, image.width))
        native.append(torch.from_numpy(mask))
    if not labels:
        raise DataError(f"{name}: no readable images in its {split.split()[0]} split")
    if skipped:
        warnings.warn(f"{name}: skipped {len(skipped)} unreadable image(s)", stacklevel=3)
    n = len(labels)
    return ImageData(images[:n], torch.tensor(labels, dtype=torch.long), classes, name, split, skipped, masks=masks[:n],
                     palette=palette, sizes=torch.tensor(sizes, dtype=torch.long), native_masks=native)


def stored_image(path: Path, strict: bool, skipped: list[str]) -> Image.Image | None:
    """An annotated image as its file stores it (no EXIF turn: its annotations label the stored pixels); an
    unreadable one raises with `strict`, else is warned about, added to `skipped` and None."""
    try:
        return load_image_file(path, orient=False)
    except DataError as e:
        if strict:
            raise
        warnings.warn(str(e), stacklevel=4)
        skipped.append(str(path))
        return None


def _checked(mask: np.ndarray, image: Image.Image, sample: Sample, classes: int) -> np.ndarray:
    """`mask` when it fits its image: the same height and width, every value a class index or 255."""
    if mask.shape != (image.height, image.width):
        raise DataError(f"mask of {sample.image} is {mask.shape[1]}×{mask.shape[0]} pixels but the image is "
                        f"{image.width}×{image.height}; a mask must match its image pixel for pixel")
    values = np.unique(mask)
    bad = values[(values >= classes) & (values != IGNORE)]
    if len(bad):
        raise DataError(f"mask of {sample.image} holds class index {int(bad[0])}, but the data has {classes} classes "
                        f"(indices 0..{classes - 1}, and {IGNORE} for pixels to ignore); fix the mask or list every "
                        f"class")
    return mask


def _largest_index(samples: list[Sample]) -> int:
    """The largest class index any sample's mask holds (255, ignored, left out); 0 for masks of background only."""
    top = 0
    for s in samples:
        values = np.unique(s.mask())
        values = values[values != IGNORE]
        top = max(top, int(values.max()) if len(values) else 0)
    return top


def image_format(files: list[Path], in_chans: int | None,
                  size: tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
    """Channels (1 if every image is grayscale, else 3) and size (the median height and width, each rounded to
    a multiple of SIZE_STEP, at least SIZE_STEP) from the images' headers; the given ones where given."""
    if in_chans is not None and size is not None:
        return in_chans, size
    modes, heights, widths = set(), [], []
    for f in files:
        try:
            # the header only, to plan the decoding; the pixels are decoded within bounds by load_image_file
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(f)
            with im:
                modes.add(im.mode)  # decoded as stored (no EXIF turn): the masks label the stored pixels
                heights.append(im.height)
                widths.append(im.width)
        except Exception:  # an unreadable file is skipped (or refused) when decoded: not a vote on the format
            continue
    if in_chans is None:
        in_chans = 1 if modes and modes <= GRAY_MODES else 3
    if size is None:
        side = lambda v: max(SIZE_STEP, round(sorted(v)[(len(v) - 1) // 2] / SIZE_STEP) * SIZE_STEP)  # noqa: E731
        size = (side(heights), side(widths)) if heights else (64, 64)
    return in_chans, size


def read_mask(path: Path, image: Path) -> np.ndarray:
    """A mask PNG's class indices as uint8 H×W: mode L (the grey level is the class) or P (the palette index
    is); DataError naming the file for anything else."""
    if not path.is_file():
        raise DataError(f"{image} has no mask: {path} is missing; give every image a mask of the same name")
    im = load_image_file(path, name=str(path))
    if im.mode not in ("L", "P"):
        raise DataError(f"mask {path} is a {im.mode} image; masks are index PNGs (mode L or P) whose value is the "
                        f"pixel's class and {IGNORE} where it is ignored")
    return np.array(im, dtype=np.uint8)  # a copy torch may write to


def mask_palette(path: Path | None) -> list[list[int]] | None:
    """The [r, g, b] of each index of a P-mode mask's palette; None for no mask file or a mask without one."""
    if path is None or not path.is_file():
        return None
    im = load_image_file(path, name=str(path))
    colours = im.getpalette() if im.mode == "P" else None
    return [colours[i:i + 3] for i in range(0, len(colours) - 2, 3)] if colours else None


def held_out(samples: list[Sample], options: LoadOptions, where: Path) -> tuple[dict, dict]:
    """`samples` split into train and test by a seeded hash of each one's key (`held_out_test`, one class)."""
    in_test = held_out_test([s.key for s in samples], [0] * len(samples), options.test_fraction, options.seed)
    splits = {split: [s for s, t in zip(samples, in_test) if t == (split == "test")] for split in ("train", "test")}
    if not splits["test"]:
        raise DataError(f"{where} has too few images to hold out a test split (at least 2 are needed)")
    pct = f"{100 * options.test_fraction:g}%"
    return splits, {"test": f"test (held out {pct}, seed {options.seed})",
                    "train": f"train (all but the {pct} held out for test, seed {options.seed})"}


def _image_mask_pairs(folder: Path) -> list[Sample]:
    """The images of `folder/images` (sorted) each with `folder/masks/<its stem>.png`."""
    images = sorted(p for p in (folder / "images").rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise DataError(f"masks: {folder / 'images'} has no images (expected {folder}/images/<name>.png or .jpg and "
                        f"{folder}/masks/<name>.png)")
    out = []
    for p in images:
        rel = p.relative_to(folder / "images").with_suffix(".png")
        out.append(Sample(p, partial(read_mask, folder / "masks" / rel, p), rel.as_posix(), folder / "masks" / rel))
    return out


def class_list(path: Path) -> list[str] | None:
    """The class names `path` (a JSON list of strings, in index order) gives; None when there is no such file."""
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_CLASS_FILE_BYTES:  # a handed folder's file: read within bounds
            raise ValueError("too large")
        names = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(names, list) and bool(names) and all(isinstance(n, str) and n for n in names)
    except (OSError, ValueError, RecursionError):
        ok = False
    if not ok or len(names) > IGNORE:
        raise DataError(f"masks: {path} is not a class list: it must hold a JSON list of up to {IGNORE} class names "
                        f"in index order, e.g. [\"background\", \"cat\", \"dog\"]")
    return names


def masks_layout(root: Path, options: LoadOptions) -> Layout:
    """`masks:DIR`: DIR/images and DIR/masks, split by a seeded test fraction; or DIR/train and DIR/test (or
    val), each holding images/ and masks/. Classes from DIR/classes.json; the palette from a P-mode mask's."""
    if not root.is_dir():
        raise DataError(f"masks: {root} is not a folder")
    test = next((root / n for n in ("test", "val") if (root / n / "images").is_dir()), None)
    if (root / "train" / "images").is_dir() and test is not None:
        splits = {"train": _image_mask_pairs(root / "train"), "test": _image_mask_pairs(test)}
        names = {"train": "train", "test": test.name}
    elif (root / "images").is_dir():
        splits, names = held_out(_image_mask_pairs(root), options, root)
    else:
        raise DataError(f"masks: {root} has no images/ folder (expected {root}/images/ and {root}/masks/, or "
                        f"{root}/train/ and {root}/test/ each holding both)")
    first = (splits["train"] or splits["test"])[0]
    return Layout(splits, names, class_list(root / CLASS_FILE), mask_palette(first.mask_file))


def voc_layout(root: Path, options: LoadOptions) -> Layout:
    """`voc:DIR`: JPEGImages/<id>.jpg and SegmentationClass/<id>.png, the ids of each split listed by
    ImageSets/Segmentation/train.txt and val.txt (val is the test split); VOC's 21 classes; the masks'
    palette (VOC's colour map in VOC's own files)."""
    if not root.is_dir():
        raise DataError(f"voc: {root} is not a folder")
    lists = root / "ImageSets" / "Segmentation"
    splits = {}
    for split, file in (("train", "train.txt"), ("test", "val.txt")):
        if not (lists / file).is_file():
            raise DataError(f"voc: {lists / file} is missing; a VOC folder holds JPEGImages/, SegmentationClass/ and "
                            f"ImageSets/Segmentation/train.txt and val.txt")
        ids = [line.split()[0] for line in (lists / file).read_text(encoding="utf-8").splitlines() if line.strip()]
        splits[split] = []
        for i in ids:
            image = root / "JPEGImages" / f"{i}.jpg"
            if not image.is_file():
                raise DataError(f"voc: {lists / file} lists {i!r}, but its image {image} is missing")
            mask = root / "SegmentationClass" / f"{i}.png"
            splits[split].append(Sample(image, partial(read_mask, mask, image), i, mask))
        if not splits[split]:
            raise DataError(f"voc: {lists / file} lists no images")
    palette = mask_palette(splits["train"][0].mask_file)
    return Layout(splits, {"train": "train", "test": "val"}, list(VOC_CLASSES), palette)


def coco_file(path: Path) -> dict:
    """A COCO instances file's JSON, checked to hold lists of images, annotations and categories."""
    try:
        if path.stat().st_size > MAX_COCO_FILE_BYTES:
            raise DataError(f"coco: {path} is larger than {MAX_COCO_FILE_BYTES >> 30} GB; split it into smaller files")
        coco = json.loads(path.read_bytes())
    except OSError as e:
        raise DataError(f"coco: cannot read {path}: {error_line(e)}") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"coco: {path} is not JSON: {error_line(e)}") from None
    if not (isinstance(coco, dict) and all(isinstance(coco.get(k), list) for k in ("images", "annotations",
                                                                                     "categories"))):
        raise DataError(f"coco: {path} is not a COCO instances file: it needs lists of images, annotations and "
                        f"categories")
    return coco


def _coco_region(segmentation: object, h: int, w: int, where: str) -> np.ndarray:
    """An annotation's region as a uint8 H×W 0/1 array: its polygons (merged) or its RLE, by pycocotools."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list) and segmentation and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in segmentation):
        rle = coco_mask.merge(coco_mask.frPyObjects([[float(v) for v in p] for p in segmentation], h, w))
    elif isinstance(segmentation, dict) and segmentation.get("size") == [h, w] and (
            isinstance(segmentation.get("counts"), str) or (
                isinstance(segmentation.get("counts"), list)
                and all(isinstance(v, int) and v >= 0 for v in segmentation["counts"])
                and sum(segmentation["counts"]) == h * w)):
        counts = segmentation["counts"]
        rle = coco_mask.frPyObjects(segmentation, h, w) if isinstance(counts, list) else \
            {"size": [h, w], "counts": counts.encode("ascii", "replace")}
    else:
        raise DataError(f"{where} has no segmentation cnnkit can read: give polygons [[x0, y0, x1, y1, ...], ...] of "
                        f"3 points or more, or an RLE {{\"size\": [{h}, {w}], \"counts\": ...}} of the image's size")
    try:
        with warnings.catch_warnings():  # pycocotools' own call of numpy's __array__, under numpy 2: nothing to act on
            warnings.simplefilter("ignore", DeprecationWarning)
            region = coco_mask.decode(rle)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: cannot decode its RLE: {error_line(e)}") from None
    # pycocotools refuses counts past the image's pixels but leaves the pixels after counts that end short as
    # they were in memory: anything but 0 and 1, or more pixels set than the counts set, is such a short RLE
    if region.max(initial=0) > 1 or int(region.sum()) != int(coco_mask.area(rle)):
        raise DataError(f"{where}: its RLE counts do not cover the {h}×{w} image; give counts that sum to {h * w}")
    return region


def _coco_mask(annotations: list[tuple[str, dict, int]], h: int, w: int) -> np.ndarray:
    """An image's class mask drawn from its annotations (where, annotation, class) in file order: later ones
    over earlier ones, a crowd region (`iscrowd`) as IGNORE."""
    mask = np.zeros((h, w), dtype=np.uint8)
    for where, a, cls in annotations:
        mask[_coco_region(a.get("segmentation"), h, w, where) > 0] = IGNORE if a.get("iscrowd") else cls
    return mask


def coco_image(folder: Path, entry: object, path: Path) -> tuple[int, Path, int, int]:
    """An image entry's id, file (beside the JSON, else in its images/ folder), height and width."""
    ok = isinstance(entry, dict) and isinstance(entry.get("file_name"), str) and all(
        isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) and entry[k] > 0
        for k in ("height", "width")) and isinstance(entry.get("id"), (int, str))
    if not ok:
        raise DataError(f"coco: {path} has an image entry without an id, a file_name and a positive height and "
                        f"width: {str(entry)[:120]}")
    limit = Image.MAX_IMAGE_PIXELS or 0  # the decoders' bound: a mask of the size the entry claims is drawn first
    if limit and entry["height"] * entry["width"] > limit:
        raise DataError(f"coco: {path} says the image {entry['file_name']} is {entry['width']}×{entry['height']} "
                        f"pixels, more than {limit}; resize it (and its annotations) first")
    name = Path(entry["file_name"])
    if name.is_absolute() or ".." in name.parts:
        raise DataError(f"coco: {path} names the image {entry['file_name']!r} outside its folder; give file names "
                        f"relative to {folder} or {folder / 'images'}")
    file = next((f for f in (folder / name, folder / "images" / name) if f.is_file()), None)
    if file is None:
        raise DataError(f"coco: the image {entry['file_name']} that {path} lists is missing (looked in {folder} and "
                        f"{folder / 'images'})")
    return entry["id"], file, entry["height"], entry["width"]


def coco_layout(path: Path, options: LoadOptions) -> Layout:
    """`coco:FILE.json`: a COCO instances file's images (beside it or in its images/ folder) with class masks
    drawn from their annotations; background is class 0, the categories 1..K in id order; a seeded test
    fraction of the images is the test split. `coco:TRAIN.json,VAL.json`: COCO's own pair, the first file
    for training and all of the second as the test split (named val), with the same categories."""
    if "," in str(path):
        first, _, second = str(path).partition(",")
        train_path, val_path = Path(first), Path(second).expanduser()
        train, cats = _coco_samples(train_path)
        val, val_cats = _coco_samples(val_path)
        if [(c["id"], c["name"]) for c in val_cats] != [(c["id"], c["name"]) for c in cats]:
            raise DataError(f"coco: {val_path} lists other categories than {train_path}; a train and val pair must "
                            f"list the same ids and names")
        return Layout({"train": train, "test": val}, {"train": f"train ({train_path.name})",
                                                       "test": f"val ({val_path.name})"},
                      [BACKGROUND, *(c["name"] for c in cats)], None)
    samples, cats = _coco_samples(path)
    splits, names = held_out(samples, options, path)
    return Layout(splits, names, [BACKGROUND, *(c["name"] for c in cats)], None)


def _coco_samples(path: Path) -> tuple[list[Sample], list[dict]]:
    """A COCO instances file's samples, each mask drawn when asked, and its categories in id order."""
    coco = coco_file(path)
    cats = coco["categories"]
    if not cats or not all(isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
                           for c in cats):
        raise DataError(f"coco: {path} needs categories, each with an integer id and a name")
    if len(cats) >= IGNORE:
        raise DataError(f"coco: {path} has {len(cats)} categories; masks hold at most {IGNORE - 1}")
    cats = sorted(cats, key=lambda c: c["id"])
    index = {c["id"]: k + 1 for k, c in enumerate(cats)}
    images = [coco_image(path.parent, e, path) for e in coco["images"]]
    drawn: dict[object, list] = {i: [] for i, *_ in images}
    for a in coco["annotations"]:
        where = f"coco: {path}, annotation {a.get('id') if isinstance(a, dict) else a!r}"
        if not isinstance(a, dict) or not isinstance(a.get("image_id"), (int, str)) or a["image_id"] not in drawn:
            raise DataError(f"{where} names an image id its images do not list")
        if not isinstance(a.get("category_id"), int) or a["category_id"] not in index:
            raise DataError(f"{where} names category id {a.get('category_id')!r}, which its categories do not list")
        drawn[a["image_id"]].append((where, a, index[a["category_id"]]))
    if not images:
        raise DataError(f"coco: {path} lists no images")
    samples = [Sample(file, partial(_coco_mask, drawn[i], h, w), file.relative_to(path.parent).as_posix())
               for i, file, h, w in images]
    return samples, cats


LAYOUTS: dict[str, Callable[[Path, LoadOptions], Layout]] = {
    "masks": masks_layout, "voc": voc_layout, "coco": coco_layout}
