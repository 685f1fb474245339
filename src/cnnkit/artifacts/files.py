"""Atomic writes, output folders that record what cnnkit wrote in them, and a lock for run directories.

cnnkit deletes or replaces only files it wrote itself. Every folder a command writes into is *claimed*
first (`claim_dir`) and keeps its own manifest (`.cnnkit-files.json`) of what cnnkit wrote there, one entry
per file, recorded before the file appears:

- `files`: the files cnnkit wrote, by their exact path relative to the folder;
- `patterns`: the files a library names itself, by that library's exact pattern directly in one sub-folder
  (TensorBoard's `tb/events.out.tfevents.*`), recorded only while that sub-folder holds no such file of anyone
  else's;
- `dirs`: the sub-folders cnnkit created (`.`: the folder itself), the only folders it ever removes, and
  only once they are empty.

A temporary file of an interrupted write counts as cnnkit's only by the exact name `temp_path_for` gives
(`.<name>.cnnkit-<12 hex digits>.tmp[<suffix>]`) beside a recorded `<name>`. A sub-folder with a manifest
of its own (a run directory, an `explain` folder inside a run) keeps its own record: nothing is ever recorded
for it in an enclosing folder's manifest, and the enclosing folder's `--overwrite` goes by the sub-folder's
record for the files in it.

`--overwrite` removes exactly the recorded files and refuses, naming them, when the folder holds anything
else; it never clears the file-system root, the home folder, the current folder or a folder that contains
one of them. A write that would replace a file the manifest does not list is refused as well. The `check_*`
functions give each of these refusals without writing anything, so that a command can make every check
before its first write: a refused command leaves nothing behind.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from cnnkit.errors import CnnkitError, ConfigError

MANIFEST = ".cnnkit-files.json"
MANIFEST_FORMAT = "cnnkit-files/1"
LOCK = ".cnnkit.lock"
TENSORBOARD_EVENTS = "events.out.tfevents.*"  # the names TensorBoard's writers give their event files

# mkstemp creates files readable by their owner only; give written files the mode open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK

# A temporary file of cnnkit's: `.<name>.cnnkit-<token>.tmp[<suffix>]`, the regex built from the same parts.
_TEMP_MARK, _TEMP_END, _TOKEN_BYTES = ".cnnkit-", ".tmp", 6
_TEMP_NAME = re.compile(r"\.(?P<name>.+)" + re.escape(_TEMP_MARK) + f"[0-9a-f]{{{2 * _TOKEN_BYTES}}}"
                        + re.escape(_TEMP_END) + r"(?P<suffix>(?:\.[^.]+)?)", re.DOTALL)


class DiskWriteError(CnnkitError):
    """A file could not be written (no space, file too large, no permission); the previous one is kept."""


def temp_path_for(path: Path, keep_suffix: bool = False) -> Path:
    """A fresh temporary file beside `path` (`.<name>.cnnkit-<random>.tmp`), recognisable as cnnkit's own;
    `keep_suffix`: `.<name>.cnnkit-<random>.tmp<suffix>`, for writers that go by the suffix (torch.export.save
    warns, and its loader falls back, on a `.pt2` archive named otherwise)."""
    path = Path(path)
    suffix = path.suffix if keep_suffix else ""
    while True:
        tmp = path.with_name(f".{path.name}{_TEMP_MARK}{secrets.token_hex(_TOKEN_BYTES)}{_TEMP_END}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return tmp
        except FileExistsError:  # 2**-48 per try
            continue


def _temp_target(name: str) -> str | None:
    """The name whose temporary file `name` is, if `name` has exactly the form temp_path_for gives."""
    m = _TEMP_NAME.fullmatch(name)
    if m is None or m["suffix"] not in ("", os.path.splitext(m["name"])[1]):
        return None
    return m["name"]


# -- the file-system root, the home folder and the current folder ----------------------------------------------

def _is_fs_root(folder: Path) -> bool:
    real = folder.expanduser().resolve()
    return real == Path(real.anchor)


def _protected(folder: Path) -> str | None:
    """What makes `folder` one that --overwrite must never clear, if anything."""
    real = folder.expanduser().resolve()
    if real == Path(real.anchor):
        return "the file-system root"
    for what, where in (("your home folder", Path.home), ("the current folder", Path.cwd)):
        try:
            place = where().resolve()
        except (OSError, RuntimeError, KeyError):  # no home folder to be found, a deleted current folder
            continue
        if place == real:
            return what
        if place.is_relative_to(real):
            return f"a folder that contains {what}"
    return None


def check_out_dir(folder: str | os.PathLike, *, overwrite: bool = False, option: str = "--out") -> None:
    """Every refusal `claim_dir(folder, overwrite=overwrite)` gives, checked without writing anything: a file
    where the folder should be, the file-system root, and with `overwrite` a protected folder (the home or
    current folder, one containing them) or one holding files cnnkit did not write."""
    root = Path(folder).expanduser()
    if (root.exists() or root.is_symlink()) and not root.is_dir():
        raise ConfigError(f"{option} {root} is a file; give a folder")
    if _is_fs_root(root):
        raise ConfigError(f"{option} {root} is the file-system root; cnnkit writes only into a folder of its own "
                          f"there, e.g. {option} runs/run1")
    if not overwrite or not root.is_dir():
        return
    out = OutputDir.of(root)
    what = _protected(root)
    if what is not None:
        foreign = [p.relative_to(out.root).as_posix() for p in out.foreign_files(limit=3)]
        holds = f" (and it holds files cnnkit did not write: {', '.join(foreign)})" if foreign else ""
        raise ConfigError(f"will not overwrite {root}: it is {what}{holds}; --overwrite clears the folder "
                          f"it is given, so give the run a folder of its own with {option}")
    foreign = out.foreign_files()
    if foreign:
        names = ", ".join(p.relative_to(out.root).as_posix() for p in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise ConfigError(f"will not overwrite {root}: it holds files cnnkit did not write ({names}{more}); "
                          f"move them or choose another {option}")


def check_writable(paths: Iterable[str | os.PathLike], option: str = "--out") -> None:
    """Refuse, before anything is written, to write any of `paths` where cnnkit would refuse the write itself:
    a folder, the file-system root, an existing file the manifest of its folder does not list."""
    for path in (Path(p).expanduser() for p in paths):
        if path.is_dir():
            raise ConfigError(f"{option} {path} is a folder; give the file to write")
        check_out_dir(path.parent, option=option)
        OutputDir.of(path.parent).check_free([path], option)  # the record claim_dir(path.parent) keeps


# -- output folders -------------------------------------------------------------------------------------------

def _str_list(value: object) -> list[str] | None:
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


class OutputDir:
    """A folder cnnkit writes into, with the manifest of the files it wrote there."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().absolute()
        self.manifest = self.root / MANIFEST
        self.files: set[str] = set()
        self.patterns: set[str] = set()
        self.dirs: set[str] = set()
        self.created = False  # claim_dir created the folder (recorded as "." with the first file written there)
        self._load()

    @classmethod
    def of(cls, folder: str | os.PathLike) -> OutputDir:
        """The record of `folder` as claim_dir would find it, without claiming or creating anything."""
        root = Path(folder).expanduser().absolute()
        out = _CLAIMED.get(root)
        if out is not None:
            out._load()
            return out
        return cls(root)

    def _load(self) -> None:
        if not self.manifest.exists() and not self.manifest.is_symlink():
            self._adopt()
            return
        try:
            saved = json.loads(self.manifest.read_text())
        except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 or JSON, nested too deep
            saved = None
        ok = isinstance(saved, dict) and saved.get("format") == MANIFEST_FORMAT
        files = _str_list(saved.get("files")) if ok else None
        patterns = _str_list(saved.get("patterns", [])) if ok else None
        dirs = _str_list(saved.get("dirs", [])) if ok else None
        if files is None or patterns is None or dirs is None:
            raise ConfigError(f"{self.manifest} is damaged; cnnkit cannot tell which files in {self.root} "
                              f"it wrote. Move what you want to keep and delete the folder yourself") from None
        self.files, self.patterns, self.dirs = set(), set(patterns), set(dirs)
        for f in files:
            if f.endswith("/"):  # written before patterns: a sub-folder TensorBoard wrote into, claimed whole
                self.dirs.add(f.rstrip("/"))
                if "patterns" not in saved:
                    self.patterns.add(f + TENSORBOARD_EVENTS)
            else:
                self.files.add(f)

    def _adopt(self) -> None:
        """No manifest here: take over what an enclosing folder's manifest recorded of this folder (cnnkit
        once recorded a run made inside a claimed folder there); that manifest is left as it is."""
        self.files, self.patterns, self.dirs = set(), set(), set()
        for holder in self.root.parents:
            if (holder / MANIFEST).is_file():
                try:
                    above = OutputDir(holder)
                except ConfigError:
                    return
                prefix = self.root.relative_to(holder).as_posix() + "/"
                for name, mine in ((above.files, self.files), (above.patterns, self.patterns),
                                   (above.dirs, self.dirs)):
                    mine.update(f[len(prefix):] for f in name if f.startswith(prefix) and len(f) > len(prefix))
                return

    def _rel(self, path: Path) -> str:
        return Path(path).expanduser().absolute().relative_to(self.root).as_posix()

    def _nested(self, path: Path) -> OutputDir | None:
        """The sub-folder of this one, between it and `path`, that keeps its own manifest (the innermost)."""
        path = Path(path).absolute()
        for folder in path.parents:
            if folder == self.root or not folder.is_relative_to(self.root):
                return None
            if (folder / MANIFEST).is_file():
                return OutputDir.of(folder)
        return None

    def _owns_here(self, rel: str) -> bool:
        """`rel` is recorded in this manifest (or is the manifest, the lock, a temporary of a recorded file)."""
        if rel in self.files or rel in (MANIFEST, LOCK):
            return True
        folder, name = os.path.split(rel)
        if any(os.path.dirname(p) == folder and fnmatch.fnmatchcase(name, os.path.basename(p))
               for p in self.patterns):
            return True
        target = _temp_target(name)
        return target is not None and target != name and self._owns_here(os.path.join(folder, target))

    def owns(self, path: Path) -> bool:
        """cnnkit wrote `path`: this manifest records it, or that of the sub-folder holding it."""
        nested = self._nested(path)
        if nested is not None:
            return nested.owns(path)
        return self._owns_here(self._rel(path))

    def check_free(self, paths: Iterable[Path], option: str = "--out") -> None:
        """Refuse, writing nothing, if any of `paths` is a folder or a file cnnkit did not write."""
        taken = []
        for p in (Path(p) for p in paths):
            if p.is_dir() and not p.is_symlink():
                raise ConfigError(f"cannot write {p}: a folder of that name is in the way; move it or choose "
                                  f"another {option}")
            if (p.exists() or p.is_symlink()) and not self.owns(p):
                taken.append(p)
        if len(taken) == 1:
            raise ConfigError(f"refusing to replace {taken[0]}: cnnkit did not write it; move it or choose "
                              f"another {option}")
        if taken:
            names = ", ".join(p.name for p in taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
            raise ConfigError(f"refusing to replace files cnnkit did not write in {taken[0].parent} ({names}); "
                              f"move them or choose another {option}")

    def check_library_files(self, folder: Path, pattern: str, option: str = "--out") -> None:
        """Refuse, writing nothing, what `record_library_files(folder, pattern)` would refuse."""
        folder = Path(folder).absolute()
        if (folder.exists() or folder.is_symlink()) and not (folder.is_dir() and not folder.is_symlink()):
            raise ConfigError(f"cannot write into {folder}: a file of that name is in the way; move it or choose "
                              f"another {option}")
        if folder.is_dir() and self._rel(folder / pattern) not in self.patterns:
            theirs = sorted(p.name for p in folder.glob(pattern) if not self.owns(p))
            if theirs:
                raise ConfigError(f"refusing to write into {folder}: it holds files cnnkit did not write with the "
                                  f"names cnnkit would write there ({', '.join(theirs[:3])}); move them or choose "
                                  f"another {option}")

    def record(self, path: Path) -> None:
        """Add `path` to the manifest (before it is written, so an interrupted write is still ours)."""
        path = Path(path)
        rel = self._rel(path)
        if rel in self.files:
            return
        self._load()  # what another cnnkit process recorded here meanwhile is kept
        if rel in self.files:
            return
        if (path.exists() or path.is_symlink()) and not path.is_dir() and not self._owns_here(rel):
            raise ConfigError(f"refusing to replace {path}: cnnkit did not write it; move it or choose another --out")
        self.files.add(rel)
        self._save()

    def record_all(self, paths: Iterable[Path]) -> None:
        """`record` for many files of this folder's own record in one save of the manifest (thousands of
        files, each recorded on its own, would rewrite a growing manifest thousands of times)."""
        new = {self._rel(Path(p)): Path(p) for p in paths}
        new = {rel: p for rel, p in new.items() if rel not in self.files}
        if new:
            self._load()
            self.check_free([p for rel, p in new.items() if rel not in self.files])
            self.files |= set(new)
            self._save()

    def record_library_files(self, folder: Path, pattern: str) -> None:
        """Record the files a library names itself in `folder` (created if missing, as cnnkit's), by that
        library's exact `pattern` (e.g. TENSORBOARD_EVENTS); refused if files of that pattern are there already
        and cnnkit did not write them. Files of other names there stay the user's."""
        folder = Path(folder).absolute()
        self.check_library_files(folder, pattern)
        self.make_dirs(folder, pattern=self._rel(folder / pattern))

    def make_dirs(self, folder: Path, pattern: str | None = None) -> None:
        """Create `folder` (inside this one) and its missing parents, recording each as created by cnnkit
        (and `pattern` with them, in the same save)."""
        folder = Path(folder).absolute()
        missing = {self._rel(d) for d in (folder, *folder.parents) if d.is_relative_to(self.root) and not d.is_dir()}
        if missing - self.dirs or (pattern is not None and pattern not in self.patterns):
            self._load()
            self.dirs |= missing
            self.patterns |= {pattern} if pattern is not None else set()
            self._save()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DiskWriteError(f"cannot create {folder}: {e.strerror or e}") from None

    def _save(self) -> None:
        dirs = self.dirs | ({"."} if self.created else set())
        body = json.dumps({"format": MANIFEST_FORMAT, "files": sorted(self.files), "patterns": sorted(self.patterns),
                           "dirs": sorted(dirs)}, indent=1) + "\n"
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

    def _walk(self) -> Iterator[tuple[Path, OutputDir, OutputDir | None]]:
        """(path, the record it belongs to, for a folder: the record of its contents) for everything under the
        folder, depth first; symbolic links are listed, never followed."""
        stack: list[tuple[Path, OutputDir]] = [(self.root, self)]
        while stack:
            folder, owner = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                p = Path(e.path)
                if e.is_dir(follow_symlinks=False):
                    inner = OutputDir.of(p) if (p / MANIFEST).is_file() else owner
                    yield p, owner, inner
                    stack.append((p, inner))
                else:
                    yield p, owner, None

    def foreign_files(self, limit: int | None = None) -> list[Path]:
        """Files in the folder (recursively) that cnnkit did not write (the first `limit` found)."""
        found = []
        for p, owner, inner in self._walk():
            if inner is None and not owner._owns_here(owner._rel(p)):
                found.append(p)
                if limit is not None and len(found) >= limit:
                    break
        return sorted(found)

    def _nested_dirs(self) -> list[OutputDir]:
        return [inner for _, owner, inner in self._walk() if inner is not None and inner is not owner]

    def remove_own_files(self) -> int:
        """Delete every recorded file (and its interrupted temporaries), those of sub-folders with their own
        manifest (and those manifests), then the folders cnnkit created that are left empty."""
        removed = 0
        entries = list(self._walk())
        files = [(p, owner) for p, owner, inner in entries if inner is None and owner._owns_here(owner._rel(p))]
        for p, owner in sorted(files, key=lambda f: f[0].name in (MANIFEST, LOCK)):  # the manifests last
            if p.name in (MANIFEST, LOCK) and (owner is self or p.parent != owner.root):
                continue  # this folder's own stay; a sub-folder's go once all its files are gone
            p.unlink(missing_ok=True)
            removed += p.name not in (MANIFEST, LOCK)
        for p, owner, inner in reversed(entries):  # deepest first
            if inner is None:
                continue
            created = owner._rel(p) in owner.dirs or (inner is not owner and ("." in inner.dirs or inner.created))
            if created:
                try:
                    p.rmdir()
                except OSError:  # not empty: it holds something of the user's
                    pass
            if inner is not owner:
                _CLAIMED.pop(inner.root, None)
        self.files, self.patterns = set(), set()
        self.dirs = {d for d in self.dirs if (self.root / d).is_dir()}
        self._save()
        return removed


_CLAIMED: dict[Path, OutputDir] = {}


def _owner_for(path: Path) -> OutputDir | None:
    """The output folder whose manifest records `path`: the innermost claimed folder it lies in, or a
    sub-folder of that one with its own manifest (then claimed too)."""
    path = Path(path).absolute()
    best = None
    for root, out in _CLAIMED.items():
        if path.is_relative_to(root) and path != root and (best is None or len(root.parts) > len(best.root.parts)):
            best = out
    if best is None:
        return None
    nested = best._nested(path)
    if nested is not None:
        _CLAIMED[nested.root] = nested
    return nested or best


def claim_dir(folder: str | os.PathLike, *, overwrite: bool = False, option: str = "--out") -> OutputDir:
    """Make `folder` an output folder of this process, with its own manifest: created if missing, its
    manifest loaded. With `overwrite`, remove the files cnnkit wrote there before, refusing if the folder holds
    anything else or is a protected one (see check_out_dir)."""
    root = Path(folder).expanduser()
    check_out_dir(root, overwrite=overwrite, option=option)
    created = not root.is_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {option} folder {root}: {e.strerror or e}") from None
    out = OutputDir.of(root)
    out.created |= created
    if overwrite:
        locks = []
        try:
            for inner in out._nested_dirs():  # a run inside: not while it runs
                if (inner.root / LOCK).exists():
                    locks.append(RunLock(inner.root).acquire())
            out.remove_own_files()
        finally:
            for lock in locks:
                lock.release()
    _CLAIMED[out.root] = out
    return out


# -- atomic writes --------------------------------------------------------------------------------------------

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    The previous file stays whole until the rename; a write that fails (no space, RLIMIT_FSIZE, no
    permission) leaves it untouched and raises DiskWriteError."""
    path = Path(path)
    owner = _owner_for(path)
    try:
        if owner is not None:
            owner.record(path)
            owner.make_dirs(path.parent)
        else:
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
    """Move a temporary file that a library wrote (ONNX, a program) into place as `path`, recorded."""
    owner = _owner_for(path)
    if owner is not None:
        owner.record(path)
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


class RunLock:
    """An exclusive lock on a run directory (flock: a killed process never leaves it stuck)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.fd: int | None = None
        self.created = False  # this lock made the file (a refused command removes it again)

    def acquire(self) -> RunLock:
        while True:
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:  # removed by its holder just now: make it
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ConfigError(f"{self.path.parent} is in use by another cnnkit run; wait for it to finish "
                                  f"or choose another --out") from None
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                self.fd, self.created = fd, created
                return self
            os.close(fd)  # its holder removed the file while we waited for it: lock the one there now

    def release(self, remove: bool = False) -> None:
        """Unlock; `remove`: delete the lock file too (while still holding it, so no one else holds it)."""
        if self.fd is not None:
            if remove:
                self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
