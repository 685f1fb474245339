"""Exporting a segmentation run: ONNX and torch.export with a dynamic batch, height and width, checked at the
training size and a second, non-square one (logits and argmax masks); the artifacts read back as segmentation
models; `bench` at a given size. (`eval` of the exported ONNX file against the checkpoint's mIoU, on the whole
test split: tests/compress/test_segment_compress.py, whose float32 rows are exactly those two evaluations.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint, load
from cnnkit.cli import main
from cnnkit.deploy import export_onnx, export_program
from cnnkit.deploy.bench import input_size
from cnnkit.deploy.export import check_sizes, export_artifact, write_program
from cnnkit.errors import ConfigError, ExportError
from cnnkit.models import create


@pytest.fixture(scope="module")
def seg_onnx(seg_run, tmp_path_factory):
    return export_onnx(seg_run.run_dir, tmp_path_factory.mktemp("seg-onnx") / "seg.onnx")


def test_onnx_runtime_gives_pytorchs_logits_and_masks_at_other_sizes(seg_onnx, seg_run):
    import onnxruntime as ort  # the runtime itself, not cnnkit's loader

    sess = ort.InferenceSession(str(seg_onnx.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"] and [o.name for o in sess.get_outputs()] == ["logits"]
    model = load(seg_run.run_dir).model
    for shape in [(2, 1, 96, 96), (1, 1, 72, 120), (3, 1, 40, 56)]:  # the last two: sizes the export never saw
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[2]))
        got = sess.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (shape[0], 11, *shape[2:])
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999
    side = json.loads(seg_onnx.sidecar.read_text())
    assert side["task"] == "segment" and side["dynamic_size"] is True and len(side["classes"]) == 11
    assert [c["size"] for c in side["parity"]] == [[96, 96], [64, 128]]  # the training size and a non-square one
    assert all(c["max_abs_diff"] <= 1e-4 and c["mask_agreement"] >= 0.999 for c in side["parity"])


def test_check_sizes_are_the_training_size_and_a_non_square_one():
    assert check_sizes((28, 28), False) == [(28, 28)]
    for size in [(96, 96), (64, 64), (512, 384), (48, 36)]:
        first, (h, w) = check_sizes(size, True)
        assert first == size and h != w and h % 32 == 0 and w % 32 == 0 and (h, w) != size


def test_torch_export_program_round_trip(seg_run, tmp_path):
    r = export_program(seg_run.run_dir, tmp_path / "seg.pt2")
    art, ck = load(r.path), load(seg_run.run_dir)
    assert art.meta["task"] == "segment" and art.classes == ck.classes
    for shape in [(1, 1, 96, 96), (2, 1, 64, 128)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.allclose(art.model(x), ck.model(x), atol=1e-5)
    assert [c["size"] for c in r.checks] == [[96, 96], [64, 128]]


def test_an_artifact_that_runs_at_its_training_size_only_is_not_written(seg_run, tmp_path):
    def static(model, example, tmp, task):  # a program with a fixed height and width, as before this export
        return write_program(model, example, tmp)  # no task: a dynamic batch only

    with pytest.raises(ExportError, match=r"does not run at 64×128.*nothing was written"):
        export_artifact(seg_run.run_dir, tmp_path / "s.pt2", ".pt2", "torch.export", 1e-5, 0, static)
    assert list(tmp_path.iterdir()) == []


def test_masks_that_disagree_are_refused_even_within_the_tolerance(seg_run, tmp_path):
    def swapped(model, example, tmp, task):  # the classes' channels reversed: other masks, same value range
        return lambda x: model(x).flip(1).numpy()

    with pytest.raises(ExportError, match="mask agreement with PyTorch is"):
        export_artifact(seg_run.run_dir, tmp_path / "s.pt2", ".pt2", "torch.export", 1e9, 0, swapped)
    assert list(tmp_path.iterdir()) == []


def _checkpoint(model_name: str, options: dict, img_size: list[int], path: Path) -> LoadedCheckpoint:
    model = create(model_name, num_classes=3, in_chans=1, **options).eval()
    meta = {"task": "segment", "model": model_name, "model_kwargs": options, "classes": ["bg", "a", "b"],
            "in_chans": 1, "img_size": img_size, "normalization": {"mean": [0.5], "std": [0.25]}}
    return LoadedCheckpoint(model, meta, path)


@pytest.mark.parametrize("options", [{"width": 4, "output_stride": 16, "decoder": True},
                                     {"width": 4, "output_stride": 8, "hdc": True, "upsample": "duc"}])
def test_deeplab_options_export_with_a_dynamic_size(options, tmp_path):
    ckpt = _checkpoint("deeplab_small", options, [64, 64], tmp_path / "d.safetensors")
    r = export_program(ckpt, tmp_path / "d.pt2")
    assert [c["size"] for c in r.checks] == [[64, 64], [32, 96]] and r.max_abs_diff <= 1e-5
    assert min(c["mask_agreement"] for c in r.checks) >= 0.999


def test_bench_at_a_given_size_reports_latency_per_megapixel_and_memory(seg_onnx, seg_run, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(seg_run.run_dir), str(seg_onnx.path), "--img-size", "64x128", "--batch", "4",
                 "--repeats", "3", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "ms/MP" in table and "peak RSS MiB" in table and "64×128" in table
    rows = json.loads(out.read_text())
    assert [r["kind"] for r in rows] == ["safetensors", "onnx"]
    for r in rows:
        assert r["img_size"] == [64, 128] and r["latency_ms_p50"] > 0 and r["peak_rss_mib"] > 0
        assert r["ms_per_megapixel"] == pytest.approx(r["latency_ms_p50"] / (64 * 128 / 1e6))
        assert r["megapixels_per_s"] == pytest.approx(r["images_per_s"] * 64 * 128 / 1e6)


def test_bench_refuses_another_size_for_a_fixed_size_model(tmp_path):
    meta = {"task": "classify", "classes": ["a", "b"], "in_chans": 1, "img_size": [28, 28]}
    ckpt = LoadedCheckpoint(nn.Conv2d(1, 2, 3), meta, tmp_path / "m.safetensors")
    assert input_size(ckpt, None) == (28, 28) and input_size(ckpt, (28, 28)) == (28, 28)
    with pytest.raises(ConfigError, match="takes 28x28 images only"):
        input_size(ckpt, (32, 32))
    fixed = LoadedCheckpoint(nn.Conv2d(1, 2, 3), {**meta, "task": "segment"}, tmp_path / "m.safetensors")
    assert input_size(fixed, (64, 48)) == (64, 48)  # a segmentation checkpoint takes any size
