"""The error contract: every ordinary user mistake, on every verb, ends with exit status 2 and exactly one
line on stderr that says what to do: no traceback, no "internal error", and nothing left on disk.

One table of bad command lines. Most rows run `cnnkit.cli.main` in-process (fast); a few run the real
`python -m cnnkit` in a subprocess. Each row compares a listing of its working folder and of the shared
fixtures before and after, so a failed command that leaves a folder or a partial file behind fails the row."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from cnnkit.artifacts import files
from cnnkit.cli import main


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Shared fixtures, built once: a tiny trained run, its ONNX export and int8 PT2E program (as `cnnkit compress`
    writes it), a checkpoint of another architecture, and files that are not what they claim to be."""
    from PIL import Image

    from cnnkit.artifacts import load, save_checkpoint
    from cnnkit.artifacts.exported import INDUCTOR, PT2E_INT8
    from cnnkit.compress.quantize import quantize_pt2e
    from cnnkit.deploy import export_artifact, export_onnx, write_program
    from cnnkit.deploy.export import dynamic_dims
    from cnnkit.models import create
    from cnnkit.train import fit

    root = tmp_path_factory.mktemp("contract")
    run = fit(model="resnet9", model_kwargs={"width": 8}, data="sample", epochs=1, train_images=500,
              out=str(root / "run"), progress=False)
    ckpt = load(run.run_dir)
    art = root / "artifacts"
    onnx = export_onnx(ckpt, art / "m.onnx").path
    model = ckpt.model.float().eval()
    q = quantize_pt2e(model, torch.randn(64, ckpt.in_chans, *ckpt.img_size), "minmax", batch=64,
                      dynamic=dynamic_dims(None))
    int8 = export_artifact(ckpt, art / "m.int8.pt2", ".pt2", "int8 torch.export (pt2e)", None, 0, write_program,
                           model=model, exported=q.model,
                           extra={"runtime": INDUCTOR, "quantization": PT2E_INT8}).path  # as compress writes it
    other = root / "other.safetensors"  # the same family at another width: not a rewind point of the run
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "cnnkit_version", "torch_version")}
    save_checkpoint(other, create("resnet9", num_classes=10, in_chans=1, width=4),
                    {**meta, "model_kwargs": {"width": 4}})

    bad = root / "bad"
    bad.mkdir()
    (bad / "empty").mkdir()
    Image.new("L", (28, 28), 128).save(bad / "ok.png")
    (bad / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    (bad / "notes.txt").write_text("hello\n")
    (bad / "bomb.png").write_bytes(_png_header(20000, 20000))  # past PIL's error limit
    (bad / "bomb-warn.png").write_bytes(_png_header(10000, 10000))  # past its warning limit only
    (bad / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (bad / "garbage.onnx").write_bytes(b"not protobuf")
    shutil.copy(f"{onnx}.json", bad / "garbage.onnx.json")
    cifar_tar = root / "cifar-tar"
    cifar_tar.mkdir()
    (cifar_tar / "cifar-10-python.tar.gz").write_bytes(os.urandom(4096))
    cifar_cut = root / "cifar-cut" / "cifar-10-batches-py"
    cifar_cut.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (cifar_cut / name).write_bytes(os.urandom(100))  # truncated batches
    return {"root": str(root), "run": str(run.run_dir), "best": str(run.best_checkpoint), "onnx": str(onnx),
            "int8": str(int8), "other": str(other), "bad": str(bad), "ok": str(bad / "ok.png"),
            "cifar_tar": str(cifar_tar), "cifar_cut": str(cifar_cut.parent),
            "cache": str(tmp_path_factory.mktemp("cache")), "data": str(tmp_path_factory.mktemp("data"))}


# (verb-id, arguments with {placeholders} from `fx` and {cwd}, a fragment the one error line must contain)
ROWS: list[tuple[str, str, str]] = [
    # usage errors from the argument parser
    ("usage-no-command", "bogus", "No such command 'bogus'"),
    ("usage-no-option", "train --foo", "No such option: --foo"),
    ("usage-models-sub", "models nosuch", "No such command 'nosuch'"),
    ("usage-missing-arg", "predict --checkpoint {run}", "Missing argument"),
    ("usage-missing-opt", "eval", "Missing option '--checkpoint'"),
    ("usage-epochs-0", "train --data sample --epochs 0", "--epochs"),
    ("usage-epochs-abc", "train --data sample --epochs abc", "--epochs"),
    ("usage-topk-0", "predict {ok} --checkpoint {run} --topk 0", "--topk"),
    ("usage-bench-batch", "bench {run} --batch 0", "--batch"),
    ("bench-device-cuda", "bench {run} --device cuda", "no CUDA device is available"),
    ("bench-fp16-on-cpu", "bench {run} --device cpu --amp fp16", "fp16"),
    ("bench-amp-banana", "bench {run} --amp banana", "--amp must be auto, bf16, fp16 or off"),
    ("usage-demo-epochs", "demo --epochs 0", "--epochs"),
    # train: model options
    ("train-width-0", "train --data sample --model resnet9 --model-kw width=0", "width=0 is not valid"),
    ("train-width-neg", "train --data sample --model-kw width=-8", "width=-8 is not valid"),
    ("train-width-abc", "train --data sample --model resnet9 --model-kw width=abc", "width='abc' is not valid"),
    ("train-drop-path-abc", "train --data sample --model resnet9 --model-kw drop_path=abc",
     "drop_path must be in [0, 1)"),
    ("train-eca-on-resnet9", "train --data sample --model resnet9 --model-kw eca_kernel_sizes=[3,5]",
     "does not support option(s) eca_kernel_sizes"),
    ("train-eca-two-sizes", "train --data sample --model resnet50_attn --model-kw eca_kernel_sizes=[3,5]",
     "four odd kernel sizes"),
    ("train-yaml-broken", "train --data sample --model-kw attn=[se", "cannot read the value '[se'"),
    ("train-unknown-kw", "train --data sample --model resnet9 --model-kw bogus=1", "does not support option(s) bogus"),
    ("train-kw-no-equals", "train --data sample --model-kw width", "expected key=value"),
    ("train-head-foo", "train --data sample --model resnet9 --model-kw head=foo", "unknown head 'foo'"),
    ("train-hidden-0", "train --data sample --model tinyvgg --model-kw hidden=0", "hidden=0 is not valid"),
    ("train-dims-short", "train --data sample --model convnext_mini --model-kw dims=[8,16]", "4 positive integers"),
    ("train-timm-rate", "train --data sample --model timm/resnet18 --model-kw drop_rate=abc", "drop_rate='abc'"),
    ("train-vit-28px", "train --model timm/vit_tiny_patch16_224 --data sample --epochs 1 --out {cwd}/r",
     "cannot take 1×28×28 inputs"),
    ("train-unknown-model", "train --data sample --model resnet2O", "unknown model 'resnet2O'"),
    ("train-unknown-timm", "train --data sample --model timm/nosuch", "unknown timm model"),
    # train: augmentation, devices, numbers, data, folders
    ("train-augment-key", "train --data sample --augment flip=true",
     "unknown augmentation 'flip' (did you mean: hflip"),
    ("train-augment-value", "train --data sample --augment erasing=abc", "erasing='abc' is not valid"),
    ("train-augment-policy", "train --data sample --augment policy=foo", "unknown augmentation policy 'foo'"),
    ("train-device-mps", "train --data sample --device mps", "--device mps"),
    ("train-device-cuda7", "train --data sample --device cuda:7", "CUDA"),
    ("train-device-banana", "train --data sample --device banana", "unknown device 'banana'"),
    ("train-lr-negative", "train --data sample --lr -1", "learning rate must be positive"),
    ("train-val-fraction", "train --data sample --val-fraction 1.5", "validation fraction"),
    ("train-keep-epoch", "train --data sample --epochs 2 --keep-epoch 5", "between 1 and 2"),
    ("train-recipe", "train --recipe quick", "unknown recipe 'quick'"),
    ("train-budget-no-unit", "train --data sample --budget 3", "give a number with a unit"),
    ("train-budget-tiny", "train --data sample --budget 2s", "at least 10 seconds"),
    ("train-budget-and-epochs", "train --data sample --budget 3m --epochs 2", "--epochs or --budget, not both"),
    ("train-lr-find-resume", "train --lr-find --resume {bad}/missing", "cannot be combined with --resume"),
    ("train-optimizer", "train --data sample --optimizer adam", "optimizer must be one of sgd, adamw, rmsprop"),
    ("train-unknown-data", "train --data fashion-mnst", "unknown dataset 'fashion-mnst'"),
    ("train-data-mode", "train --data sample --data-mode disk", "data mode must be auto, memory or stream"),
    ("train-stream-named", "train --data sample --data-mode stream --epochs 1 --out {cwd}/r",
     "--data-mode stream reads folders of files"),
    ("train-nproc-batch", "train --data sample --nproc 3 --batch-size 64", "must be a multiple of --nproc 3"),
    ("usage-train-nproc-0", "train --data sample --nproc 0", "--nproc"),
    ("usage-train-checkpoint-every", "train --data sample --checkpoint-every -5", "--checkpoint-every"),
    ("train-webdataset-missing", "train --data webdataset:{bad}/nosuch --epochs 1 --out {cwd}/r", "is not a folder"),
    ("data-shard-missing", "data shard imagefolder:{bad}/nosuch --out {cwd}/s", "is not a folder"),
    ("data-shard-size", "data shard imagefolder:{bad} --out {cwd}/s --shard-size 12XB", "--shard-size"),
    ("data-shard-kind", "data shard sample --out {cwd}/s", "imagefolder:"),
    ("train-imagefolder-missing", "train --data imagefolder:{bad}/missing", "is not a folder"),
    ("train-imagefolder-empty", "train --data imagefolder:{bad}/empty", "has no class sub-folders"),
    ("train-init-missing", "train --data sample --init-from {bad}/missing.pth", "does not exist"),
    ("train-resume-missing", "train --resume {bad}/missing", "not a run directory"),
    ("train-out-is-file", "train --data sample --epochs 1 --out {ok}", "is a file"),
    ("train-cifar-bad-tar", "train --data cifar10 --data-dir {cifar_tar} --epochs 1 --out {cwd}/r",
     "delete it and download it again"),
    # eval
    ("eval-missing-ckpt", "eval --checkpoint {bad}/missing", "no such checkpoint or run directory"),
    ("eval-garbage-ckpt", "eval --checkpoint {bad}/garbage.safetensors", "not a readable safetensors file"),
    ("eval-text-ckpt", "eval --checkpoint {bad}/notes.txt", "notes.txt"),
    ("eval-split-unknown", "eval --checkpoint {run} --split validation", "split must be train, val"),
    ("eval-out-is-file", "eval --checkpoint {run} --out {ok}", "is a file"),
    ("eval-cifar-cut", "eval --checkpoint {run} --data cifar10 --data-dir {cifar_cut}", "delete that folder"),
    ("eval-cifar-missing", "eval --checkpoint {run} --data cifar10 --data-dir {bad}/empty", "cifar10: missing"),
    ("eval-int8-on-cuda", "eval --checkpoint {int8} --device cuda", "runs on the CPU only"),
    ("eval-tta-adapt", "eval --checkpoint {run} --tta --adapt bn", "--tta and --adapt do not combine"),
    ("predict-tta-adapt", "predict {ok} --checkpoint {run} --tta --adapt bn", "--tta and --adapt do not combine"),
    ("eval-device-banana", "eval --checkpoint {run} --device banana", "unknown device 'banana'"),
    # predict
    ("predict-bomb", "predict {bad}/bomb.png --checkpoint {run}", "bomb"),
    ("predict-bomb-warn", "predict {bad}/bomb-warn.png --checkpoint {run}", "decompression bomb"),
    ("predict-not-image", "predict {bad}/not-an-image.png --checkpoint {run}", "none of the given images"),
    ("predict-empty-folder", "predict {bad}/empty --checkpoint {run}", "no image files found"),
    ("predict-missing-file", "predict {bad}/missing.png --checkpoint {run}", "no such file or folder"),
    ("predict-garbage-onnx", "predict {ok} --checkpoint {bad}/garbage.onnx", "cannot load"),
    ("predict-device-mps", "predict {ok} --checkpoint {run} --device mps", "--device mps"),
    ("predict-ckpt-folder", "predict {ok} --checkpoint {bad}/empty", "empty"),
    ("predict-no-source", "predict {ok}", "--checkpoint RUN"),
    ("predict-both-sources", "predict {ok} --checkpoint {run} --url http://127.0.0.1:9/v1/models/x", "one of the two"),
    ("predict-bad-url", "predict {ok} --url ftp://example/x", "--url must look like"),
    ("predict-url-host-unreachable", "predict {ok} --url http://127.0.0.1:9", "cannot reach the service"),
    ("predict-no-service", "predict {ok} --url http://127.0.0.1:9/v1/models/x", "cannot reach the service"),
    ("predict-amp-fp16-cpu", "predict {ok} --checkpoint {run} --amp fp16 --device cpu", "fp16"),
    ("eval-amp-banana", "eval --checkpoint {run} --amp banana", "--amp must be"),
    ("explain-url-benchmark", "explain --url http://127.0.0.1:9/v1/models/x --benchmark", "--benchmark applies"),
    ("predict-url-tta", "predict {ok} --url http://127.0.0.1:9/v1/models/x --tta", "--tta set how"),
    ("serve-missing", "serve {bad}/missing.safetensors --port 0", "missing.safetensors"),
    ("serve-garbage-onnx", "serve {bad}/garbage.onnx --port 0", "cannot load"),
    ("serve-duplicate-name", "serve {run} {run} --port 0", "name them: NAME=PATH"),
    ("serve-bad-name", "serve 'a b=c'=x --port 0", "model name"),
    ("serve-port-range", "serve {run} --port 70000", "--port"),
    ("serve-amp-fp16-cpu", "serve {run} --amp fp16 --device cpu --port 0", "fp16"),
    # explain
    ("explain-method", "explain {ok} --checkpoint {run} --method gradcan", "unknown method 'gradcan'"),
    ("explain-layer", "explain {ok} --checkpoint {run} --layer nosuch", "nosuch"),
    ("explain-target-range", "explain {ok} --checkpoint {run} --target 99", "out of range"),
    ("explain-target-name", "explain {ok} --checkpoint {run} --target Bicycle", "unknown target class 'Bicycle'"),
    ("explain-onnx-saliency", "explain {ok} --checkpoint {onnx} --method saliency", "need a training checkpoint"),
    ("explain-int8-gradcam", "explain {ok} --checkpoint {int8}", "need a training checkpoint"),
    ("explain-out-is-file", "explain {ok} --checkpoint {run} --out {ok}", "is a file"),
    ("explain-bomb", "explain {bad}/bomb.png --checkpoint {run}", "bomb"),
    ("explain-no-images", "explain --checkpoint {run}", "give image files or folders"),
    ("explain-benchmark-no-boxes", "explain --benchmark --checkpoint {run} --data sample --out {cwd}/b",
     "no ground-truth boxes"),
    ("explain-device-cuda7", "explain {ok} --checkpoint {run} --device cuda:7", "CUDA"),
    # visualize
    ("visualize-what", "visualize filterz --checkpoint {run}", "unknown visualization 'filterz'"),
    ("visualize-channels", "visualize activations --checkpoint {run} --channels abc", "channels must look like"),
    ("visualize-channel-range", "visualize activations --checkpoint {run} --channels 9999 --steps 1", "9999"),
    ("visualize-layer", "visualize activations --checkpoint {run} --layer nosuch --steps 1", "nosuch"),
    ("visualize-no-image", "visualize feature-maps --checkpoint {run}", "needs an image"),
    ("visualize-onnx", "visualize filters --checkpoint {onnx}", "need a training checkpoint"),
    ("visualize-int8", "visualize class-models --checkpoint {int8} --steps 1", "need a training checkpoint"),
    ("visualize-out-folder", "visualize filters --checkpoint {run} --out {bad}/empty", "is a folder"),
    ("visualize-out-suffix", "visualize filters --checkpoint {run} --out {cwd}/f.txt", "should end in .png"),
    # export
    ("export-out-folder", "export --checkpoint {run} --out {bad}/empty", "is a folder"),
    ("export-out-suffix", "export --checkpoint {run} --out {cwd}/m.pt2", "should end in .onnx"),
    ("export-format", "export --checkpoint {run} --format tflite", "unknown export format"),
    ("export-from-onnx", "export --checkpoint {onnx} --out {cwd}/again.onnx", "not the exported artifact"),
    ("export-missing", "export --checkpoint {bad}/missing", "no such checkpoint"),
    # compress
    ("compress-ratio-two-dots", "compress --checkpoint {run} --recipe prune:0.5.5 --out {cwd}/c", "unknown recipe"),
    ("compress-ratio-dot", "compress --checkpoint {run} --recipe prune:. --out {cwd}/c", "unknown recipe"),
    ("compress-ratio-2", "compress --checkpoint {run} --recipe prune:2 --out {cwd}/c", "strictly between 0 and 1"),
    ("compress-sparse-x", "compress --checkpoint {run} --recipe sparse:x --out {cwd}/c", "unknown recipe"),
    ("compress-unknown", "compress --checkpoint {run} --recipe int4 --out {cwd}/c", "unknown recipe 'int4'"),
    ("compress-rewind-other", "compress --checkpoint {run} --recipe sparse:0.5 --rewind {other} --out {cwd}/c",
     "is not the same network"),
    ("compress-rewind-missing", "compress --checkpoint {run} --recipe sparse:0.5 --rewind {bad}/missing "
     "--out {cwd}/c", "no such checkpoint"),
    ("compress-out-is-file", "compress --checkpoint {run} --recipe int8 --out {ok}", "is a file"),
    ("compress-out-own-folder", "compress --checkpoint {run} --recipe int8 --out {run}", "own folder"),
    ("compress-onnx", "compress --checkpoint {onnx} --recipe int8 --out {cwd}/c", "not an exported artifact"),
    ("compress-data", "compress --checkpoint {run} --recipe int8 --data nosuch --out {cwd}/c", "unknown dataset"),
    ("compress-observer", "compress --checkpoint {run} --recipe int8 --observer kl --out {cwd}/c", "observer"),
    ("compress-criterion", "compress --checkpoint {run} --recipe prune:0.5 --criterion foo --out {cwd}/c",
     "criterion must be one of"),
    # bench
    ("bench-missing", "bench {bad}/missing", "no such checkpoint"),
    ("bench-garbage", "bench {bad}/garbage.safetensors", "not a readable safetensors file"),
    ("bench-out-folder", "bench {run} --repeats 3 --out {bad}/empty", "is a folder"),
    # soup
    ("soup-one-ingredient", "soup {run}", "at least 2 ingredients"),
    ("soup-other-architecture", "soup {run} {other}", "their model options differ"),
    ("soup-garbage", "soup {run} {bad}/garbage.safetensors", "not a readable safetensors file"),
    ("soup-onnx", "soup {run} {onnx}", "is not a cnnkit checkpoint"),
    ("soup-missing", "soup {run} {cwd}/nowhere", "no such checkpoint or run directory"),
    ("soup-method", "soup {run} {best} --method soupiest", "--method must be greedy, uniform or both"),
    # demo
    ("demo-out-is-file", "demo --out {ok} --epochs 1", "is a file"),
    # models
    ("models-info-unknown", "models info resnet2O", "unknown model 'resnet2O'"),
    ("models-info-input", "models info resnet9 --input 1x28", "--input must look like CxHxW"),
    ("models-info-input-0", "models info resnet9 --input 0x28x28", "must be positive"),
    ("models-info-too-small", "models info tinyvgg --input 1x8x8 --no-timing", "too small for tinyvgg"),
    ("models-info-width-0", "models info resnet9 --model-kw width=0 --no-timing", "width=0 is not valid"),
    ("models-info-vit", "models info timm/vit_tiny_patch16_224 --input 3x28x28 --no-timing",
     "cannot take 3×28×28 inputs"),
    ("models-list-option", "models list --foo", "No such option: --foo"),
]

# Rows that also run through the real entry point (`python -m cnnkit`), in a subprocess.
SUBPROCESS = {"usage-no-option", "usage-missing-opt", "train-yaml-broken", "eval-device-banana"}


def _listing(*folders: Path) -> set[str]:
    return {str(p) for f in folders for p in f.rglob("*")}


def _argv(row: str, fx: dict[str, str], cwd: Path) -> list[str]:
    import shlex

    return [a.format(**fx, cwd=cwd) for a in shlex.split(row)]


@pytest.mark.parametrize("name,args,message", ROWS, ids=[r[0] for r in ROWS])
def test_mistake_is_one_line_status_2_and_leaves_nothing(name, args, message, fx, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNKIT_CACHE", fx["cache"])
    monkeypatch.setenv("CNNKIT_DATA", fx["data"])
    monkeypatch.delenv("CNNKIT_DEBUG", raising=False)
    monkeypatch.setattr(files, "_CLAIMED", {})  # as in a fresh process: no folder claimed by an earlier row
    argv = _argv(args, fx, tmp_path)
    before = _listing(tmp_path, Path(fx["root"]))
    if name in SUBPROCESS:
        proc = subprocess.run([sys.executable, "-m", "cnnkit", *argv], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ}, timeout=120)
        code, err = proc.returncode, proc.stderr
    else:
        code = main(argv)
        err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code}: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err and "internal error" not in err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert _listing(tmp_path, Path(fx["root"])) == before, "a failed command left files behind"


def test_table_covers_every_verb():
    verbs = {r[1].split()[0] for r in ROWS} | {" ".join(r[1].split()[:2]) for r in ROWS if r[1].startswith("models")}
    assert len(ROWS) >= 60
    assert {"train", "eval", "predict", "explain", "visualize", "export", "compress", "bench", "demo",
            "models info", "models list", "serve"} <= verbs


def test_missing_cache_folder_is_created(fx, tmp_path, capsys, monkeypatch):
    """$CNNKIT_CACHE naming a folder that does not exist yet is created when needed, not a crash: here the
    CIFAR archive is unpacked into it (and found damaged, which is the one error)."""
    cache = tmp_path / "not" / "yet" / "cache"
    monkeypatch.setenv("CNNKIT_CACHE", str(cache))
    code = main(["eval", "--checkpoint", fx["run"], "--data", "cifar10", "--data-dir", fx["cifar_tar"]])
    err = capsys.readouterr().err
    assert code == 2 and "cannot extract" in err and len(err.strip().splitlines()) == 1
    assert cache.is_dir() and not any(cache.iterdir())  # nothing half-extracted left in it


def test_int8_artifact_runs_on_the_cpu_under_auto_on_a_cuda_machine(fx, capsys, monkeypatch):
    """An int8 PT2E program has CPU kernels only: `--device auto` must pick the CPU even where CUDA is present."""
    from cnnkit.runtime import cpu_only_artifact, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"
    assert cpu_only_artifact(fx["int8"]) == "m.int8.pt2"
    assert pick_device("auto", cpu_only_artifact(fx["int8"])).type == "cpu"
    assert cpu_only_artifact(fx["onnx"]) is None and cpu_only_artifact(fx["run"]) is None
    monkeypatch.chdir(Path(fx["ok"]).parent)  # a short path: the table shows it whole at any terminal width
    code = main(["predict", "ok.png", "--checkpoint", fx["int8"]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ok.png" in captured.out


def test_models_list_piped_is_plain_and_complete(capsys):
    """Output meant for a pipe: one model per line, tab-separated, nothing cut short with '…'."""
    assert main(["models", "list", "--timm"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) > 1000 and "…" not in out and "│" not in out
    names = [line.split("\t")[0] for line in lines]
    assert "resnet9" in names and "timm/vit_tiny_patch16_224" in names
    assert all(" " not in n for n in names)


def test_closed_pipe_exits_quietly(tmp_path):
    """`cnnkit models list --timm | head -1`: the reader goes away; cnnkit stops with status 0, silently."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnkit", "models", "list", "--timm"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""
