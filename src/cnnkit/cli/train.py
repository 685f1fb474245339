"""`cnnkit train`, `distill` and `pretrain`.

Their training options are generated from TrainConfig's fields: each field whose metadata has a "help" is one
option, with that text, named --<field-name> or as "option" says, typed as the field (a bool as --x/--no-x) or as
its "form" says, and read back into the field's value here (`config_values`). The options default to None: not
given, so that resolve_config applies the recipe's and the defaults. The rules on the values are TrainConfig's;
this module only parses.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.table import Table

from cnnkit.cli.console import err, percent, stdout, summary
from cnnkit.cli.options import Overwrite, Quiet, Resume, check_early, parse_img_size, parse_kv
from cnnkit.cli.session import command_line
from cnnkit.errors import CnnkitError, ConfigError
from cnnkit.train.config import TrainConfig

_OPTION_FIELDS = [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def _seconds(text: str, option: str) -> float | None:
    from cnnkit.train.budget import parse_budget

    return parse_budget(text)


# a field's "form": how the command line writes its value when not as the field's own type, as the option's type
# and what turns the option's value into the field's
_FORMS: dict[str, tuple[Any, Callable[[Any, str], Any]]] = {
    "path": (Path, lambda value, option: str(value)),
    "key=value": (list[str], lambda pairs, option: parse_kv(pairs, option) or None),
    "duration": (str, _seconds),
    "size": (str, lambda text, option: parse_img_size(text)),
}


def option_name(f: dataclasses.Field) -> str:
    """The command line's name of the training option of field `f`."""
    return f.metadata.get("option", "--" + f.name.replace("_", "-"))


def _option_type(f: dataclasses.Field) -> Any:
    if "form" in f.metadata:
        return _FORMS[f.metadata["form"]][0]
    hint = _FIELD_TYPES[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # int | None, bool | str (True, False or 'auto')
        kinds = [k for k in typing.get_args(hint) if k is not type(None)]
        return bool if bool in kinds else kinds[0]
    return hint


def config_parameters(fields: Collection[str] | None = None) -> list[inspect.Parameter]:
    """The training options (all, or those of the named fields) as keyword parameters for typer to read, in
    TrainConfig's field order."""
    parameters = []
    for f in _OPTION_FIELDS:
        if fields is not None and f.name not in fields:
            continue
        kind, name = _option_type(f), option_name(f)
        option = typer.Option(f"{name}/--no-{name[2:]}" if kind is bool else name, help=f.metadata["help"],
                              min=f.metadata.get("min"))
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[kind], option]))
    return parameters


def config_values(given: dict[str, Any]) -> dict[str, Any]:
    """The training options of a command line as TrainConfig field values (None: not given)."""
    values = {}
    for f in _OPTION_FIELDS:
        if f.name not in given:
            continue
        value = given[f.name]
        if value is not None and "form" in f.metadata:
            value = _FORMS[f.metadata["form"]][1](value, option_name(f))
        elif isinstance(value, (list, tuple)):  # a repeatable option
            value = list(value) or None
        values[f.name] = value
    return values


F = TypeVar("F", bound=Callable[..., None])


def with_training_options(fields: Collection[str] | None = None, *, before: str) -> Callable[[F], F]:
    """A verb's signature for typer: its own parameters, with the training options (all, or those of `fields`)
    before its parameter `before`; the verb receives them in its **options."""
    def decorate(fn: F) -> F:
        own = [p.replace(kind=p.KEYWORD_ONLY) for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.kind is not p.VAR_KEYWORD]
        at = [p.name for p in own].index(before)
        fn.__signature__ = inspect.Signature(own[:at] + config_parameters(fields) + own[at:])  # type: ignore[attr-defined]
        return fn
    return decorate


LrFind = Annotated[bool, typer.Option("--lr-find", help="Run a learning-rate range test (Smith 2017) for this model, "
                                                        "data and recipe, propose a --lr, and stop.")]
Nproc = Annotated[Optional[int], typer.Option(
    min=1, help="Train on N processes of this machine with torchrun (DistributedDataParallel; gloo on CPU, NCCL on "
                "CUDA); --batch-size is the global batch.")]


@with_training_options(before="lr_find")
def train(*, lr_find: LrFind = False, resume: Resume = None, overwrite: Overwrite = False, nproc: Nproc = None,
          quiet: Quiet = False, **options: Any) -> None:
    """Train a model; writes checkpoints, metrics and the resolved config to a run directory."""
    run_training(options, command="train", lr_find=lr_find, resume=resume, overwrite=overwrite, nproc=nproc,
                 quiet=quiet)


