"""`cnnkit compress`: turn a trained checkpoint into compressed artifacts, measure every variant side by side
with the float model (accuracy, parameters, MACs, file size, latency, throughput), and write an HTML report
with the table and Pareto plots. The source checkpoint is only read; every output is written atomically.

The checkpoint is loaded, its data source resolved and the device chosen once, here at the entry; the recipes
(`cnnkit.compress.recipes.RECIPE_KINDS`) and the measurement get the resolved values."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint, claim_dir, is_exported, load
from cnnkit.compress.context import Context, Settings
from cnnkit.compress.quantize import quantizer_for
from cnnkit.compress.recipes import RECIPE_KINDS, RECIPE_SYNTAX, Recipe, Target, parse_recipes, skip_reason
from cnnkit.compress.variants import write_compiled
from cnnkit.compress.report import CompressResult, delta_key, in_decibels, write_report
from cnnkit.data.compat import DataSource, checkpoint_data_source, load_source_split
from cnnkit.deploy import export_onnx
from cnnkit.deploy.bench import bench_many, metric_key
from cnnkit.errors import CompressError

# every variant is made and measured on the CPU, where the int8 variants run: speed-ups between devices
# would mean nothing
DEVICE = torch.device("cpu")


def compress(checkpoint: str | Path, recipes: list[str], out_dir: str | Path, data: str | None = None,
             data_dir: str | Path | None = None, calibration: int = 512, observer: str = "mse", quantizer: str = "auto",
             finetune_epochs: float = 1.0, lr: float | None = None, criterion: str = "l1", scope: str = "uniform",
             rounds: int = 1, round_to: int | None = None, distill: bool = False, rewind: str | Path | None = None,
             train_images: int | None = None, batch: int = 64, repeats: int = 30, seed: int = 0, onnx: bool = True,
             log: Callable[[str], None] = lambda s: None, ignore_class_names: bool = False,
             test_images: int | None = None) -> CompressResult:
    """Run `recipes` on `checkpoint` (see `cnnkit compress --help`) and measure everything on the test split
    of `data` (default: the checkpoint's own dataset and its held-out test split), by the task's headline metric
    (top-1, mIoU; `test_images`: on a stratified, seeded subset of that many). A recipe that does not apply to
    the model's task is skipped with one line saying why (`skip_reason`; logged and kept in the report's
    notes); CompressError when none applies."""
    settings = Settings(calibration, observer, quantizer, finetune_epochs, lr, criterion, scope, rounds, round_to,
                        distill, rewind, train_images, batch, seed, onnx)
    parsed = parse_recipes(recipes)
    check_settings(parsed, settings)
    src = load(checkpoint, DEVICE)
    if is_exported(src.model):
        raise CompressError(f"compress a training checkpoint or run directory, not an exported artifact "
                            f"({src.path.name})")
    task = src.meta.get("task") or "classify"
    from cnnkit.tasks import get_task

    get_task(task).check_available("compress")
    if not get_task(task).exportable:  # its int8 artifacts are exported ones
        raise CompressError(f"compressing a {task} model is not available yet; its checkpoint runs in PyTorch "
                            f"(cnnkit eval, predict, bench)")
    here = quantizer_for(quantizer)
    if here is None:
        log(f"PT2E has no int8 quantizer for this {platform.machine()} CPU: int8 from ONNX Runtime only")
    skipped = [why for why in (skip_reason(r, task, onnx, here) for r in parsed) if why]
    parsed = [r for r in parsed if not skip_reason(r, task, onnx, here)]
    if not parsed:
        raise CompressError("no recipe applies to this model: " + "; ".join(skipped))
    for why in skipped:
        log(why)
    source = checkpoint_data_source(src, data, data_dir)  # resolved once: exported variants lack the config
    out = _output_folder(out_dir, src)
    rewound = rewind_point(rewind, src) if rewind is not None and any(r.kind == "sparse" for r in parsed) else None
    train = load_source_split(src, source, "train", ignore_class_names=ignore_class_names)
    ctx = Context(src, out, train, settings, log, rewound)
    claim_dir(out)  # only now, every check passed: writes there replace only files cnnkit wrote
    targets = [Target("float32", "eager", src.path)]
    if ctx.quantizer is not None and any(r.kind in ("int8", "qat8", "qat4") for r in parsed):
        log("float program (Inductor): the int8 programs' baseline")  # compiled alike, measured alike
        targets.append(Target("float32", "inductor", write_compiled(ctx, ctx.model, ctx.name, {})))
    if onnx:
        log("float ONNX")
        targets.append(Target("float32", "onnxruntime", export_onnx(src, out / f"{ctx.name}.onnx").path))
    for recipe in parsed:
        t0 = time.perf_counter()
        log(recipe.text)
        targets += RECIPE_KINDS[recipe.kind](ctx, recipe)
        log(f"  {recipe.text}: {time.perf_counter() - t0:.1f} s")
    rows = measure(targets, source, batch, repeats, log, ignore_class_names, test_images)
    shipped = ship_note(rows)
    if shipped:
        log(shipped)
    return write_report(out, rows, src, source.name, skipped, [shipped] if shipped else [])


def ship_note(rows: list[dict[str, Any]]) -> str | None:
    """Which int8 file to ship where loading speed or a machine without a compiler matters: ONNX Runtime's
    (it loads in a fraction of a second and compiles nothing), beside PT2E's (compiled by Inductor on load)."""
    onnx = [r["file"] for r in rows if r["runtime"] == "onnxruntime int8"]
    pt2e = [r["file"] for r in rows if r["runtime"] == "inductor int8"]
    if not onnx:
        return None
    return (f"int8 to ship by default: {onnx[0]} (ONNX Runtime: nothing to compile, loads at once)"
            + (f"; {pt2e[0]} runs where Inductor can compile it, on first use of each batch size" if pt2e else ""))


