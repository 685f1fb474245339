"""The compression recipes, one function each, in a table by kind (`RECIPE_KINDS`): each takes the run's
`Context` and one parsed `Recipe`, writes its variants into the output folder and returns them as `Target`s
to measure. `parse_recipe` reads a recipe string (int8, qat8, qat4, prune:R, prune:R+int8, sparse:R);
`skip_reason` says why one does not apply to a model (a model other than a classifier: no recipe that
fine-tunes)."""

from __future__ import annotations

import copy
import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from cnnkit.artifacts import LoadedCheckpoint, save_checkpoint
from cnnkit.compress.context import Context
from cnnkit.compress.finetune import finetune
from cnnkit.compress.prune import apply_masks, check_ratio, count_macs, magnitude_masks, prune_structured, sparsity_of
from cnnkit.compress.quantize import Quantized, convert, float_ops, freeze_bn, prepare_qat, qat_float_model, quantize_pt2e
from cnnkit.compress.variants import save_pruned, write_compiled, write_int8_onnx
from cnnkit.deploy import export_onnx
from cnnkit.errors import CompressError

_RATIO = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)"  # 0.5, .5, 1., 2: a decimal number (its range is checked apart)
_RECIPE = re.compile(rf"^(int8|qat8|qat4|prune:{_RATIO}(\+int8)?|sparse:{_RATIO})$")
RECIPE_SYNTAX = "int8, qat8, qat4, prune:R, prune:R+int8, sparse:R"
# the recipes that fine-tune: their loop (cnnkit.compress.finetune) and the Taylor criterion train a classifier
# (cross-entropy on one label per image), so they apply to classifiers only
FINETUNED = ("qat8", "qat4", "prune", "sparse")
INT8_RUNTIME = "inductor int8"  # PT2E's int8 program, compiled by Inductor (its float baseline: "inductor")


@dataclass(frozen=True)
class Recipe:
    """One recipe as given (`text`) and read: its kind, its ratio (prune, sparse) and whether int8 follows."""

    text: str
    kind: str
    ratio: float | None = None
    then_int8: bool = False


@dataclass
class Target:
    """A variant to measure: its recipe, the runtime it runs in, its file, and columns of its own."""

    variant: str
    runtime: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def parse_recipe(recipe: str) -> tuple[str, float | None, bool]:
    """(kind, ratio, then_int8) for one recipe string; a one-line error for anything else."""
    r = recipe.strip()
    if not _RECIPE.match(r):
        raise CompressError(f"unknown recipe {recipe!r}; choose from: {RECIPE_SYNTAX} (R strictly between 0 and 1)")
    if ":" not in r:
        return r, None, False
    kind, rest = r.split(":", 1)
    ratio = float(rest.split("+")[0])
    check_ratio(ratio)
    return kind, ratio, rest.endswith("+int8")


def parse_recipes(recipes: list[str]) -> list[Recipe]:
    """Each recipe string read, each recipe once (in the order given)."""
    return list(dict.fromkeys(Recipe(r.strip(), *parse_recipe(r)) for r in recipes))


def skip_reason(recipe: Recipe, task: str, onnx: bool, quantizer: str | None = "x86") -> str | None:
    """Why `recipe` does not apply to a model of `task` (None: it does): a model other than a classifier gets
    no recipe that fine-tunes; int8 needs a PT2E quantizer for this CPU (`quantizer`) or ONNX Runtime."""
    if task != "classify" and recipe.kind in FINETUNED:
        return (f"{recipe.text}: skipped, not available for {task} models (its fine-tuning trains a classifier: "
                f"cross-entropy on one label per image)")
    quantizes = recipe.kind in ("int8", "qat8", "qat4") or recipe.then_int8
    if quantizes and quantizer is None and not onnx:
        return (f"{recipe.text}: skipped, PT2E has no int8 quantizer for this CPU and --no-onnx turns ONNX "
                f"Runtime's int8 off")
    return None


