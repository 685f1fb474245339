"""int8 on maintained ground (issue 38): PT2E int8 compiled by Inductor and ONNX Runtime's QDQ int8, each against
float32 in the same runtime, and the FX/TorchScript int8 that cnnkit used to write, once, for the record.

Models: ResNet-20 on Fashion-MNIST (1×28×28, the checkpoint given, trained by `cnnkit train`) and ResNet-18
(torchvision's architecture, 3×224×224, random weights: a speed measurement only). Every int8 model is
calibrated on 512 images (ResNet-20: training images; ResNet-18: standard normal noise) with the histogram
(MSE) observer, per-channel int8 weights, uint8 activations.

1. Artifacts, as `cnnkit compress` writes them: the float program and the int8 program (`.pt2`, compiled by
   Inductor with weight freezing on when loaded), the float and int8 ONNX files, and the FX int8 model
   (`torch.ao.quantization.quantize_fx`, x86 engine, traced and frozen TorchScript), built here only.
2. Accuracy (ResNet-20): top-1 of every artifact on the Fashion-MNIST test split (10,000 images, read once per
   artifact; nothing is chosen on it), each int8 model against the float model with a paired bootstrap interval.
3. Speed: each arm in its own fresh process, the arms alternated (their order reversed every other pair),
   `--pairs` pairs; per process, batch-1 latency (median of the timed calls) and batch-64 throughput (median
   of 3 rounds of at least 1 s), with the load time and each shape's first call (the compile, for Inductor).
   The first pair runs each Inductor arm with an empty Inductor cache (a cold compile), later pairs with the
   cache it left (what a second start of `cnnkit serve` sees). The figures are medians of the paired
   per-process ratios with their distribution-free intervals (`benchmarks.common.paired_ratio`).

    python -m benchmarks.int8 --checkpoint RUN      # writes benchmarks/results/int8.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, SHARED_DATA, command_line, machine, paired_bootstrap, paired_ratio, write_result

ARMS = ("eager_fp32", "inductor_fp32", "inductor_int8", "ort_fp32", "ort_int8", "fx_int8_ts")
# the same int8 program compiled with torchao's own Inductor passes registered (what importing torchao's X86
# quantizer does): not what cnnkit loads with (they fail to compile ResNet-9 in torchao 0.18), measured apart
TORCHAO_ARM = "inductor_int8_torchao_passes"
RATIOS = {  # name -> (numerator arm, denominator arm): a speed-up of the first over the second
    "inductor_int8 / inductor_fp32": ("inductor_int8", "inductor_fp32"),
    "inductor_int8 / eager_fp32": ("inductor_int8", "eager_fp32"),
    "inductor_fp32 / eager_fp32": ("inductor_fp32", "eager_fp32"),
    "ort_int8 / ort_fp32": ("ort_int8", "ort_fp32"),
    "fx_int8_ts / eager_fp32": ("fx_int8_ts", "eager_fp32"),
    "inductor_int8 / fx_int8_ts": ("inductor_int8", "fx_int8_ts"),
    f"{TORCHAO_ARM} / inductor_fp32": (TORCHAO_ARM, "inductor_fp32"),
    f"{TORCHAO_ARM} / fx_int8_ts": (TORCHAO_ARM, "fx_int8_ts"),
}


# ------------------------------------------------------------------------------------------------- artifacts

def build(name: str, ckpt, calib: torch.Tensor, out: Path) -> dict[str, str]:
    """The five artifacts of one model in `out` (see the module docstring), their paths by arm."""
    from cnnkit.compress.quantize import quantize_onnx, quantize_pt2e
    from cnnkit.deploy import export_artifact, export_onnx, write_program

    out.mkdir(parents=True, exist_ok=True)
    model = ckpt.model.float().eval()
    files = {"eager_fp32": str(ckpt.path)}
    files["inductor_fp32"] = str(export_artifact(ckpt, out / f"{name}.pt2", ".pt2", "torch.export", 1e-4, 0,
                                                 write_program, extra={"runtime": "inductor"}).path)
    t0 = time.perf_counter()
    q = quantize_pt2e(model, calib, "mse")
    quantize_s = time.perf_counter() - t0
    files["inductor_int8"] = str(export_artifact(ckpt, out / f"{name}.int8.pt2", ".pt2", "int8 torch.export (pt2e)",
                                                 None, 0, write_program, model=model, exported=q.model,
                                                 extra={"runtime": "inductor", "quantization": "pt2e-int8",
                                                        "float_ops": q.float_ops}).path)
    files["ort_fp32"] = str(export_onnx(ckpt, out / f"{name}.onnx").path)
    quantize_onnx(files["ort_fp32"], out / f"{name}.int8.onnx", calib, "mse")
    files["ort_int8"] = str(out / f"{name}.int8.onnx")
    side = json.loads(Path(f"{files['ort_fp32']}.json").read_text())  # its sidecar: the float file's, relabelled
    Path(f"{files['ort_int8']}.json").write_text(json.dumps({**side, "artifact": "int8 onnx"}, indent=2))
    files["fx_int8_ts"] = str(fx_torchscript(model, calib, out / f"{name}.fx.int8.ts"))
    print(f"{name}: PT2E calibration and conversion {quantize_s:.1f} s", flush=True)
    return files


def fx_torchscript(model: torch.nn.Module, calib: torch.Tensor, path: Path) -> Path:
    """The int8 model cnnkit wrote before PT2E: FX graph mode (x86 engine, per-channel symmetric int8 weights,
    histogram-observed uint8 activations with the x86 reduced range), traced and frozen TorchScript."""
    import copy

    from torch.ao.quantization import HistogramObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    qconfig = QConfig(activation=HistogramObserver.with_args(dtype=torch.quint8, reduce_range=True),
                      weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    prepared = prepare_fx(copy.deepcopy(model).eval(), QConfigMapping().set_global(qconfig), (calib[:2],))
    with torch.no_grad():
        for x in calib.split(64):
            prepared(x)
        q = convert_fx(prepared)
        ts = torch.jit.freeze(torch.jit.trace(q, calib[:2]).eval())
    torch.jit.save(ts, str(path))
    return path


def accuracy(files: dict[str, str]) -> dict:
    """Top-1 of each artifact on the Fashion-MNIST test split; each int8 model against the float model."""
    from cnnkit.artifacts import load
    from cnnkit.data import Normalize, load_dataset

    test = load_dataset("fashion-mnist", "test", data_dir=SHARED_DATA)
    correct, out = {}, {}
    for arm in ARMS:
        if arm == "fx_int8_ts":
            torch.backends.quantized.engine = "x86"
            model, norm = torch.jit.load(files[arm]), Normalize(*load(files["eager_fp32"]).normalization)
        else:
            ck = load(files[arm])
            model, norm = ck.model, Normalize(*ck.normalization)
        with torch.inference_mode():
            pred = torch.cat([model(norm(b)).argmax(1) for b in test.images.split(64)])
        correct[arm] = (pred == test.labels).numpy()
        out[arm] = {"top1": float(correct[arm].mean())}
        print(arm, out[arm], flush=True)
    for arm in ("inductor_fp32", "inductor_int8", "ort_fp32", "ort_int8", "fx_int8_ts"):
        out[arm]["vs_eager_fp32_pts"] = paired_bootstrap(correct[arm], correct["eager_fp32"])
    return out


# ----------------------------------------------------------------------------------------------------- speed

def worker(arm: str, path: str, shape: list[int], b1_calls: int) -> None:
    """One process: load `path` in `arm`'s runtime, time it; one JSON line on stdout."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if arm == "fx_int8_ts":
        torch.backends.quantized.engine = "x86"
        model = torch.jit.load(path)
    elif arm == TORCHAO_ARM:
        import importlib

        importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")  # its passes
        from cnnkit.artifacts import load

        model = load(path).model
    else:
        from cnnkit.artifacts import load

        model = load(path).model
    load_s = time.perf_counter() - t0
    x1, x64 = torch.randn(1, *shape), torch.randn(64, *shape)
    first = {}
    with torch.inference_mode():
        for name, x in (("b1", x1), ("b64", x64)):
            t = time.perf_counter()
            model(x)
            first[name] = time.perf_counter() - t
        for _ in range(10):
            model(x1)
        lat = []
        for _ in range(b1_calls):
            t = time.perf_counter()
            model(x1)
            lat.append(time.perf_counter() - t)
        model(x64)
        rounds = []
        for _ in range(3):
            n, t = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - t < 1.0:
                model(x64)
                n += 1
            rounds.append(64 * n / (time.perf_counter() - t))
    print(json.dumps({"arm": arm, "load_s": load_s, "first_call_s": first,
                      "compile_s": getattr(model, "compile_seconds", None) and
                      {"x".join(map(str, k)): v for k, v in model.compile_seconds.items()},
                      "latency_ms_b1": 1000 * statistics.median(lat), "images_per_s_b64": statistics.median(rounds)},
                     default=str))


