"""`cnnkit compress`: turn a trained checkpoint into compressed artifacts, measure every variant side by side
with the float model (accuracy, parameters, MACs, file size, latency, throughput), and write an HTML report
with the table and Pareto plots. The source checkpoint is only read; every output is written atomically."""

from __future__ import annotations

import base64
import copy
import gzip
import html
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.compress.finetune import finetune
from cnnkit.compress.prune import (apply_masks, check_ratio, count_macs, magnitude_masks, prune_structured,
                                   sparsity_of)
from cnnkit.compress.quantize import convert, prepare_qat, qat_float_model, quantize_fx, quantize_onnx, save_torchscript
from cnnkit.data import Normalize
from cnnkit.data.compat import checkpoint_data_source, load_checkpoint_data
from cnnkit.artifacts.runtimes import is_exported, onnx_session
from cnnkit.artifacts.files import claim_dir
from cnnkit.deploy.artifacts import _export, _write_onnx
from cnnkit.errors import CompressError
from cnnkit.artifacts import LoadedCheckpoint, atomic_write_bytes, atomic_write_text, load_checkpoint
from cnnkit.artifacts import save_checkpoint

_RATIO = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)"  # 0.5, .5, 1., 2: a decimal number (its range is checked apart)
_RECIPE = re.compile(rf"^(int8|qat8|qat4|prune:{_RATIO}(\+int8)?|sparse:{_RATIO})$")
RECIPES = "int8, qat8, qat4, prune:R, prune:R+int8, sparse:R"


@dataclass
class CompressResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    json_path: Path
    html_path: Path
    png_path: Path
    notes: list[str] = field(default_factory=list)


def parse_recipe(recipe: str) -> tuple[str, float | None, bool]:
    """(kind, ratio, then_int8) for one recipe string; a one-line error for anything else."""
    r = recipe.strip()
    if not _RECIPE.match(r):
        raise CompressError(f"unknown recipe {recipe!r}; choose from: {RECIPES} (R strictly between 0 and 1)")
    if ":" not in r:
        return r, None, False
    kind, rest = r.split(":", 1)
    ratio = float(rest.split("+")[0])
    check_ratio(ratio)
    return kind, ratio, rest.endswith("+int8")


def _pct(ratio: float) -> str:
    return f"{round(100 * ratio):d}"


class _Context:
    """What every recipe needs: the source model and metadata, calibration and training data, the output
    folder and file-name stem, and a progress printer."""

    def __init__(self, ckpt: LoadedCheckpoint, out: Path, data: str, data_dir, calibration: int,
                 train_images: int | None, seed: int, log: Callable[[str], None], ignore_class_names: bool = False):
        self.ckpt, self.out, self.log = ckpt, out, log
        self.name = ckpt.meta["model"].replace("/", "_")
        self.mean, self.std = ckpt.normalization
        train = load_checkpoint_data(ckpt, data, "train", data_dir=data_dir, ignore_class_names=ignore_class_names)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train), generator=gen)
        self.train = train.subset(order[:train_images], "train") if train_images else train
        pick = order[:calibration]
        norm = Normalize(self.mean, self.std)
        self.calib = norm(train.images[pick])
        self.calib_labels = train.labels[pick]
        self.example = self.calib[:2]

    def loaded(self, model: nn.Module, path: Path) -> LoadedCheckpoint:
        return LoadedCheckpoint(model, dict(self.ckpt.meta), path)

    def counts(self, model: nn.Module) -> dict[str, int]:
        return {"params": int(sum(p.numel() for p in model.parameters())), "macs": count_macs(model, self.example)}


def _write_int8_ts(ctx: _Context, q, float_model: nn.Module, stem: str, extra: dict[str, Any]) -> Path:
    def write(_model, example, tmp):
        ts = save_torchscript(q.model, example, tmp)
        return lambda x: ts(x).numpy()

    meta = {"engine": q.engine, "observer": q.observer, "weight_bits": q.weight_bits,
            "calibration_images": q.calibration_images, "float_ops": q.float_ops, **ctx.counts(float_model), **extra}
    r = _export(ctx.loaded(float_model, ctx.ckpt.path), ctx.out / f"{stem}.int8.ts", ".ts", "int8 torchscript",
                1e-4, 0, write, model=q.model, extra=meta)
    return r.path