def _pct(ratio: float) -> str:
    return f"{round(100 * ratio):d}"


def int8(ctx: Context, recipe: Recipe) -> list[Target]:
    """Post-training static int8: PT2E (a `torch.export` program Inductor compiles; any task, where this CPU has
    a quantizer) and, with --onnx, ONNX Runtime's QDQ (per-channel weights, calibrated on training images)."""
    return _int8_of(ctx, recipe, ctx.model, ctx.name, {"recipe": recipe.text})


def _int8_of(ctx: Context, recipe: Recipe, model: nn.Module, stem: str, extra: dict[str, Any]) -> list[Target]:
    s = ctx.settings
    targets = []
    if ctx.quantizer is not None:
        q = quantize_pt2e(model, ctx.calib, s.observer, ctx.quantizer, batch=min(s.batch, len(ctx.calib)),
                          dynamic=ctx.dynamic)
        targets.append(Target(recipe.text, INT8_RUNTIME, write_compiled(ctx, model, stem, extra, q),
                              {"float_ops": q.float_ops}))
    if s.onnx:
        path, ops = write_int8_onnx(ctx, model, stem, s.observer, extra)
        targets.append(Target(recipe.text, "onnxruntime int8", path, {"float_ops": ops}))
    return targets


def qat(ctx: Context, recipe: Recipe) -> list[Target]:
    """Quantization-aware fine-tuning with 8- or 4-bit weights (qat8, qat4) through PT2E, converted to an int8
    program; with --onnx its fine-tuned float weights also quantized by ONNX Runtime. Without a PT2E quantizer
    for this CPU, the recipe is skipped in one line (ONNX Runtime has no quantization-aware training)."""
    s = ctx.settings
    if ctx.quantizer is None:
        ctx.log(f"  {recipe.text}: skipped, quantization-aware training is PT2E's, which has no int8 quantizer "
                f"for this CPU")
        return []
    bits = 8 if recipe.kind == "qat8" else 4
    prepared = prepare_qat(ctx.model, ctx.example, ctx.quantizer, bits, ctx.dynamic)
    finetune(prepared, ctx.train, ctx.mean, ctx.std, s.finetune_epochs, s.lr or 1e-3, seed=s.seed,
             teacher=ctx.teacher(), freeze_bn_after=0.5, freeze_bn=freeze_bn)
    trained = qat_float_model(prepared, ctx.model) if s.onnx else None
    q = convert(prepared)
    qq = Quantized(q, ctx.quantizer, "qat", bits, len(ctx.train), float_ops(q))
    stem, extra = f"{ctx.name}.{recipe.kind}", {"recipe": recipe.text, "finetune_epochs": s.finetune_epochs}
    targets = [Target(recipe.text, INT8_RUNTIME, write_compiled(ctx, ctx.model, stem, extra, qq),
                      {"float_ops": qq.float_ops})]
    if s.onnx:  # the QAT weights, quantized by ONNX Runtime on QAT's min-max activation ranges
        path, ops = write_int8_onnx(ctx, trained, stem, "minmax",
                                    {**extra, "trained_weight_bits": bits, "weight_bits": 8})
        targets.append(Target(recipe.text, "onnxruntime int8", path, {"float_ops": ops}))
    return targets