def speed(files: dict[str, str], shape: list[int], pairs: int, cache: Path, b1_calls: int,
          arms: tuple[str, ...] = ARMS) -> dict:
    runs: list[dict] = []
    for i in range(pairs):
        order = list(arms) if i % 2 == 0 else list(reversed(arms))
        run = {}
        for arm in order:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache / arm))
            if i == 0:
                shutil.rmtree(cache / arm, ignore_errors=True)  # the first pair compiles from scratch
            cmd = [sys.executable, "-m", "benchmarks.int8", "--worker", arm, "--file", files[arm],
                   "--shape", ",".join(map(str, shape)), "--b1-calls", str(b1_calls)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise SystemExit(f"{arm} failed: {res.stderr.strip().splitlines()[-1:]}")
            run[arm] = json.loads(res.stdout.strip().splitlines()[-1])
        runs.append(run)
        print("pair", i, {a: (round(r["latency_ms_b1"], 2), round(r["images_per_s_b64"])) for a, r in run.items()},
              flush=True)
    summary = {"throughput_b64": {}, "latency_b1": {}}
    for label, (a, b) in RATIOS.items():
        if a not in arms or b not in arms:
            continue
        summary["throughput_b64"][label] = paired_ratio([r[a]["images_per_s_b64"] / r[b]["images_per_s_b64"] for r in runs])
        summary["latency_b1"][label] = paired_ratio([r[b]["latency_ms_b1"] / r[a]["latency_ms_b1"] for r in runs])
    summary["medians"] = {arm: {"latency_ms_b1": statistics.median(r[arm]["latency_ms_b1"] for r in runs),
                                "images_per_s_b64": statistics.median(r[arm]["images_per_s_b64"] for r in runs),
                                "load_s": statistics.median(r[arm]["load_s"] for r in runs),
                                "first_b1_s_cold": runs[0][arm]["first_call_s"]["b1"],
                                "first_b64_s_cold": runs[0][arm]["first_call_s"]["b64"],
                                "first_b1_s_warm": statistics.median(r[arm]["first_call_s"]["b1"] for r in runs[1:]),
                                "first_b64_s_warm": statistics.median(r[arm]["first_call_s"]["b64"] for r in runs[1:])}
                          for arm in arms}
    summary["runs"] = runs
    return summary


def speed_only(args: argparse.Namespace) -> None:
    """`--arms` timed on the files an earlier run left in `--work` (for ResNet-20: 1×28×28), written to
    benchmarks/results/<--speed-only>.json."""
    arms = tuple(args.arms.split(","))
    result: dict = {"machine": machine(), "torch": torch.__version__, "models": {},
                    "command": command_line("benchmarks.int8")}
    for name in args.models.split(","):
        d = args.work / name
        files = {"eager_fp32": "", "inductor_fp32": str(d / f"{name}.pt2"), "inductor_int8": str(d / f"{name}.int8.pt2"),
                 TORCHAO_ARM: str(d / f"{name}.int8.pt2"), "ort_fp32": str(d / f"{name}.onnx"),
                 "ort_int8": str(d / f"{name}.int8.onnx"), "fx_int8_ts": str(d / f"{name}.fx.int8.ts")}
        shape = [1, 28, 28] if name == "resnet20" else [3, 224, 224]
        result["models"][name] = {"input": "×".join(map(str, shape)), "speed": speed(
            files, shape, args.pairs, args.work / "inductor-cache" / name, 100 if name == "resnet20" else 30, arms)}
    write_result(args.speed_only.stem, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = []
    for name, m in result["models"].items():
        s = m["speed"]
        lines += [f"\n### {name} ({m['input']})\n", "| speed-up | batch 64 throughput (95% interval) | batch 1 latency |",
                  "| --- | --- | --- |"]
        for label in s["throughput_b64"]:
            t, l_ = s["throughput_b64"][label], s["latency_b1"][label]
            lines.append(f"| {label} | {t['median']:.2f}× ({t['interval'][0]:.2f}–{t['interval'][1]:.2f}) | "
                         f"{l_['median']:.2f}× ({l_['interval'][0]:.2f}–{l_['interval'][1]:.2f}) |")
        lines += ["", "| arm | img/s @64 | ms @1 | load s | first call @1 / @64, cold cache (s) | warm cache (s) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for arm, v in s["medians"].items():
            lines.append(f"| {arm} | {v['images_per_s_b64']:,.0f} | {v['latency_ms_b1']:.2f} | {v['load_s']:.2f} | "
                         f"{v['first_b1_s_cold']:.1f} / {v['first_b64_s_cold']:.1f} | "
                         f"{v['first_b1_s_warm']:.1f} / {v['first_b64_s_warm']:.1f} |")
        if "accuracy" in m:
            lines += ["", "| arm | top-1 (Fashion-MNIST test) | vs eager fp32, pts (95% bootstrap) |", "| --- | --- | --- |"]
            for arm, a in m["accuracy"].items():
                d = a.get("vs_eager_fp32_pts")
                lines.append(f"| {arm} | {100 * a['top1']:.2f}% | " + (
                    f"{d['difference_points']:+.2f} ({d['interval_points'][0]:+.2f} to {d['interval_points'][1]:+.2f})" if d else "–") + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--b1-calls", type=int, default=100, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", type=Path, help="a ResNet-20 trained on Fashion-MNIST (run directory)")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cnnkit-int8-bench"))
    ap.add_argument("--models", default="resnet20,resnet18")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"the arms timed (also: {TORCHAO_ARM})")
    ap.add_argument("--speed-only", type=Path, help="time the artifacts an earlier run left in --work, merging the "
                                                    "result into this JSON file of benchmarks/results")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.file, [int(v) for v in args.shape.split(",")], args.b1_calls)
    if args.speed_only:
        return speed_only(args)
    from cnnkit.artifacts import load, save_checkpoint
    from cnnkit.data import Normalize, load_dataset
    from cnnkit.models import create

    result: dict = {"machine": machine(), "torch": torch.__version__, "models": {},
                    "command": command_line("benchmarks.int8")}
    import torchao

    result["torchao"] = torchao.__version__
    for name in args.models.split(","):
        t0 = time.time()
        if name == "resnet20":
            ckpt = load(args.checkpoint)
            train = load_dataset("fashion-mnist", "train", data_dir=SHARED_DATA)
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512]
            calib = Normalize(*ckpt.normalization)(train.images[pick])
            shape, b1_calls = [1, 28, 28], 100
        else:
            torch.manual_seed(0)
            model = create("resnet18", num_classes=1000, in_chans=3, img_size=224).eval()
            path = args.work / "resnet18-random.safetensors"
            args.work.mkdir(parents=True, exist_ok=True)
            meta = {"task": "classify", "model": "resnet18", "model_kwargs": {}, "classes": [str(i) for i in range(1000)],
                    "in_chans": 3, "img_size": [224, 224],
                    "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
            save_checkpoint(path, model, meta)
            ckpt = load(path)
            calib = torch.randn(512, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            shape, b1_calls = [3, 224, 224], 30
        files = build(name, ckpt, calib, args.work / name)
        entry = {"input": "×".join(map(str, shape)), "files": {k: Path(v).name for k, v in files.items()},
                 "build_seconds": time.time() - t0}
        if name == "resnet20":
            entry["accuracy"] = accuracy(files)
        entry["speed"] = speed(files, shape, args.pairs, args.work / "inductor-cache" / name, b1_calls)
        result["models"][name] = entry
        write_result("int8", result)  # after each model: a partial result survives an interruption
    md = markdown(result)
    (RESULTS / "int8.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
