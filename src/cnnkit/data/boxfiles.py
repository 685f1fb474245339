"""Detection data in the user's formats: images with boxes of classes, read from the ultralytics YOLO layout
(`yolo:<dir or data.yaml>`), the Pascal VOC detection layout (`voc-boxes:<dir>`) or a COCO instances file's
boxes (`coco-boxes:<file.json>`).

As in `cnnkit.data.segfolders` (whose helpers this module uses), every layout is first listed, no pixel decoded:
the samples of each split (an image file, the boxes its annotations give, parsed as listed) and the class names;
then a split is decoded into an `ImageData` whose `objects` are float32 N×M×5 rows (class, x0, y0, x1, y1;
class -1 pads), in pixel-edge coordinates of the resized image (x1 and y1 one past the last pixel covered).
Class 0 is `background` (torchvision's Faster R-CNN and SSD keep label 0 for it); the objects' classes are
1..K. An image's label (what splits are stratified by) is the class of its largest object, 0 when it has none.

Images of any size and mode are decoded as stored (no EXIF turn: the annotations label the stored pixels),
converted to the run's channels and resized to one size, the boxes scaled by the same factors; the size and
channels default as segfolders' do (the median height and width of every image of the set, each rounded to
a multiple of 16; gray when every image is gray), and `sizes` keeps each image's own (H, W).

A bad box (a malformed line or field, an unknown class, no area, or outside its image by more than
BOX_TOLERANCE pixels; within it, it is clipped to the image) is one DataError line naming its file and line
or object; with `LoadOptions.bad_boxes` "drop" (`--drop-bad-boxes`), such boxes are left out instead, and one
warning counts them by kind. A bad file (unreadable, not the format, too large, an XML with a DOCTYPE or
ENTITY declaration) is always an error."""

from __future__ import annotations

import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cnnkit.data.base import ImageData, LoadOptions, image_size
from cnnkit.data.imagefolder import CLASS_FILE, MAX_CLASS_FILE_BYTES
from cnnkit.data.images import IMAGE_EXTENSIONS, convert_mode
from cnnkit.data.segfolders import (BACKGROUND, VOC_CLASSES, class_list, coco_file, coco_image, held_out, image_format,
                                    stored_image)
from cnnkit.errors import DataError, error_line

BOX_TOLERANCE = 1.0  # pixels a box may reach past its image's edge (rounding in the tools that drew it): clipped
BAD_BOXES = ("error", "drop")  # what LoadOptions.bad_boxes may say
MAX_LABEL_FILE_BYTES = 16 << 20  # a YOLO label file or a VOC annotation: far above any real one; larger refused
MAX_YAML_BYTES = 1 << 20
YOLO_CLASS_FILE = "classes.txt"  # one name per line, YOLO id order (what labelImg and others write)
# the kinds of bad boxes, as the warning of a dropping load counts them
MALFORMED, UNKNOWN, EMPTY, OUTSIDE = "malformed", "unknown class", "no area", "outside the image"
DROP_HINT = "; fix it, or pass --drop-bad-boxes to leave such boxes out"


@dataclass(frozen=True)
class Box:
    """One object as its annotation gives it: its class (1..K), its box in pixel-edge coordinates of the image
    as stored (in [0, 1] of the width and height for YOLO's normalized boxes), and where it was read."""

    cls: int
    x0: float
    y0: float
    x1: float
    y1: float
    where: str


@dataclass(frozen=True)
class Bad:
    """An annotation that gives no usable box, found as it was read: its kind and the line that says why."""

    kind: str
    message: str


@dataclass(frozen=True)
class BoxSample:
    """One image of a set: its file, its name within the set (what the seeded test split hashes), its objects
    as read (`Box`, or `Bad` where unusable), whether their boxes are normalized (YOLO), and the (H, W) the
    annotation says the image has, when it says (checked against the file)."""

    image: Path
    key: str
    objects: tuple[Box | Bad, ...]
    normalized: bool = False
    size: tuple[int, int] | None = None
    annotation: str = ""  # the annotation file (and entry) that gives the size, for messages


