"""Files from others are data, never code: crafted `.pt2`, pickles under other names and timm options that load
files are refused before anything in them runs (a marker file the payload would create never appears), and so
is every TorchScript `.ts`, benign or not (loading TorchScript runs the file's code); each with one line and exit
status 2 from the CLI. An int8 program may call PT2E's quantize/dequantize operators, and nothing else beyond
plain ATen."""

from __future__ import annotations

import contextlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch
import torch.nn as nn

from cnnkit.artifacts import load
from cnnkit.artifacts.exported import SIDECAR_FORMAT, sidecar_path
from cnnkit.artifacts.trust import check_program_graph
from cnnkit.cli import main
from cnnkit.errors import CheckpointError, ModelError

SIDE = {"format": SIDECAR_FORMAT, "classes": ["a", "b"], "in_chans": 1, "img_size": [8, 8],
        "normalization": {"mean": [0.5], "std": [0.25]}}


class Payload:
    """Unpickling it creates `marker` (what an attacker's code would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def write_program(path: Path, model: nn.Module | None = None) -> Path:
    model = model if model is not None else tiny()
    prog = torch.export.export(model, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(prog, str(path))
    sidecar_path(path).write_text(json.dumps(SIDE))
    return path


def rewrite(path: Path, change) -> None:  # noqa: ANN001 - change(name, bytes) -> bytes | None (None drops it)
    """Rewrite a zip archive member by member (what an attacker with a valid file does)."""
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            new = change(name, data)
            if new is not None:
                z.writestr(name, new)


def cli_fails_in_one_line(capsys, args: list[str], *phrases: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    for p in phrases:
        assert p in err, err
    return err


def test_a_benign_program_still_loads_and_runs(tmp_path):
    model = tiny()
    ckpt = load(write_program(tmp_path / "m.pt2", model))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ckpt.model(x), model(x), atol=1e-6)


def test_pickled_weight_in_a_pt2_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = write_program(tmp_path / "evil.pt2")

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            for entry in config["config"].values():
                entry["use_pickle"] = True  # torch.export.load would torch.load(weights_only=False) each
            return json.dumps(config).encode()
        if "/data/weights/weight_" in name:
            return pickle.dumps(Payload(marker))
        return data

    rewrite(evil, change)
    with pytest.raises(CheckpointError, match="pickled"):
        load(evil)
    for command in (["eval", "--checkpoint", str(evil), "--data", "sample"],
                    ["predict", "--checkpoint", str(evil), str(tmp_path)],
                    ["bench", str(evil)],
                    ["serve", str(evil), "--port", "0"],
                    ["explore", str(evil), "--port", "0"],
                    ["distill", "--teacher", str(evil), "--model", "resnet9", "--data", "sample", "--epochs", "1",
                     "--out", str(tmp_path / "student")]):
        cli_fails_in_one_line(capsys, command, "evil.pt2", "pickle")
    assert not marker.exists()
    with pytest.raises(Exception):  # the control: PyTorch's own loader runs the payload, then fails
        torch.export.load(str(evil))
    assert marker.exists()


def test_pickled_sample_inputs_in_a_pt2_never_run(tmp_path):
    """torch.export.load reads the sample inputs with a weights-only unpickler and falls back to the full one when
    that fails: cnnkit drops them, and the program loads without them."""
    marker = tmp_path / "pwned"
    prog = write_program(tmp_path / "m.pt2")
    rewrite(prog, lambda n, d: pickle.dumps(Payload(marker)) if n.endswith("sample_inputs/model.pt") else d)
    ckpt = load(prog)
    assert ckpt.model(torch.randn(1, 1, 8, 8)).shape == (1, 2)
    assert not marker.exists()
    with contextlib.suppress(Exception):  # the control: PyTorch's own loader runs the payload
        torch.export.load(str(prog))
    assert marker.exists()


@pytest.mark.parametrize("member, why", [("evil/data/constants/custom_obj_0", "never writes"),
                                         ("evil/serialized_state_dict.pt", "never writes"),
                                         ("../outside", "never writes")])
def test_members_torch_export_never_writes_are_refused(tmp_path, member, why):
    prog = write_program(tmp_path / "evil.pt2")
    with zipfile.ZipFile(prog, "a") as z:
        z.writestr(member, pickle.dumps(Payload(tmp_path / "pwned")))
    with pytest.raises(CheckpointError, match=why):
        load(prog)
    assert not (tmp_path / "pwned").exists()


def test_a_graph_that_reaches_files_is_refused(tmp_path):
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.call_function(torch.ops.aten.save.default, (x, str(tmp_path / "written")))
    graph.output(x)
    with pytest.raises(CheckpointError, match="aten.save"):
        check_program_graph(Path("evil.pt2"), graph)
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.save, (x, "f")))
    with pytest.raises(CheckpointError, match="not a plain ATen"):
        check_program_graph(Path("evil.pt2"), graph)
    ok = torch.export.export(tiny(), (torch.randn(1, 1, 8, 8),)).graph
    check_program_graph(Path("fine.pt2"), ok)  # a network's own graph passes


class QuantizeDequantize(nn.Module):
    """A network whose output goes through PT2E's int8 quantize and dequantize operators, as an int8 program's does."""

    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.ops.quantized_decomposed.quantize_per_tensor(self.net(x), 0.1, 0, 0, 255, torch.uint8)
        return torch.ops.quantized_decomposed.dequantize_per_tensor(q, 0.1, 0, 0, 255, torch.uint8)


def one_call(target, *args) -> torch.fx.Graph:  # noqa: ANN001 - an operator
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(target, (x, *args)))
    return graph


def test_quantize_operators_pass_only_in_an_int8_program(tmp_path):
    import torchao.quantization.pt2e  # noqa: F401 - registers the quantized_decomposed operators

    graph = torch.export.export(QuantizeDequantize().eval(), (torch.randn(2, 1, 8, 8),)).graph
    ops = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert {"quantized_decomposed.quantize_per_tensor.default",
            "quantized_decomposed.dequantize_per_tensor.default"} <= ops, ops
    with pytest.raises(CheckpointError, match="quantized_decomposed.quantize_per_tensor"):
        check_program_graph(Path("m.pt2"), graph)  # a float program has no business quantizing
    check_program_graph(Path("m.int8.pt2"), graph, quantized=True)
    qd = torch.ops.quantized_decomposed
    check_program_graph(Path("m.int8.pt2"), one_call(qd.quantize_per_channel.default, torch.ones(2),
                                                     torch.zeros(2, dtype=torch.int64), 1, -128, 127, torch.int8),
                        quantized=True)
    # quantized=True allows those four operators, nothing more: not another one of their namespace, not one of
    # another namespace, not ATen's file operators
    with pytest.raises(CheckpointError, match="choose_qparams"):
        check_program_graph(Path("m.int8.pt2"), one_call(qd.choose_qparams.tensor, -128, 127, 1e-5, torch.int8),
                            quantized=True)
    with pytest.raises(CheckpointError, match="not a plain ATen"):
        check_program_graph(Path("m.int8.pt2"), one_call(torch.ops.prims.convert_element_type.default, torch.int8),
                            quantized=True)
    with pytest.raises(CheckpointError, match="aten.save"):
        check_program_graph(Path("m.int8.pt2"), one_call(torch.ops.aten.save.default, str(tmp_path / "written")),
                            quantized=True)
    assert not (tmp_path / "written").exists()


def test_a_program_quantizes_only_when_its_sidecar_says_int8(tmp_path):
    """`load` checks a `.pt2` as int8 (PT2E's operators allowed) only where its sidecar says `pt2e-int8`."""
    import torchao.quantization.pt2e  # noqa: F401 - registers the quantized_decomposed operators

    model = QuantizeDequantize().eval()
    prog = write_program(tmp_path / "m.pt2", model)
    with pytest.raises(CheckpointError, match="quantized_decomposed"):
        load(prog)
    sidecar_path(prog).write_text(json.dumps({**SIDE, "quantization": "pt2e-int8"}))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load(prog).model(x), model(x))


