"""Shared fixtures: an isolated cache, a short trained run on the bundled sample, image folders of real images."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # several test workers share the cores: one thread each (set before
    os.environ["OMP_NUM_THREADS"] = "1"  # torch starts its OpenMP pool, which would spin-wait against the other)
# xdist's workers export COLUMNS=80 and LINES=24 as if they had a terminal; a command's output is tested as a user
# sees it on a pipe, where no terminal width applies (a test that wants one sets it for its own process)
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

# Small but real: ResNet-9 at width 8 trains a few epochs on the sample in seconds.
TINY = dict(model="resnet9", model_kwargs={"width": 8}, data="sample", batch_size=128)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extractions go to a per-session cache, never to the user's home or next to the source data."""
    cache = tmp_path_factory.mktemp("cnnkit-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNKIT_CACHE", str(cache))
    mp.delenv("CNNKIT_DATA", raising=False)
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def sample_train():
    from cnnkit.data import load_dataset

    return load_dataset("sample", "train")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """A 3-epoch run on the sample, shared by the evaluation, prediction and checkpoint tests."""
    from cnnkit.train import fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return fit(**TINY, epochs=3, out=str(out), progress=False)


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory: pytest.TempPathFactory):
    """A short segmentation run (a narrow U-Net, 2 epochs on 256 fashion-scenes, 200 validation scenes), shared by
    the segmentation tests of prediction, export and serving: barely trained (it labels mostly background)."""
    from cnnkit.train import fit

    out = tmp_path_factory.mktemp("runs") / "seg"
    return fit(model="unet_small", model_kwargs={"width": 8, "depth": 2}, data="fashion-scenes", train_images=256,
               epochs=2, batch_size=32, val_fraction=0.04, tta=False, channels_last=False, out=str(out), progress=False)


def no_peak_memory(target, batch=64, device="cpu", amp="off", img_size=None):  # noqa: ANN001, ANN201
    return {"peak_rss_mib": None, "model_rss_mib": None, "peak_memory_error": "not measured in this test"}


def stub_peak_memory(mp: pytest.MonkeyPatch) -> None:
    """Stub the peak-memory measurement of `bench` and `compress` (a fresh Python process per target: seconds
    each; tests/deploy covers it). By module, as the package `cnnkit.deploy` also exports a function `bench`."""
    mp.setattr(importlib.import_module("cnnkit.deploy.bench"), "peak_memory", no_peak_memory)


def write_imagefolder(root: Path, sample, classes=(0, 1, 7), per_class: int = 12, mixed: bool = True) -> Path:
    """Class folders of real sample images as PNG/JPEG, in varied sizes and modes when `mixed`."""
    for c in classes:
        d = root / sample.classes[c].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        idx = np.nonzero(sample.labels.numpy() == c)[0][:per_class]
        for j, i in enumerate(idx):
            im = Image.fromarray(sample.images[i, 0].numpy(), "L")
            if mixed and j % 3 == 1:
                im.convert("RGB").resize((40, 40)).save(d / f"{j}.jpg")
                continue
            if mixed and j % 3 == 2:
                im.resize((56, 48)).convert("RGBA").save(d / f"{j}.png")
                continue
            im.save(d / f"{j}.png")
    return root


@pytest.hookimpl(trylast=True)  # after --durations' table: the last thing before the counts
def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001, ARG001
    """End the run by naming what it skipped and why: one line per reason, with how many tests (or whole test
    files, skipped as they were collected) it covers, so a missing tool (chromium, a data set) never goes
    unnoticed."""
    counts: dict[str, list[int]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, (tuple, list)) and len(longrepr) == 3 else longrepr)
        reason = reason.removeprefix("Skipped: ")
        counts.setdefault(reason, [0, 0])[1 if report.when == "collect" else 0] += 1
    if not counts:
        return
    terminalreporter.write_sep("-", "skipped, and why")
    for reason, (tests, files) in sorted(counts.items(), key=lambda kv: (-kv[1][0] - kv[1][1], kv[0])):
        what = [f"{n} {noun}{'s' if n != 1 else ''}" for n, noun in ((tests, "test"), (files, "test file")) if n]
        terminalreporter.write_line(f"{' and '.join(what)} skipped: {reason}")