@dataclass(frozen=True)
class BoxLayout:
    """A set as listed: the samples of each split, the split names a run records, the classes (background first)."""

    splits: dict[str, list[BoxSample]]
    split_names: dict[str, str]
    classes: list[str]


def load(name: str, split: str, options: LoadOptions) -> ImageData:
    """The source loader of `yolo:DIR`, `voc-boxes:DIR` and `coco-boxes:FILE.json`: `split` decoded into memory."""
    if options.bad_boxes not in BAD_BOXES:
        raise DataError(f"bad_boxes must be {' or '.join(BAD_BOXES)}, got {options.bad_boxes!r}")
    kind, _, where = name.partition(":")
    layout = LAYOUTS[kind](Path(where).expanduser(), options)
    everything = [s for samples in layout.splits.values() for s in samples]
    _check_all(everything, options.bad_boxes == "error")  # anywhere in the set: every load of it stops alike
    chans, size = image_format([s.image for s in everything], options.in_chans, image_size(options.img_size))
    return decode_boxes(layout.splits[split], layout.classes, chans, size, name, layout.split_names[split],
                        options.strict, options.bad_boxes)


def _check_all(samples: list[BoxSample], boxes: bool) -> None:
    """DataError for the first image of `samples` whose annotation gives another size than its header does, and
    (`boxes`) for the first bad box, each checked against its image's size (an unreadable image is left to
    decoding, which skips or refuses it)."""
    for s in samples:
        bad = next((o for o in s.objects if isinstance(o, Bad)), None) if boxes else None
        if bad is None and (s.size is not None or (boxes and s.objects)):
            size = _header_size(s.image)
            if size is not None:
                _check_size(s, *size)
                if boxes:
                    bad = next((c for o in s.objects if isinstance(c := _checked(o, *size, s.normalized), Bad)),
                               None)
        if bad is not None:
            raise DataError(bad.message + DROP_HINT)


def _check_size(s: BoxSample, h: int, w: int) -> None:
    if s.size is not None and s.size != (h, w):
        raise DataError(f"{s.annotation} says the image {s.image} is {s.size[1]}×{s.size[0]} pixels, but the file "
                        f"is {w}×{h}; its boxes would not fit it")


def _header_size(path: Path) -> tuple[int, int] | None:
    """An image's (H, W) from its header, no pixel decoded; None when it cannot be read."""
    try:
        with warnings.catch_warnings():  # the bound on pixels is load_image_file's, when the image is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.height, im.width
    except Exception:  # noqa: BLE001 - any unreadable file is decoding's to report
        return None


def decode_boxes(samples: list[BoxSample], classes: list[str], in_chans: int, size: tuple[int, int], name: str,
                 split: str, strict: bool = False, bad_boxes: str = "error") -> ImageData:
    """Images decoded, converted and resized to `size`, with their boxes checked against the image, clipped to it
    and scaled alike: an ImageData with `objects` and `sizes`. An unreadable image is skipped with a warning (or
    raises with `strict`); a bad box raises, or with `bad_boxes` "drop" is left out and counted in one warning."""
    resize = v2.Resize(list(size), antialias=True)
    images = torch.empty((len(samples), in_chans, *size), dtype=torch.uint8)
    rows: list[list[list[float]]] = []
    labels, sizes, skipped = [], [], []
    dropped: Counter[str] = Counter()
    first: list[str] = []
    for s in samples:
        image = stored_image(s.image, strict, skipped)  # as stored: the annotations label the stored pixels
        if image is None:
            continue
        h, w = image.height, image.width
        _check_size(s, h, w)
        kept = []
        for o in s.objects:
            checked = _checked(o, h, w, s.normalized)
            if isinstance(checked, Bad):
                if bad_boxes != "drop":
                    raise DataError(checked.message + DROP_HINT)
                dropped[checked.kind] += 1
                first = first or [checked.message]
                continue
            cls, x0, y0, x1, y1 = checked
            sx, sy = size[1] / w, size[0] / h
            kept.append([float(cls), x0 * sx, y0 * sy, x1 * sx, y1 * sy])
        i = len(labels)
        images[i] = resize(tv_tensors.Image(TF.pil_to_tensor(convert_mode(image, in_chans))))
        largest = max(kept, key=lambda r: (r[3] - r[1]) * (r[4] - r[2]), default=None)
        labels.append(int(largest[0]) if largest else 0)
        sizes.append((h, w))
        rows.append(kept)
    if not labels:
        raise DataError(f"{name}: no readable images in its {split.split()[0]} split")
    if skipped:
        warnings.warn(f"{name}: skipped {len(skipped)} unreadable image(s)", stacklevel=3)
    if dropped:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(dropped.items()))
        warnings.warn(f"{name}: dropped {sum(dropped.values())} bad box(es) of its {split.split()[0]} split "
                      f"({counts}; the first: {first[0]})", stacklevel=3)
    n, m = len(labels), max(1, max(map(len, rows)))
    objects = torch.zeros(n, m, 5, dtype=torch.float32)
    objects[..., 0] = -1
    for i, kept in enumerate(rows):
        if kept:
            objects[i, :len(kept)] = torch.tensor(kept, dtype=torch.float32)
    return ImageData(images[:n], torch.tensor(labels, dtype=torch.long), classes, name, split, skipped,
                     sizes=torch.tensor(sizes, dtype=torch.long), objects=objects)


