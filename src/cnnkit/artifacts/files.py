"""Atomic writes, output folders that record what cnnkit wrote in them, and a lock for run directories.

cnnkit deletes or replaces only files it wrote itself. Every folder a command writes into is *claimed*
first (`claim_dir`): the claim keeps a manifest (`.cnnkit-files.json`) of the files written there, and
each atomic write into a claimed folder is recorded in it before the file appears. `--overwrite` removes
exactly the recorded files and refuses, naming them, when the folder holds anything else; a write that
would replace a file the manifest does not list is refused as well.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path

from cnnkit.errors import CnnkitError, ConfigError

MANIFEST = ".cnnkit-files.json"
MANIFEST_FORMAT = "cnnkit-files/1"
LOCK = ".cnnkit.lock"

# mkstemp creates files readable by their owner only; give written files the mode open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


class DiskWriteError(CnnkitError):
    """A file could not be written (no space, file too large, no permission); the previous one is kept."""


def _claimed_root(path: Path) -> OutputDir | None:
    """The claimed output folder `path` lies in (the innermost one), if any."""
    path = path.absolute()
    best = None
    for root, out in _CLAIMED.items():
        if path.is_relative_to(root) and (best is None or len(root.parts) > len(best.root.parts)):
            best = out
    return best


def temp_path_for(path: Path, keep_suffix: bool = False) -> Path:
    """A fresh temporary file beside `path` (`.<name>.<random>.tmp`), recognisable as cnnkit's own;
    `keep_suffix`: `.<name>.<random>.tmp<suffix>`, for writers that go by the suffix (torch.export.save warns,
    and its loader falls back, on a `.pt2` archive named otherwise)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=".tmp" + (path.suffix if keep_suffix else ""))
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    The previous file stays whole until the rename; a write that fails (no space, RLIMIT_FSIZE, no
    permission) leaves it untouched and raises DiskWriteError."""
    path = Path(path)
    owner = _claimed_root(path)
    if owner is not None:
        owner.record(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(path)
    except OSError as e:
        raise DiskWriteError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = "no space left on the device" if e.errno == errno.ENOSPC else (
            "file size limit exceeded" if e.errno == errno.EFBIG else e.strerror or str(e))
        raise DiskWriteError(f"cannot write {path}: {reason}; the previous version, if any, is kept") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def finish_temp_file(tmp: Path, path: Path) -> None:
    """Move a temporary file that a library wrote (ONNX, TorchScript) into place as `path`, recorded."""
    owner = _claimed_root(path)
    if owner is not None:
        owner.record(path)
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


class OutputDir:
    """A folder cnnkit writes into, with the manifest of the files it wrote there."""

    def __init__(self, root: Path):
        self.root = root.absolute()
        self.manifest = self.root / MANIFEST
        self.files: set[str] = set()
        if self.manifest.exists():
            try:
                saved = json.loads(self.manifest.read_text())
            except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 or JSON, nested too deep
                saved = None
            ours = isinstance(saved, dict) and saved.get("format") == MANIFEST_FORMAT
            files = saved.get("files") if ours else []
            if isinstance(saved, dict) and isinstance(files, list) and all(isinstance(f, str) for f in files):
                self.files = set(files)
            else:
                raise ConfigError(f"{self.manifest} is damaged; cnnkit cannot tell which files in {root} "
                                  f"it wrote. Move what you want to keep and delete the folder yourself") from None

    def _rel(self, path: Path) -> str:
        return Path(path).absolute().relative_to(self.root).as_posix()

    def owns(self, path: Path) -> bool:
        rel = self._rel(path)
        if rel in self.files or rel in (MANIFEST, LOCK):
            return True
        if any(rel.startswith(d) for d in self.files if d.endswith("/")):  # a folder claimed whole
            return True
        # a temporary file of an interrupted write of one of ours: .<name>.<random>.tmp[.<suffix>]
        folder, name = os.path.split(rel)
        if name.startswith(".") and ".tmp" in name:
            return any(os.path.dirname(f) == folder and name.startswith(f".{os.path.basename(f)}.")
                       for f in self.files)
        return False

    def record(self, path: Path) -> None:
        """Add `path` to the manifest (before it is written, so an interrupted write is still ours)."""
        path = Path(path)
        rel = self._rel(path)
        if rel in self.files:
            return
        if path.exists() and not path.is_dir():
            raise ConfigError(f"refusing to replace {path}: cnnkit did not write it; move it or choose another --out")
        self.files.add(rel)
        self._save()

    def record_dir(self, folder: Path) -> None:
        """Claim a sub-folder whose files a library writes itself (TensorBoard's event files): every file
        under it counts as cnnkit's. Refused if the folder already holds files cnnkit did not write."""
        rel = self._rel(folder) + "/"
        if rel in self.files:
            return
        if folder.is_dir() and any(p.is_file() and not self.owns(p) for p in folder.rglob("*")):
            raise ConfigError(f"refusing to write into {folder}: it holds files cnnkit did not write; move them "
                              f"or choose another --out")
        self.files.add(rel)
        self._save()

    def _save(self) -> None:
        body = json.dumps({"format": MANIFEST_FORMAT, "files": sorted(self.files)}, indent=1) + "\n"
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = temp_path_for(self.manifest)
            tmp.write_text(body)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, self.manifest)
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise DiskWriteError(f"cannot write {self.manifest}: {e.strerror or e}") from None

    def foreign_files(self) -> list[Path]:
        """Files in the folder (recursively) that cnnkit did not write."""
        return sorted(p for p in self.root.rglob("*") if not p.is_dir() and not self.owns(p))

    def remove_own_files(self) -> int:
        """Delete every recorded file (and its interrupted temporaries), then the folders left empty."""
        removed = 0
        for p in sorted(self.root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if p.is_dir():
                if p != self.root and not any(p.iterdir()):
                    p.rmdir()
            elif self.owns(p) and p.name not in (MANIFEST, LOCK):
                p.unlink()
                removed += 1
        self.files = set()
        self._save()
        return removed


_CLAIMED: dict[Path, OutputDir] = {}


def claim_dir(folder: str | os.PathLike, *, overwrite: bool = False, option: str = "--out") -> OutputDir:
    """Make `folder` an output folder of this process: created if missing, its manifest loaded. With
    `overwrite`, remove the files cnnkit wrote there before, refusing if the folder holds anything else."""
    root = Path(folder).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{option} {root} is a file; give a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {option} folder {root}: {e.strerror or e}") from None
    out = _CLAIMED.get(root.absolute())
    if out is None and not overwrite:  # the innermost folder, this one or above, with a manifest: record there
        here = root.absolute()
        holder = next((d for d in (here, *here.parents) if (d / MANIFEST).is_file()), None)
        out = _CLAIMED.get(holder) or (OutputDir(holder) if holder is not None else None)
    out = out or OutputDir(root)
    if overwrite:
        foreign = out.foreign_files()
        if foreign:
            names = ", ".join(str(p.relative_to(out.root)) for p in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise ConfigError(f"will not overwrite {root}: it holds files cnnkit did not write ({names}{more}); "
                              f"move them or choose another {option}")
        out.remove_own_files()
    _CLAIMED[out.root] = out
    return out


class RunLock:
    """An exclusive lock on a run directory (flock: a killed process never leaves it stuck)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise ConfigError(f"{self.path.parent} is in use by another cnnkit run; wait for it to finish "
                              f"or choose another --out") from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