@with_training_options(before="resume")
def distill(
    *,
    teacher: Annotated[Optional[list[Path]], typer.Option(
        help="A teacher: a run directory (its best checkpoint) or a checkpoint, trained on the same classes and "
             "input shape, any architecture (repeatable: their softmax outputs are averaged).")] = None,
    method: Annotated[str, typer.Option(
        help="kd (Hinton 2015: soft targets at --temperature mixed with the labels by --alpha) or meal-v2 (Shen "
             "2020: the teachers' softmax only, no labels, and a discriminator).")] = "kd",
    temperature: Annotated[float, typer.Option(help="kd: softmax temperature T; the soft loss is scaled by T².")] = 4.0,
    alpha: Annotated[float, typer.Option(help="kd: weight of the soft loss; 1 − alpha weighs the labels.")] = 0.9,
    disc_weight: Annotated[float, typer.Option(help="meal-v2: how strongly the discriminator's reversed gradient "
                                                    "reaches the student (0 = KL only).")] = 1.0,
    resume: Resume = None, overwrite: Overwrite = False, nproc: Nproc = None, quiet: Quiet = False, **options: Any,
) -> None:
    """Train a student from one or more teachers (knowledge distillation); every `cnnkit train` option applies."""
    how = dict(command="distill", resume=resume, overwrite=overwrite, nproc=nproc, quiet=quiet)
    if resume is not None:  # the saved run keeps its teachers and method
        run_training(options, **how)
        return
    for t in teacher or []:
        if not t.exists():
            raise ConfigError(f"teacher {t} does not exist")
    extra = dict(distill=method, teachers=[str(t) for t in teacher or []], kd_temperature=temperature,
                 kd_alpha=alpha, disc_weight=disc_weight)
    if teacher and options.get("data") is None:  # the student learns on what its teachers learned on
        from cnnkit.tasks.distill import teachers_data

        extra.update({k: v for k, v in teachers_data(extra["teachers"]).items() if options.get(k) is None})
        how["data_note"] = "the teachers' (give --data for other data)"
    run_training(options, extra=extra, **how)


def run_training(options: dict[str, Any], *, command: str, resume: Path | None, overwrite: bool, nproc: int | None,
                 quiet: bool, lr_find: bool = False, extra: dict[str, Any] | None = None,
                 data_note: str | None = None) -> None:
    """What `train` and `distill` run: the training options given, plus `extra` TrainConfig fields; `data_note`
    says in the summary where the data came from when the command chose it."""
    values = {**config_values(options), **(extra or {})}
    if lr_find and resume is not None:
        raise ConfigError("--lr-find starts from the model's initialization; it cannot be combined with --resume")
    if resume is None and values.get("init_from") and values.get("model") is None:
        _model_of_init_from(values)
    check_early(model=values["model"], model_kwargs=values["model_kwargs"], device=values["device"],
                out=values["out"] if resume is None else None)  # refused before anything is loaded
    if nproc is not None and nproc > 1 and _start_processes(nproc, values, lr_find, resume):
        return
    if lr_find:
        _show_lr_find(values, quiet)
        return
    if resume is not None:
        values.pop("out")
    from cnnkit.train import fit  # after the checks: importing the training stack takes seconds

    result = fit(resume=resume, overwrite=overwrite, progress=not quiet, **values)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    last, cfg = result.history[-1], result.config
    from cnnkit.tasks import get_task

    task = get_task(cfg.task)
    score = task.score  # the task's score (metrics.csv's train_<score>, val_<score>)

    def shown(value: float | None) -> str:  # a fraction in percent; another score (PSNR) as its task writes it
        return percent(value) if task.score_is_fraction or value is None or value != value else task.format_value(value)

    taught = {"method": cfg.distill, "teachers": ", ".join(cfg.teachers)} if cfg.distill else {}
    data = f"{cfg.data}, {data_note}" if data_note else cfg.data
    summary(command, {"run": result.run_dir, "model": cfg.model, "data": data, **taught,
                      "epochs": int(last["epoch"]), f"train {score}": shown(last.get(f"train_{score}")),
                      f"best val {score}": (shown(result.best_val_acc) + (" (with flip TTA)" if cfg.tta else ""))
                      if result.best_val_acc is not None else "n/a (no val split)",
                      "stopped early": result.stopped_early, "seconds": f"{result.seconds:.1f}",
                      "best checkpoint": result.best_checkpoint})


def _model_of_init_from(values: dict[str, Any]) -> None:
    """--init-from a cnnkit run, without --model: train the run's model with its options (--model-kw given adds
    to them); the run's first lines say so (setup.start_from)."""
    from cnnkit.train.setup import init_from_model

    source = init_from_model(values["init_from"])
    if source is not None:  # else a timm or torchvision file: the recipe's model, as without --init-from
        values["model"], values["model_kwargs"] = source[0], {**source[1], **(values["model_kwargs"] or {})}