class WritesOnLoad(nn.Module):
    """TorchScript whose __setstate__ writes a file when the module is loaded."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2]

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        written = torch.from_file(self.path, shared=True, size=1, dtype=torch.uint8)
        written.fill_(65)
        self.training = state[1] and bool(written.sum() > 0)  # a use, so that TorchScript keeps the write


def refused_as_torchscript(capsys, path: Path, images: Path) -> None:
    """`load`, `cnnkit eval` and `cnnkit predict` (on a folder of `images`, one real image) each refuse the
    TorchScript file at `path` in one line that says why and how to make the int8 model again."""
    from PIL import Image

    images.mkdir(exist_ok=True)
    Image.new("L", (8, 8), 128).save(images / "ok.png")
    with pytest.raises(CheckpointError, match="TorchScript") as e:
        load(path)
    message = str(e.value)
    assert "\n" not in message and path.name in message and "cnnkit compress" in message, message
    for command in (["eval", "--checkpoint", str(path), "--data", "sample"],
                    ["predict", "--checkpoint", str(path), str(images)]):
        cli_fails_in_one_line(capsys, command, path.name, "TorchScript", "cnnkit compress")


def test_handed_torchscript_is_refused_and_its_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"  # the payload creates it on load
    evil = tmp_path / "evil.ts"
    torch.jit.save(torch.jit.script(WritesOnLoad(str(marker))), str(evil))
    sidecar_path(evil).write_text(json.dumps(SIDE))
    refused_as_torchscript(capsys, evil, tmp_path / "images")
    assert not marker.exists()
    torch.jit.load(str(evil))  # the control: PyTorch's own loader runs the file's code
    assert marker.read_bytes() == b"A"


def test_benign_torchscript_is_refused_too(tmp_path, capsys):
    """Even a plain traced network, with a sidecar as cnnkit once wrote (signature included): no TorchScript loads."""
    ts = tmp_path / "own.int8.ts"
    torch.jit.save(torch.jit.trace(tiny(), torch.randn(1, 1, 8, 8)), str(ts))
    sidecar_path(ts).write_text(json.dumps({**SIDE, "artifact": "int8 torchscript", "engine": "x86",
                                            "signature": "hmac-sha256:" + "0" * 64}))
    refused_as_torchscript(capsys, ts, tmp_path / "images")
    bare = tmp_path / "bare.ts"  # no sidecar at all: the same line, not a complaint about the sidecar
    bare.write_bytes(ts.read_bytes())
    refused_as_torchscript(capsys, bare, tmp_path / "images")


@pytest.mark.parametrize("name", ["best.safetensors", "weights.pth"])
def test_pickles_under_weight_names_never_run(tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    f = tmp_path / name
    f.write_bytes(pickle.dumps(Payload(marker)))
    if name.endswith(".safetensors"):
        with pytest.raises(CheckpointError):
            load(f)
    from cnnkit.models.weights import read_weight_file

    with pytest.raises(CheckpointError, match="cannot read weights"):
        read_weight_file(f)
    cli_fails_in_one_line(capsys, ["train", "--model", "resnet9", "--model-kw", "width=8", "--data", "sample",
                                   "--epochs", "1", "--init-from", str(f), "--out", str(tmp_path / "r")])
    assert not marker.exists()


def test_torch_save_pickle_as_pth_never_runs(tmp_path):
    """A .pth from torch.save whose object is not plain tensors: torch's weights-only loader refuses it."""
    marker = tmp_path / "pwned"
    f = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload(marker)}, f)
    from cnnkit.models.weights import read_weight_file

    with pytest.raises(CheckpointError):
        read_weight_file(f)
    assert not marker.exists()


def test_timm_options_that_load_files_are_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pth"
    f.write_bytes(pickle.dumps(Payload(marker)))
    from cnnkit.models import create

    with pytest.raises(ModelError, match="--init-from"):
        create("timm/resnet18", num_classes=2, in_chans=1, checkpoint_path=str(f))
    cli_fails_in_one_line(capsys, ["train", "--model", "timm/resnet18", "--model-kw", f"checkpoint_path={f}",
                                   "--data", "sample", "--epochs", "1", "--out", str(tmp_path / "r")],
                          "checkpoint_path")
    assert not marker.exists()
