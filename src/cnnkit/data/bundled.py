"""The bundled sample: a small slice of Fashion-MNIST shipped with cnnkit (`data/sample/`), so that every
command runs with no download and no data of one's own; and the same images written out as an image folder
(`export_sample`), for the commands that take image files."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from cnnkit.data.base import ImageData, LoadOptions
from cnnkit.data.imagefolder import CLASS_FILE
from cnnkit.data.published import load_mnist_like
from cnnkit.errors import ConfigError

SAMPLE_ROOT = Path(__file__).parent / "sample"
EXPORT_SPLITS = {"train": ("train",), "test": ("test",), "both": ("train", "test")}
# what Windows, macOS or Linux refuse in a file name, or treat specially (control characters included)
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM\d|LPT\d)(\..*)?", re.IGNORECASE)  # Windows' device names
_EXPORTED = re.compile(r"\d{5}\.png")  # the names export_sample gives images


def load(name: str, split: str, options: LoadOptions) -> ImageData:
    """The source loader of `sample`: its `split`, named "sample" (the options have nothing to say here)."""
    data = load_mnist_like("fashion-mnist", SAMPLE_ROOT, split == "train", download=False)
    data.name = "sample"
    return data


def class_folder_names(classes: list[str]) -> list[str]:
    """A folder name for each class that every file system takes: the characters Windows, macOS or Linux
    refuse replaced by `_` ('T-shirt/top' -> 'T-shirt_top'), no leading dot (hidden, so skipped), no trailing
    dot or space, no Windows device name, and no two alike even where case does not count."""
    out: list[str] = []
    for i, name in enumerate(classes):
        folder = _UNSAFE.sub("_", name).rstrip(". ").lstrip(".") or f"class-{i}"
        if _RESERVED.fullmatch(folder):
            folder = f"_{folder}"
        base, k = folder, 2
        while folder.lower() in {f.lower() for f in out}:
            folder, k = f"{base}-{k}", k + 1
        out.append(folder)
    return out


def _png(image: Any) -> bytes:
    """A uint8 C×H×W tensor (C 1 or 3) as PNG bytes."""
    from PIL import Image

    arr = image.numpy()
    pil = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _planned(root: Path, split: str, limit: int | None) -> tuple[ImageData, list[tuple[int, Path]], list[str]]:
    """The sample's `split`, the (index, file) pairs to write (`root/<split>/<class folder>/00000.png`, ...,
    per class in the sample's order, the first `limit`), and the class folders."""
    data = load("sample", split, LoadOptions())
    folders = class_folder_names(list(data.classes))
    planned = []
    for ci, folder in enumerate(folders):
        index = (data.labels == ci).nonzero().flatten().tolist()[:limit]
        planned += [(i, root / split / folder / f"{k:05d}.png") for k, i in enumerate(index)]
    return data, planned, folders


def _check_export(root: Path, paths: list[Path]) -> None:
    """Refuse, writing nothing: a file where a folder goes, files cnnkit did not write under the names the
    export writes."""
    from cnnkit.artifacts.files import OutputDir, check_out_dir

    if (root.exists() or root.is_symlink()) and not root.is_dir():
        raise ConfigError(f"{root} is a file; give a folder for the images (new, or one `cnnkit data "
                          f"export-sample` wrote)")
    check_out_dir(root, option="DIR")
    for folder in sorted({d for p in paths for d in (p.parent, p.parent.parent)}):
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise ConfigError(f"cannot write into {folder}: a file of that name is in the way; move it or "
                              f"choose another DIR")
    OutputDir.of(root).check_free(paths, option="DIR")


def _remove_stale(out: Any, root: Path, written: set[Path]) -> None:
    """The images (and temporaries) an earlier export wrote here that this one did not (a larger --limit,
    another --split), then the class and split folders cnnkit created that are left empty; nothing else."""
    for split_dir in (root / s for s in EXPORT_SPLITS["both"]):
        if not split_dir.is_dir():
            continue
        for folder in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            for p in folder.iterdir():
                ours = _EXPORTED.fullmatch(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp"))
                if ours and p not in written and p.is_file() and out.owns(p):
                    p.unlink()
            if folder.relative_to(root).as_posix() in out.dirs and not any(folder.iterdir()):
                folder.rmdir()
        if split_dir.name in out.dirs and not any(split_dir.iterdir()):
            split_dir.rmdir()


def export_sample(out: str | os.PathLike, split: str = "both", limit: int | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the bundled sample as an image folder `out`: `out/<split>/<class folder>/00000.png`, ... (gray
    28×28 PNGs, numbered per class in the sample's order; the first `limit` of each class), and
    `out/classes.json`, so that `imagefolder:out` reads the sample's class names in the sample's order (the
    folders are `class_folder_names`: 'T-shirt/top' is `T-shirt_top/`). `split`: train, test or both.

    The folder is claimed as cnnkit's: an export into it again replaces the images an earlier one wrote and
    removes those it does not write again; a file cnnkit did not write is never replaced (refused before
    anything is written). `log` hears one line before the writing starts. Returns the images written per split,
    the classes, their folders and the class file."""
    from cnnkit.artifacts.files import atomic_write_bytes, atomic_write_text, claim_dir

    if split not in EXPORT_SPLITS:
        raise ConfigError(f"--split must be train, test or both, got {split!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 image per class, got {limit}")
    root = Path(out).expanduser()
    plans = {s: _planned(root, s, limit) for s in EXPORT_SPLITS[split]}
    paths = [p for _, planned, _ in plans.values() for _, p in planned]
    _check_export(root, [*paths, root / CLASS_FILE])
    data, _, folders = next(iter(plans.values()))
    if log is not None:
        log(f"writing {len(paths):,} PNG images of the sample ({', '.join(plans)}) into {root}")
    claimed = claim_dir(root, option="DIR")
    claimed.record_all([root / CLASS_FILE, *paths])
    # the class list first: a folder left half-written by an interruption still reads its classes right
    atomic_write_text(root / CLASS_FILE, json.dumps(
        {"classes": [{"folder": f, "name": n} for f, n in zip(folders, data.classes)]}, indent=1) + "\n")
    for s, (split_data, planned, _) in plans.items():
        for i, path in planned:
            atomic_write_bytes(path, _png(split_data.images[i]))
    _remove_stale(claimed, root, set(paths))
    return {"images": {s: len(planned) for s, (_, planned, _) in plans.items()}, "classes": list(data.classes),
            "folders": folders, "class_file": root / CLASS_FILE}