def check_settings(recipes: list[Recipe], s: Settings) -> None:
    """CompressError, before anything is loaded, for no recipe or options the recipes given cannot use."""
    if not recipes:
        raise CompressError(f"give at least one recipe: {RECIPE_SYNTAX}")
    if s.rounds < 1:
        raise CompressError(f"pruning rounds must be at least 1, got {s.rounds}")
    kinds = {r.kind for r in recipes}
    if kinds & {"int8", "qat8", "qat4"} or any(r.then_int8 for r in recipes):
        from cnnkit.compress.quantize import check_quantization

        check_quantization(s.observer, s.quantizer, 8)
        if s.calibration < s.batch:
            raise CompressError(f"the calibration set has {s.calibration} images, fewer than one batch ({s.batch}); "
                                f"give --calibration {s.batch} or more")
    if "prune" in kinds:
        from cnnkit.compress.prune import CRITERIA, SCOPES

        if s.criterion not in CRITERIA or s.scope not in SCOPES:
            raise CompressError(f"criterion must be one of {', '.join(CRITERIA)} and scope one of {', '.join(SCOPES)}")


def _output_folder(out_dir: str | Path, src: LoadedCheckpoint) -> Path:
    out = Path(out_dir).expanduser()
    if src.path.resolve().parent == out.resolve():
        raise CompressError("--out must not be the checkpoint's own folder; compression never writes beside its source")
    if out.exists() and not out.is_dir():
        raise CompressError(f"--out {out} is a file; give a folder for the artifacts")
    return out


def rewind_point(rewind: str | Path, src: LoadedCheckpoint) -> nn.Module:
    """The model of the `--rewind` checkpoint, checked to be the same network as the one compressed."""
    early = load(rewind, DEVICE)
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


def measure(targets: list[Target], source: DataSource, batch: int, repeats: int, log: Callable[[str], None],
            ignore_class_names: bool = False, test_images: int | None = None) -> list[dict[str, Any]]:
    """Every target measured side by side on the test split of `source`, with its ratios to the first (its
    metric's difference in points, `top1_delta_pts`, `miou_delta_pts`, or in dB, `psnrydb_delta_db`)."""
    log(f"measuring {len(targets)} variants side by side")
    measured = bench_many([t.path for t in targets], data=source.name, data_dir=source.data_dir, batch=batch,
                          repeats=repeats, ignore_class_names=ignore_class_names, device=str(DEVICE), log=log,
                          test_images=test_images)
    rows = [{"variant": t.variant, "runtime": t.runtime, "file": Path(t.path).name, **r, **t.extra}
            for t, r in zip(targets, measured)]
    base = rows[0]
    key = metric_key(base["metric"])
    for r in rows:
        r[delta_key(key)] = (1 if in_decibels(key) else 100) * (r[key] - base[key])
        r["size_ratio"] = base["file_bytes"] / r["file_bytes"]
        r["latency_speedup"] = base["latency_ms_p50"] / r["latency_ms_p50"]
        r["throughput_speedup"] = r["images_per_s"] / base["images_per_s"]
    return rows