def _write_int8_onnx(ctx: _Context, float_model: nn.Module, stem: str, observer: str, extra: dict[str, Any]) -> Path:
    info: dict[str, Any] = {}

    def write(model, example, tmp):
        fp = Path(f"{tmp}.float.onnx")
        try:
            _write_onnx(model, example, str(fp))
            info["float_ops"] = quantize_onnx(fp, tmp, ctx.calib, observer)
        finally:
            fp.unlink(missing_ok=True)
        sess = onnx_session(tmp)
        return lambda x: sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]

    meta = {"observer": observer, "calibration_images": len(ctx.calib), **ctx.counts(float_model), **extra}
    r = _export(ctx.loaded(float_model, ctx.ckpt.path), ctx.out / f"{stem}.int8.onnx", ".onnx", "int8 onnx", None, 0,
                write, extra=meta)
    side = json.loads(r.sidecar.read_text())
    side["float_ops"] = info.get("float_ops", [])
    atomic_write_text(r.sidecar, json.dumps(side, indent=2) + "\n")
    return r.path


def _save_pruned(ctx: _Context, model: nn.Module, path: Path, extra: dict[str, Any]) -> Path:
    meta = {k: v for k, v in ctx.ckpt.meta.items() if k not in ("format", "cnnkit_version", "torch_version")}
    save_checkpoint(path, model, {**meta, **extra, "source": str(ctx.ckpt.path)})
    return path


def _rewind_point(rewind: str | Path, src: LoadedCheckpoint) -> nn.Module:
    """The model of the `--rewind` checkpoint, checked to be the same network as the one compressed."""
    early = load_checkpoint(rewind)
    if is_exported(early.model):
        raise CompressError(f"--rewind takes a training checkpoint (e.g. RUN/epoch-0001.safetensors), not the "
                            f"exported artifact {early.path.name}")
    want = {k: tuple(v.shape) for k, v in src.model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in early.model.state_dict().items()}
    if want != got:
        differ = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
        raise CompressError(f"--rewind {early.path} is not the same network as {src.path} "
                            f"({early.meta.get('model')} vs {src.meta.get('model')}; first difference: {differ[0]}); "
                            f"give an early checkpoint of this run (train with --keep-epoch N)")
    return early.model


