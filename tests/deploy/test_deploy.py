"""ONNX export: parity in ONNX Runtime, dynamic batch, the sidecar, and `predict`/`eval` on the artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnkit.cli import main
from cnnkit.artifacts.exported import load_onnx
from cnnkit.deploy import export_onnx
from cnnkit.evaluate import evaluate, predict
from cnnkit.artifacts import load
from tests.conftest import write_imagefolder


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(trained_run.run_dir, out)


def test_onnx_matches_pytorch_at_any_batch(exported, trained_run):
    assert exported.path.exists() and exported.max_abs_diff <= 1e-4
    art, ck = load_onnx(exported.path), load(trained_run.run_dir)
    for n in (1, 7):
        x = torch.randn(n, 1, 28, 28)
        with torch.no_grad():
            assert np.abs((art.model(x) - ck.model(x)).numpy()).max() <= 1e-4
    meta = json.loads(exported.sidecar.read_text())
    assert meta["classes"] == ck.classes and meta["img_size"] == [28, 28] and meta["normalization"]
    assert not [p for p in exported.path.parent.iterdir() if p.name.endswith(".tmp")]  # no temp files


def test_predict_and_eval_accept_the_onnx_file(exported, trained_run, tmp_path, sample_train):
    a = evaluate(exported.path, "sample", "test").metrics
    b = evaluate(trained_run.run_dir, "sample", "test").metrics
    assert a["top1"] == pytest.approx(b["top1"], abs=1e-3)
    folder = write_imagefolder(tmp_path / "imgs", sample_train, classes=(0, 7), per_class=2)
    p_onnx, p_ckpt = predict(exported.path, [folder]), predict(trained_run.run_dir, [folder])
    assert [p.top[0][0] for p in p_onnx] == [p.top[0][0] for p in p_ckpt]


def test_cli_export_and_sidecar_errors(trained_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(trained_run.run_dir), "--out", str(out)]) == 0
    side = out.with_name("m.onnx.json")
    meta = json.loads(side.read_text())
    meta["in_chans"] = 3
    side.write_text(json.dumps(meta))
    assert main(["predict", str(tmp_path), "--checkpoint", str(out)]) == 2
    assert "the sidecar does not belong to this model" in capsys.readouterr().err
    side.unlink()
    assert main(["eval", "--checkpoint", str(out)]) == 2
    assert "has no sidecar m.onnx.json" in capsys.readouterr().err


def test_failed_parity_writes_nothing(trained_run, tmp_path, capsys):
    out = tmp_path / "never.onnx"
    assert main(["export", "--checkpoint", str(trained_run.run_dir), "--out", str(out), "--atol", "0"]) == 2
    err = capsys.readouterr().err
    assert "differ from PyTorch's by" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_torch_export_program_round_trip(trained_run, tmp_path, sample_train):
    out = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(trained_run.run_dir), "--format", "torch-export",
                 "--out", str(out)]) == 0
    art, ck = load(out), load(trained_run.run_dir)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert (art.model(x) - ck.model(x)).abs().max() <= 1e-5
    folder = write_imagefolder(tmp_path / "imgs", sample_train, classes=(1,), per_class=2, mixed=False)
    assert [p.top[0][0] for p in predict(out, [folder])] == [p.top[0][0] for p in predict(trained_run.run_dir, [folder])]
    assert main(["export", "--checkpoint", str(trained_run.run_dir), "--format", "tflite"]) == 2


def test_bench_measures_checkpoints_and_artifacts(exported, trained_run, tmp_path, capsys):
    from cnnkit.deploy.bench import bench

    ck = bench(trained_run.run_dir, data="sample", repeats=5, batch=8)
    ox = bench(exported.path, data="sample", repeats=5, batch=8)
    model = load(trained_run.run_dir).model
    assert ck["params"] == sum(p.numel() for p in model.parameters()) and ck["macs"] > 0
    assert ox["params"] > 0.99 * ck["params"] and ox["macs"] is None  # BN may be folded in the ONNX graph
    assert ox["file_bytes"] == exported.path.stat().st_size
    for r in (ck, ox):
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"] and r["images_per_s"] > 0
    assert ox["top1"] == pytest.approx(ck["top1"], abs=1e-3)
    assert (ck["device"], ck["precision"]) == ("cpu", "float32") and ox["precision"] == "as exported"
    out = tmp_path / "b.json"
    assert main(["bench", str(trained_run.run_dir), str(exported.path), "--repeats", "3", "--batch", "4",
                 "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 2 and "p50 ms" in capsys.readouterr().out


def test_bench_times_a_pytorch_model_in_the_precision_asked(trained_run):
    from cnnkit.deploy.bench import bench

    r = bench(trained_run.run_dir, repeats=3, batch=4, device="cpu", amp="bf16")
    assert (r["device"], r["precision"]) == ("cpu", "bfloat16")
    assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"] and r["images_per_s"] > 0 and r["peak_rss_mib"] > 0


def test_bench_device_of_each_target(monkeypatch, tmp_path):
    """With a GPU present (mocked), auto puts PyTorch models on it and CPU-only artifacts on the CPU (ONNX, and a
    program whose sidecar says cnnkit compiles it with Inductor: `compress`'s int8 `.pt2`); asking for the GPU
    for an artifact that runs on the CPU only is refused rather than timed through copies. Any other `.pt2`, one
    whose sidecar is missing or unreadable included, is not CPU-only (its loader says what is wrong with it)."""
    from cnnkit.deploy.bench import target_device
    from cnnkit.errors import ConfigError
    from cnnkit.runtime import cpu_only_artifact

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert target_device("runs/x", "auto").type == "cuda"
    assert target_device("runs/x", "cpu").type == "cpu"
    int8 = tmp_path / "m.int8.pt2"  # the program itself is not read: the sidecar decides
    (tmp_path / "m.int8.pt2.json").write_text(json.dumps({"runtime": "inductor", "quantization": "pt2e-int8"}))
    assert cpu_only_artifact(int8) == "m.int8.pt2" and cpu_only_artifact(str(int8)) == "m.int8.pt2"
    assert target_device("m.onnx", "auto").type == "cpu" and target_device(int8, "auto").type == "cpu"
    assert target_device(int8, "cpu").type == "cpu"
    with pytest.raises(ConfigError, match="m.onnx runs in ONNX Runtime on the CPU here"):
        target_device("m.onnx", "cuda")
    with pytest.raises(ConfigError, match="m.int8.pt2 runs on the CPU only"):
        target_device(int8, "cuda")
    plain = tmp_path / "plain.pt2"  # a program with no sidecar
    assert cpu_only_artifact(plain) is None and target_device(plain, "auto").type == "cuda"
    for name, side in [("other.pt2", json.dumps({"runtime": "eager"})), ("garbage.pt2", "{not json"),
                       ("list.pt2", json.dumps(["inductor"])), ("binary.pt2", b"\xff\xfe\x00")]:
        sidecar = tmp_path / f"{name}.json"
        sidecar.write_bytes(side if isinstance(side, bytes) else side.encode())
        assert cpu_only_artifact(tmp_path / name) is None, name
        assert target_device(tmp_path / name, "auto").type == "cuda", name
    (tmp_path / "m.onnx.json").write_text(json.dumps({"runtime": "inductor"}))
    assert cpu_only_artifact(tmp_path / "m.onnx") is None  # the runtime key applies to programs alone


def test_bench_peak_memory_is_each_targets_own(trained_run, tmp_path):
    """Targets timed side by side in one process still get their own peak memory: a model with ~100 MB of
    weights adds about that much, the small one far less, whichever is measured first."""
    from cnnkit.deploy.bench import bench_many
    from cnnkit.models import create
    from cnnkit.artifacts import save_checkpoint

    meta = dict(load(trained_run.run_dir).meta)
    meta["model_kwargs"] = {**meta.get("model_kwargs", {}), "width": 128}
    big = create(meta["model"], num_classes=len(meta["classes"]), in_chans=meta["in_chans"], width=128)
    save_checkpoint(tmp_path / "big.safetensors", big, meta)
    weights_mib = sum(p.numel() * 4 for p in big.parameters()) / 2**20
    big_row, small_row = bench_many([tmp_path / "big.safetensors", trained_run.run_dir], repeats=2, batch=2)
    assert big_row["model_rss_mib"] >= 0.9 * weights_mib > 4 * small_row["model_rss_mib"]
    assert 0 < small_row["model_rss_mib"] < small_row["peak_rss_mib"]


def test_peak_memory_failure_is_reported_not_hidden(tmp_path):
    from cnnkit.deploy.bench import peak_memory

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    r = peak_memory(bad, batch=2)
    assert r["peak_rss_mib"] is None and r["model_rss_mib"] is None and r["peak_memory_error"]


def test_exports_fold_batchnorm_and_keep_parity(exported, trained_run, tmp_path):
    import onnx

    ops = {n.op_type for n in onnx.load(str(exported.path)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    ck = load(trained_run.run_dir)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in ck.model.modules())
    assert json.loads(exported.sidecar.read_text())["bn_folded"] == n_bn > 0
    from cnnkit.deploy import export_program

    def batchnorms(path):
        return sum("batch_norm" in str(n.target) for n in torch.export.load(str(path)).graph.nodes)

    folded = export_program(trained_run.run_dir, tmp_path / "f.pt2")
    plain = export_program(trained_run.run_dir, tmp_path / "p.pt2", fold_bn=False)
    assert batchnorms(folded.path) == 0 and batchnorms(plain.path) == n_bn
    assert folded.max_abs_diff <= 1e-5 and "bn_folded" not in json.loads(plain.sidecar.read_text())


def test_untraceable_model_is_exported_unfolded_and_says_why(trained_run, tmp_path):
    from cnnkit.deploy.export import export_artifact, write_program

    class DataDependent(torch.nn.Module):  # torch.fx cannot trace a branch on a tensor's value
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 10, 28), torch.nn.BatchNorm2d(10)

        def forward(self, x):
            y = self.bn(self.conv(x)).flatten(1)
            return y if x.shape[0] > 0 else -y

    r = export_artifact(trained_run.run_dir, tmp_path / "d.pt2", ".pt2", "torch.export", 1e-5, 0, write_program,
                        model=DataDependent().eval(), fold_bn=True)
    meta = json.loads(r.sidecar.read_text())
    assert r.max_abs_diff <= 1e-5 and meta["bn_folded"] == 0 and "cannot trace" in meta["bn_not_folded_because"]


def test_onnx_runtime_failure_at_run_time_is_one_line(exported):
    """A graph ONNX Runtime loads but cannot run on the input (here: the wrong number of channels) is a
    CheckpointError saying what to do, not ONNX Runtime's own exception."""
    from cnnkit.errors import CheckpointError

    art = load_onnx(exported.path)
    with pytest.raises(CheckpointError, match="ONNX Runtime cannot run") as info:
        art.model(torch.randn(1, 3, 28, 28))
    assert "\n" not in str(info.value)


def test_onnx_export_falls_back_to_the_torchscript_exporter_when_the_dynamo_one_fails(trained_run, tmp_path,
                                                                                        monkeypatch):
    """Where torch.export-based conversion fails (it did on torch 2.11 with onnxscript 0.7.2), the export still
    writes a model that ONNX Runtime runs at any batch size and that matches PyTorch."""
    import onnxruntime as ort
    import torch

    from cnnkit.deploy import export_onnx

    real = torch.onnx.export
    calls = []

    def flaky(*args, dynamo=True, **kwargs):
        calls.append(dynamo)
        if dynamo:
            raise RuntimeError("ConversionError: Failed to convert the exported program to an ONNX model")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", flaky)
    r = export_onnx(trained_run.run_dir, tmp_path / "m.onnx")
    assert calls == [True, False] and r.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        assert sess.run(None, {"images": np.zeros((n, *sess.get_inputs()[0].shape[1:]), np.float32)})[0].shape[0] == n


def test_the_tolerance_scales_with_the_outputs_magnitude(trained_run, tmp_path):
    """The parity check allows atol × the largest output magnitude (where above 1): a runtime whose outputs are
    off by 1e-5 of their size passes at atol 1e-4 whatever their size; one off by 1e-3 of it fails."""
    from cnnkit.deploy.export import export_artifact
    from cnnkit.errors import ExportError

    def writer(relative_error):
        def write(model, example, tmp, task):
            open(tmp, "wb").write(b"artifact")

            def run(x):
                with torch.no_grad():
                    y = model(x)  # logits in the thousands
                return (y + relative_error * y.abs().max()).numpy()
            return run
        return write

    big = torch.nn.Sequential(load(trained_run.run_dir).model, torch.nn.Identity())
    big[1].forward = lambda y: y * 1000
    r = export_artifact(trained_run.run_dir, tmp_path / "a.bin", ".bin", "test", 1e-4, 0, writer(1e-5), model=big)
    assert r.max_abs_diff > 1e-4 and max(c["max_abs_output"] for c in r.checks) > 100
    with pytest.raises(ExportError, match=r"× the outputs' largest magnitude"):
        export_artifact(trained_run.run_dir, tmp_path / "b.bin", ".bin", "test", 1e-4, 0, writer(1e-3), model=big)
    assert not (tmp_path / "b.bin").exists()
