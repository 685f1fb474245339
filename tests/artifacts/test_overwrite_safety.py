"""What --overwrite may delete, which manifest records a folder's files, and refusals that leave nothing behind.

cnnkit deletes or replaces only files it recorded one by one: never a user's file beside them (in a folder a
library writes into, or named like a temporary), never the file-system root, the home or the current folder
as a whole; a run inside another output folder keeps its own record; a refused command writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cnnkit.artifacts import read_meta
from cnnkit.artifacts.files import (MANIFEST, OutputDir, atomic_write_text, check_out_dir, claim_dir,
                                    temp_path_for)
from cnnkit.cli import main
from cnnkit.errors import ConfigError

TINY = ["--model", "resnet9", "--model-kw", "width=4", "--data", "sample", "--train-images", "300",
        "--epochs", "1", "--batch-size", "128", "--quiet"]


def _listing(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under `folder`, hidden ones included."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished one-epoch run made by `cnnkit train`; tests work on copies of it."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run


def _copy(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to))


# ---------------------------------------------------------------- 1. recorded one by one, never a folder whole

def test_overwrite_refuses_user_files_in_the_tensorboard_folder_and_lookalike_temporaries(tmp_path, tiny_run, capsys):
    run = _copy(tiny_run, tmp_path / "run")
    (run / "tb" / "notes.txt").write_text("what I tried")
    (run / "tb" / "mine").mkdir()
    (run / "tb" / "mine" / "curves.csv").write_text("1,2")
    (run / ".metrics.csv.backup.tmp").write_text("my copy of the metrics")
    (run / ".metrics.csv.mybackup.tmp").write_text("eight letters, as mkstemp's random part")
    before = _listing(run)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(run), "--overwrite"]) == 2
    err = _error(capsys)
    for name in ("tb/notes.txt", "tb/mine/curves.csv", ".metrics.csv.backup.tmp", ".metrics.csv.mybackup.tmp"):
        assert name in err
    assert _listing(run) == before  # nothing deleted, nothing written


def test_overwrite_removes_cnnkits_files_and_temporaries_but_no_folder_of_the_user(tmp_path, tiny_run):
    run = _copy(tiny_run, tmp_path / "run")
    old_events = {p.name for p in (run / "tb").glob("events.out.tfevents.*")}
    assert old_events
    interrupted = temp_path_for(run / "metrics.csv")  # a write of cnnkit's, killed before its rename
    (run / "tb" / "empty").mkdir()  # the user's empty folders: not cnnkit's to remove
    (run / "keep").mkdir()
    assert main(["train", *TINY, "--out", str(run), "--overwrite"]) == 0
    assert not interrupted.exists()
    assert (run / "tb" / "empty").is_dir() and (run / "keep").is_dir()
    new_events = {p.name for p in (run / "tb").glob("events.out.tfevents.*")}
    assert new_events and not new_events & old_events  # the previous run's event files were removed
    assert not OutputDir(run).foreign_files()


def test_temporary_files_are_cnnkits_only_by_their_exact_name(tmp_path):
    out = claim_dir(tmp_path / "out")
    atomic_write_text(out.root / "metrics.csv", "epoch\n")
    atomic_write_text(out.root / "model.onnx", "graph")
    ours = [temp_path_for(out.root / "metrics.csv"), temp_path_for(out.root / "model.onnx", keep_suffix=True),
            temp_path_for(out.root / MANIFEST)]
    token = ours[0].name.split(".cnnkit-")[1].split(".")[0]
    theirs = [".metrics.csv.backup.tmp", ".metrics.csv.mybackup.tmp", f".metrics.csv.cnnkit-{token[:-1]}.tmp",
              f".metrics.csv.cnnkit-{token.upper()}.tmp", f".metrics.csv.cnnkit-{token}.tmp.bak",
              f".model.onnx.cnnkit-{token}.tmp.csv", f".notes.txt.cnnkit-{token}.tmp",
              f"metrics.csv.cnnkit-{token}.tmp"]
    for name in theirs:
        (out.root / name).write_text("the user's")
    assert all(out.owns(p) for p in ours)
    assert sorted(p.name for p in out.foreign_files()) == sorted(theirs)


def test_overwrite_removes_only_the_folders_cnnkit_created(tmp_path):
    out = claim_dir(tmp_path / "out")
    atomic_write_text(out.root / "plots" / "a" / "x.txt", "cnnkit made plots/ and plots/a/ for this")
    (out.root / "plots" / "b").mkdir()  # the user's, empty
    (out.root / "mine").mkdir()
    claim_dir(out.root, overwrite=True)
    assert sorted(_listing(out.root)) == [MANIFEST, "mine", "plots", "plots/b"]
    (out.root / "plots" / "b").rmdir()
    claim_dir(out.root, overwrite=True)
    assert sorted(_listing(out.root)) == [MANIFEST, "mine"]  # plots/ was cnnkit's, and is empty now


# ---------------------------------------------------------------- 2. every output folder keeps its own record

def test_a_run_inside_a_folder_with_a_manifest_keeps_its_own(tmp_path, tiny_run):
    models = tmp_path / "models"
    assert main(["export", "--checkpoint", str(tiny_run), "--out", str(models / "model.onnx")]) == 0
    recorded = (models / MANIFEST).read_text()
    run = models / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    assert (run / MANIFEST).is_file()
    assert (models / MANIFEST).read_text() == recorded  # nothing of the run in the enclosing folder's manifest
    assert main(["train", *TINY, "--out", str(run), "--overwrite"]) == 0  # cnnkit's own files: replaced
    copy = _copy(run, tmp_path / "elsewhere" / "run")  # the run's record travels with it
    assert main(["train", "--resume", str(copy), "--epochs", "2", "--quiet"]) == 0
    assert read_meta(copy / "last.safetensors")["epoch"] == 2
    assert not OutputDir(copy).foreign_files()


def test_overwrite_of_a_run_goes_by_the_record_of_an_output_folder_inside_it(tmp_path, tiny_run, capsys):
    run = _copy(tiny_run, tmp_path / "run")
    explain = claim_dir(run / "explain")  # e.g. `cnnkit explain`'s default folder: claimed with its own manifest
    atomic_write_text(explain.root / "shoe.png", "overlay")
    assert (explain.root / MANIFEST).is_file() and "explain" not in (run / MANIFEST).read_text()
    (explain.root / "shoe-notes.txt").write_text("the user's")
    before = _listing(run)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(run), "--overwrite"]) == 2
    assert "explain/shoe-notes.txt" in _error(capsys) and _listing(run) == before
    (explain.root / "shoe-notes.txt").unlink()
    assert main(["train", *TINY, "--out", str(run), "--overwrite"]) == 0
    assert not (run / "explain").exists()  # its files, its manifest, then the folder cnnkit made


def test_runs_recorded_in_an_enclosing_folders_manifest_by_earlier_versions_stay_cnnkits(tmp_path):
    models = tmp_path / "models"
    run = models / "run"
    (run / "tb").mkdir(parents=True)
    for name in ("model.onnx", "run/config.yaml", "run/last.safetensors", "run/tb/events.out.tfevents.1.host.7.0"):
        (models / name).write_text("cnnkit's")
    (run / "tb" / "notes.txt").write_text("the user's")
    # what cnnkit wrote before each output folder had its own manifest: "tb/" claimed the folder whole
    (models / MANIFEST).write_text(json.dumps({"format": "cnnkit-files/1", "files": [
        "model.onnx", "run/config.yaml", "run/last.safetensors", "run/tb/"]}))
    out = OutputDir(run)
    assert out.owns(run / "config.yaml") and out.owns(run / "tb" / "events.out.tfevents.1.host.7.0")
    assert not out.owns(run / "tb" / "notes.txt")
    with pytest.raises(ConfigError, match="tb/notes.txt"):
        claim_dir(run, overwrite=True)
    (run / "tb" / "notes.txt").unlink()
    claim_dir(run, overwrite=True)
    assert sorted(_listing(run)) == [MANIFEST]  # tb/ was made by cnnkit's TensorBoard writer
    assert (models / "model.onnx").exists()


# ---------------------------------------------------------------- 3. never the root, the home or the current folder

def test_overwrite_never_clears_the_home_or_the_current_folder(tmp_path, tiny_run, monkeypatch, capsys):
    home = _copy(tiny_run, tmp_path / "home")  # a run written straight into the home folder: cnnkit's files only
    monkeypatch.setenv("HOME", str(home))
    work = _copy(tiny_run, tmp_path / "work")  # a run, and the current folder (or its tb/ sub-folder)
    listings = {home: _listing(home), work: _listing(work)}
    capsys.readouterr()
    for out, cwd, says in [(str(home), tmp_path, "your home folder"), ("~", tmp_path, "your home folder"),
                           (".", work, "the current folder"), ("..", work / "tb", "contains the current folder"),
                           (str(work), work / "tb", "contains the current folder")]:
        monkeypatch.chdir(cwd)
        assert main(["train", *TINY, "--out", out, "--overwrite"]) == 2, out
        assert says in _error(capsys)
    with pytest.raises(ConfigError, match="home folder"):
        claim_dir(home, overwrite=True)
    assert {home: _listing(home), work: _listing(work)} == listings


def test_the_file_system_root_is_never_an_output_folder(tmp_path, capsys):
    with pytest.raises(ConfigError, match="file-system root"):
        check_out_dir("/")
    with pytest.raises(ConfigError, match="file-system root"):
        claim_dir("/")  # (without overwrite it would only have found the folder there)
    capsys.readouterr()
    # refused before anything is loaded (were they not, the missing data and target would fail, writing nothing)
    assert main(["train", "--data", "imagefolder:" + str(tmp_path / "none"), "--out", "/", "--quiet"]) == 2
    assert "file-system root" in _error(capsys)
    assert main(["bench", str(tmp_path / "none.onnx"), "--out", "/bench.json"]) == 2
    assert "file-system root" in _error(capsys)


# ---------------------------------------------------------------- 4. a refused command leaves nothing

def test_refused_commands_leave_the_folder_as_it_was(tmp_path, tiny_run, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "user.onnx").write_bytes(b"the user's model")
    (folder / "other.onnx.json").write_text("{}")  # the sidecar name of other.onnx
    (folder / "metrics.csv").write_text("epoch,acc\n")
    (folder / "lr_find.csv").write_text("lr,loss\n")
    before = _listing(folder)
    capsys.readouterr()
    for args, name in [(["export", "--checkpoint", str(tiny_run), "--out", str(folder / "user.onnx")], "user.onnx"),
                       (["export", "--checkpoint", str(tiny_run), "--out", str(folder / "other.onnx")],
                        "other.onnx.json"),
                       (["bench", str(tiny_run), "--out", str(folder / "user.onnx")], "user.onnx"),
                       (["train", *TINY, "--out", str(folder)], "metrics.csv"),
                       (["train", *TINY, "--lr-find", "--out", str(folder)], "lr_find.csv")]:
        assert main(args) == 2, args
        err = _error(capsys)
        assert name in err and "did not write" in err, args
        assert _listing(folder) == before, args  # no sidecar, manifest, config.yaml or lock left behind


def test_a_run_is_refused_over_a_users_tensorboard_files_before_it_writes(tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "tb").mkdir(parents=True)
    (folder / "tb" / "events.out.tfevents.1.host.7.0").write_bytes(b"the user's curves")
    before = _listing(folder)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(folder)]) == 2
    assert "events.out.tfevents.1.host.7.0" in _error(capsys)
    assert _listing(folder) == before
