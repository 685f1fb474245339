"""Fuzzed readers: random bytes and mutated valid files, fed to every reader a user's file reaches, either
load or raise the documented CnnkitError subclass with a one-line message naming the file; never another
exception type, never a hang."""

from __future__ import annotations

import io
import json
import signal
import struct
import warnings
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save

from cnnkit.artifacts import OutputDir, load, load_checkpoint, read_meta, repair_sidecar, save_checkpoint
from cnnkit.artifacts import runtimes
from cnnkit.artifacts.files import MANIFEST, MANIFEST_FORMAT
from cnnkit.data.images import load_image_file, load_model_inputs
from cnnkit.errors import CheckpointError, ConfigError, DataError
from cnnkit.models.weights import read_weight_file

def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

META = {"model": "resnet9", "model_kwargs": {"width": 8}, "classes": ["a", "b", "c"], "in_chans": 1,
        "img_size": [16, 16], "normalization": {"mean": [0.5], "std": [0.25]}, "dataset": {"name": "sample"},
        "epoch": 1, "metrics": {}, "config": {}}

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                    max_leaves=8)


class Hang(BaseException):
    """A reader ran past its time limit (a BaseException, so that no reader's `except Exception` hides it)."""


@contextmanager
def time_limit(seconds: float):
    def on_alarm(*_: object) -> None:
        raise Hang(f"still reading after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def loads_or_refuses(read: Callable[[], Any], error: type[Exception], path: Path, seconds: float = 20) -> Any:
    """read()'s result, or None when it raised `error` with a one-line message naming `path`'s file; any other
    exception propagates and fails the property."""
    with time_limit(seconds):
        try:
            return read()
        except error as e:
            msg = str(e)
            assert msg and "\n" not in msg and "\r" not in msg, f"not a one-line message: {msg!r}"
            assert len(msg) < 800, f"message too long ({len(msg)} characters): {msg[:200]!r}..."
            assert path.name in msg, f"the message does not name {path.name}: {msg!r}"
            return None


def flip_bits(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, bit in flips:
        out[pos % len(out)] ^= 1 << bit
    return bytes(out)


def flips(size_hint: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    return st.lists(st.tuples(st.integers(0, size_hint - 1), st.integers(0, 7)), min_size=1, max_size=6)


# ---------------------------------------------------------------------------------------------- images


def _image_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


PNG, JPEG = _image_bytes("PNG"), _image_bytes("JPEG")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_header(width: int, height: int, depth: int, color: int, interlace: int = 0) -> bytes:
    """A PNG whose IHDR (with a valid CRC) claims any size and mode, followed by the IDAT of a real image."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace))
    return PNG[:8] + ihdr + PNG[8 + 25:]


def jpeg_claiming(width: int, height: int) -> bytes:
    """The valid JPEG with its frame header (SOF0) rewritten to claim `width`×`height`."""
    at = JPEG.index(b"\xff\xc0") + 5
    return JPEG[:at] + struct.pack(">HH", height, width) + JPEG[at + 4:]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_image(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_model_inputs warns about each image it skips
        image = loads_or_refuses(lambda: load_image_file(path), DataError, path)
        if image is not None:
            assert isinstance(image, Image.Image) and min(image.size) > 0
        for chans in (1, 3):
            batch = loads_or_refuses(lambda: load_model_inputs([path], chans, (8, 6), strict=True)[0], DataError, path)
            assert (batch is None) == (image is None)
            if batch is not None:
                assert batch.shape == (1, chans, 8, 6) and batch.dtype == torch.uint8


@fuzz(150)
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp", ".tif"]),
       magic=st.sampled_from([b"", PNG[:8], JPEG[:4], b"GIF89a", b"BM", b"RIFF", b"II*\x00"]))
def test_random_bytes_are_an_image_or_a_data_error(folder, data, suffix, magic):
    check_image(folder / f"random{suffix}", magic + data)


@fuzz(100)
@given(fmt=st.sampled_from(["png", "jpg"]), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_images_give_a_data_error(folder, fmt, cut):
    data = PNG if fmt == "png" else JPEG
    check_image(folder / f"truncated.{fmt}", data[:int(len(data) * cut)])


@fuzz(150)
@given(fmt=st.sampled_from(["png", "jpg"]), where=flips(2000), head=st.booleans())
def test_bit_flipped_images_load_or_give_a_data_error(folder, fmt, where, head):
    data = PNG if fmt == "png" else JPEG
    if head:  # most of the headers' fields sit in the first few hundred bytes
        where = [(p % 200, b) for p, b in where]
    check_image(folder / f"flipped.{fmt}", flip_bits(data, where))


@fuzz(100)
@given(width=st.integers(0, 2**32 - 1) | st.integers(1, 64), height=st.integers(0, 2**32 - 1) | st.integers(1, 64),
       depth=st.sampled_from([1, 2, 4, 8, 16, 3, 0, 255]), color=st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
       interlace=st.sampled_from([0, 1, 2]))
def test_png_headers_claiming_any_size_and_mode_load_or_give_a_data_error(folder, width, height, depth, color,
                                                                          interlace):
    check_image(folder / "header.png", png_with_header(width, height, depth, color, interlace))


@pytest.mark.parametrize("data", [png_with_header(100_000, 100_000, 8, 2), png_with_header(12_000, 12_000, 8, 2),
                                  jpeg_claiming(65_535, 65_535), jpeg_claiming(12_000, 12_000)],
                         ids=["png-error", "png-warning", "jpeg-error", "jpeg-warning"])
def test_decompression_bombs_are_a_data_error(folder, data):
    """Headers claiming more pixels than PIL's limit: past twice the limit PIL raises DecompressionBombError,
    between once and twice it only warns and would go on to decode; both are refused, quickly."""
    path = folder / "bomb.png"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as a user's session would: PIL's warning alone does not stop it
        with time_limit(10), pytest.raises(DataError, match="bomb.png"):
            load_image_file(path)
