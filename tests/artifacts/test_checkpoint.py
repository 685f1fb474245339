from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cnnkit.artifacts import artifact_kind, load, load_state_into
from cnnkit.artifacts.exported import refuse_torchscript
from cnnkit.artifacts.kinds import LOADERS
from cnnkit.errors import CheckpointError
from cnnkit.models import create


def test_load_from_run_dir_and_file_gives_same_outputs(trained_run, sample_train):
    a = load(trained_run.run_dir)
    b = load(trained_run.best_checkpoint)
    assert a.path == trained_run.best_checkpoint
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    assert a.classes == sample_train.classes and a.in_chans == 1 and a.img_size == (28, 28)


def test_mismatched_weights_list_first_mismatches():
    model = create("resnet9", 10, 1, width=8)
    other = create("resnet9", 5, 1, width=8).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatch: fc.weight \(5, 64\) vs \(10, 64\)"):
        load_state_into(model, other, "x.safetensors")
    del other["fc.bias"]
    other["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="missing: fc.bias.*unexpected: extra.weight"):
        load_state_into(model, other, "x.safetensors")


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no cnnkit metadata"):
        load(tmp_path / "plain.safetensors")


def test_truncated_checkpoint_is_a_clear_error(trained_run, tmp_path):
    data = trained_run.best_checkpoint.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load(tmp_path / "cut.safetensors")


def test_load_dispatches_on_the_artifact_kind(monkeypatch, tmp_path):
    assert [artifact_kind(p) for p in ("m.onnx", "m.pt2", "m.int8.pt2", "m.int8.ts", "run", "best.safetensors",
                                       tmp_path)] == \
        ["onnx", "program", "program", "torchscript", "checkpoint", "checkpoint", "checkpoint"]
    assert LOADERS["torchscript"] is refuse_torchscript  # told apart to be refused (tests/artifacts/test_trust.py)
    seen = []
    for kind in LOADERS:
        monkeypatch.setitem(LOADERS, kind, lambda path, device, kind=kind: seen.append((kind, path, device)))
    load("m.ts", "cuda")
    load(tmp_path)
    assert seen == [("torchscript", "m.ts", "cuda"), ("checkpoint", tmp_path, "cpu")]