def _checked(o: Box | Bad, h: int, w: int, normalized: bool) -> Bad | tuple[int, float, float, float, float]:
    """An object's (class, x0, y0, x1, y1) in the image's pixels, clipped to it; a Bad for a box without area
    or one beyond the image by more than BOX_TOLERANCE pixels."""
    if isinstance(o, Bad):
        return o
    fx, fy = (w, h) if normalized else (1, 1)
    x0, y0, x1, y1 = o.x0 * fx, o.y0 * fy, o.x1 * fx, o.y1 * fy
    shown = f"({_n(x0)}, {_n(y0)}, {_n(x1)}, {_n(y1)})"
    if not (x1 > x0 and y1 > y0):
        return Bad(EMPTY, f"{o.where}: the box (x0, y0, x1, y1) = {shown} has no area")
    t = BOX_TOLERANCE
    if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
        return Bad(OUTSIDE, f"{o.where}: the box (x0, y0, x1, y1) = {shown} reaches outside the {w}×{h} image by "
                            f"more than {t:g} pixel")
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if not (x1 > x0 and y1 > y0):  # within the tolerance, but wholly past the edge
        return Bad(EMPTY, f"{o.where}: the box (x0, y0, x1, y1) = {shown} has no area inside the {w}×{h} image")
    return o.cls, x0, y0, x1, y1


