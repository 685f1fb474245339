"""Deletion safety: cnnkit deletes or replaces only the files it wrote itself."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest

from cnnkit.artifacts import claim_dir
from cnnkit.artifacts.files import MANIFEST, RunLock, atomic_write_text
from cnnkit.cli import main
from cnnkit.errors import ConfigError

TINY = ["--model", "resnet9", "--model-kw", "width=4", "--data", "sample", "--train-images", "300",
        "--epochs", "1", "--batch-size", "128", "--quiet"]


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_removes_only_recorded_files_and_refuses_when_others_are_there(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    written = set(_listing(run))
    assert {"last.safetensors", "best.safetensors", "config.yaml", "metrics.csv", MANIFEST} <= written
    assert any(name.startswith("tb/") for name in written)

    # overwrite a folder holding only cnnkit's files: allowed, and the old files are replaced
    assert main(["train", *TINY, "--out", str(run), "--overwrite"]) == 0
    # a user's file next to the run: --overwrite refuses, naming it, and deletes nothing
    (run / "notes.txt").write_text("my notes")
    (run / "mine").mkdir()
    (run / "mine" / "data.csv").write_text("1,2")
    before = _listing(run)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(run), "--overwrite"]) == 2
    message = capsys.readouterr().err.strip()
    assert "notes.txt" in message and "mine/data.csv" in message and len(message.splitlines()) == 1
    assert _listing(run) == before


def test_a_run_written_without_a_manifest_is_never_cleared(tmp_path):
    run = tmp_path / "old-run"  # e.g. written by an earlier cnnkit: nothing says which files are cnnkit's
    run.mkdir()
    for name in ("last.safetensors", "config.yaml", "photo.jpg"):
        (run / name).write_bytes(b"x")
    with pytest.raises(ConfigError, match="did not write"):
        claim_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.safetensors", "photo.jpg"]


def test_demo_twice_in_the_current_folder_never_empties_it(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    cmd = [sys.executable, "-m", "cnnkit", "demo", "--out", ".", "--epochs", "1", "--quiet"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr  # writing beside the user's file deletes nothing
    assert (tmp_path / "report.html").exists()
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2  # replacing the demo would mean clearing a folder that holds a user's file
    assert "thesis.tex" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    assert (tmp_path / "report.html").exists()


def test_a_write_never_replaces_a_file_cnnkit_did_not_write(tmp_path):
    out = claim_dir(tmp_path / "explain")
    user_file = out.root / "cat.png"
    user_file.write_bytes(b"the user's picture")
    with pytest.raises(ConfigError, match="cnnkit did not write it"):
        atomic_write_text(user_file, "overlay")
    assert user_file.read_bytes() == b"the user's picture"
    atomic_write_text(out.root / "dog.png", "overlay")  # a new file is fine, and recorded
    atomic_write_text(out.root / "dog.png", "overlay 2")  # and cnnkit may replace its own file
    assert out.owns(out.root / "dog.png") and not out.owns(user_file)


def test_explain_into_a_users_folder_keeps_their_files(tmp_path, trained_run, capsys):
    from PIL import Image

    from cnnkit.data import load_dataset

    sample = load_dataset("sample", "test")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(sample.images[0, 0].numpy(), "L").save(folder / "shoe.png")
    (folder / "shoe.png.keep").write_text("mine")
    before = _listing(folder)
    assert main(["explain", str(folder / "shoe.png"), "--checkpoint", str(trained_run.run_dir),
                 "--out", str(folder)]) == 2  # the overlay would be photos/shoe.png: the user's image
    assert "did not write" in capsys.readouterr().err
    assert _listing(folder) == before
    out = tmp_path / "overlays"
    assert main(["explain", str(folder / "shoe.png"), "--checkpoint", str(trained_run.run_dir),
                 "--out", str(out)]) == 0
    assert main(["explain", str(folder / "shoe.png"), "--checkpoint", str(trained_run.run_dir),
                 "--out", str(out)]) == 0  # re-running replaces its own overlays


def test_out_pointing_at_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep")
    assert main(["train", *TINY, "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "keep"


def _hold_lock(folder: str, ready, release) -> None:
    with RunLock(Path(folder)):
        ready.set()
        release.wait(30)


def test_a_second_run_on_the_same_folder_is_refused_while_one_runs(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ConfigError, match="in use by another cnnkit run"):
            RunLock(tmp_path).acquire()
    finally:
        release.set()
        holder.join(30)
    RunLock(tmp_path).acquire().release()  # free again once the holder is gone


def test_a_killed_run_does_not_leave_its_lock_stuck(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(60)
    holder.kill()
    holder.join(30)
    RunLock(tmp_path).acquire().release()