def _start_processes(nproc: int, values: dict[str, Any], lr_find: bool, resume: Path | None) -> bool:
    """With --nproc N outside torchrun: check the options here, once, then run this very command on N processes
    (True); under torchrun, False: this process trains."""
    if lr_find:
        raise ConfigError("--lr-find runs on one process; drop --nproc for it")
    from cnnkit.train.distributed import launch, launched_by_torchrun

    if launched_by_torchrun():
        return False
    if resume is None:
        from cnnkit.train.config import resolve_config

        resolved = resolve_config({k: v for k, v in values.items() if v is not None})
        if resolved.batch_size % nproc:
            raise ConfigError(f"--batch-size {resolved.batch_size} is the global batch: it must be a "
                              f"multiple of --nproc {nproc}")
    argv, skip = [], False  # the command line, without --nproc
    for a in command_line():
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    code = launch(nproc, argv)
    if code:  # the workers have said why (rank 0, one line); the command ends with their status
        failed = CnnkitError()
        failed.exit_code = code
        raise failed
    return True


def _show_lr_find(values: dict[str, Any], quiet: bool) -> None:
    from cnnkit.train import lr_find

    def say(line: str) -> None:  # a minute or so of training steps, with nothing else to show until the table
        err.print(line, markup=False, highlight=False, soft_wrap=True)

    r = lr_find(**values, say=None if quiet else say)
    t = Table(title="learning-rate range test (Smith 2017)", title_justify="left")
    for col in ("lr", "smoothed loss"):
        t.add_column(col, justify="right")
    for i in range(0, len(r.lrs), max(1, len(r.lrs) // 12)):
        t.add_row(f"{r.lrs[i]:.2e}", f"{r.smoothed[i]:.3f}")
    stdout.print(t)
    out = values["out"]
    steps = f"{len(r.lrs)} of {r.steps_planned}" + (f"; stopped early: {r.stopped_because}" if r.stopped_early
                                                     else "")
    now = f"--lr {r.lr:g} (" + ("given" if values.get("lr") is not None else f"the {r.model_recipe} recipe's") + ")"
    summary("lr-find", {"steps": steps, "loss lowest at lr": f"{r.min_loss_lr:.3g}",
                        "fastest fall at lr": f"{r.steepest:.3g}", "proposed": f"--lr {r.suggestion:.2g}",
                        "now trains with": now,
                        "plot": Path(out) / "lr_find.png" if out else "(give --out DIR to save lr_find.png and .csv)"})


# the training options `cnnkit pretrain` offers (its model and data have their own defaults, below)
PRETRAIN_FIELDS = ("model_kwargs", "data_dir", "img_size", "epochs", "budget", "batch_size", "lr", "amp",
                   "train_images", "val_fraction", "seed", "device", "threads", "out")


@with_training_options(PRETRAIN_FIELDS, before="resume")
def pretrain(
    *,
    method: Annotated[str, typer.Option(help="The self-supervised task: rotnet (Gidaris et al. 2018).")] = "rotnet",
    model: Annotated[str, typer.Option(help="Model name (see `cnnkit models list`); RotNet's paper used "
                                            "nin4.")] = "nin4",
    data: Annotated[str, typer.Option(help="sample, fashion-mnist, mnist, cifar10 or imagefolder:<dir>; its labels "
                                           "are not used.")] = "sample",
    rotations: Annotated[int, typer.Option(help="4 (0/90/180/270°) or 2 (0/180°, the paper's ablation).")] = 4,
    resume: Resume = None, overwrite: Overwrite = False, quiet: Quiet = False, **options: Any,
) -> None:
    """Learn features without labels: RotNet trains the model to tell each image's rotation."""
    values = config_values(options)
    check_early(model=model, model_kwargs=values["model_kwargs"], device=values["device"])
    default_out = Path("runs") / f"{model.replace('/', '-')}-{data.split(':')[0]}-rotnet"
    values.update(model=model, data=data, out=values["out"] or str(default_out), pretext=method, rotations=rotations)
    if resume is not None:  # the saved run decides everything else (its model, data, rotations, recipe)
        values = {k: values[k] for k in ("epochs", "device", "threads", "data_dir")}
    from cnnkit.train import fit

    result = fit(resume=resume, overwrite=overwrite, progress=not quiet, **values)
    last = result.history[-1]
    cfg = result.config  # resumed: the saved run's model, data and rotations
    summary("pretrain", {"run": result.run_dir, "method": f"rotnet, {cfg.rotations} rotations", "model": cfg.model,
                         "data": cfg.data, "epochs": int(last["epoch"]), "rotation acc (train)": percent(last["train_acc"]),
                         "rotation acc (val)": percent(result.best_val_acc),
                         "seconds": f"{result.seconds:.1f}", "checkpoint": result.best_checkpoint})
