"""Compression: int8 PTQ (PT2E and ONNX Runtime), QAT at 8 and 4 bits (PT2E), structured pruning with every criterion,
unstructured masks, pruned checkpoints, and `cnnkit compress` on the sample."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
import torch.nn as nn

from cnnkit.cli import main
from cnnkit.compress import CRITERIA, OBSERVERS, prune_structured, quantize_onnx, quantize_pt2e
from cnnkit.compress.finetune import finetune
from cnnkit.compress.prune import apply_masks, count_macs, magnitude_masks, sparsity_of
from cnnkit.compress.quantize import convert, float_ops, freeze_bn, prepare_qat, qat_float_model
from cnnkit.data import Normalize, load_dataset
from cnnkit.errors import CompressError
from cnnkit.models import create
from cnnkit.artifacts import load, save_checkpoint


@pytest.fixture(scope="module")
def sample(trained_run):
    ckpt = load(trained_run.run_dir)
    norm = Normalize(*ckpt.normalization)
    train = load_dataset("sample", "train")
    test = load_dataset("sample", "test")
    return ckpt, norm(train.images[:256]), train.labels[:256], norm(test.images), test.labels


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def _int8_weights(gm: torch.fx.GraphModule) -> list[torch.Tensor]:
    return [v for v in gm.state_dict().values() if v.dtype == torch.int8]


def _write_int8(q, model, ckpt, path):
    """The converted program written as `compress` writes it (a `torch.export` program, its sidecar asking for
    Inductor), and loaded back through cnnkit's checks."""
    from cnnkit.artifacts import LoadedCheckpoint
    from cnnkit.deploy import export_artifact, write_program

    export_artifact(LoadedCheckpoint(model, dict(ckpt.meta), ckpt.path), path, ".pt2", "int8 torch.export (pt2e)", None,
                    0, write_program, model=model, exported=q.model,
                    extra={"runtime": "inductor", "quantization": "pt2e-int8"})
    return load(path)