def prune(ctx: Context, recipe: Recipe) -> list[Target]:
    """Structured pruning to a share of the MACs (prune:R), fine-tuned, in eager PyTorch and ONNX Runtime;
    prune:R+int8 quantizes that same pruned model."""
    s, ratio = ctx.settings, recipe.ratio
    stem = f"{ctx.name}.pruned{_pct(ratio)}"
    extra = {"recipe": f"prune:{ratio:g}", "pruned": True, "criterion": s.criterion, "scope": s.scope,
             "rounds": s.rounds, "round_to": s.round_to, "finetune_epochs": s.finetune_epochs, "distill": s.distill}
    targets = []
    if ratio not in ctx.pruned:
        ctx.pruned[ratio] = pruned = save_pruned(ctx, pruned_model(ctx, ratio), ctx.out / f"{stem}.safetensors", extra)
        targets.append(Target(f"prune:{ratio:g}", "eager", pruned.path))
        if s.onnx:  # the pruned float model in ONNX Runtime, to compare with the float ONNX model
            onnx = export_onnx(pruned, ctx.out / f"{stem}.onnx").path
            targets.append(Target(f"prune:{ratio:g}", "onnxruntime", onnx))
    if recipe.then_int8:
        if ctx.quantizer is not None:  # its int8 program's fair baseline: the pruned float program, compiled alike
            float_program = write_compiled(ctx, ctx.pruned[ratio].model, stem, extra)
            targets.append(Target(f"prune:{ratio:g}", "inductor", float_program))
        targets += _pruned_int8(ctx, recipe, ctx.pruned[ratio], stem, {**extra, "recipe": recipe.text})
    return targets


def pruned_model(ctx: Context, ratio: float) -> nn.Module:
    """The float model pruned to `ratio` less MACs in --rounds steps, each fine-tuned (--finetune-epochs)."""
    s, current = ctx.settings, ctx.model
    for r in range(s.rounds):
        goal = (1 - ratio) ** ((r + 1) / s.rounds) * ctx.base["macs"]
        step = 1 - goal / count_macs(current, ctx.example)
        p = prune_structured(current, ctx.calib[:256], ctx.calib_labels[:256], step, s.criterion, s.scope,
                             round_to=s.round_to)
        ctx.log(f"  round {r + 1}/{s.rounds}: {p.macs_after / ctx.base['macs']:.2f} of the MACs")
        current = p.model
        if s.finetune_epochs > 0:
            finetune(current, ctx.train, ctx.mean, ctx.std, s.finetune_epochs / s.rounds, s.lr or 1e-2,
                     seed=s.seed + r, teacher=ctx.teacher())
    return current


def _pruned_int8(ctx: Context, recipe: Recipe, pruned: LoadedCheckpoint, stem: str,
                 extra: dict[str, Any]) -> list[Target]:
    return _int8_of(ctx, recipe, pruned.model, stem, extra)


def sparse(ctx: Context, recipe: Recipe) -> list[Target]:
    """Unstructured sparsity: global magnitude masks on the (--rewind) weights, retrained with the masks
    fixed; a size result (dense kernels run the zeros)."""
    s = ctx.settings
    masks = magnitude_masks(ctx.model, recipe.ratio)
    start = copy.deepcopy(ctx.rewound if ctx.rewound is not None else ctx.model).float()
    apply_masks(start, masks)
    if s.finetune_epochs > 0:
        finetune(start, ctx.train, ctx.mean, ctx.std, s.finetune_epochs, s.lr or 1e-2, seed=s.seed,
                 after_step=lambda: apply_masks(start, masks), teacher=ctx.teacher())
    path = ctx.out / f"{ctx.name}.sparse{_pct(recipe.ratio)}.safetensors"
    save_checkpoint(path, start, ctx.variant_meta(recipe=recipe.text, rewound_to=str(s.rewind) if s.rewind else None,
                                                  sparsity=sparsity_of(start)))
    gz = len(gzip.compress(path.read_bytes(), 6))
    nonzero = int(sum((m.weight != 0).sum() for m in start.modules() if isinstance(m, (nn.Conv2d, nn.Linear))))
    return [Target(recipe.text, "eager (dense kernels)", path,
                   {"sparsity": sparsity_of(start), "gzip_bytes": gz, "nonzero_weights": nonzero})]


# kind -> the recipe function that writes its variants
RECIPE_KINDS: dict[str, Callable[[Context, Recipe], list[Target]]] = {
    "int8": int8, "qat8": qat, "qat4": qat, "prune": prune, "sparse": sparse}
