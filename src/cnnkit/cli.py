"""The `cnnkit` command: a thin layer over the Python API. Errors print one line; --debug shows tracebacks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

# torch's C++ notices (e.g. that quantized tensor functions are deprecated, printed when an int8 model
# runs) bypass Python's warnings and would land on stderr; the command keeps stderr for what a user can
# act on. Read by torch when it is first imported, which happens after this line; a user's setting wins.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402
from typer.exceptions import TyperException  # noqa: E402

from cnnkit.errors import CnnkitError, ConfigError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and ship convolutional image classifiers.")
models_app = typer.Typer(no_args_is_help=True, help="List and inspect the registered models.")
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Prepare data sets: WebDataset shards for training at scale.")
app.add_typer(data_app, name="data")


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="On an error, show the full traceback instead of one "
                                                      "line (also CNNKIT_DEBUG=1); accepted before or after "
                                                      "the command."),
    trust_torchscript: bool = typer.Option(False, "--trust-torchscript",
                                           help="Load TorchScript (.ts) files that this user's cnnkit did not "
                                                "write (loading TorchScript runs code stored in the file; also "
                                                "CNNKIT_TRUST_TORCHSCRIPT=1); accepted before or after the "
                                                "command."),
) -> None:
    """Train, evaluate, explain, compress and ship convolutional image classifiers."""
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with terminal control characters (escape sequences, bells, bidirectional overrides) shown as
    `\\xNN`/`\\uNNNN` escapes: class names, file names and messages come from data, and a terminal would act
    on them."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


class _SafeConsole(Console):
    """A rich Console that shows control characters in any text it renders (tables, titles, messages) as
    escapes."""

    def render_str(self, text: str, **kwargs: Any):  # noqa: ANN201 - rich's Text
        return super().render_str(visible(text), **kwargs)


stdout = _SafeConsole(markup=False)  # what stdout shows comes from data (class and file names): never markup
err = _SafeConsole(stderr=True)  # cnnkit's own markup ("error:" in red); data in it is escaped


def summary(title: str, rows: dict[str, Any]) -> None:
    """The short table every verb ends with."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in rows.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    stdout.print(t)


def parse_kv(pairs: list[str] | None, option: str = "--model-kw") -> dict[str, Any]:
    """key=value pairs, values parsed as YAML (so 16 is an int, 0.5 a float, true a bool, [3, 5] a list)."""
    import yaml

    result = {}
    for p in pairs or []:
        k, eq, v = p.partition("=")
        if not eq or not k.strip():
            raise ConfigError(f"{option}: expected key=value (e.g. width=16), got {p!r}")
        try:
            result[k.strip().replace("-", "_")] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"{option} {k.strip()}: cannot read the value {v!r}; write a number, a word, "
                              f"true/false or a list such as [3, 5, 5, 7]") from None
    return result


def parse_img_size(text: str | None) -> int | list[int] | None:
    """--img-size: N (N×N) as an int, or HxW (height x width, e.g. 48x32) as [H, W]."""
    if text is None:
        return None
    parts = text.strip().lower().replace("×", "x").split("x")
    if len(parts) in (1, 2) and all(p.strip().isascii() and p.strip().isdigit() and int(p) > 0 for p in parts):
        sizes = [int(p) for p in parts]
        return sizes[0] if len(sizes) == 1 else sizes
    raise ConfigError(f"--img-size must be a positive side N or HxW (height x width), e.g. 32 or 48x32; got {text!r}")


def _check_early(model: str | None = None, model_kwargs: dict[str, Any] | None = None,
                 augment: dict[str, Any] | None = None, device: str | None = None,
                 checkpoint: Path | None = None, amp: str | None = None) -> None:
    """Check option values as they are parsed, before any data is loaded or folder created."""
    if amp is not None and amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"--amp must be auto, bf16, fp16 or off, got {amp!r}")
    if augment:
        from cnnkit.data.transforms import AugmentConfig

        AugmentConfig.from_dict(augment)
    if model is not None and not model.startswith("timm/"):
        from cnnkit.models import check_options

        check_options(model, model_kwargs or {})
    if device is not None:
        from cnnkit.runtime import cpu_only_artifact, pick_device

        dev = pick_device(device, cpu_only_artifact(checkpoint))
        if amp is not None:
            from cnnkit.runtime import autocast_dtype

            autocast_dtype(amp, dev)  # fp16 on a CPU is refused here, in one line


def _check_out_folder(out: Path | None, option: str = "--out") -> None:
    """A folder option must not name an existing file (checked before anything runs or is written)."""
    if out is not None and out.expanduser().exists() and not out.expanduser().is_dir():
        raise ConfigError(f"{option} {out} is a file; give a folder (new or one cnnkit wrote)")