def compress(checkpoint: str | Path, recipes: list[str], out_dir: str | Path, data: str | None = None,
             data_dir: str | Path | None = None, calibration: int = 512, observer: str = "mse", engine: str = "x86",
             finetune_epochs: float = 1.0, lr: float | None = None, criterion: str = "l1", scope: str = "uniform",
             rounds: int = 1, round_to: int | None = None, distill: bool = False, rewind: str | Path | None = None, train_images: int | None = None,
             batch: int = 64, repeats: int = 30, seed: int = 0, onnx: bool = True,
             log: Callable[[str], None] = lambda s: None, ignore_class_names: bool = False) -> CompressResult:
    """Run `recipes` on `checkpoint` (see `cnnkit compress --help`) and measure everything on the test split
    of `data` (default: the checkpoint's own dataset and its held-out test split)."""
    parsed = list(dict.fromkeys((r.strip(), *parse_recipe(r)) for r in recipes))  # each recipe once
    if not parsed:
        raise CompressError(f"give at least one recipe: {RECIPES}")
    if rounds < 1:
        raise CompressError(f"pruning rounds must be at least 1, got {rounds}")
    kinds = {kind for _, kind, _, _ in parsed}
    if kinds & {"int8", "qat8", "qat4"} or any(then for *_, then in parsed):
        from cnnkit.compress.quantize import _check

        _check(observer, engine, 8)
        if calibration < batch:
            raise CompressError(f"the calibration set has {calibration} images, fewer than one batch ({batch}); "
                                f"give --calibration {batch} or more")
    if "prune" in kinds:
        from cnnkit.compress.prune import CRITERIA, SCOPES

        if criterion not in CRITERIA or scope not in SCOPES:
            raise CompressError(f"criterion must be one of {', '.join(CRITERIA)} and scope one of {', '.join(SCOPES)}")
    src = load_checkpoint(checkpoint)
    if is_exported(src.model):
        raise CompressError(f"compress a training checkpoint or run directory, not an exported artifact ({src.path.name})")
    source = checkpoint_data_source(src, data, data_dir)  # resolved once: exported variants lack the config
    data, data_dir = source.name, source.data_dir
    out = Path(out_dir).expanduser()
    if src.path.resolve().parent == out.resolve():
        raise CompressError("--out must not be the checkpoint's own folder; compression never writes beside its source")
    if out.exists() and not out.is_dir():
        raise CompressError(f"--out {out} is a file; give a folder for the artifacts")
    rewound = _rewind_point(rewind, src) if rewind is not None and "sparse" in kinds else None
    ctx = _Context(src, out, data, data_dir, calibration, train_images, seed, log, ignore_class_names)
    claim_dir(out)  # only now, every check passed: writes there replace only files cnnkit wrote
    model = src.model.float().eval()
    base_params = ctx.counts(model)
    targets: list[tuple[str, str, Path, dict[str, Any]]] = [("float32", "eager", src.path, {})]
    if onnx:
        log("float ONNX")
        from cnnkit.deploy.artifacts import export_onnx

        targets.append(("float32", "onnxruntime", export_onnx(src, out / f"{ctx.name}.onnx").path, {}))
    pruned: dict[float, tuple[nn.Module, Path]] = {}
    for recipe, kind, ratio, then_int8 in parsed:
        t0 = time.perf_counter()
        log(recipe)
        if kind == "int8":
            q = quantize_fx(model, ctx.calib, observer, engine, batch=min(batch, len(ctx.calib)))
            targets.append((recipe, "pytorch int8", _write_int8_ts(ctx, q, model, ctx.name, {"recipe": recipe}),
                            {"float_ops": q.float_ops}))
            if onnx:
                p = _write_int8_onnx(ctx, model, ctx.name, observer, {"recipe": recipe})
                targets.append((recipe, "onnxruntime int8", p, {"float_ops": json.loads(Path(f"{p}.json").read_text())["float_ops"]}))
        elif kind in ("qat8", "qat4"):
            bits = 8 if kind == "qat8" else 4
            prepared = prepare_qat(model, ctx.example, engine, bits)
            finetune(prepared, ctx.train, ctx.mean, ctx.std, finetune_epochs, lr or 1e-3, seed=seed,
                     teacher=copy.deepcopy(model) if distill else None, freeze_bn_after=0.5)
            trained = qat_float_model(prepared, model) if onnx else None
            q = convert(prepared, engine)
            from cnnkit.compress.quantize import Quantized, float_ops

            qq = Quantized(q, engine, "qat", bits, len(ctx.train), float_ops(q))
            targets.append((recipe, "pytorch int8", _write_int8_ts(ctx, qq, model, f"{ctx.name}.{kind}",
                                                                   {"recipe": recipe, "finetune_epochs": finetune_epochs}),
                            {"float_ops": qq.float_ops}))
            if onnx:  # the QAT weights, quantized by ONNX Runtime on QAT's min-max activation ranges
                p = _write_int8_onnx(ctx, trained, f"{ctx.name}.{kind}", "minmax",
                                     {"recipe": recipe, "finetune_epochs": finetune_epochs, "trained_weight_bits": bits,
                                      "weight_bits": 8})
                targets.append((recipe, "onnxruntime int8", p,
                                {"float_ops": json.loads(Path(f"{p}.json").read_text())["float_ops"]}))
        elif kind == "prune":
            stem = f"{ctx.name}.pruned{_pct(ratio)}"
            extra = {"recipe": f"prune:{ratio:g}", "pruned": True, "criterion": criterion, "scope": scope,
                     "rounds": rounds, "round_to": round_to, "finetune_epochs": finetune_epochs, "distill": distill}
            if ratio in pruned:  # prune:R and prune:R+int8 share one pruned, fine-tuned model
                current, path = pruned[ratio]
            else:
                current = model
                for r in range(rounds):
                    goal = (1 - ratio) ** ((r + 1) / rounds) * base_params["macs"]
                    step = 1 - goal / count_macs(current, ctx.example)
                    p = prune_structured(current, ctx.calib[:256], ctx.calib_labels[:256], step, criterion, scope,
                                         round_to=round_to)
                    log(f"  round {r + 1}/{rounds}: {p.macs_after / base_params['macs']:.2f} of the MACs")
                    current = p.model
                    if finetune_epochs > 0:
                        finetune(current, ctx.train, ctx.mean, ctx.std, finetune_epochs / rounds, lr or 1e-2,
                                 seed=seed + r, teacher=copy.deepcopy(model) if distill else None)
                path = _save_pruned(ctx, current, out / f"{stem}.safetensors", extra)
                pruned[ratio] = (current, path)
                targets.append((f"prune:{ratio:g}", "eager", path, {}))
                if onnx:  # the pruned float model in ONNX Runtime, to compare with the float ONNX model
                    from cnnkit.deploy.artifacts import export_onnx

                    targets.append((f"prune:{ratio:g}", "onnxruntime", export_onnx(path, out / f"{stem}.onnx").path, {}))
            if then_int8:
                q = quantize_fx(current, ctx.calib, observer, engine, batch=min(batch, len(ctx.calib)))
                pruned_ckpt = load_checkpoint(path)
                extra = {**extra, "recipe": recipe}
                targets.append((recipe, "pytorch int8", _write_int8_ts(ctx, q, pruned_ckpt.model, stem, extra),
                                {"float_ops": q.float_ops}))
                if onnx:
                    targets.append((recipe, "onnxruntime int8",
                                    _write_int8_onnx(ctx, pruned_ckpt.model, stem, observer, extra), {}))
        else:  # sparse: global magnitude masks, rewound weights, retrained with the mask fixed
            masks = magnitude_masks(model, ratio)
            start = copy.deepcopy(rewound if rewound is not None else model).float()
            apply_masks(start, masks)
            if finetune_epochs > 0:
                finetune(start, ctx.train, ctx.mean, ctx.std, finetune_epochs, lr or 1e-2, seed=seed,
                         after_step=lambda: apply_masks(start, masks),
                         teacher=copy.deepcopy(model) if distill else None)
            path = out / f"{ctx.name}.sparse{_pct(ratio)}.safetensors"
            meta = {k: v for k, v in src.meta.items() if k not in ("format", "cnnkit_version", "torch_version")}
            save_checkpoint(path, start, {**meta, "recipe": recipe, "rewound_to": str(rewind) if rewind else None,
                                          "sparsity": sparsity_of(start)})
            gz = len(gzip.compress(path.read_bytes(), 6))
            targets.append((recipe, "eager (dense kernels)", path,
                            {"sparsity": sparsity_of(start), "gzip_bytes": gz, "nonzero_weights":
                             int(sum((m.weight != 0).sum() for m in start.modules() if isinstance(m, (nn.Conv2d, nn.Linear))))}))
        log(f"  {recipe}: {time.perf_counter() - t0:.1f} s")
    rows = _measure(targets, data, data_dir, batch, repeats, log, ignore_class_names)
    return _report(ctx, rows, src, data)


