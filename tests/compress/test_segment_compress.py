"""Compressing a segmentation run: int8 from PT2E (a `torch.export` program compiled by Inductor, at any image
size) and from ONNX Runtime (static QDQ), per-channel weights, calibrated on training images, measured by mIoU
beside float32's in each runtime; recipes that fine-tune a classifier are skipped, each with
one line saying why."""

from __future__ import annotations

import json

import onnx
import pytest

from cnnkit.artifacts import load
from cnnkit.compress import compress
from cnnkit.errors import CompressError
from tests.conftest import stub_peak_memory


@pytest.fixture(scope="module")
def seg_compressed(seg_run, tmp_path_factory):
    """int8 (and a recipe that cannot apply) on the shared segmentation run, scored on 200 test scenes; peak
    memory, measured in a fresh process per variant, is stubbed here (tests/deploy covers it)."""
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        stub_peak_memory(mp)
        r = compress(seg_run.run_dir, ["int8", "prune:0.5"], tmp_path_factory.mktemp("seg-compress"), calibration=16,
                     batch=16, repeats=3, log=said.append, test_images=200)
    return r, said


def test_int8_is_reported_by_miou_beside_float32(seg_compressed):
    r, _ = seg_compressed
    assert [(row["variant"], row["runtime"]) for row in r.rows] == [
        ("float32", "eager"), ("float32", "inductor"), ("float32", "onnxruntime"), ("int8", "inductor int8"),
        ("int8", "onnxruntime int8")]
    assert all(row["metric"] == "mIoU" and 0 < row["miou"] <= 1 for row in r.rows)
    assert all("200 of the split's 1000 images" in row["split"] for row in r.rows)  # test_images: the same 200
    fp32, program, onnx_fp32, pt2e, int8 = r.rows
    assert round(program["miou"], 3) == round(fp32["miou"], 3)  # the float program, compiled, scores as eager
    assert abs(pt2e["miou_delta_pts"]) < 5 and pt2e["file_bytes"] < program["file_bytes"]
    # `evaluate` (what `cnnkit eval` runs) of the exported .onnx file, read back from its sidecar as a segmentation
    # model, gives the checkpoint's mIoU on the test split
    assert round(onnx_fp32["miou"], 3) == round(fp32["miou"], 3)
    assert int8["miou_delta_pts"] == pytest.approx(100 * (int8["miou"] - fp32["miou"]))
    assert abs(int8["miou_delta_pts"]) < 5  # int8's cost, within a few points on this model
    assert int8["file_bytes"] < onnx_fp32["file_bytes"]
    report = r.html_path.read_text()
    assert "<th>mIoU</th>" in report and "top-1" not in report
    assert json.loads(r.json_path.read_text())["rows"][4]["miou"] == int8["miou"]


def test_int8_program_takes_any_size_and_loads_as_segmentation(seg_compressed):
    """The PT2E program keeps the model's dynamic height and width: a second size runs (compiled for it)."""
    import torch

    r, _ = seg_compressed
    art = load(r.out_dir / r.rows[3]["file"])
    assert art.meta["task"] == "segment" and art.meta["quantization"] == "pt2e-int8" and art.meta["dynamic_size"]
    with torch.no_grad():
        out = art.model(torch.randn(2, art.in_chans, 40, 56))
    assert out.shape == (2, len(art.meta["classes"]), 40, 56) and not art.model.uncompiled


def test_int8_onnx_is_per_channel_qdq_and_loads_as_segmentation(seg_compressed):
    r, _ = seg_compressed
    path = r.out_dir / r.rows[4]["file"]
    graph = onnx.load(str(path)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    inits = {i.name: i for i in graph.initializer}
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights]
    assert weight_dq and all(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
                             for n in weight_dq)  # one scale per output channel
    art = load(path)
    assert art.meta["task"] == "segment" and art.meta["calibration_images"] == 16


def test_recipes_that_cannot_apply_are_skipped_with_one_line(seg_compressed, seg_run, tmp_path):
    r, said = seg_compressed
    assert [line for line in said if "skipped" in line] == r.notes and len(r.notes) == 1
    assert r.notes[0].startswith("prune:0.5: skipped, not available for segment models")
    assert json.loads(r.json_path.read_text())["skipped"] == r.notes
    with pytest.raises(CompressError, match="no recipe applies to this model: qat8: skipped"):
        compress(seg_run.run_dir, ["qat8"], tmp_path / "none")
    assert not (tmp_path / "none").exists()