@app.command()
def train(
    model: Optional[str] = typer.Option(None, help="Model name (see `cnnkit models list`); default from the recipe."),
    data: Optional[str] = typer.Option(None, help="sample, fashion-mnist, mnist, cifar10 or imagefolder:<dir>."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Training epochs (default from the recipe)."),
    budget: Optional[str] = typer.Option(
        None, help="Train to a time budget instead of --epochs, e.g. 90s, 3m, 1h: measures this machine's pace "
                   "and plans the run, evaluations and checkpoints included, to end inside it."),
    lr_find: bool = typer.Option(False, "--lr-find", help="Run a learning-rate range test (Smith 2017) for this "
                                                          "model, data and recipe, propose a --lr, and stop."),
    recipe: Optional[str] = typer.Option(None, help="Named defaults per dataset: fast or long (default fast)."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<model>-<data>)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory where it stopped."),
    overwrite: bool = typer.Option(False, help="Replace an existing run in --out."),
    model_kw: Optional[list[str]] = typer.Option(None, "--model-kw", help="Model option key=value (repeatable)."),
    init_from: Optional[Path] = typer.Option(
        None, help="Start from these weights: a timm/torchvision .pth/.safetensors file or a cnnkit run."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per step (default from the recipe)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    optimizer: Optional[str] = typer.Option(None, help="sgd (Nesterov), adamw or rmsprop (default: the model "
                                                       "family's recipe, see `cnnkit models info`)."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay, on weights only (not norms, biases)."),
    schedule: Optional[str] = typer.Option(None, help="onecycle or cosine."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Epochs of learning-rate warm-up."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing in [0, 1)."),
    ema: Optional[float] = typer.Option(None, help="EMA decay of the weights (0 = off)."),
    augment: Optional[list[str]] = typer.Option(
        None, "--augment", help="Augmentation key=value: crop_padding, hflip, policy, erasing, mixup, cutmix."),
    amp: Optional[str] = typer.Option(None, help="auto (bf16 where the CPU or GPU computes it natively, "
                                                 "else fp32), bf16, fp16 or off."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                help="Channels-last memory layout (default on)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    grad_clip: Optional[float] = typer.Option(None, help="Max gradient norm (0 = off)."),
    early_stopping: Optional[int] = typer.Option(None, help="Patience in epochs (0 = off)."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of train held out for validation."),
    train_images: Optional[int] = typer.Option(None, help="Train on a stratified subset of this many images."),
    train_images_per_class: Optional[int] = typer.Option(
        None, min=1, help="Train on this many images of each class (seeded): few labels, e.g. with --init-from "
                          "a `cnnkit pretrain` run."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Flip test-time augmentation in validation."),
    keep_epoch: Optional[list[int]] = typer.Option(None, help="Also keep the weights after this epoch as "
                                                         "RUN/epoch-NNNN.safetensors (repeatable)."),
    seed: Optional[int] = typer.Option(None, help="Random seed of initialization, splits, order and "
                                                        "augmentation (default 0)."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the held-out validation (and flat folder's "
                                                        "test) split, default --seed: runs that share it hold "
                                                        "out the same images (model-soup ingredients)."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic",
                                                help="Deterministic kernels: the same seed gives the same "
                                                     "weights, bit for bit."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda[:N]."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (0 = torch default)."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Fetch the dataset if missing."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Stop at the first unreadable image."),
    img_size: Optional[str] = typer.Option(None, help="imagefolder: resize images to N×N (e.g. 32) or to "
                                                      "height×width (e.g. 48x32)."),
    test_fraction: Optional[float] = typer.Option(
        None, help="Flat imagefolder (no train/ and test/ sub-folders): share of each class held out as the "
                   "test split, chosen by --seed (default 0.2)."),
    data_mode: Optional[str] = typer.Option(
        None, help="imagefolder: memory (decode once, hold in RAM), stream (decode and augment in worker "
                   "processes, bounded memory) or auto (stream when the decoded set would take more than a "
                   "quarter of the available memory; default)."),
    workers: Optional[int] = typer.Option(None, min=0, help="Streaming: decoding processes per training process "
                                                            "(default: the CPUs shared among the processes, ≤ 8)."),
    nproc: Optional[int] = typer.Option(None, min=1, help="Train on N processes of this machine with torchrun "
                                                          "(DistributedDataParallel; gloo on CPU, NCCL on CUDA); "
                                                          "--batch-size is the global batch."),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn",
                                           help="Several processes: BatchNorm with the global batch's statistics."),
    checkpoint_every: Optional[int] = typer.Option(
        None, min=0, help="Also save the full training state every N steps, mid-epoch, so that --resume (or "
                          "torchrun --max-restarts) continues from that step (0 = only at epochs' ends)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a model; writes checkpoints, metrics and the resolved config to a run directory."""
    _train(**locals())


def _train(*, extra: dict[str, Any] | None = None, command: str = "train", **kw: Any) -> None:
    """What `train` and `distill` run: the training options of `train`, plus `extra` config fields."""
    (model, data, data_dir, epochs, budget, lr_find, recipe, out, resume, overwrite, model_kw, init_from, batch_size,
     lr, optimizer, weight_decay, schedule, warmup_epochs, label_smoothing, ema, augment, amp, channels_last, compile,
     grad_clip, early_stopping, val_fraction, train_images, train_images_per_class, tta, keep_epoch, seed,
     split_seed, deterministic, device, threads, download, strict, img_size, test_fraction, data_mode, workers, nproc,
     sync_bn, checkpoint_every, quiet) = (kw[k] for k in _TRAIN_NAMES)
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be strictly between 0 and 1, e.g. 0.2; got {test_fraction}")
    if out is not None and resume is None:
        from cnnkit.artifacts.files import check_out_dir

        check_out_dir(out)  # a file, the file-system root: refused before anything is loaded
    model_kwargs, augment_options = parse_kv(model_kw), parse_kv(augment, "--augment")
    _check_early(model=model, model_kwargs=model_kwargs, augment=augment_options, device=device)
    from cnnkit.train.budget import parse_budget

    budget_s = parse_budget(budget)
    if budget_s is not None and epochs is not None:
        raise ConfigError("give --epochs or --budget, not both: a budget plans the epochs itself")
    if lr_find and resume is not None:
        raise ConfigError("--lr-find starts from the model's initialization; it cannot be combined with --resume")
    from cnnkit.train import fit  # after the checks: importing the training stack takes seconds

    options = dict(model=model, data=data, data_dir=str(data_dir) if data_dir else None, epochs=epochs, budget=budget_s,
                   recipe=recipe, out=str(out) if out else None, model_kwargs=model_kwargs or None,
                   init_from=str(init_from) if init_from else None, batch_size=batch_size, lr=lr,
                   optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
                   warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, ema=ema,
                   augment=augment_options or None, amp=amp, channels_last=channels_last, compile=compile,
                   grad_clip=grad_clip, early_stopping=early_stopping, val_fraction=val_fraction,
                   train_images=train_images, train_images_per_class=train_images_per_class, tta=tta,
                   keep_epochs=keep_epoch or None,
                   seed=seed, split_seed=split_seed, deterministic=deterministic, device=device, threads=threads,
                   download=download, strict=strict, img_size=parse_img_size(img_size), test_fraction=test_fraction,
                   data_mode=data_mode, workers=workers, sync_bn=sync_bn, checkpoint_every=checkpoint_every,
                   **(extra or {}))
    if nproc is not None and nproc > 1:
        if lr_find:
            raise ConfigError("--lr-find runs on one process; drop --nproc for it")
        from cnnkit.train.distributed import launched_by_torchrun

        if not launched_by_torchrun():  # check the options here, once, then start the processes
            if resume is None:
                from cnnkit.train.config import resolve_config

                resolved = resolve_config({k: v for k, v in options.items() if v is not None})
                if resolved.batch_size % nproc:
                    raise ConfigError(f"--batch-size {resolved.batch_size} is the global batch: it must be a "
                                      f"multiple of --nproc {nproc}")
            _launch(nproc)
            return
    if lr_find:
        _lr_find(options, out)
        return
    if resume is not None:
        options.pop("out")
    result = fit(resume=resume, overwrite=overwrite, progress=not quiet, **options)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    last = result.history[-1]
    cfg = result.config
    taught = {"method": cfg.distill, "teachers": ", ".join(cfg.teachers)} if cfg.distill else {}
    summary(command, {"run": result.run_dir, "model": result.config.model, "data": result.config.data, **taught,
                      "epochs": int(last["epoch"]), "train acc": last["train_acc"],
                      "best val acc": result.best_val_acc if result.best_val_acc is not None else "n/a (no val split)",
                      "stopped early": result.stopped_early, "seconds": f"{result.seconds:.1f}",
                      "best checkpoint": result.best_checkpoint})


# the names `_train` unpacks, in its order; checked against `train`'s own parameters when the module loads, so that
# an option added to `train` (and so to `distill`) cannot be dropped or mixed up silently
_TRAIN_NAMES = ("model", "data", "data_dir", "epochs", "budget", "lr_find", "recipe", "out", "resume", "overwrite",
                "model_kw", "init_from", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "warmup_epochs",
                "label_smoothing", "ema", "augment", "amp", "channels_last", "compile", "grad_clip", "early_stopping",
                "val_fraction", "train_images", "train_images_per_class", "tta", "keep_epoch", "seed", "split_seed",
                "deterministic", "device", "threads", "download", "strict", "img_size", "test_fraction", "data_mode",
                "workers", "nproc", "sync_bn", "checkpoint_every", "quiet")
if set(_TRAIN_NAMES) != set(__import__("inspect").signature(train).parameters):
    raise RuntimeError("cnnkit.cli: _TRAIN_NAMES must list exactly the parameters of `train`")


def _launch(nproc: int) -> None:
    """Run this very command again on `nproc` processes under torchrun's launcher (without --nproc)."""
    from cnnkit.train.distributed import launch

    argv, skip = [], False
    for a in _ARGV:
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


def distill_cmd(
    teacher: Optional[list[Path]] = typer.Option(
        None, help="A teacher: a run directory (its best checkpoint) or a checkpoint, trained on the same classes "
                   "and input shape, any architecture (repeatable: their softmax outputs are averaged)."),
    method: str = typer.Option("kd", help="kd (Hinton 2015: soft targets at --temperature mixed with the labels "
                                          "by --alpha) or meal-v2 (Shen 2020: the teachers' softmax only, no "
                                          "labels, and a discriminator)."),
    temperature: float = typer.Option(4.0, help="kd: softmax temperature T; the soft loss is scaled by T²."),
    alpha: float = typer.Option(0.9, help="kd: weight of the soft loss; 1 − alpha weighs the labels."),
    disc_weight: float = typer.Option(1.0, help="meal-v2: how strongly the discriminator's reversed gradient "
                                                "reaches the student (0 = KL only)."),
    **train_options: Any,
) -> None:
    """Train a student from one or more teachers (knowledge distillation); every `cnnkit train` option applies."""
    train_options["lr_find"] = False
    if train_options["resume"] is not None:  # the saved run keeps its teachers and method
        _train(extra=None, command="distill", **train_options)
        return
    if not teacher:
        raise ConfigError("give the student's teacher(s): --teacher RUN (repeatable)")
    if method not in ("kd", "meal-v2"):
        raise ConfigError(f"--method must be kd or meal-v2, got {method!r}")
    for t in teacher:
        if not t.exists():
            raise ConfigError(f"teacher {t} does not exist")
    extra = dict(distill=method, teachers=[str(t) for t in teacher], kd_temperature=temperature, kd_alpha=alpha,
                 disc_weight=disc_weight)
    _train(extra=extra, command="distill", **train_options)


def _with_train_options(fn):
    """`fn`'s own options followed by every option of `train` (but --lr-find), for typer to read."""
    import inspect

    own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in own}
    shared = [p for p in inspect.signature(train).parameters.values() if p.name not in names | {"lr_find"}]
    fn.__signature__ = inspect.Signature(own + shared)
    fn.__annotations__ = {**train.__annotations__, **{k: v for k, v in fn.__annotations__.items()
                                                      if k != "train_options"}}
    return fn


app.command("distill")(_with_train_options(distill_cmd))


@app.command()
def pretrain(
    method: str = typer.Option("rotnet", help="The self-supervised task: rotnet (Gidaris et al. 2018)."),
    model: str = typer.Option("nin4", help="Model name (see `cnnkit models list`); RotNet's paper used nin4."),
    data: str = typer.Option("sample", help="sample, fashion-mnist, mnist, cifar10 or imagefolder:<dir>; its "
                                            "labels are not used."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    rotations: int = typer.Option(4, help="4 (0/90/180/270°) or 2 (0/180°, the paper's ablation)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs (default from the recipe)."),
    budget: Optional[str] = typer.Option(None, help="Train to a time budget instead of --epochs, e.g. 3m."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<model>-<data>-rotnet)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory where it stopped."),
    overwrite: bool = typer.Option(False, help="Replace an existing run in --out."),
    model_kw: Optional[list[str]] = typer.Option(None, "--model-kw", help="Model option key=value (repeatable)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per step, each in every rotation "
                                                               "(default from the model's recipe)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    train_images: Optional[int] = typer.Option(None, help="Pretrain on a subset of this many images."),
    val_fraction: Optional[float] = typer.Option(None, help="Share held out to measure rotation accuracy."),
    amp: Optional[str] = typer.Option(None, help="auto (bf16 where native), bf16, fp16 or off."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda[:N]."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (0 = torch default)."),
    img_size: Optional[str] = typer.Option(None, help="imagefolder: resize images to N×N."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Learn features without labels: RotNet trains the model to tell each image's rotation."""
    if method != "rotnet":
        raise ConfigError(f"unknown pretraining method {method!r}; choose rotnet")
    if rotations not in (2, 4):
        raise ConfigError(f"--rotations must be 2 (0/180°) or 4 (0/90/180/270°), got {rotations}")
    model_kwargs = parse_kv(model_kw)
    _check_early(model=model, model_kwargs=model_kwargs, device=device, amp=amp)
    from cnnkit.train.budget import parse_budget

    budget_s = parse_budget(budget)
    if budget_s is not None and epochs is not None:
        raise ConfigError("give --epochs or --budget, not both: a budget plans the epochs itself")
    from cnnkit.train import fit

    default_out = Path("runs") / f"{model.replace('/', '-')}-{data.split(':')[0]}-rotnet"
    options = dict(model=model, data=data, data_dir=str(data_dir) if data_dir else None, epochs=epochs,
                   budget=budget_s, out=str(out or default_out), model_kwargs=model_kwargs or None,
                   batch_size=batch_size, lr=lr, train_images=train_images, val_fraction=val_fraction, amp=amp,
                   seed=seed, device=device, threads=threads, img_size=parse_img_size(img_size),
                   pretext=method, rotations=rotations)
    if resume is not None:  # the saved run decides everything else (its model, data, rotations, recipe)
        options = {k: options[k] for k in ("epochs", "device", "threads", "data_dir")}
    result = fit(resume=resume, overwrite=overwrite, progress=not quiet, **options)
    last = result.history[-1]
    summary("pretrain", {"run": result.run_dir, "method": f"rotnet, {rotations} rotations", "model": model,
                         "data": data, "epochs": int(last["epoch"]), "rotation acc (train)": last["train_acc"],
                         "rotation acc (val)": result.best_val_acc if result.best_val_acc is not None else "n/a",
                         "seconds": f"{result.seconds:.1f}", "checkpoint": result.best_checkpoint})


def _lr_find(options: dict[str, Any], out: Path | None) -> None:
    from cnnkit.train import lr_find

    options.pop("out")
    _check_out_folder(out)
    r = lr_find(out=str(out) if out else None, **options)
    t = Table(title="learning-rate range test (Smith 2017)", title_justify="left")
    for col in ("lr", "smoothed loss"):
        t.add_column(col, justify="right")
    for i in range(0, len(r.lrs), max(1, len(r.lrs) // 12)):
        t.add_row(f"{r.lrs[i]:.2e}", f"{r.smoothed[i]:.3f}")
    stdout.print(t)
    summary("lr-find", {"steps": len(r.lrs), "loss lowest at lr": f"{r.min_loss_lr:.3g}",
                        "fastest fall at lr": f"{r.steepest:.3g}", "proposed": f"--lr {r.suggestion:.2g}",
                        "plot": (out / "lr_find.png") if out else "(give --out DIR to save lr_find.png and .csv)"})


# test-time adaptation, shared by eval and predict
_ADAPT_OPTION = typer.Option(None, help="Test-time adaptation of BatchNorm to the images, on a copy of the model: bn "
                                        "(the batch's statistics), alpha-bn (mixed with the source's by --alpha) or "
                                        "tent (entropy minimization).")
_ALPHA_OPTION = typer.Option(None, help="alpha-bn: weight of the batch's statistics, 0 (source) to 1 (bn); default 0.1.")
_TENT_LR_OPTION = typer.Option(1e-3, help="tent: Adam learning rate of the BatchNorm scales and shifts.")


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Option(..., help="Run directory (its best checkpoint) or a .safetensors file."),
    data: Optional[str] = typer.Option(None, help="Dataset to evaluate on (default: the checkpoint's own, with "
                                                  "the test split it held out)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    split: str = typer.Option("test", help="train, val (the images the run held out for validation: choose "
                                           "settings there) or test; a corruption benchmark corrupts test or val."),
    tta: bool = typer.Option(False, "--tta", help="Average with the horizontally flipped image."),
    out: Optional[Path] = typer.Option(None, help="Where to write the JSON and confusion matrix (default: the run)."),
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N]."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable image."),
    ignore_class_names: bool = typer.Option(False, "--ignore-class-names",
                                            help="Accept data whose classes are named differently from the "
                                                 "model's (same number, same order)."),
    amp: str = typer.Option("off", help="off (float32, exact), auto (bf16 only where the CPU or GPU computes it "
                                        "natively, as in train), bf16 or fp16."),
    adapt: Optional[str] = _ADAPT_OPTION,
    alpha: Optional[float] = _ALPHA_OPTION,
    tent_lr: float = _TENT_LR_OPTION,
    batch_size: int = typer.Option(512, min=1, help="Images per batch (what --adapt adapts to)."),
    images_per_cell: Optional[int] = typer.Option(None, min=1, help="Corruption benchmarks: evaluate this many "
                                                                    "images of each cell (stratified, seeded)."),
) -> None:
    """Evaluate a checkpoint: top-1/top-5, per-class precision/recall/F1, ECE, confusion matrix; on a corruption
    benchmark (fashion-mnist-c, mnist-c, cifar10-c, sample-c) the error per corruption and severity."""
    _check_out_folder(out)
    _check_early(device=device, checkpoint=checkpoint, amp=amp)
    from cnnkit.evaluate.adapt import check_adapt

    check_adapt(adapt, alpha, tent_lr)
    from cnnkit.data.corruptions import parse_benchmark
    from cnnkit.train import resolve_checkpoint

    out_dir = out or resolve_checkpoint(checkpoint).parent
    if data is not None and parse_benchmark(data) is not None:
        if split not in ("test", "val") or tta:
            raise ConfigError(f"{data.split(':')[0]} corrupts the test split (or, with --split val, the run's "
                              f"validation images): leave out --tta, and use --split test or val")
        _eval_corruptions(checkpoint, data, data_dir, out_dir, device, amp, adapt, alpha, tent_lr, batch_size,
                          images_per_cell, split)
        return
    if images_per_cell is not None:
        raise ConfigError("--images-per-cell applies to corruption benchmarks (e.g. --data fashion-mnist-c)")
    from cnnkit.evaluate import evaluate

    r = evaluate(checkpoint, data, split, data_dir=data_dir, tta=tta, device=device, out_dir=out_dir, strict=strict,
                 ignore_class_names=ignore_class_names, amp=amp, adapt=adapt, alpha=alpha, tent_lr=tent_lr,
                 batch_size=batch_size)
    m = r.metrics
    t = Table(title="per class", title_justify="left")
    for c in ("class", "precision", "recall", "F1", "support"):
        t.add_column(c, justify="left" if c == "class" else "right")
    for row in m["per_class"]:
        t.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                  str(row["support"]))
    stdout.print(t)
    summary("eval", {"checkpoint": m["checkpoint"], "data": m["data"], "split": m["split"], "images": m["images"],
                     **({"adapt": _adapt_words(m["adapt"])} if adapt else {}), "top-1": m["top1"],
                     "top-5": m["top5"], "macro F1": m["macro_f1"], "ECE": m["ece"],
                     "json": r.json_path, "confusion matrix": r.confusion_png})


def _adapt_words(record: dict[str, Any]) -> str:
    extra = {"alpha-bn": f", alpha {record.get('alpha')}", "tent": f", lr {record.get('lr')}"}.get(record["method"], "")
    return f"{record['method']} (batch {record['batch_size']}{extra})"


def _eval_corruptions(checkpoint: Path, data: str, data_dir: Optional[Path], out_dir: Path, device: str, amp: str,
                      adapt: Optional[str], alpha: Optional[float], tent_lr: float, batch_size: int,
                      images_per_cell: Optional[int], split: str) -> None:
    from cnnkit.evaluate import evaluate_corruptions

    r = evaluate_corruptions(checkpoint, data, data_dir=data_dir, batch_size=batch_size, device=device, amp=amp,
                             adapt=adapt, alpha=alpha, tent_lr=tent_lr, images_per_cell=images_per_cell,
                             out_dir=out_dir, split=split)
    severities = sorted({s for row in r.errors.values() for s in row})
    t = Table(title="top-1 error per corruption and severity", title_justify="left")
    t.add_column("corruption")
    for sev in severities:
        t.add_column(str(sev), justify="right")
    t.add_column("mean", justify="right")
    for corruption, row in r.errors.items():
        t.add_row(corruption, *(f"{row[sev]:.3f}" if sev in row else "" for sev in severities),
                  f"{sum(row.values()) / len(row):.3f}")
    stdout.print(t)
    m = r.metrics
    summary("eval", {"checkpoint": m["checkpoint"], "data": data,
                     "split": "val (the run's validation images)" if split == "val" else "test",
                     "images per cell": images_per_cell or "all",
                     "adapt": _adapt_words(m["adapt"]) if adapt else "none",
                     "clean error": f"{r.clean_error:.4f}",
                     "mean corruption error": f"{r.mean_corruption_error:.4f}", "json": r.json_path})


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files or folders."),
    checkpoint: Optional[Path] = typer.Option(None, help="Run directory (its best checkpoint), a .safetensors file "
                                                         "or an exported artifact (.onnx, .pt2, .ts)."),
    url: Optional[str] = typer.Option(None, help="Ask a running `cnnkit serve` instead: "
                                                 "http://HOST:PORT/v1/models/NAME (token from $CNNKIT_TOKEN)."),
    topk: int = typer.Option(3, min=1, help="How many classes to show per image."),
    tta: bool = typer.Option(False, "--tta", help="Average with the horizontally flipped image."),
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N]."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable image."),
    amp: str = typer.Option("off", help="off (float32, exact), auto (bf16 only where the CPU or GPU computes it "
                                        "natively, as in train), bf16 or fp16."),
    adapt: Optional[str] = _ADAPT_OPTION,
    alpha: Optional[float] = _ALPHA_OPTION,
    tent_lr: float = _TENT_LR_OPTION,
    batch_size: int = typer.Option(256, min=1, help="Images per batch (what --adapt adapts to), in the order given."),
) -> None:
    """Top-k classes for image files of any size and mode (here, or by a running service with --url)."""
    if (checkpoint is None) == (url is None):
        raise ConfigError("give --checkpoint RUN (predict here) or --url http://HOST:PORT/v1/models/NAME "
                          "(ask a running cnnkit serve), one of the two")
    if url is not None:
        local = [o for o, given in (("--tta", tta), ("--strict", strict), ("--device", device != "auto"),
                                    ("--amp", amp != "off"), ("--adapt", adapt is not None)) if given]
        if local:
            raise ConfigError(f"{', '.join(local)} set how predictions run here; with --url the service decides "
                              f"(start it with the options you want), so leave them out")
        rows = _predict_remote(url, inputs, topk)
        source = {"service": url}
    else:
        _check_early(device=device, amp=amp)
        from cnnkit.evaluate.adapt import check_adapt

        check_adapt(adapt, alpha, tent_lr)
        from cnnkit.evaluate import predict as predict_files

        preds = predict_files(checkpoint, inputs, topk=topk, tta=tta, device=device, strict=strict, amp=amp,
                              adapt=adapt, alpha=alpha, tent_lr=tent_lr, batch_size=batch_size)
        rows = [(str(p.path), p.top) for p in preds]
        source = {"checkpoint": checkpoint}
    t = Table(title="predictions", title_justify="left")
    t.add_column("image", overflow="fold")
    for i in range(max(len(top) for _, top in rows)):
        t.add_column(f"#{i + 1}")
    for name, top in rows:
        t.add_row(name, *(f"{c} {v:.1%}" for c, v in top))
    stdout.print(t)
    summary("predict", {"images": len(rows), **source})


def _predict_remote(url: str, inputs: list[Path], topk: int) -> list[tuple[str, list[tuple[str, float]]]]:
    """Predictions of a running service for image files (folders expanded), in requests of up to 32 images."""
    from cnnkit.data.images import list_image_files
    from cnnkit.serve.client import Client

    files = list_image_files(list(inputs))
    rows = []
    with Client(url) as client:
        for i in range(0, len(files), 32):
            part = files[i:i + 32]
            for f, p in zip(part, client.predict(part, topk)):
                rows.append((str(f), [(c["class"], c["probability"]) for c in p["top"]]))
    return rows


@app.command("explain")
def explain_cmd(
    inputs: list[Path] = typer.Argument(None, help="Image files or folders (or use --images)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Run directory (its best checkpoint) or a .safetensors file."),
    url: Optional[str] = typer.Option(None, help="Ask a running `cnnkit serve` instead: "
                                                 "http://HOST:PORT/v1/models/NAME; writes each overlay PNG to --out."),
    images: list[Path] = typer.Option(None, "--images", help="Image files or folders to explain."),
    method: Optional[str] = typer.Option(None, help="Comma-separated methods, or 'all': "
                                         "gradcam, gradcam++, smoothgradcam++, scorecam, eigencam, saliency, "
                                         "smoothgrad, integrated_gradients, guided_backprop, lrp "
                                         "(default: gradcam; with --benchmark: all)."),
    layer: str = typer.Option("auto", help="Layer for the CAM methods (default: the last stage)."),
    target: Optional[str] = typer.Option(None, help="Class to explain, by index or name (default: the prediction)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN/explain or RUN/explain-benchmark)."),
    benchmark: bool = typer.Option(False, "--benchmark", help="Run the methods on a localization test set and "
                                                              "write a table (CSV, Markdown, PNG)."),
    data: str = typer.Option("cluttered-fashion-mnist", help="With --benchmark: a dataset with boxes."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    limit: int = typer.Option(500, min=1, help="With --benchmark: how many test images."),
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N]."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable image."),
    ignore_class_names: bool = typer.Option(False, "--ignore-class-names",
                                            help="With --benchmark: accept data whose classes are named "
                                                 "differently from the model's (same number, same order)."),
) -> None:
    """Explain a checkpoint's decisions: a PNG per image with each method's map, and the maps' statistics."""
    _check_out_folder(out)
    if (checkpoint is None) == (url is None):
        raise ConfigError("give --checkpoint RUN (explain here) or --url http://HOST:PORT/v1/models/NAME "
                          "(ask a running cnnkit serve), one of the two")
    if url is not None:
        if benchmark or device != "auto" or strict:
            given = "--benchmark" if benchmark else "--device" if device != "auto" else "--strict"
            raise ConfigError(f"{given} applies to explaining here; give --checkpoint, not --url")
        _explain_remote(url, list(inputs or []) + list(images or []), method or "gradcam", layer, target, out)
        return
    from cnnkit.explain.run import benchmark_methods, explain_files

    _check_early(device=device)
    if benchmark:
        r = benchmark_methods(checkpoint, data, data_dir=data_dir, methods=method or "all",
                              limit=limit, out_dir=out, device=device, ignore_class_names=ignore_class_names)
        t = Table(title="explain benchmark", title_justify="left")
        for c in ("method", "images/s", "pointing", "IoU", "deletion", "insertion", "randomized ρ"):
            t.add_column(c, justify="left" if c == "method" else "right")
        from cnnkit.explain.run import COLUMNS, format_cell

        for row in r.rows:
            t.add_row(*(format_cell(row[c]) for c in COLUMNS))
        stdout.print(t)
        summary("explain --benchmark", {"csv": r.csv_path, "markdown": r.md_path, "chart": r.png_path})
        return
    files = list(inputs or []) + list(images or [])
    if not files:
        raise ConfigError("give image files or folders to explain (or --benchmark)")
    method = method or "gradcam"
    run = explain_files(checkpoint, files, method, layer=layer, target=target, out_dir=out, device=device,
                        strict=strict)
    t = Table(title="explanations", title_justify="left")
    for c in ("image", "predicted", "target", "png"):
        t.add_column(c, overflow="fold")
    for rec in run.records:
        t.add_row(rec["image"], f"{rec['predicted']} {rec['probability']:.1%}", rec["target"], rec["png"])
    stdout.print(t)
    summary("explain", {"images": len(run.records), "methods": method, "json": run.json_path, "folder": run.out_dir})


def _explain_remote(url: str, inputs: list[Path], methods: str, layer: str, target: str | None,
                    out: Path | None) -> None:
    """Explanations from a running service: an overlay PNG per image and method in --out, and a table."""
    import base64

    from cnnkit.artifacts import atomic_write_bytes, claim_dir
    from cnnkit.data.images import list_image_files
    from cnnkit.serve.client import Client

    if not inputs:
        raise ConfigError("give image files or folders to explain")
    files = list_image_files(inputs)
    folder = out or Path("explain-remote")
    t = Table(title="explanations (service)", title_justify="left")
    for c in ("image", "method", "layer", "predicted", "target", "png"):
        t.add_column(c, overflow="fold")
    with Client(url) as client:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        claim_dir(folder)
        for f in files:
            for m in names:
                r = client.explain(f, method=m, target=target, layer=layer)
                png = folder / f"{f.stem}-{m}.png"
                atomic_write_bytes(png, base64.b64decode(r["overlay_png"]))
                t.add_row(str(f), m, r["layer"], f"{r['predicted']['class']} {r['predicted']['probability']:.1%}",
                          r["target"]["class"], str(png))
    stdout.print(t)
    summary("explain", {"images": len(files), "methods": methods, "service": url, "folder": folder})


# the access options `serve` and `explore` share, declared once
TokenFileOption = Annotated[Optional[Path], typer.Option(help="Read the bearer token from this file (one line).")]
AllowOriginOption = Annotated[Optional[list[str]], typer.Option(
    help="Without a token, only requests to this server's own address or localhost, from its own pages, are "
         "answered (403 otherwise): also allow this origin, e.g. http://myhost:8000 (repeatable).")]


def _access(host: str, token: str | None, token_file: Path | None, allow_origin: list[str] | None):  # noqa: ANN202
    """The token (from --token, --token-file or $CNNKIT_TOKEN) and the allowed origins; warns on stderr when the
    token came on the command line, or when a non-loopback address has none."""
    from cnnkit.serve import is_loopback, parse_origins, resolve_token

    token, warning = resolve_token(token, token_file)
    origins = parse_origins(allow_origin)
    warnings_ = [warning] if warning else []
    if not is_loopback(host) and not token:
        warnings_.append(f"warning: --host {host} without a token: anyone who can reach it can use it")
    for line in warnings_:
        err.print(line, soft_wrap=True, markup=False, highlight=False)
    return token, origins


@app.command("serve")
def serve_cmd(
    artifacts: list[str] = typer.Argument(..., help="What to serve: run directories, checkpoints, .onnx, .pt2 or "
                                                    "int8 .ts files; NAME=PATH names one (default: the folder's "
                                                    "or file's name)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: a free one)."),
    max_batch: int = typer.Option(32, min=1, help="Most images in one forward pass (1 turns batching off)."),
    max_delay_ms: float = typer.Option(5.0, min=0, help="Longest wait for a batch to fill, in milliseconds."),
    max_queue: int = typer.Option(256, min=1, help="Images waiting per model; beyond, 503 with Retry-After."),
    timeout: float = typer.Option(30.0, min=0.01, help="Seconds a client has for each step of a request: to send "
                                                       "its headers (else it is disconnected), its body (408), to "
                                                       "be answered, queueing included (504); and the longest a "
                                                       "shutdown waits for requests in flight."),
    token: Optional[str] = typer.Option(None, help="Require Authorization: Bearer TOKEN. Prefer $CNNKIT_TOKEN or "
                                                   "--token-file: on the command line it shows in ps (a warning "
                                                   "says so)."),
    token_file: TokenFileOption = None,
    allow_origin: AllowOriginOption = None,
    max_connections: Optional[int] = typer.Option(None, min=1, help="Most open connections (default 1000, kept "
                                                                    "below ulimit -n); past it the one waiting "
                                                                    "longest for its headers is closed, or the "
                                                                    "new one gets 503."),
    max_body_mb: float = typer.Option(16.0, min=0.001, help="Largest request body in MB (413)."),
    max_pixels: int = typer.Option(40_000_000, min=1, help="Largest image in pixels, checked before decoding (413)."),
    max_images: int = typer.Option(64, min=1, help="Most images in one request (413)."),
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N]."),
    amp: str = typer.Option("off", help="off (float32), auto (bf16 where native), bf16 or fp16."),
) -> None:
    """Serve models over HTTP: predictions and explanations, batched, with health and Prometheus metrics."""
    _check_early(device=device, amp=amp)
    from cnnkit.serve import ServeOptions, bind, connection_limit, load_models, serve

    max_connections = connection_limit(max_connections)  # resolved once; one line now if it does not fit ulimit -n
    token, origins = _access(host, token, token_file, allow_origin)
    sock = bind(host, port)  # a taken port is one line now, not after the models have loaded
    models = load_models(artifacts, device, amp)
    options = ServeOptions(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue, timeout_s=timeout,
                           max_body_mb=max_body_mb, max_pixels=max_pixels, max_images=max_images, token=token,
                           allow_origins=origins, max_connections=max_connections)

    def ready(url: str) -> None:
        stdout.print(f"cnnkit serve: {', '.join(models)} at {url}/v1/models/NAME (API schema {url}/openapi.json; "
                     f"batches of up to {max_batch} images within {max_delay_ms:g} ms)", soft_wrap=True)

    serve(models, host, port, options, on_ready=ready, sock=sock)


@app.command("explore")
def explore_cmd(
    artifacts: list[str] = typer.Argument(..., help="Run directories or checkpoints to explore (NAME=PATH names "
                                                    "one); the page shows the first and lets you switch."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: a free one)."),
    export: Optional[Path] = typer.Option(None, help="Write a self-contained static site to this folder instead "
                                                     "of serving (one index.html: opens from file:// too)."),
    images: int = typer.Option(8, min=1, max=64, help="With --export: how many test images it holds."),
    token: Optional[str] = typer.Option(None, help="Require Authorization: Bearer TOKEN (open the page with "
                                                   "?token=). Prefer $CNNKIT_TOKEN or --token-file: on the "
                                                   "command line it shows in ps (a warning says so)."),
    token_file: TokenFileOption = None,
    allow_origin: AllowOriginOption = None,
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N]."),
) -> None:
    """A CNN Explainer for your model in the browser: every layer's activations, what each one computes, why
    this class, and a hyperparameter playground."""
    _check_early(device=device)
    from cnnkit.serve import ServeOptions, bind, load_models, serve

    if export is not None:
        from cnnkit.serve.explore import Explorer, export_site

        if len(artifacts) != 1:
            raise ConfigError("--export writes one model's site: give one artifact")
        m = next(iter(load_models(artifacts, device, measure_layout=False).values()))
        path = export_site(Explorer(m), export, images=images)
        summary("explore", {"site": path, "images": images, "size": f"{path.stat().st_size / 2**20:.1f} MB",
                            "open": f"{path.resolve().as_uri()} (or any static web server)"})
        return
    token, origins = _access(host, token, token_file, allow_origin)
    sock = bind(host, port)
    # the explorer's answers are one image at a time: no need to time memory layouts for batches first
    models = load_models(artifacts, device, measure_layout=False)
    closed = [n for n, m in models.items() if not m.explainable]
    if closed:
        raise ConfigError(f"{closed[0]!r} is an exported artifact; the explorer needs the run directory or "
                          f".safetensors checkpoint (what `cnnkit train` wrote)")

    def ready(url: str) -> None:
        stdout.print(f"cnnkit explore: open {url}/{f'?token={token}' if token else ''} (API schema "
                     f"{url}/openapi.json)", soft_wrap=True)

    serve(models, host, port, ServeOptions(token=token, allow_origins=origins), on_ready=ready, sock=sock)


@app.command("features")
def features_cmd(
    checkpoint: Path = typer.Option(..., help="Run directory (its best checkpoint) or a .safetensors file."),
    out: Path = typer.Option(..., help="The .safetensors file to write: one tensor per layer, and labels."),
    data: Optional[str] = typer.Option(None, help="Dataset (default: the checkpoint's own); its labels are saved."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    layer: str = typer.Option("blocks", help="blocks (the output of every block), a module name, or several, "
                                             "comma-separated."),
    pool: str = typer.Option("avg", help="avg or max (global, one value per channel), avg3 (a 3×3 grid of "
                                         "averages), or none (the maps)."),
    split: str = typer.Option("test", help="train or test."),
    limit: Optional[int] = typer.Option(None, min=1, help="A stratified subset of this many images."),
    batch_size: int = typer.Option(256, min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Frozen features of a network's layers, with the images' labels, in one safetensors file."""
    _check_early(device=device)
    if split not in ("train", "test"):
        raise ConfigError(f"--split must be train or test, got {split!r}")
    if pool not in ("avg", "max", "avg3", "none"):
        raise ConfigError(f"--pool must be avg, max, avg3 or none, got {pool!r}")
    from cnnkit.represent import features, save_features

    f = features(checkpoint, data, layer, pool, split, data_dir, batch_size, device, limit, progress=not quiet)
    path = save_features(f, out)
    summary("features", {"file": path, "images": len(f.labels), "data": f"{f.data} ({split})",
                         **{n: "×".join(map(str, t.shape[1:])) for n, t in f.layers.items()}})


@app.command("probe")
def probe_cmd(
    checkpoint: list[Path] = typer.Option(..., help="Run directory or .safetensors file (repeatable: a RotNet run "
                                                    "and a supervised one in one table)."),
    data: Optional[str] = typer.Option(None, help="Dataset to probe on (default: the first checkpoint's own)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    layer: str = typer.Option("blocks", help="blocks (every block), a module name, or several, comma-separated."),
    head: str = typer.Option("linear", help="linear, svm, knn, mlp or conv; several comma-separated."),
    pool: str = typer.Option("avg3", help="Pooling for linear, svm, knn and mlp: avg3 (a 3×3 grid of averages), "
                                          "avg or max (global), or none (the maps, flattened)."),
    train_images_per_class: Optional[int] = typer.Option(None, min=1, help="Train the probes on K images per class."),
    train_images: Optional[int] = typer.Option(None, min=1, help="Train the probes on a subset of this many."),
    test_images: Optional[int] = typer.Option(None, min=1, help="Score on a subset of this many test images."),
    random_init: bool = typer.Option(False, "--random-init", help="Add the first checkpoint's architecture at "
                                                                  "random initialization as a baseline."),
    pixels: bool = typer.Option(False, "--pixels", help="Add the heads on raw pixels as a baseline."),
    epochs: int = typer.Option(30, min=1, help="Epochs of the mlp and conv heads."),
    out: Optional[Path] = typer.Option(None, help="Folder for probe.json and probe.md."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    seed: int = typer.Option(0, help="Seed of the subsets and the heads."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """How good frozen features are: a classifier per layer on top of them, scored on the test split."""
    _check_early(device=device)
    _check_out_folder(out)
    from cnnkit.represent import probe

    heads = [h.strip() for h in head.split(",") if h.strip()]
    rows = probe([str(c) for c in checkpoint], data, layer, heads, pool, data_dir, train_images_per_class,
                 train_images, test_images, random_init, pixels, epochs, device, seed, out, progress=not quiet)
    t = Table(title="probes on frozen features (test accuracy)", title_justify="left")
    for col in ("source", "layer", "head", "test acc", "train acc", "dims"):
        t.add_column(col, justify="right" if col in ("test acc", "train acc", "dims") else "left")
    for r in rows:
        t.add_row(r.source, r.layer, r.head, f"{100 * r.test_acc:.2f}",
                  "—" if r.train_acc != r.train_acc else f"{100 * r.train_acc:.2f}", str(r.dims))
    stdout.print(t)
    if out is not None:
        summary("probe", {"table": out / "probe.md", "json": out / "probe.json"})


@app.command("soup")
def soup_cmd(
    runs: list[Path] = typer.Argument(..., help="Two or more run directories (their best checkpoint) or "
                                                ".safetensors files of one architecture, fine-tuned from one "
                                                "initialization."),
    method: str = typer.Option("greedy", help="greedy (the paper's recipe: add ingredients while the held-out "
                                              "accuracy does not drop), uniform (average all) or both: the "
                                              "checkpoints written; the table always shows both soups."),
    data: Optional[str] = typer.Option(None, help="Dataset (default: the ingredients' own): its validation split "
                                                  "that no ingredient trained on chooses the soup, its test split "
                                                  "scores it."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the soup checkpoints, soup.csv and soup.md "
                                                  "(default soups/<first run's name>)."),
    bn_images: int = typer.Option(10000, min=0, help="Training images (not held out) on which each soup's "
                                                     "BatchNorm statistics are measured again; 0 keeps the averaged "
                                                     "ones."),
    batch_size: int = typer.Option(512, min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines."),
) -> None:
    """Model soup: average the weights of runs fine-tuned from one checkpoint (uniform or greedy, Wortsman et al. 2022)."""
    if method not in ("greedy", "uniform", "both"):
        raise ConfigError(f"--method must be greedy, uniform or both, got {method!r}")
    _check_early(device=device)
    _check_out_folder(out)
    from cnnkit.represent import make_soup

    r = make_soup([str(p) for p in runs], method, data, data_dir, out, bn_images, device, batch_size,
                  progress=not quiet)
    n = sum(row.kind == "ingredient" for row in r.rows)
    t = Table(title=f"model soup ({r.data}: held-out and test accuracy)", title_justify="left")
    for col in ("ingredient / soup", "held-out acc", "test acc", "in greedy soup"):
        t.add_column(col, justify="left" if col in ("ingredient / soup", "in greedy soup") else "right")
    for row in r.rows:
        kept = ("yes" if row.kept else "no") if row.kept is not None else f"{len(row.ingredients)} of {n}"
        t.add_row(row.name, f"{100 * row.heldout_acc:.2f}", f"{100 * row.test_acc:.2f}", kept)
    stdout.print(t)
    summary("soup", {"held-out images": r.heldout_images, "BatchNorm images": r.bn_images or "not re-measured",
                     "greedy ingredients": ", ".join(r.kept),
                     **{f"{m} soup": r.paths[m] for m in ("greedy", "uniform") if m in r.paths},
                     "table": r.paths["md"], "csv": r.paths["csv"]})


@app.command("visualize")
def visualize_cmd(
    what: str = typer.Argument(..., help="class-models, activations, feature-maps or filters."),
    checkpoint: Path = typer.Option(..., help="Run directory (its best checkpoint) or a .safetensors file."),
    layer: str = typer.Option("auto", help="Layer for activations and feature-maps (default: the last stage)."),
    channels: str = typer.Option("0-7", help="Channels for activations, e.g. 0-7 or 1,5,9."),
    images: list[Path] = typer.Option(None, "--images", help="Image files for feature-maps (the first is shown)."),
    steps: int = typer.Option(200, min=1, help="Gradient-ascent steps for class-models and activations."),
    out: Optional[Path] = typer.Option(None, help="PNG to write (default: RUN/visualize-WHAT.png)."),
) -> None:
    """What the network has learnt: class-model images, activation maximization, feature maps, filters."""
    from cnnkit.explain.run import visualize

    path = visualize(checkpoint, what, layer=layer, channels=channels, images=images, steps=steps, out=out)
    summary("visualize", {"what": what, "png": path})


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., help="Run directory (its best checkpoint) or a .safetensors file."),
    out: Optional[Path] = typer.Option(None, help="The file to write (default: next to the checkpoint)."),
    format: str = typer.Option("onnx", "--format", help="onnx (checked in ONNX Runtime) or torch-export (.pt2)."),
    atol: Optional[float] = typer.Option(None, help="Largest output difference allowed against PyTorch "
                                                    "(default 1e-4 for ONNX, 1e-5 for torch.export)."),
    fold_bn: bool = typer.Option(True, help="Fold each BatchNorm that follows a convolution into it first."),
) -> None:
    """Export a checkpoint (dynamic batch) with its JSON sidecar, checked against PyTorch before writing."""
    from cnnkit.deploy import export_onnx, export_program

    if format not in ("onnx", "torch-export"):
        raise ConfigError(f"unknown export format {format!r}; choose onnx or torch-export")
    fn, default = (export_onnx, 1e-4) if format == "onnx" else (export_program, 1e-5)
    r = fn(checkpoint, out, atol=default if atol is None else atol, fold_bn=fold_bn)
    folded = json.loads(r.sidecar.read_text()).get("bn_folded", 0)
    summary("export", {format: r.path, "sidecar": r.sidecar, "BatchNorms folded": folded,
                       "max |artifact - torch|": f"{r.max_abs_diff:.2e}"})


@app.command("compress")
def compress_cmd(
    checkpoint: Path = typer.Option(..., help="Run directory (its best checkpoint) or a .safetensors file; only read."),
    recipe: list[str] = typer.Option(..., help="int8, qat8, qat4, prune:R, prune:R+int8 or sparse:R "
                                               "(R: fraction of MACs, or of weights for sparse); repeatable."),
    out: Path = typer.Option(..., help="Folder for the artifacts, compress.json, report.html and pareto.png."),
    data: Optional[str] = typer.Option(None, help="Calibration, fine-tuning and test data (default: the "
                                                  "checkpoint's dataset)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    calibration: int = typer.Option(512, min=1, help="Training images used to calibrate int8 activations."),
    observer: str = typer.Option("mse", help="Activation calibration: minmax, percentile or mse "
                                             "(MSE histogram search in PyTorch, entropy in ONNX Runtime)."),
    engine: str = typer.Option("x86", help="PyTorch int8 engine: x86, fbgemm, onednn or qnnpack."),
    finetune_epochs: float = typer.Option(1.0, min=0.0, help="Fine-tuning epochs for qat*, prune and sparse."),
    lr: Optional[float] = typer.Option(None, help="Fine-tuning learning rate (default 1e-3 QAT, 1e-2 otherwise)."),
    criterion: str = typer.Option("l1", help="Pruning criterion: l1, bn, taylor, lamp or lasso."),
    scope: str = typer.Option("uniform", help="Pruning scope: uniform (per layer) or global."),
    rounds: int = typer.Option(1, min=1, help="Prune-then-fine-tune rounds."),
    round_to: Optional[int] = typer.Option(None, min=1, help="Keep pruned channel counts multiples of this "
                                                            "(8 or 16 suit AVX2/AVX-512 kernels)."),
    distill: bool = typer.Option(False, "--distill", help="Distil from the uncompressed model while fine-tuning."),
    rewind: Optional[Path] = typer.Option(None, help="sparse: rewind the masked weights to this early checkpoint "
                                                     "(lottery ticket); default: the trained weights."),
    train_images: Optional[int] = typer.Option(None, min=1, help="Fine-tune on this many training images."),
    repeats: int = typer.Option(30, min=3, help="Timed batch-1 runs per variant."),
    onnx: bool = typer.Option(True, help="Also write float and int8 ONNX models (ONNX Runtime)."),
    ignore_class_names: bool = typer.Option(False, "--ignore-class-names",
                                            help="Accept data whose classes are named differently from the "
                                                 "model's (same number, same order)."),
) -> None:
    """Quantize and prune a checkpoint; write the artifacts and an HTML report measuring every variant."""
    from cnnkit.compress import compress

    r = compress(checkpoint, recipe, out, data=data, data_dir=data_dir, calibration=calibration, observer=observer,
                 engine=engine, finetune_epochs=finetune_epochs, lr=lr, criterion=criterion, scope=scope,
                 rounds=rounds, round_to=round_to, distill=distill, rewind=rewind, train_images=train_images, repeats=repeats,
                 onnx=onnx, log=lambda m: err.print(m), ignore_class_names=ignore_class_names)
    t = Table(title="compress", title_justify="left")
    for c in ("variant", "runtime", "file", "top-1", "Δ pts", "KiB", "p50 ms", "img/s"):
        t.add_column(c, justify="left" if c in ("variant", "runtime", "file") else "right")
    for row in r.rows:
        t.add_row(row["variant"], row["runtime"], row["file"], f"{100 * row['top1']:.2f}", f"{row['top1_delta_pts']:+.2f}",
                  f"{row['file_bytes'] / 1024:.0f}", f"{row['latency_ms_p50']:.2f}", f"{row['images_per_s']:.0f}")
    stdout.print(t)
    summary("compress", {"report": r.html_path, "json": r.json_path, "pareto": r.png_path})


@app.command("bench")
def bench_cmd(
    targets: list[Path] = typer.Argument(..., help="Run directories, checkpoints, .onnx or .pt2 artifacts."),
    data: Optional[str] = typer.Option(None, help="Also measure top-1 on this dataset's test split."),
    data_dir: Optional[Path] = typer.Option(None, help="Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data)."),
    batch: int = typer.Option(64, min=1, help="Batch size of the throughput measurement."),
    repeats: int = typer.Option(30, min=3, help="Timed runs at batch 1 (after warm-up)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the measurements as JSON."),
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N]; int8 and "
                                            ".onnx artifacts run on the CPU."),
    amp: str = typer.Option("off", help="off (float32), auto (bf16 only where the CPU or GPU computes it natively, "
                                        "as in train), bf16 or fp16; PyTorch models only."),
) -> None:
    """Parameters, MACs, file size, latency p50/p99 at batch 1, throughput, peak memory, accuracy."""
    import json

    from cnnkit.deploy.bench import bench_many
    from cnnkit.artifacts import atomic_write_text

    if json_out is not None and json_out.is_dir():  # before minutes of measuring
        raise ConfigError(f"--json {json_out} is a folder; give the JSON file to write, e.g. {json_out / 'bench.json'}")
    if json_out is not None:
        from cnnkit.artifacts.files import check_writable

        check_writable([json_out], "--json")  # a file cnnkit did not write, the file-system root: refused now
    _check_early(device=device, amp=amp)
    rows = bench_many(targets, data, data_dir=data_dir, batch=batch, repeats=repeats, device=device, amp=amp)
    where = ", ".join(sorted({f"{r['device']} {r['precision']}" for r in rows}))
    t = Table(title=f"bench ({where}; {rows[0]['torch_threads']} torch threads)", title_justify="left")
    cols = ["target", "params", "MMACs", "MB on disk", "p50 ms", "p99 ms", f"img/s @{batch}", "peak RSS MiB", "model MiB"]
    cols += ["top-1"] if data else []
    for c in cols:
        t.add_column(c, justify="left" if c == "target" else "right", overflow="fold")
    for r in rows:
        cells = [r["target"], f"{r['params']:,}", "–" if r["macs"] is None else f"{r['macs'] / 1e6:.1f}",
                 f"{r['file_bytes'] / 1e6:.2f}", f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}",
                 f"{r['images_per_s']:.0f}",
                 *("–" if r[k] is None else f"{r[k]:.0f}" for k in ("peak_rss_mib", "model_rss_mib"))]
        t.add_row(*cells, *([f"{r['top1']:.4f}"] if data else []))
    stdout.print(t)
    if json_out:
        from cnnkit.artifacts import claim_dir

        claim_dir(json_out.parent, option="--json")  # replace only a file cnnkit wrote
        atomic_write_text(json_out, json.dumps(rows, indent=2) + "\n")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory for the demo."),
    budget: str = typer.Option("40s", help="Training time, planned for this machine (the whole demo takes about "
                                           "15 s more: start-up, test evaluation and the report)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Train this many epochs instead of to --budget."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train the default model on the bundled Fashion-MNIST sample, evaluate it and write an HTML report."""
    from cnnkit.train.budget import parse_budget

    _check_out_folder(out)
    length = {"epochs": epochs} if epochs is not None else {"budget": parse_budget(budget)}
    from cnnkit.evaluate import evaluate
    from cnnkit.report.run_report import write_run_report
    from cnnkit.train import fit

    # on stdout: stderr carries nothing but the one error line should the run fail (an --out cnnkit cannot use)
    how = f"for {epochs} epochs" if epochs is not None else f"for {budget} of training"
    stdout.print(f"cnnkit demo: training the default model on the bundled Fashion-MNIST sample {how}", soft_wrap=True)
    result = fit(data="sample", recipe="fast", out=str(out), overwrite=True, progress=not quiet, **length)
    ev = evaluate(result.best_checkpoint, "sample", "test", out_dir=result.run_dir)
    report = write_run_report(result, ev)
    summary("demo", {"model": result.config.model, "train/val images": f"{result.train_images}/{result.val_images}",
                     "test top-1": ev.metrics["top1"], "seconds": f"{result.seconds:.1f}", "report": report})
    print(report.resolve())


@models_app.command("list")
def models_list(
    pattern: Optional[str] = typer.Argument(None, help="Shell-style pattern or substring."),
    timm: bool = typer.Option(False, "--timm", help="Include every timm model (as timm/<name>)."),
) -> None:
    """Registered model names."""
    from cnnkit.models import get_entry, list_models

    names = list_models(pattern, include_timm=timm)
    rows = [(n, "timm", "", "") if n.startswith("timm/") else
            (n, get_entry(n).family, get_entry(n).default_input, get_entry(n).paper) for n in names]
    if not stdout.is_terminal:  # for pipes and files: plain lines, tab-separated, nothing cut or wrapped
        sys.stdout.write("".join("\t".join(r).rstrip("\t") + "\n" for r in rows))
        return
    t = Table(title="models", title_justify="left")
    for c in ("name", "family", "input", "paper"):
        t.add_column(c)
    for n, family, size, paper in rows:
        t.add_row(n, family, size.replace("x", "×"), paper)
    stdout.print(t)
    summary("models", {"listed": len(names)})


@models_app.command("info")
def models_info(
    name: str = typer.Argument(..., help="Model name (see `cnnkit models list`)."),
    input: Optional[str] = typer.Option(None, "--input", help="Input C×H×W, e.g. 1x28x28 (default: the model's)."),
    classes: int = typer.Option(10, min=1, help="Number of classes of the head."),
    model_kw: Optional[list[str]] = typer.Option(None, "--model-kw", help="Model option key=value (repeatable)."),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="Measure CPU latency and throughput."),
    json_out: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """A model card: parameters, MACs, activation memory, per-stage shapes, options and measured CPU speed."""
    import json

    from cnnkit.models.card import model_card

    from cnnkit.train.recipes import family_recipe

    card = model_card(name, input, classes, timing, **parse_kv(model_kw))
    recipe = family_recipe(name, card.family)
    recipe_info = {"name": recipe.name, "settings": recipe.settings, "paper": recipe.paper, "scaled": recipe.scaled}
    if json_out:
        stdout.print_json(json.dumps({**card.to_dict(), "recipe": recipe_info}))
        return
    c, h, w = card.input
    rows = {"model": card.name, "family": card.family, "paper": card.paper or "-", "input": f"{c}×{h}×{w}",
            "classes": card.num_classes, "parameters": f"{card.params:,} ({card.params / 1e6:.2f} M)",
            "MACs": f"{card.macs:,} ({card.macs / 1e6:.1f} M)",
            "activation memory": f"{card.activation_bytes / 2**20:.2f} MiB (sum of layer outputs, batch 1, fp32)"}
    if card.latency_ms is not None:
        rows["latency, batch 1"] = f"{card.latency_ms:.2f} ms (fp32, {card.threads} threads, median)"
        rows["throughput, batch 64"] = f"{card.throughput:,.0f} images/s (fp32, {card.threads} threads, median)"
    summary("model", rows)
    summary(f"default training recipe ({recipe.name} family; `cnnkit train --model {name}`)",
            {"settings": recipe.describe(), "paper": recipe.paper, "scaled to short runs": recipe.scaled})
    t = Table(title="stages", title_justify="left")
    for col in ("module", "output C×H×W"):
        t.add_column(col)
    for n, shape in card.stages:
        t.add_row(n, "×".join(str(s) for s in shape))
    stdout.print(t)
    if card.options:
        t = Table(title="options (--model-kw key=value)", title_justify="left")
        t.add_column("option")
        t.add_column("meaning", overflow="fold")
        for o, doc in card.options.items():
            t.add_row(o, doc)
        stdout.print(t)


@data_app.command("shard")
def data_shard(
    source: str = typer.Argument(..., help="The images: imagefolder:<dir>."),
    out: Path = typer.Option(..., help="Folder for the shards and manifest.json: new, or one "
                                       "`cnnkit data shard` wrote."),
    shard_size: str = typer.Option("1GiB", help="Largest shard file: e.g. 500MB, 1GB, 64KiB or bytes (KB, MB, GB: "
                                                "powers of 1000; KiB, MiB, GiB: of 1024)."),
    val_fraction: float = typer.Option(0.1, help="Fraction of each class of the train split held out as val."),
    split_seed: int = typer.Option(0, help="Seed of the test and val splits and of the order samples are written in."),
    test_fraction: float = typer.Option(0.2, help="Fraction of each class held out as test (a flat folder only)."),
    img_size: Optional[str] = typer.Option(None, "--img-size", help="Size images are decoded to: N or HxW "
                                                                     "(default: their own when shared, else 64)."),
    overwrite: bool = typer.Option(False, help="Replace the shards an earlier `cnnkit data shard` wrote in --out."),
) -> None:
    """Write an image folder as WebDataset tar shards (train, val, test) and their manifest.json."""
    from cnnkit.data.shards import MANIFEST_NAME, parse_size, write_shards

    size = parse_size(shard_size)
    _check_out_folder(out)
    manifest = write_shards(source, out, size, val_fraction, split_seed, test_fraction, parse_img_size(img_size),
                            overwrite=overwrite)
    rows: dict[str, Any] = {}
    for split, entry in manifest["splits"].items():
        rows[split] = (f"{entry['images']} images in {len(entry['shards'])} shard(s), "
                       f"{entry['bytes'] / 2**20:.1f} MiB")
    rows["skipped"] = f"{manifest['skipped']} unreadable image(s)"
    rows["manifest"] = str(out / MANIFEST_NAME)
    summary("shards", rows)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
_ARGV: list[str] = []  # the command line `main` runs


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs a verb; user errors print one line and return non-zero (tracebacks with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("CNNKIT_DEBUG") == "1"
    trust = "--trust-torchscript" in args
    args = [a for a in args if a not in ("--debug", "--trust-torchscript")]
    global _ARGV
    # what `--nproc` starts again on each process
    _ARGV = list(args) + (["--debug"] if debug else []) + (["--trust-torchscript"] if trust else [])
    if not debug:
        warnings.showwarning = _show_warning
        # int8 models are TorchScript by design (PyTorch's int8 kernels have no other saved form); torch's
        # notice about that is nothing a user can act on
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit should fail the write (one line), not kill the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous = _catch_stop_signals()
    try:
        from cnnkit.artifacts.trust import trusting_torchscript
        from cnnkit.runtime import exclusive_threads, reuse_freed_memory

        # one command at a time: cnnkit may tune torch's thread count, and keeps the memory each batch frees for
        # the next batch (a command's process is cnnkit's own)
        with exclusive_threads(), reuse_freed_memory(), (trusting_torchscript() if trust else _no_context()):
            code = app(args=args, prog_name="cnnkit", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
        # typer turns a KeyboardInterrupt raised outside cnnkit's handler into a returned 130
        return code if isinstance(code, int) and not isinstance(code, bool) else 0
    except StopSignal as e:
        err.print(_interrupted_line(e.signum), highlight=False, markup=False, soft_wrap=True)
        return 128 + e.signum
    except OSError as e:
        if debug or e.errno not in _DISK_ERRNOS:
            raise
        name = f" {e.filename}" if e.filename else ""
        _print_error(f"cannot write{name}: {os.strerror(e.errno)}; free space or raise the limit, then "
                     f"--resume a training run (its last complete checkpoint is kept)")
        return 2
    except CnnkitError as e:
        if debug:
            raise
        if str(e) and os.environ.get("RANK", "0") == "0":  # under torchrun every rank meets the same
            _print_error(str(e))  # mistake: rank 0 says it
        return e.exit_code
    except typer.Exit as e:  # --help and friends
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err.print(_interrupted_line(signal.SIGINT), highlight=False, markup=False, soft_wrap=True)
        return 130
    except BrokenPipeError:  # the reader went away (`cnnkit models list | head -1`): stop quietly
        _silence_stdout()
        return 0
    except SystemExit as e:  # typer turns a closed pipe into exit status 1 even outside standalone mode
        if isinstance(e.__context__, BrokenPipeError):
            _silence_stdout()
            return 0
        raise
    except TyperException as e:  # a usage error from the argument parser: one line and where to look
        if type(e).__name__ == "NoArgsIsHelpError":  # `cnnkit` or `cnnkit models` alone: the help
            e.show()
            return e.exit_code
        ctx = getattr(e, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else " (see cnnkit --help)"
        _print_error(e.format_message() + where)
        return 2
    except Exception as e:  # anything else is a bug: one line, the traceback only with --debug
        if debug:
            raise
        _print_error(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        return 1
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class StopSignal(BaseException):
    """SIGINT or SIGTERM arrived: unwinds the command (a BaseException, so that no `except Exception` on the way
    swallows it, and not KeyboardInterrupt, which typer turns into a return value)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


_COMMAND_PID: int | None = None  # the process `main` runs in (forked workers inherit the handler, not the role)


def _raise_stop(signum: int, _frame: object) -> None:
    if os.getpid() == _COMMAND_PID:
        raise StopSignal(signum)
    # a forked worker (DataLoader's): what it would have done without cnnkit's handler. Its loop ends quietly on
    # KeyboardInterrupt (Ctrl-C reaches the whole process group); SIGTERM ends it as the signal does
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _catch_stop_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM end the command with 128 + the signal's number and one line (the main thread only;
    `cnnkit serve` sets its own handlers while it serves, and stops cleanly)."""
    import threading

    global _COMMAND_PID
    if threading.current_thread() is not threading.main_thread():
        return {}
    _COMMAND_PID = os.getpid()
    return {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}


def _interrupted_line(signum: int) -> str:
    """The one line a stopped command prints: what stopped it and, for training, how to continue."""
    name = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    if _ARGV[:1] not in (["train"], ["distill"], ["pretrain"]):
        return name
    run = next((_ARGV[i + 1] for i, a in enumerate(_ARGV[:-1]) if a in ("--out", "--resume")), "RUN_DIR")
    return f"{name}; the last completed epoch's checkpoint is kept (continue with: cnnkit {_ARGV[0]} --resume {run})"


@contextlib.contextmanager
def _no_context():
    yield


def _print_error(message: str) -> None:
    """`error: MESSAGE` on one line of stderr, the message shown literally (no rich markup)."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    err.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush into a closed pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests capture it)
        pass


def entry() -> None:
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.exit(code)