def _measure(targets, data, data_dir, batch: int, repeats: int, log,
             ignore_class_names: bool = False) -> list[dict[str, Any]]:
    from cnnkit.deploy.bench import bench_many

    log(f"measuring {len(targets)} variants side by side")
    # all on the CPU, where the int8 variants run: speed-ups between devices would mean nothing
    measured = bench_many([path for _, _, path, _ in targets], data=data, data_dir=data_dir, batch=batch,
                          repeats=repeats, ignore_class_names=ignore_class_names, device="cpu")
    rows = [{"variant": recipe, "runtime": runtime, "file": Path(path).name, **r, **extra}
            for (recipe, runtime, path, extra), r in zip(targets, measured)]
    base = rows[0]
    for r in rows:
        r["top1_delta_pts"] = 100 * (r["top1"] - base["top1"])
        r["size_ratio"] = base["file_bytes"] / r["file_bytes"]
        r["latency_speedup"] = base["latency_ms_p50"] / r["latency_ms_p50"]
        r["throughput_speedup"] = r["images_per_s"] / base["images_per_s"]
    return rows


_COLUMNS = [("variant", "variant"), ("runtime", "runtime"), ("file", "file"), ("top1", "top-1 %"),
            ("top1_delta_pts", "Δ pts"), ("params", "params"), ("macs", "MACs"), ("file_bytes", "file KiB"),
            ("size_ratio", "smaller ×"), ("latency_ms_p50", "p50 ms (b=1)"), ("latency_ms_p99", "p99 ms"),
            ("latency_speedup", "latency ×"), ("images_per_s", "img/s"), ("throughput_speedup", "throughput ×"),
            ("model_rss_mib", "model MiB")]