@pytest.mark.parametrize("observer", OBSERVERS)
def test_int8_pt2e_is_close_to_float_and_keeps_int8_weights(sample, observer):
    ckpt, calib, _, x, _ = sample
    q = quantize_pt2e(ckpt.model, calib, observer)
    with torch.no_grad():
        ref, out = ckpt.model(x), q.model(x)  # the converted graph, uncompiled: int8 arithmetic simulated in float
    assert _agree(ref, out) >= 0.95
    # the percentile observer saturates the rarest activations on purpose: its largest error is larger
    assert (out - ref).abs().max() < (0.15 if observer == "percentile" else 0.1) * ref.abs().max()
    # the head's global max pooling (not annotated by the x86 quantizer) and the logit scale run in float
    assert [op.split(" ")[1] for op in q.float_ops] == ["(adaptive_max_pool2d)", "(mul)"]
    layers = [m for m in ckpt.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weights = _int8_weights(q.model)
    assert len(weights) == len(layers)  # every convolution and linear layer holds int8 weights
    assert sorted(w.numel() for w in weights) == sorted(m.weight.numel() for m in layers)
    assert not any(v.dtype == torch.float32 and v.dim() == 4 for v in q.model.state_dict().values())  # no float copy


def test_int8_program_round_trips_and_runs_compiled(sample, tmp_path):
    """Written and read back through cnnkit's archive and graph checks, the int8 program runs compiled by
    Inductor (oneDNN's int8 kernels), as the uncompiled graph computes, for any batch size (padded to a power of two)."""
    from cnnkit.artifacts.programs import CompiledProgram

    ckpt, calib, _, x, _ = sample
    q = quantize_pt2e(ckpt.model, calib, "minmax")
    loaded = _write_int8(q, ckpt.model, ckpt, tmp_path / "m.int8.pt2")
    assert isinstance(loaded.model, CompiledProgram) and loaded.meta["quantization"] == "pt2e-int8"
    with torch.no_grad():
        ref = q.model(x[:64])
        out = loaded.model(x[:64])
        odd = loaded.model(x[:3])
    assert _agree(ref, out) >= 0.98
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert odd.shape == (3, 10) and torch.allclose(odd, out[:3], atol=1e-4)  # padding does not leak into results
    assert set(loaded.model.compile_seconds) == {(64, 1, 28, 28), (4, 1, 28, 28)}
    assert not loaded.model.uncompiled


def test_int8_program_is_smaller_on_disk(tmp_path, sample):
    """The weights are stored as int8 (1 byte against 4); the file also holds the graph, in JSON."""
    _, calib, _, _, _ = sample
    model = create("resnet9", num_classes=10, in_chans=1, width=32).eval()
    q = quantize_pt2e(model, calib, "minmax")
    float_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    int8_bytes = sum(v.numel() * v.element_size() for v in q.model.state_dict().values())
    assert int8_bytes < 0.3 * float_bytes
    from cnnkit.deploy import write_program

    write_program(model, calib[:2], str(tmp_path / "f.pt2"))
    write_program(q.model, calib[:2], str(tmp_path / "q.pt2"))
    assert (tmp_path / "q.pt2").stat().st_size < 0.45 * (tmp_path / "f.pt2").stat().st_size


def test_onnx_runtime_int8_is_close_to_float(sample, tmp_path):
    import onnxruntime as ort

    from cnnkit.deploy import export_onnx

    ckpt, calib, _, x, _ = sample
    f = export_onnx(ckpt, tmp_path / "m.onnx").path
    left = quantize_onnx(f, tmp_path / "m.int8.onnx", calib, "percentile")
    assert left == []
    sess = ort.InferenceSession(str(tmp_path / "m.int8.onnx"), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "m.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert _agree(ckpt.model(x), out) >= 0.95


def test_onnx_runtimes_warnings_are_said_once_in_cnnkits_words(tmp_path, caplog):
    """ONNX Runtime logs through the root logger, `WARNING:root:Axis 1 is out-of-range ...` once per use of a
    1-D weight (a LayerNorm's scale): taken, and said once to the log; other logging is left as it was."""
    import logging

    from cnnkit.deploy import write_onnx

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LayerNorm(4 * 26 * 26), nn.Linear(4 * 26 * 26, 10))
    write_onnx(model.eval(), torch.randn(2, 1, 28, 28), str(tmp_path / "m.onnx"))
    handlers, said = list(logging.getLogger().handlers), []
    caplog.clear()  # (the export's own debug records)
    with caplog.at_level(logging.WARNING):
        quantize_onnx(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", torch.randn(64, 1, 28, 28), "minmax", 32,
                      log=said.append)
        logging.getLogger("elsewhere").warning("still said")
    assert said == ["  int8 ONNX: 1 one-dimensional weight(s) quantized per tensor, not per channel: 2.weight"]
    assert [r.getMessage() for r in caplog.records] == ["still said"]  # none of ONNX Runtime's reached a handler
    assert logging.getLogger().handlers == handlers


def test_unquantizable_layers_fall_back_to_float_and_are_listed():
    """A convolution's hardswish fuses into its int8 kernel; Softsign (|x|, +1, ÷) has none, so it and the
    pooling that reads its float output run in float."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Hardswish(), nn.Conv2d(8, 8, 3), nn.Softsign(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(64, 1, 12, 12)
    q = quantize_pt2e(net, x, "minmax")
    assert [s.split(" ")[1] for s in q.float_ops] == ["(abs)", "(add)", "(div)", "(adaptive_avg_pool2d)"]
    with torch.no_grad():
        assert (q.model(x) - net(x)).abs().max() < 0.1


def test_calibration_and_option_errors(sample):
    ckpt, calib, _, _, _ = sample
    with pytest.raises(CompressError, match="fewer than one batch"):
        quantize_pt2e(ckpt.model, calib[:10], "minmax", batch=64)
    with pytest.raises(CompressError, match="unknown calibration observer"):
        quantize_pt2e(ckpt.model, calib, "kl")
    with pytest.raises(CompressError, match="8 or 4 bits"):
        prepare_qat(ckpt.model, calib[:2], weight_bits=2)
    with pytest.raises(CompressError, match="unknown quantizer 'fbgemm'"):
        quantize_pt2e(ckpt.model, calib, "minmax", quantizer="fbgemm")


def test_the_quantizer_follows_the_cpu():
    from cnnkit.compress.quantize import quantizer_for

    assert quantizer_for("auto", "x86_64") == "x86" and quantizer_for("auto", "aarch64") == "arm"
    assert quantizer_for("auto", "riscv64") is None  # int8 from ONNX Runtime alone there
    with pytest.raises(CompressError, match="do not run on this aarch64 CPU"):
        quantizer_for("x86", "aarch64")


@pytest.mark.parametrize("bits", [4])  # qat8 runs end to end in test_cli_compress_on_sample_writes_artifacts_and_report
def test_qat_converts_to_int8_weights(sample, bits):
    from torchao.quantization.pt2e import disable_fake_quant

    ckpt, calib, labels, x, y = sample
    prepared = prepare_qat(ckpt.model, calib[:2], weight_bits=bits)
    data = load_dataset("sample", "train").subset(torch.arange(512), "train")  # 8 steps: PT2E's QAT graph is slow
    finetune(prepared, data, *ckpt.normalization, epochs=1, lr=1e-3, batch_size=64, freeze_bn_after=0.5,
             freeze_bn=freeze_bn)
    # the ONNX route: the fine-tuned weights and BN statistics back in the float architecture compute what
    # the QAT graph computes with fake quantization switched off
    trained = qat_float_model(prepared, ckpt.model)
    plain = copy.deepcopy(prepared).eval()
    plain.apply(disable_fake_quant)
    with torch.no_grad():
        assert torch.allclose(trained(x[:16]), plain(x[:16]), atol=1e-4)
        assert not torch.allclose(trained(x[:16]), ckpt.model(x[:16]), atol=1e-3)  # the weights did change
    q = convert(prepared)
    weights = _int8_weights(q)
    assert len(weights) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in ckpt.model.modules())
    lo, hi = (-7, 7) if bits == 4 else (-128, 127)
    for w in weights:
        assert w.min() >= lo and w.max() <= hi
        assert w.abs().max() >= (7 if bits == 4 else 120)  # the range is used
    with torch.no_grad():
        acc = float((q(x).argmax(1) == y).float().mean())
        base = float((ckpt.model(x).argmax(1) == y).float().mean())
    assert acc >= base - (0.05 if bits == 8 else 0.15)
    assert [op.split(" ")[1] for op in float_ops(q)] == ["(adaptive_max_pool2d)", "(mul)"]


@pytest.mark.parametrize("criterion,scope", [(c, "uniform") for c in CRITERIA] + [("l1", "global"), ("lamp", "global")])
def test_structured_pruning_halves_macs_and_keeps_shapes(sample, criterion, scope):
    ckpt, calib, labels, x, _ = sample
    before = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    p = prune_structured(ckpt.model, calib[:64], labels[:64], 0.5, criterion, scope)
    assert abs(p.macs_after / p.macs_before - 0.5) <= 0.05
    assert p.macs_after == count_macs(p.model, x) and p.params_after < p.params_before
    assert p.model(x[:3]).shape == (3, 10)
    assert all(torch.equal(v, ckpt.model.state_dict()[k]) for k, v in before.items())  # source untouched


def test_round_to_keeps_channel_counts_in_kernel_blocks(sample):
    ckpt, calib, labels, x, _ = sample
    p = prune_structured(ckpt.model, calib[:64], labels[:64], 0.4, "lasso", round_to=8)
    convs = [m for m in p.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs)
    assert p.macs_after < p.macs_before and p.refitted_layers > 0
    assert p.model(x[:2]).shape == (2, 10)


def test_lasso_refit_reconstructs_better_than_no_refit(sample):
    ckpt, calib, labels, x, _ = sample
    with torch.no_grad():
        ref = ckpt.model(x)
        plain = prune_structured(ckpt.model, calib[:64], None, 0.5, "lasso", refit=False).model(x)
        refit = prune_structured(ckpt.model, calib[:64], None, 0.5, "lasso", refit=True).model(x)
    assert (refit - ref).pow(2).mean() < 0.5 * (plain - ref).pow(2).mean()


def test_pruning_errors(sample):
    ckpt, calib, labels, _, _ = sample
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(CompressError, match="strictly between 0 and 1"):
            prune_structured(ckpt.model, calib, labels, bad)
    with pytest.raises(CompressError, match="unknown pruning criterion"):
        prune_structured(ckpt.model, calib, labels, 0.5, "random")
    with pytest.raises(CompressError, match="layer-wise"):
        prune_structured(ckpt.model, calib, labels, 0.5, "lasso", "global")


def test_magnitude_masks_stay_applied_while_retraining(sample):
    ckpt, *_ = sample
    model = load(ckpt.path).model
    masks = magnitude_masks(model, 0.7)
    apply_masks(model, masks)
    assert abs(sparsity_of(model) - 0.7) < 0.01
    finetune(model, load_dataset("sample", "train"), *ckpt.normalization, epochs=0.3,
             after_step=lambda: apply_masks(model, masks))
    assert abs(sparsity_of(model) - 0.7) < 0.01
    with pytest.raises(CompressError):
        magnitude_masks(model, 1.0)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_compress_on_sample_writes_artifacts_and_report(trained_run, tmp_path, monkeypatch):
    # each variant's peak memory takes a fresh process (seconds each); tests/deploy/test_deploy.py covers it
    monkeypatch.setattr("cnnkit.deploy.bench.peak_memory", lambda target, batch=64, *rest: {
        "peak_rss_mib": None, "model_rss_mib": None, "peak_memory_error": "not measured in this test"})
    src = trained_run.best_checkpoint
    digest = _digest(src)
    out = tmp_path / "c"
    code = main(["compress", "--checkpoint", str(trained_run.run_dir), "--recipe", "int8",
                 "--recipe", "prune:0.5+int8", "--recipe", "sparse:0.5", "--recipe", "qat8",
                 "--finetune-epochs", "0.2", "--calibration", "128", "--repeats", "3", "--out", str(out)])
    assert code == 0
    assert _digest(src) == digest  # the source checkpoint is never modified
    for name in ("resnet9.pt2", "resnet9.onnx", "resnet9.int8.pt2", "resnet9.int8.onnx", "resnet9.pruned50.safetensors",
                 "resnet9.pruned50.onnx", "resnet9.pruned50.pt2", "resnet9.pruned50.int8.pt2", "resnet9.pruned50.int8.onnx",
                 "resnet9.sparse50.safetensors", "resnet9.qat8.int8.pt2", "resnet9.qat8.int8.onnx", "report.html",
                 "pareto.png", "compress.json"):
        assert (out / name).exists(), name
    assert not list(out.glob(".*.tmp*"))  # no temporary files left behind (.cnnkit-files.json is the manifest)
    rows = json.loads((out / "compress.json").read_text())["rows"]
    assert [(r["variant"], r["runtime"]) for r in rows] == [
        ("float32", "eager"), ("float32", "inductor"), ("float32", "onnxruntime"), ("int8", "inductor int8"),
        ("int8", "onnxruntime int8"), ("prune:0.5", "eager"), ("prune:0.5", "onnxruntime"), ("prune:0.5", "inductor"),
        ("prune:0.5+int8", "inductor int8"), ("prune:0.5+int8", "onnxruntime int8"), ("sparse:0.5", "eager (dense kernels)"),
        ("qat8", "inductor int8"), ("qat8", "onnxruntime int8")]
    assert len({r["file"] for r in rows}) == len(rows)  # each artifact measured once
    assert all(0 <= r["top1"] <= 1 for r in rows)
    pruned = next(r for r in rows if r["file"] == "resnet9.pruned50.safetensors")
    assert pruned["macs"] <= 0.55 * rows[0]["macs"]
    program = next(r for r in rows if r["file"] == "resnet9.pt2")
    int8 = next(r for r in rows if r["file"] == "resnet9.int8.pt2")
    assert int8["file_bytes"] < program["file_bytes"] / 1.5  # int8 weights; the graph's JSON is the same size
    assert int8["macs"] == rows[0]["macs"] and int8["float_ops"] == ["adaptive_max_pool2d (adaptive_max_pool2d)", "mul (mul)"]
    # ONNX Runtime's int8 is the one to ship where loading speed or a machine without a compiler matters
    assert json.loads((out / "compress.json").read_text())["advice"] == [
        "int8 to ship by default: resnet9.int8.onnx (ONNX Runtime: nothing to compile, loads at once); "
        "resnet9.int8.pt2 runs where Inductor can compile it, on first use of each batch size"]
    page = (out / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page and "resnet9.int8.onnx" in page
    # every artifact works where a checkpoint does
    for name in ("resnet9.int8.pt2", "resnet9.int8.onnx", "resnet9.pruned50.safetensors", "resnet9.qat8.int8.onnx"):
        # (each `cnnkit eval` of a .pt2 compiles it again in its own process, as a user's would)
        assert main(["eval", "--checkpoint", str(out / name)]) == 0, name
    p = load(out / "resnet9.pruned50.safetensors")
    assert p.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("args, message", [
    (["--recipe", "int4"], "unknown recipe"),
    (["--recipe", "prune:1.5"], "strictly between 0 and 1, got 1.5"),
    (["--recipe", "prune:0"], "strictly between 0 and 1"),
    (["--recipe", "int8", "--calibration", "8"], "fewer than one batch"),
    (["--recipe", "int8", "--observer", "kl"], "unknown calibration observer"),
])
def test_cli_compress_errors_are_one_line(trained_run, tmp_path, capsys, args, message):
    code = main(["compress", "--checkpoint", str(trained_run.run_dir), "--out", str(tmp_path / "o"), "--no-onnx", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "compress.json").exists()


def test_keep_epoch_gives_a_rewind_point_for_sparse(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--model", "resnet9", "--model-kw", "width=8", "--data", "sample", "--epochs", "2",
                 "--train-images", "512", "--keep-epoch", "1", "--out", str(run_dir), "--quiet"]) == 0
    early = run_dir / "epoch-0001.safetensors"
    assert early.exists() and not (run_dir / "epoch-0002.safetensors").exists()
    assert not torch.equal(load(early).model.state_dict()["fc.weight"],
                           load(run_dir / "last.safetensors").model.state_dict()["fc.weight"])
    out = tmp_path / "c"
    assert main(["compress", "--checkpoint", str(run_dir), "--recipe", "sparse:0.6", "--rewind", str(early),
                 "--finetune-epochs", "0", "--no-onnx", "--repeats", "3", "--out", str(out)]) == 0
    sparse = load(out / "resnet9.sparse60.safetensors")
    assert sparse.meta["rewound_to"] == str(early)
    w, w0 = sparse.model.state_dict()["fc.weight"], load(early).model.state_dict()["fc.weight"]
    assert torch.equal(w[w != 0], w0[w != 0])  # the surviving weights are the epoch-1 weights
    assert main(["train", "--data", "sample", "--epochs", "2", "--keep-epoch", "3", "--out", str(tmp_path / "x")]) == 2
    assert "between 1 and 2" in capsys.readouterr().err


def test_finetuning_depends_on_its_seed_alone(sample):
    """The same model fine-tuned with the same seed comes out the same whatever drew from torch's random
    generator before (a compress variant is the same alone or after others), and the caller's state is kept."""
    import copy

    ckpt = sample[0]
    data = load_dataset("sample", "train").subset(torch.arange(256), "train")
    runs = []
    for draws in (0, 7):
        torch.rand(draws)  # whatever ran before
        model = copy.deepcopy(ckpt.model)
        before = torch.random.get_rng_state()
        finetune(model, data, *ckpt.normalization, epochs=0.5, lr=1e-2, batch_size=64, seed=3)
        assert torch.equal(torch.random.get_rng_state(), before)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
