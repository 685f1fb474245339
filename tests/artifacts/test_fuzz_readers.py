"""Fuzzed readers: random bytes and mutated valid files, fed to every reader a user's file reaches, either
load or raise the documented CnnkitError subclass with a one-line message naming the file; never another
exception type, never a hang."""

from __future__ import annotations

import io
import json
import os
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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save

from cnnkit.artifacts import OutputDir, exported, load, read_meta, repair_sidecar, save_checkpoint
from cnnkit.artifacts.files import MANIFEST, MANIFEST_FORMAT
from cnnkit.data.images import load_image_file, load_model_inputs, to_model_input
from cnnkit.errors import CheckpointError, ConfigError, DataError
from cnnkit.models.weights import read_weight_file


def fuzz(examples: int) -> settings:
    """Settings for a property over `examples` inputs; CNNKIT_FUZZ_SCALE=20 searches twenty times longer."""
    scale = float(os.environ.get("CNNKIT_FUZZ_SCALE", "1"))
    return settings(max_examples=max(1, int(examples * scale)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


META = {"task": "classify", "model": "resnet9", "model_kwargs": {"width": 8}, "classes": ["a", "b", "c"], "in_chans": 1,
        "img_size": [16, 16], "normalization": {"mean": [0.5], "std": [0.25]}, "dataset": {"name": "sample"},
        "epoch": 1, "metrics": {}, "config": {}}


def _json_containers(kids: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6), _json_containers,
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


def _image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


PNG, JPEG, TIFF = _image_bytes("PNG"), _image_bytes("JPEG"), _image_bytes("TIFF", "I;16")


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
            batch = loads_or_refuses(lambda: load_model_inputs([path], chans, (8, 6), strict=True)[0], DataError,
                                     path)
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
@given(fmt=st.sampled_from(["png", "jpg", "tif"]), where=flips(2000), head=st.booleans())
@example(fmt="tif", where=[(72, 3)], head=True)  # a float where TIFF wants an integer: PIL raised TypeError
@example(fmt="tif", where=[(72, 0)], head=True)  # a fraction (IFDRational) there, the same
def test_bit_flipped_images_load_or_give_a_data_error(folder, fmt, where, head):
    data = {"png": PNG, "jpg": JPEG, "tif": TIFF}[fmt]
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


def real_png(width: int, height: int) -> bytes:
    """A real gray PNG of any size (a plain image compresses to almost nothing: 1×39,000,000 is 40 KB)."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG")
    return buf.getvalue()


@fuzz(60)
@given(width=st.integers(1, 2**31 - 1) | st.integers(1, 4000), height=st.integers(1, 2**31 - 1) | st.integers(1, 4000),
       target=st.sampled_from([(28, 28), (32, 32), (64, 48), (224, 224)]))
@example(width=1_000_000, height=1, target=(28, 28))  # 1 Mpixel: resized to cover 28×28 it was 28×28,000,000
@example(width=300, height=20_000, target=(28, 28))
def test_work_per_image_is_bounded_whatever_its_header_claims(folder, width, height, target):
    """Any PNG header, decoded with a pixel limit and resized to a model's input: refused from the header, or
    decoded and resized within a fixed memory budget (the address space is capped: the resize of a 1×1,000,000
    image used to ask for gigabytes)."""
    path = folder / "any-size.png"
    path.write_bytes(png_with_header(width, height, 8, 0) if width * height > 4_000_000 else real_png(width, height))
    with memory_limit(0.75), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = loads_or_refuses(lambda: load_image_file(path, max_pixels=4_000_000), DataError, path)
        if image is not None:
            x = to_model_input(image, 1, target)
            assert x.shape == (1, *target) and x.dtype == torch.uint8


@pytest.mark.parametrize("size", [(1_000_000, 1), (1, 39_000_000), (20_000, 300)])
def test_cli_predict_on_a_strip_image_is_one_line_or_an_answer(folder, trained_run, capsys, size):
    from cnnkit.cli import main

    path = folder / f"strip-{size[0]}x{size[1]}.png"
    path.write_bytes(real_png(*size))
    code = main(["predict", "--checkpoint", str(trained_run.run_dir), str(path)])
    err = capsys.readouterr().err.strip()
    if max(size) > 100 * min(size):
        assert code == 2 and err.startswith("error:") and "\n" not in err and "aspect ratio" in err, err
    else:
        assert code == 0, err


# ----------------------------------------------------------------------------------------------- checkpoints


@contextmanager
def memory_limit(extra_gib: float):
    """Cap the address space at its current size plus `extra_gib`: should a reader ever allocate what a mangled
    header asks for, it fails instead of taking the machine's memory."""
    import resource

    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + int(extra_gib * 2**30), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny valid checkpoint, never trained."""
    from cnnkit.models import create

    torch.manual_seed(0)
    model = create("resnet9", num_classes=3, in_chans=1, img_size=(16, 16), width=8)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    save_checkpoint(path, model, META)
    return path


def check_loaded(ckpt) -> None:
    """A checkpoint that loads has the metadata its users rely on, and a model that runs."""
    assert isinstance(ckpt.classes, list) and ckpt.classes and all(isinstance(c, str) for c in ckpt.classes)
    assert isinstance(ckpt.meta.get("task", ""), str)  # what evaluation, prediction and export look the task up by
    assert ckpt.in_chans >= 1 and len(ckpt.img_size) == 2 and min(ckpt.img_size) >= 1
    mean, std = ckpt.normalization
    assert all(isinstance(v, (int, float)) for v in [*mean, *std])
    if ckpt.img_size[0] * ckpt.img_size[1] <= 64 * 64 and ckpt.in_chans <= 16:
        with torch.no_grad():
            out = ckpt.model(torch.zeros(2, ckpt.in_chans, *ckpt.img_size))
        assert out.shape == (2, len(ckpt.classes))


def check_checkpoint(path: Path, data: bytes) -> None:
    """read_meta, load and read_weight_file on `data` as a checkpoint file: results or CheckpointErrors."""
    path.write_bytes(data)
    meta = loads_or_refuses(lambda: read_meta(path), CheckpointError, path)
    assert meta is None or isinstance(meta, dict)
    with memory_limit(4):
        ckpt = loads_or_refuses(lambda: load(path), CheckpointError, path)
    if ckpt is not None:
        check_loaded(ckpt)
    state = loads_or_refuses(lambda: read_weight_file(path), CheckpointError, path)
    assert state is None or all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def safetensors_header(header: object) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


@fuzz(100)
@given(data=st.binary(max_size=300), header=st.none() | JSON)
def test_random_bytes_are_a_checkpoint_error(folder, data, header):
    """Random bytes, with or without a safetensors-like length and JSON header in front."""
    check_checkpoint(folder / "random.safetensors", (b"" if header is None else safetensors_header(header)) + data)


@fuzz(60)
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_checkpoints_are_a_checkpoint_error(folder, checkpoint, cut):
    data = checkpoint.read_bytes()
    check_checkpoint(folder / "truncated.safetensors", data[:int(len(data) * cut)])


@fuzz(60)
@given(where=flips(10**6), in_header=st.booleans())
def test_bit_flipped_checkpoints_load_or_give_a_checkpoint_error(folder, checkpoint, where, in_header):
    data = checkpoint.read_bytes()
    if in_header:  # the length, the tensors' dtypes, shapes and offsets, and the cnnkit metadata
        end = 8 + struct.unpack("<Q", data[:8])[0]
        where = [(p % end, b) for p, b in where]
    check_checkpoint(folder / "flipped.safetensors", flip_bits(data, where))


DELETE = object()
BAD_VALUES = {
    "task": ["", "segmnt", 3, None, ["classify"], {"name": "classify"}],
    "model": ["resnet99", "", "timm/", "timm/no_such_model", "tinyvgg", "resnet20", 9, None, ["resnet9"]],
    "model_kwargs": [{"width": -8}, {"width": 0}, {"width": "8"}, {"width": 8.5}, {"width": 10**12},
                     {"width": 2**70}, {"width": [8]}, {"width": None}, {"nope": 1}, {"num_classes": 3}, {"": 1},
                     [], "width=8", None],
    "classes": [[], [1, 2, 3], "abc", ["a"], ["a", "b", "c", "d"], [None] * 3, {"a": 1}, ["a", "b", 3]],
    "in_chans": [-1, 0, 3, "1", 10**6, 2**70, True, 1.0, None, [1]],
    "img_size": [[10**9, 10**9], [2**63, 2**63], [2**70, 16], [0, 16], [16], [16, 16, 16], [-16, 16],
                 [16.0, 16], "16", [True, 16], 16, [1, 1], [4096, 4096]],
    "normalization": [{"mean": [0.5]}, {"std": [0.25]}, {"mean": "x", "std": [0.25]}, {"mean": ["a"], "std": [0.25]},
                      {"mean": [0.5], "std": [0]}, {"mean": [], "std": []}, {"mean": [True], "std": [1]}, [], None,
                      {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}],
    "format": ["cnnkit-checkpoint/2", None, 1, "x" * 5000],
    "pruned": [True, 1, "yes", [], {}],
}


@st.composite
def mutated(draw, base: dict[str, Any], keys: list[str], values: dict[str, list[Any]] = BAD_VALUES) -> dict[str, Any]:
    """`base` with one to three of its keys deleted or set to a value known to be bad (`values`), or to any JSON."""
    meta = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        value = draw(st.sampled_from([DELETE, *values.get(key, [])]) | JSON)
        if value is DELETE:
            meta.pop(key, None)
        else:
            meta[key] = value
    return meta


@pytest.fixture(scope="module")
def state(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint))


@fuzz(100)
@given(data=st.data())
def test_checkpoints_with_mutated_metadata_load_or_give_a_checkpoint_error(folder, checkpoint, state, data):
    base = read_meta(checkpoint)
    meta = data.draw(mutated(base, sorted(set(base) | set(BAD_VALUES))))
    check_checkpoint(folder / "mutated.safetensors", save(state, metadata={"cnnkit": json.dumps(meta)}))


def test_a_pruned_checkpoint_whose_head_disagrees_with_its_classes_is_refused(folder, checkpoint, state):
    """Found by the property above: a pruned checkpoint's layers take the weights' shapes, the head's too, so
    the metadata could list one class while the model gave three outputs."""
    path = folder / "pruned.safetensors"
    path.write_bytes(save(state, metadata={"cnnkit": json.dumps({**read_meta(checkpoint), "pruned": True,
                                                                  "classes": ["a"]})}))
    with pytest.raises(CheckpointError, match="gives 3 outputs but its metadata lists 1 classes"):
        load(path)


def test_a_pruned_checkpoint_whose_input_channels_disagree_with_its_metadata_is_refused(folder, checkpoint, state):
    """Found by the mutated-metadata property: a pruned checkpoint's stem takes the weights' shapes, so the
    metadata could claim 3-channel images for a stem that takes 1 (the first forward pass then crashed)."""
    path = folder / "pruned_chans.safetensors"
    path.write_bytes(save(state, metadata={"cnnkit": json.dumps({**read_meta(checkpoint), "pruned": True,
                                                                  "in_chans": 3})}))
    with pytest.raises(CheckpointError, match="take 1-channel images but its metadata says in_chans 3"):
        load(path)


@fuzz(60)
@given(text=st.text(max_size=40) | JSON.map(json.dumps) | st.sampled_from(["[" * 100_000, '{"a":' * 100_000]),
       other=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))
def test_checkpoints_whose_metadata_is_not_a_json_object_give_a_checkpoint_error(folder, state, text, other):
    path = folder / "notobject.safetensors"
    metadata = {**other, "cnnkit": text}
    path.write_bytes(save(state, metadata=metadata))
    meta = loads_or_refuses(lambda: read_meta(path), CheckpointError, path)
    assert meta is None or isinstance(meta, dict)
    loads_or_refuses(lambda: load(path), CheckpointError, path)
    path.write_bytes(save(state, metadata=other or None))  # no cnnkit metadata at all
    loads_or_refuses(lambda: read_meta(path), CheckpointError, path)
    loads_or_refuses(lambda: load(path), CheckpointError, path)


@fuzz(60)
@given(garbage=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode())
       | st.just(b"[" * 100_000) | st.just(b"\xff\xfe\x00"))
def test_repair_sidecar_rewrites_a_garbage_sidecar_from_the_header(folder, checkpoint, garbage):
    path = folder / "sidecar.safetensors"
    path.write_bytes(checkpoint.read_bytes())
    side = path.with_suffix(".json")
    side.write_bytes(garbage)
    with time_limit(20):
        repair_sidecar(path)
    assert json.loads(side.read_text()) == read_meta(path)
    assert repair_sidecar(path) is False


@fuzz(30)
@given(data=st.binary(max_size=200))
def test_repair_sidecar_of_a_damaged_checkpoint_is_a_checkpoint_error(folder, data):
    path = folder / "damaged.safetensors"
    path.write_bytes(data)
    assert loads_or_refuses(lambda: repair_sidecar(path), CheckpointError, path) is None


# -------------------------------------------- ONNX and .pt2 with sidecars, and TorchScript (always refused)


@pytest.fixture(scope="module")
def onnx_file(checkpoint: Path) -> Path:
    """The tiny checkpoint exported to ONNX (`tiny.onnx` with its sidecar `tiny.onnx.json`)."""
    from cnnkit.deploy import export_onnx

    return export_onnx(checkpoint).path


@pytest.fixture(scope="module")
def sidecar(onnx_file: Path) -> dict[str, Any]:
    return json.loads(exported.sidecar_path(onnx_file).read_text())


@pytest.fixture(scope="module")
def artifacts(folder: Path, onnx_file: Path) -> dict[str, Path]:
    """A copy of the ONNX file to load beside each fuzzed sidecar, and names for the other artifact kinds (a .pt2
    program, a TorchScript file)."""
    onnx = folder / "artifact.onnx"
    onnx.write_bytes(onnx_file.read_bytes())
    return {".onnx": onnx, ".ts": folder / "artifact.ts", ".pt2": folder / "artifact.pt2"}


# the keys an int8 program's sidecar adds (`cnnkit compress`): values that choose its runtime and its checks
SIDECAR_VALUES = {"runtime": ["inductor", "onnxruntime", "", None, 1, ["inductor"]],
                  "quantization": ["pt2e-int8", "int8", "", None, True, ["pt2e-int8"]]}


def check_artifact(path: Path, side: bytes) -> None:
    """read_sidecar and load on an artifact whose sidecar holds `side`: results or CheckpointErrors; a TorchScript
    file (`.ts`) is always refused, whatever its sidecar says."""
    exported.sidecar_path(path).write_bytes(side)
    meta = loads_or_refuses(lambda: exported.read_sidecar(path), CheckpointError, path)
    assert meta is None or isinstance(meta, dict)
    ckpt = loads_or_refuses(lambda: load(path), CheckpointError, path)
    assert ckpt is None or meta is not None
    assert ckpt is None or path.suffix != ".ts"
    if ckpt is not None:
        check_loaded(ckpt)


@fuzz(100)
@given(data=st.data(), suffix=st.sampled_from([".onnx", ".onnx", ".ts", ".pt2"]))
def test_mutated_sidecars_load_or_give_a_checkpoint_error(artifacts, sidecar, data, suffix):
    """The ONNX file with a sidecar whose keys are deleted or mangled (an int8 program's keys among them); the
    .pt2 file holds garbage, so it loads only as far as its sidecar; the .ts file is refused as TorchScript."""
    meta = data.draw(mutated(sidecar, sorted(set(sidecar) | set(BAD_VALUES) | set(SIDECAR_VALUES)),
                             {**BAD_VALUES, **SIDECAR_VALUES}))
    path = artifacts[suffix]
    if suffix != ".onnx":
        path.write_bytes(b"not a model")
    check_artifact(path, json.dumps(meta).encode())


@fuzz(60)
@given(side=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode())
       | st.sampled_from([b"[" * 100_000, b"\xff\xfe{}", b"", b"null", b"[]", b"42", b'"classes"']),
       suffix=st.sampled_from([".onnx", ".ts", ".pt2"]))
def test_garbage_sidecars_give_a_checkpoint_error(artifacts, side, suffix):
    path = artifacts[suffix]
    if suffix != ".onnx":
        path.write_bytes(b"not a model")
    check_artifact(path, side)


@fuzz(60)
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".onnx", ".ts", ".pt2"]),
       magic=st.sampled_from([b"", b"PK\x03\x04", b"\x08\x07\x12"]))
def test_random_bytes_as_an_artifact_give_a_checkpoint_error(folder, sidecar, data, suffix, magic):
    path = folder / f"random{suffix}"
    path.write_bytes(magic + data)
    check_artifact(path, json.dumps(sidecar).encode())


@fuzz(60)
@given(cut=st.floats(0, 1, exclude_max=True) | st.none(), where=flips(10**6))
def test_truncated_or_bit_flipped_onnx_files_load_or_give_a_checkpoint_error(folder, onnx_file, sidecar, cut,
                                                                           where):
    data = onnx_file.read_bytes()
    path = folder / "damaged.onnx"
    path.write_bytes(data[:int(len(data) * cut)] if cut is not None else flip_bits(data, where))
    exported.sidecar_path(path).write_text(json.dumps(sidecar))
    loads_or_refuses(lambda: load(path), CheckpointError, path)  # what a damaged graph computes is not checked


# ---------------------------------------------------------------------------- run-folder manifests


@fuzz(100)
@given(manifest=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode())
       | st.fixed_dictionaries({"format": st.sampled_from([MANIFEST_FORMAT, "cnnkit-files/0"]) | JSON,
                                "files": JSON | st.lists(st.text(max_size=8), max_size=3)}).map(
           lambda v: json.dumps(v).encode())
       | st.sampled_from([b"[" * 100_000, b"\xff\xfe", b"null", b"[]", b'{"format": "cnnkit-files/1"}']))
def test_damaged_manifests_give_a_config_error(folder, manifest):
    root = folder / "run"
    root.mkdir(exist_ok=True)
    (root / "model.safetensors").write_bytes(b"x")
    (root / MANIFEST).write_bytes(manifest)
    out = loads_or_refuses(lambda: OutputDir(root), ConfigError, root / MANIFEST)
    if out is not None:
        assert all(isinstance(f, str) for f in out.files)
        out.foreign_files()
        out.owns(root / "model.safetensors")


# ------------------------------------------------------------------------------------ --init-from weights



def _torch_containers(kids: st.SearchStrategy) -> st.SearchStrategy:
    keys = st.text(max_size=6) | st.integers(-3, 3) | st.sampled_from(["state_dict", "model", "module.fc.weight"])
    return st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=3)


TORCH_VALUES = st.recursive(st.none() | st.integers(-5, 5) | st.text(max_size=4) | st.floats(-1, 1)
                            | st.integers(0, 3).map(lambda n: torch.zeros(n, 2)), _torch_containers, max_leaves=8)


@fuzz(100)
@given(obj=TORCH_VALUES, cut=st.none() | st.floats(0, 1, exclude_max=True))
def test_pickled_weight_files_load_or_give_a_checkpoint_error(folder, obj, cut):
    """torch.save of any structure (dict keys of any type, nested containers), whole or truncated."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    path = folder / "weights.pth"
    path.write_bytes(data if cut is None else data[:int(len(data) * cut)])
    state = loads_or_refuses(lambda: read_weight_file(path), CheckpointError, path)
    assert state is None or (state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in state.items()))


@fuzz(50)
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".pth", ".pt", ".bin", ".safetensors"]))
def test_random_bytes_as_weights_give_a_checkpoint_error(folder, data, suffix):
    path = folder / f"random-weights{suffix}"
    path.write_bytes(data)
    loads_or_refuses(lambda: read_weight_file(path), CheckpointError, path)
