"""Fault drills: a training run killed (SIGKILL) at random and at chosen moments resumes to the same weights,
bit for bit, as an uninterrupted run; a write that fails for lack of space leaves the last checkpoint loadable."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnkit.artifacts import load, read_meta
from cnnkit.artifacts.files import MANIFEST, OutputDir

EPOCHS = 5
RUN = ["--model", "resnet9", "--model-kw", "width=4", "--data", "sample", "--train-images", "300",
       "--val-fraction", "0.05", "--batch-size", "100", "--epochs", str(EPOCHS), "--deterministic",
       "--threads", "1", "--quiet"]

# Runs the CLI in a fresh interpreter, first arranging to SIGKILL itself at the N-th call of one function:
# the moments a timer would only hit by luck (mid-checkpoint-write, between two renames, mid-evaluation).
DRIVER = r"""
import os, signal, sys
kind, n = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}
def kill_on_nth(fn, after=False):
    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        out = fn(*a, **k)
        if calls["n"] == n and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped
import cnnkit.artifacts.files as files
import cnnkit.train.loop as loop
if kind == "fsync":      # a file's bytes are written, not yet renamed into place
    files.os.fsync = kill_on_nth(files.os.fsync)
elif kind == "replace":  # just after a rename: e.g. best written, state or last not yet
    files.os.replace = kill_on_nth(files.os.replace, after=True)
elif kind == "step":     # mid-epoch
    loop._step = kill_on_nth(loop._step)
elif kind == "eval":     # mid-evaluation
    loop.validation_sums = kill_on_nth(loop.validation_sums)
from cnnkit.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _cnnkit(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnkit", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def _assert_same_run(run: Path, reference: Path) -> None:
    ref, got = _weights(reference), _weights(run)
    assert ref.keys() == got.keys()
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:3]}"
    assert read_meta(run / "last.safetensors")["epoch"] == EPOCHS
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, EPOCHS + 1))
    assert not OutputDir(run).foreign_files()  # nothing but cnnkit's own recorded files
    assert [p.name for p in run.glob("state-e*.safetensors")] == [f"state-e{EPOCHS:04d}.safetensors"]
    load(run)  # best and last load


def _resume(run: Path, cwd: Path) -> None:
    p = _cnnkit(["train", "--resume", str(run), "--quiet"], cwd)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float]:
    """The uninterrupted run, and how long its training took after start-up."""
    cwd = tmp_path_factory.mktemp("drill-ref")
    run = cwd / "run"
    p = _cnnkit(["train", *RUN, "--out", str(run)], cwd)
    while p.poll() is None and not (run / "config.yaml").exists():
        time.sleep(0.02)
    t0 = time.perf_counter()
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return run, time.perf_counter() - t0


def test_killed_at_chosen_moments_then_resumed_each_time(reference, tmp_path):
    """One run, killed six times at moments a timer would only hit by luck, resumed after each."""
    run = tmp_path / "run"
    args = ["train", *RUN, "--out", str(run)]
    # (what to count, kill at that call): mid-epoch, mid-checkpoint-write (bytes written, not renamed),
    # between renames (e.g. best written, last not yet), mid-evaluation
    for kind, n in [("step", 2), ("fsync", 1), ("replace", 2), ("eval", 1), ("fsync", 3), ("replace", 4)]:
        p = subprocess.run([sys.executable, "-c", DRIVER, kind, str(n), *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, (kind, n, p.returncode, p.stderr)  # the drill did kill it
        args = ["train", "--resume", str(run), "--quiet"]
    _resume(run, tmp_path)
    _assert_same_run(run, reference[0])


def test_killed_at_random_moments_every_resume_finishes_the_run(reference, tmp_path):
    """SIGKILL after a random time, resume, again and again; as many runs as it takes for four kills to land
    (a slow or fast spell of the machine can let a run finish first), each ending as the uninterrupted run."""
    ref_run, seconds = reference
    rng = random.Random(1234)
    kills = 0
    for attempt in range(4):
        run = tmp_path / f"run{attempt}"
        args = ["train", *RUN, "--out", str(run)]
        for _ in range(12):
            p = _cnnkit(args, tmp_path)
            while p.poll() is None and not (run / "config.yaml").exists():
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.6 * seconds))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.communicate(timeout=300)
            if p.returncode == 0:
                break
            kills += p.returncode == -signal.SIGKILL
            args = ["train", "--resume", str(run), "--quiet"]
        else:
            _resume(run, tmp_path)
        _assert_same_run(run, ref_run)
        if kills >= 4:  # with the six chosen moments above: ten or more kills
            break
    assert kills >= 4, f"only {kills} kill(s) landed inside a run"


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_gives_one_line_and_keeps_the_last_checkpoint(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    before = (run / "last.safetensors").read_bytes()
    # the next checkpoint cannot be written: files may not grow past a tenth of a checkpoint
    more = str(EPOCHS + 1)
    p = _cnnkit(["train", "--resume", str(run), "--epochs", more, "--quiet"], tmp_path,
                preexec_fn=_limit_file_size(len(before) // 10))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert "file size limit" in lines[0] or "cannot write" in lines[0]
    assert (run / "last.safetensors").read_bytes() == before
    assert load(run).meta["epoch"] == EPOCHS
    assert not [f for f in run.rglob("*.tmp")]  # no half-written temporaries left
    p = _cnnkit(["train", "--resume", str(run), "--epochs", more, "--quiet"], tmp_path)  # room again: it goes on
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert read_meta(run / "last.safetensors")["epoch"] == EPOCHS + 1
    assert MANIFEST in os.listdir(run)