def _n(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _number(text: str | None) -> float | None:
    """A finite number written as text; None for anything else."""
    try:
        v = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _read_text(path: Path, what: str, limit: int) -> str:
    """A small annotation file's text (UTF-8), within `limit` bytes; one DataError line naming it otherwise."""
    try:
        if path.stat().st_size > limit:
            raise DataError(f"{what}: {path} is larger than {limit >> 20} MB; no {what} annotation file is that "
                            f"large")
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{what}: cannot read {path}: {error_line(e)}") from None
    except UnicodeDecodeError:
        raise DataError(f"{what}: {path} is not UTF-8 text") from None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


# -- yolo:<dir or data.yaml> -------------------------------------------------------------------------------------

def _yolo_label_file(image: Path) -> Path:
    """Where ultralytics looks for an image's labels: the path with its last `images` folder as `labels` and the
    suffix .txt (beside the image when no folder of the path is called `images`)."""
    parts = list(image.parts)
    at = max((i for i, p in enumerate(parts[:-1]) if p == "images"), default=None)
    if at is not None:
        parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def _yolo_rows(label: Path) -> list[tuple[int, int, float, float, float, float] | Bad]:
    """A YOLO label file's objects as (line, id, cx, cy, w, h) or Bad; no file is an image without objects."""
    if not label.is_file():
        return []
    out: list[tuple[int, int, float, float, float, float] | Bad] = []
    for k, line in enumerate(_read_text(label, "yolo", MAX_LABEL_FILE_BYTES).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        values = [_number(f) for f in fields]
        ok = len(values) == 5 and None not in values and values[0] >= 0 and float(values[0]).is_integer()
        if not ok:
            out.append(Bad(MALFORMED, f"yolo: {label}, line {k}: expected 'class cx cy w h' (a class id and four "
                                      f"numbers in [0, 1]), got {line.strip()[:80]!r}"))
            continue
        out.append((k, int(values[0]), *values[1:]))  # type: ignore[arg-type]
    return out


def _yolo_names(value: object, where: Path) -> list[str]:
    """data.yaml's `names`: a list, or a mapping {id: name} of the ids 0..K-1."""
    if isinstance(value, dict) and all(isinstance(k, int) and not isinstance(k, bool) for k in value):
        if sorted(value) == list(range(len(value))):
            value = [value[k] for k in range(len(value))]
    if not (isinstance(value, list) and value and all(isinstance(n, (str, int)) and not isinstance(n, bool)
                                                      and str(n).strip() for n in value)):
        raise DataError(f"yolo: {where}'s names must be a list of class names or a mapping of the ids 0..K-1 to "
                        f"names, e.g. names: {{0: person, 1: car}}")
    return [str(n).strip() for n in value]


def _yolo_yaml(path: Path) -> dict:
    import yaml

    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise DataError(f"yolo: {path} is larger than {MAX_YAML_BYTES >> 20} MB; a dataset's YAML is a few lines")
        values = yaml.safe_load(path.read_bytes())
    except OSError as e:
        raise DataError(f"yolo: cannot read {path}: {error_line(e)}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise DataError(f"yolo: {path} is not YAML: {error_line(e)}") from None
    if not isinstance(values, dict):
        raise DataError(f"yolo: {path} is not a dataset YAML: it needs train: (a folder of images) and names:")
    return values


def _yolo_folders(value: object, root: Path, key: str, where: Path) -> list[Path]:
    """A data.yaml entry's image folders (a folder or a list of them, relative to the root)."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise DataError(f"yolo: {where}'s {key}: must name a folder of images (or a list of them), relative to "
                        f"{root}")
    folders = [root / Path(v.strip()).expanduser() for v in items]
    for f in folders:
        if not f.is_dir():
            what = "a list file, which cnnkit does not read; give a folder" if f.is_file() else "not a folder"
            raise DataError(f"yolo: {where}'s {key}: {f} is {what} (expected a folder of images, their labels in "
                            f"the matching labels/ folder)")
    return folders


def yolo_layout(path: Path, options: LoadOptions) -> BoxLayout:
    """`yolo:DIR` or `yolo:DATA.yaml` (see the Data page): train from the yaml's train: (or DIR/images/train);
    test from its test:, else its val: (or DIR/images/test, else DIR/images/val); a flat DIR/images (or a yaml
    with train: alone) holds out a seeded --test-fraction as test. Class ids 0..K-1 become classes 1..K."""
    yaml_file = path if path.is_file() else path / "data.yaml"
    if yaml_file.is_file():
        values = _yolo_yaml(yaml_file)
        root = yaml_file.parent
        if values.get("path") is not None:
            if not isinstance(values["path"], str):
                raise DataError(f"yolo: {yaml_file}'s path: must be a folder")
            root = root / Path(values["path"]).expanduser()
        if values.get("train") is None:
            raise DataError(f"yolo: {yaml_file} names no train: folder of images")
        listed = {"train": _yolo_folders(values["train"], root, "train", yaml_file)}
        test_key = next((k for k in ("test", "val") if values.get(k) is not None), None)
        if test_key:
            listed["test"] = _yolo_folders(values[test_key], root, test_key, yaml_file)
        names = _yolo_names(values["names"], yaml_file) if values.get("names") is not None else None
        split_names = {"train": "train", "test": test_key} if test_key else None
        source = yaml_file
    elif path.is_dir():
        test = next((path / "images" / n for n in ("test", "val") if (path / "images" / n).is_dir()), None)
        if (path / "images" / "train").is_dir():
            listed = {"train": [path / "images" / "train"], **({"test": [test]} if test else {})}
            split_names = {"train": "train", "test": test.name} if test else None
        elif (path / "images").is_dir():
            listed, split_names = {"train": [path / "images"]}, None
        else:
            raise DataError(f"yolo: {path} has no images/ folder (expected {path}/images/train/ and "
                            f"{path}/labels/train/, or a data.yaml)")
        names, source = None, path
    else:
        raise DataError(f"yolo: {path} is neither a folder nor a dataset YAML")
    root_dir = path if path.is_dir() else path.parent
    if names is None and (root_dir / YOLO_CLASS_FILE).is_file():
        text = _read_text(root_dir / YOLO_CLASS_FILE, "yolo", MAX_CLASS_FILE_BYTES)
        names = [line.strip() for line in text.splitlines() if line.strip()] or None
    parsed: dict[str, list[tuple[Path, str, list]]] = {}
    for split, folders in listed.items():
        parsed[split] = []
        for folder in folders:
            images = _images_in(folder)
            if not images:
                raise DataError(f"yolo: {folder} has no images (PNG, JPEG, ...)")
            for image in images:
                key = image.relative_to(folder).as_posix()
                parsed[split].append((image, key if len(folders) == 1 else f"{folder.name}/{key}",
                                      _yolo_rows(_yolo_label_file(image))))
    if names is None:
        top = max((r[1] for items in parsed.values() for *_, rows in items for r in rows if not isinstance(r, Bad)),
                  default=0)
        names = [f"class{k}" for k in range(top + 1)]
    splits = {split: [_yolo_sample(image, key, rows, names, source) for image, key, rows in items]
              for split, items in parsed.items()}
    if split_names is None:
        splits, split_names = held_out(splits["train"], options, source)
    return BoxLayout(splits, split_names, [BACKGROUND, *names])


def _yolo_sample(image: Path, key: str, rows: list, names: list[str], source: Path) -> BoxSample:
    objects: list[Box | Bad] = []
    label = _yolo_label_file(image)
    for r in rows:
        if isinstance(r, Bad):
            objects.append(r)
            continue
        line, c, cx, cy, bw, bh = r
        where = f"yolo: {label}, line {line}"
        if c >= len(names):
            objects.append(Bad(UNKNOWN, f"{where}: class id {c}, but {source} names {len(names)} classes "
                                        f"(ids 0..{len(names) - 1})"))
            continue
        objects.append(Box(c + 1, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, where))
    return BoxSample(image, key, tuple(objects), normalized=True)


# -- voc-boxes:<dir> ---------------------------------------------------------------------------------------------

_DECLARATION = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def read_voc_xml(path: Path) -> ET.Element:
    """A VOC annotation's XML root, read within bounds: no DOCTYPE or ENTITY declaration (entity expansion and
    external entities are refused before the parser sees the file)."""
    text = _read_text(path, "voc-boxes", MAX_LABEL_FILE_BYTES)
    if _DECLARATION.search(text):
        raise DataError(f"voc-boxes: {path} declares a DOCTYPE or an ENTITY, which cnnkit refuses in annotations; "
                        f"a VOC annotation needs neither")
    try:
        return ET.fromstring(text)  # a str: parsed as the text checked above, whatever encoding it declares
    except ET.ParseError as e:
        raise DataError(f"voc-boxes: {path} is not XML: {error_line(e)}") from None


def _voc_size(root: ET.Element) -> tuple[int, int] | None:
    """The (H, W) an annotation's <size> gives, when it gives a usable one."""
    h, w = (_number(root.findtext(f"size/{k}")) for k in ("height", "width"))
    return (int(h), int(w)) if h and w and h > 0 and w > 0 and h.is_integer() and w.is_integer() else None


def _voc_sample(root_dir: Path, image_id: str, index: dict[str, int]) -> BoxSample:
    xml = root_dir / "Annotations" / f"{image_id}.xml"
    if not xml.is_file():
        raise DataError(f"voc-boxes: the image {image_id!r} has no annotation: {xml} is missing")
    image = next((f for f in (root_dir / "JPEGImages" / f"{image_id}{e}" for e in (".jpg", *IMAGE_EXTENSIONS))
                  if f.is_file()), None)
    if image is None:
        raise DataError(f"voc-boxes: the image of {xml} is missing (looked for {root_dir / 'JPEGImages' / image_id}"
                        f".jpg)")
    root = read_voc_xml(xml)
    objects: list[Box | Bad] = []
    for k, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        where = f"voc-boxes: {xml}, object {k}" + (f" ({name})" if name else "")
        values = [_number(obj.findtext(f"bndbox/{c}")) for c in ("xmin", "ymin", "xmax", "ymax")]
        if not name or None in values:
            objects.append(Bad(MALFORMED, f"{where}: an object needs a <name> and a <bndbox> of numbers xmin, ymin, "
                                          f"xmax and ymax"))
        elif name not in index:
            objects.append(Bad(UNKNOWN, f"{where}: the class {name!r} is not one of the set's classes"))
        else:  # VOC's xmin..xmax are 1-based pixel indices, both inclusive: pixel edges xmin - 1 and xmax
            x0, y0, x1, y1 = values
            objects.append(Box(index[name], x0 - 1, y0 - 1, x1, y1, where))  # type: ignore[operator]
    return BoxSample(image, image_id, tuple(objects), size=_voc_size(root), annotation=f"voc-boxes: {xml}")


def _voc_ids(path: Path) -> list[str]:
    text = _read_text(path, "voc-boxes", MAX_LABEL_FILE_BYTES)
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(f"voc-boxes: {path} lists no images")
    for i in ids:
        if "/" in i or "\\" in i or i in (".", ".."):
            raise DataError(f"voc-boxes: {path} lists {i!r}, which is not an image id (a file name without folders)")
    return ids


def voc_boxes_layout(root: Path, options: LoadOptions) -> BoxLayout:
    """`voc-boxes:DIR`: Annotations/<id>.xml and JPEGImages/<id>.jpg, the ids of each split from ImageSets/Main:
    with test.txt, test is the test split and trainval.txt (else train.txt) trains; without it, train.txt trains
    and val.txt is the test split; without split lists, every annotation, a seeded --test-fraction held out.
    VOC's 20 classes after background, or those DIR/classes.json lists. `difficult` objects are kept."""
    if not root.is_dir():
        raise DataError(f"voc-boxes: {root} is not a folder")
    if not (root / "Annotations").is_dir():
        raise DataError(f"voc-boxes: {root} has no Annotations/ folder (a VOC folder holds Annotations/, "
                        f"JPEGImages/ and ImageSets/Main/)")
    try:
        names = class_list(root / CLASS_FILE)
    except DataError as e:  # segfolders' message, for this source
        raise DataError(str(e).replace("masks: ", "voc-boxes: ", 1)) from None
    classes = list(VOC_CLASSES) if names is None else names if names[0] == BACKGROUND else [BACKGROUND, *names]
    index = {c: k for k, c in enumerate(classes) if k > 0}
    lists = root / "ImageSets" / "Main"
    if (lists / "test.txt").is_file():
        train_file = next((f for f in (lists / "trainval.txt", lists / "train.txt") if f.is_file()), None)
        if train_file is None:
            raise DataError(f"voc-boxes: {lists} has test.txt but neither trainval.txt nor train.txt to train on")
        files = {"train": train_file, "test": lists / "test.txt"}
    elif (lists / "train.txt").is_file() and (lists / "val.txt").is_file():
        files = {"train": lists / "train.txt", "test": lists / "val.txt"}
    elif lists.is_dir() and any(lists.glob("*.txt")):
        raise DataError(f"voc-boxes: {lists} needs train.txt and val.txt, or test.txt with trainval.txt or "
                        f"train.txt")
    else:
        files = {}
    if files:
        splits = {split: [_voc_sample(root, i, index) for i in _voc_ids(f)] for split, f in files.items()}
        return BoxLayout(splits, {split: f.stem for split, f in files.items()}, classes)
    ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    if not ids:
        raise DataError(f"voc-boxes: {root / 'Annotations'} holds no .xml annotations")
    splits, split_names = held_out([_voc_sample(root, i, index) for i in ids], options, root)
    return BoxLayout(splits, split_names, classes)


# -- coco-boxes:<file.json> --------------------------------------------------------------------------------------

def coco_boxes_layout(path: Path, options: LoadOptions) -> BoxLayout:
    """`coco-boxes:FILE.json`: a COCO instances file's images (beside it or in its images/ folder) with their
    annotations' `bbox`es; background is class 0, the categories 1..K in id order; a seeded test fraction of the
    images is the test split. `coco-boxes:TRAIN.json,VAL.json`: the first file trains, all of the second is the
    test split (named val); both must list the same categories. Crowd annotations (`iscrowd: 1`) are left out."""
    if "," in str(path):
        first, _, second = str(path).partition(",")
        train_path, val_path = Path(first), Path(second).expanduser()
        train, cats = _coco_box_samples(train_path)
        val, val_cats = _coco_box_samples(val_path)
        if val_cats != cats:
            raise DataError(f"coco-boxes: {val_path} lists other categories than {train_path}; a train and val pair "
                            f"must list the same ids and names")
        return BoxLayout({"train": train, "test": val}, {"train": f"train ({train_path.name})",
                                                          "test": f"val ({val_path.name})"}, [BACKGROUND, *cats])
    samples, cats = _coco_box_samples(path)
    splits, names = held_out(samples, options, path)
    return BoxLayout(splits, names, [BACKGROUND, *cats])


def _coco_box_samples(path: Path) -> tuple[list[BoxSample], list[str]]:
    """A COCO instances file's samples with their boxes, and its category names in id order."""
    coco = coco_file(path)
    cats = coco["categories"]
    if not cats or not all(isinstance(c, dict) and isinstance(c.get("id"), int) and not isinstance(c["id"], bool)
                           and isinstance(c.get("name"), str) for c in cats):
        raise DataError(f"coco-boxes: {path} needs categories, each with an integer id and a name")
    if len({c["id"] for c in cats}) != len(cats):
        raise DataError(f"coco-boxes: {path} lists a category id twice")
    cats = sorted(cats, key=lambda c: c["id"])
    index = {c["id"]: k + 1 for k, c in enumerate(cats)}
    images = [coco_image(path.parent, e, path) for e in coco["images"]]
    if not images:
        raise DataError(f"coco-boxes: {path} lists no images")
    found: dict[object, list[Box | Bad]] = {i: [] for i, *_ in images}
    for a in coco["annotations"]:
        where = f"coco-boxes: {path}, annotation {a.get('id') if isinstance(a, dict) else a!r}"
        if not isinstance(a, dict) or not isinstance(a.get("image_id"), (int, str)) or a["image_id"] not in found:
            raise DataError(f"{where} names an image id its images do not list")
        if a.get("iscrowd"):  # a crowd's box is no object to find: COCO's evaluation ignores detections in it
            continue
        bbox = a.get("bbox")
        values = [v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
                  for v in bbox] if isinstance(bbox, list) else []
        if len(values) != 4 or None in values:
            found[a["image_id"]].append(Bad(MALFORMED, f"{where}: its bbox must be [x, y, width, height], four "
                                                       f"numbers, got {str(bbox)[:80]}"))
        elif not isinstance(a.get("category_id"), int) or a["category_id"] not in index:
            found[a["image_id"]].append(Bad(UNKNOWN, f"{where} names category id {a.get('category_id')!r}, which "
                                                     f"its categories do not list"))
        else:
            x, y, bw, bh = (float(v) for v in values)  # type: ignore[arg-type]
            found[a["image_id"]].append(Box(index[a["category_id"]], x, y, x + bw, y + bh, where))
    samples = [BoxSample(file, file.relative_to(path.parent).as_posix(), tuple(found[i]), size=(h, w),
                         annotation=f"coco-boxes: {path}") for i, file, h, w in images]
    return samples, [c["name"] for c in cats]


LAYOUTS = {"yolo": yolo_layout, "voc-boxes": voc_boxes_layout, "coco-boxes": coco_boxes_layout}