def format_value(key: str, v: Any) -> str:
    if v is None:
        return "–"
    if key == "top1":
        return f"{100 * v:.2f}"
    if key == "file_bytes":
        return f"{v / 1024:.0f}"
    if key == "model_rss_mib":
        return f"{v:.0f}"
    if key in ("params", "macs"):
        return f"{v / 1e6:.3f}M"
    if key == "top1_delta_pts":
        return f"{v:+.2f}"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 1000 else f"{v:,.0f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in _COLUMNS) + " |", "|" + " --- |" * len(_COLUMNS)]
    lines += ["| " + " | ".join(format_value(k, r.get(k)) for k, _ in _COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _pareto_png(rows: list[dict[str, Any]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "latency_ms_p50", "latency at batch 1, p50 (ms)"),
                           (axes[1], "file_bytes", "file size (KiB)")):
        pts = [(r[key] / (1024 if key == "file_bytes" else 1), 100 * r["top1"], f"{r['variant']} / {r['runtime']}")
               for r in rows]
        for x, y, lab in pts:
            ax.scatter(x, y, s=30)
            ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best = [], -1.0
        for x, y, _ in sorted(pts):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*front), "k--", lw=0.8, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _report(ctx: _Context, rows: list[dict[str, Any]], src: LoadedCheckpoint, data: str) -> CompressResult:
    out = ctx.out
    png = out / "pareto.png"
    _pareto_png(rows, png)
    info = {"source": str(src.path), "model": src.meta["model"], "data": data, "split": rows[0].get("split", "test"),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
    jpath = out / "compress.json"
    atomic_write_text(jpath, json.dumps({**info, "rows": rows}, indent=2, default=str) + "\n")
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in _COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(k, r.get(k)))}</td>" for k, _ in _COLUMNS) + "</tr>"
                   for r in rows)
    notes = [f"<li>{html.escape(r['file'])}: runs in float: {html.escape(', '.join(r['float_ops']))}</li>"
             for r in rows if r.get("float_ops")]
    notes += [f"<li>{html.escape(r['file'])}: {100 * r['sparsity']:.1f}% of conv/linear weights are zero; "
              f"gzip {r['gzip_bytes'] / 1024:.0f} KiB. Dense kernels run the zeros: a size result, not a speed result.</li>"
              for r in rows if "sparsity" in r]
    img = base64.b64encode(png.read_bytes()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cnnkit compress: {html.escape(info['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style>
</head><body><h1>Compression report: {html.escape(info['model'])}</h1>
<p>Source <code>{html.escape(info['source'])}</code>; accuracy on {html.escape(data)}, split {html.escape(info['split'])}; latency at batch 1
(p50/p99), throughput at batch {rows[0]['throughput_batch']}, {info['torch_threads']} threads, torch {html.escape(info['torch'])}.
Every ratio is against the first row, measured in the same run.</p>
<table><tr>{head}</tr>{body}</table><ul>{''.join(notes)}</ul>
<img alt="Pareto plots" src="data:image/png;base64,{img}"></body></html>
"""
    hpath = out / "report.html"
    atomic_write_text(hpath, page)
    return CompressResult(out, rows, jpath, hpath, png)
