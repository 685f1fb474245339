"""The training loop: `fit(**options)` trains a model into a run directory and returns a FitResult.

`fit` reads top to bottom as its phases: resolve the configuration, set up (data, model, optimizer, run
directory, restored state), then for each epoch train, evaluate and checkpoint. Every file of the run is
written atomically into a claimed run directory, which records what cnnkit wrote there and is locked
while the run lasts; a run killed at any moment resumes from its last complete epoch.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from cnnkit.artifacts import (OutputDir, RunLock, atomic_write_text, claim_dir, load_state_into, read_meta,
                              repair_sidecar, save_checkpoint)
from cnnkit.artifacts.files import TENSORBOARD_EVENTS, check_out_dir
from cnnkit.data import (BatchLoader, ImageData, Normalize, channel_stats, load_dataset, per_class_subset,
                         train_val_split)
from cnnkit.errors import CheckpointError, ConfigError, TrainingDiverged
from cnnkit.evaluate.loop import evaluate_loader
from cnnkit.models import create
from cnnkit.models.layers import MultiSampleDropout, ScheduledDropBlock
from cnnkit.models.weights import load_pretrained
from cnnkit.runtime import autocast, autocast_dtype, pick_device, reuse_freed_memory, seed_everything, set_threads
from cnnkit.train.config import LONG_RECIPE_MIN_EPOCHS, TrainConfig, resolve_config
from cnnkit.train.distributed import (Ranks, all_sum, average_gradients, barrier, broadcast, convert_sync_batchnorm,
                                      elastic_restart, init_ranks, launched_by_torchrun, leave)
from cnnkit.train.pretext import ROTATION_NAMES, rotate_batch
from cnnkit.train.progress import TrainProgress
from cnnkit.train.state import load_train_state, save_train_state

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                 "elapsed_seconds", "images_per_s"]
# What `resume` may change: the length of the run, where it runs, and where the data now lives.
RESUME_MAY_CHANGE = {"epochs", "device", "threads", "early_stopping", "data_dir", "data", "data_mode", "workers",
                     "checkpoint_every"}


@dataclass
class FitResult:
    """What a run produced."""

    run_dir: Path
    config: TrainConfig
    history: list[dict[str, float]]
    best_checkpoint: Path
    last_checkpoint: Path
    best_val_acc: float | None
    stopped_early: bool = False
    seconds: float = 0.0
    train_images: int = 0
    val_images: int = 0


@dataclass
class EpochEnd:
    """Handed to callbacks after each epoch; raise KeyboardInterrupt in a callback to stop the run there."""

    epoch: int
    metrics: dict[str, float]
    model: nn.Module
    eval_model: nn.Module
    normalize: Normalize
    device: torch.device
    run_dir: Path


def fit(config: TrainConfig | dict[str, Any] | None = None, *, resume: str | Path | None = None,
        overwrite: bool = False, progress: bool = True,
        callbacks: Sequence[Callable[[EpochEnd], None]] = (), **options: Any) -> FitResult:
    """Train `model` on `data` as the config says; `resume=RUN_DIR` continues a run exactly where it stopped.

    Options are TrainConfig fields (e.g. `fit(model="resnet20", data="sample", epochs=5)`); an explicitly
    given option wins over the recipe, which wins over the defaults. `overwrite=True` replaces a run in
    `out`, deleting only the files cnnkit wrote there.
    """
    started = time.perf_counter()
    out = options.get("out") or (config.out if isinstance(config, TrainConfig) else (config or {}).get("out"))
    if resume is None and elastic_restart() and out and _holds_run(Path(out).expanduser()):
        # torchrun restarted the workers after one failed: continue the run from its last saved step
        resume, overwrite, config, options = out, False, None, {}
    cfg = _resolve(config, resume, options)
    run = _Run(cfg, resume is not None, overwrite, progress, budget_clock())
    run.fit_started = started
    try:
        with reuse_freed_memory() as run.reuses_memory:  # the steps' tensors reuse the previous steps' memory
            _train(run, started, callbacks)
    finally:
        run.close()
    return run.result(time.perf_counter() - started)


def _train(run: _Run, started: float, callbacks: Sequence[Callable[[EpochEnd], None]]) -> None:
    """Set the run up and train its epochs (evaluating, checkpointing and keeping to a budget after each)."""
    run.set_up()
    with run.bar:
        epoch = run.start_epoch - 1
        while (epoch := epoch + 1) < run.epochs:  # a budget's run may shorten itself as it goes
            metrics = run.train_epoch(epoch)
            metrics.update(run.evaluate())
            metrics["epoch_seconds"] = time.perf_counter() - run.epoch_started
            metrics["elapsed_seconds"] = run.elapsed_before + time.perf_counter() - started
            run.checkpoint(epoch, metrics)
            run.bar.end_epoch(metrics)
            for cb in callbacks:
                cb(EpochEnd(epoch + 1, metrics, run.model, run.eval_model, run.normalize, run.device, run.dir))
            run.keep_to_budget(epoch)
            if run.should_stop():
                run.stopped_early = True
                break


def _holds_run(folder: Path) -> bool:
    return (folder / "last.safetensors").exists() or (folder / "config.yaml").exists()


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else path


def _absolute_data(data: str) -> str:
    for kind in ("imagefolder:", "webdataset:"):
        if data.startswith(kind):
            return kind + _absolute(data.split(":", 1)[1])
    return data


def _resolve(config: TrainConfig | dict[str, Any] | None, resume: str | Path | None,
             options: dict[str, Any]) -> TrainConfig:
    """The run's configuration: a new one from the options, or the saved one of the run to resume."""
    for key in ("out", "data_dir", "init_from"):  # stored absolute, so a run resumes from any folder
        if options.get(key) is not None:
            options[key] = _absolute(str(options[key]))
    if options.get("data"):
        options["data"] = _absolute_data(options["data"])
    if options.get("teachers"):
        options["teachers"] = [_absolute(str(t)) for t in options["teachers"]]
    if resume is None:
        if isinstance(config, TrainConfig):
            cfg = resolve_config(options, base=config) if options else config
        else:
            cfg = resolve_config({**(config or {}), **options})
        for key in ("out", "data_dir", "init_from"):
            setattr(cfg, key, _absolute(getattr(cfg, key)))
        cfg.data = _absolute_data(cfg.data)
        cfg.teachers = [_absolute(t) for t in cfg.teachers]
        return cfg
    run_dir = Path(resume).expanduser()
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a run directory")
    last, config_file = run_dir / "last.safetensors", run_dir / "config.yaml"
    if last.exists():
        saved = read_meta(last)["config"]
    elif config_file.exists():  # stopped before its first epoch ended: start it again from its config
        try:
            saved = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError:
            saved = None
        if not isinstance(saved, dict):
            raise CheckpointError(f"cannot resume: {config_file} is damaged; start a new run")
        saved.pop("chosen", None)  # what auto settled on last time: decided afresh
    else:
        raise CheckpointError(f"cannot resume: {last} does not exist (nor {config_file.name})")
    changed = sorted(k for k, v in options.items() if v is not None and k not in RESUME_MAY_CHANGE
                     and k != "out" and saved.get(k) != v)
    if changed:
        raise ConfigError(f"resuming continues the saved configuration; cannot change: {', '.join(changed)}")
    if "data" in options and options["data"] and options["data"] != saved["data"] and not (
            options["data"].startswith("imagefolder:") and saved["data"].startswith("imagefolder:")):
        raise ConfigError(f"resuming continues the saved configuration; cannot change data from "
                          f"{saved['data']} to {options['data']} (only an image folder's path may move)")
    given = {k: v for k, v in options.items() if v is not None and k in RESUME_MAY_CHANGE}
    if "epochs" in given and saved.get("max_steps"):  # a new length replaces a budget's plan
        given["max_steps"] = None
    folder = given.get("data", saved["data"])
    if folder.startswith("imagefolder:") and not Path(folder.split(":", 1)[1]).is_dir():
        raise ConfigError(f"the run's image folder {folder.split(':', 1)[1]} is gone; if it moved, re-point it: "
                          f"--resume {run_dir} --data imagefolder:NEW_PATH")
    if "data_dir" not in given and saved.get("data_dir") and not Path(saved["data_dir"]).exists():
        given["data_dir"] = None  # the saved folder is gone: fall back to $CNNKIT_DATA or the cache
    return TrainConfig.from_dict({**saved, **given, "out": str(run_dir.absolute())})  # the run may have moved


def _default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<model>-<data>, or -2, -3, ... so that a default name never lands on an existing run."""
    name = f"{cfg.model.replace('/', '-')}-{cfg.data.split(':')[0]}"
    base = run = Path("runs") / name
    i = 2
    while (run / "last.safetensors").exists() or (run / "config.yaml").exists():
        run, i = base.with_name(f"{base.name}-{i}"), i + 1
    return run


# the names a run writes in its folder (TensorBoard's event files aside, in tb/)
_RUN_FILE = re.compile(r"config\.yaml|metrics\.csv|(best|last|epoch-\d{4,})\.(safetensors|json)"
                       r"|state-e\d{4,}(-s\d{7,})?\.safetensors")


def check_run_dir(run: Path, resume: bool, overwrite: bool) -> None:
    """Every refusal of open_run_dir, made without writing anything: a refused run leaves the folder as it was."""
    if (run.exists() or run.is_symlink()) and not run.is_dir():
        raise ConfigError(f"--out {run} is a file; give a folder for the run")
    replace = _holds_run(run) and not resume
    if replace and not overwrite:
        raise ConfigError(f"{run} already holds a run; continue it (--resume {run}), replace it "
                          f"(--overwrite) or choose another output folder")
    check_out_dir(run, overwrite=replace)  # replaced: nothing but cnnkit's files there, and not a protected folder
    if run.is_dir() and not replace:  # a new run beside other files, or a resumed one: none it writes is theirs
        out = OutputDir.of(run)
        out.check_free(sorted(p for p in run.iterdir() if _RUN_FILE.fullmatch(p.name)))
        out.check_library_files(run / "tb", TENSORBOARD_EVENTS)


def open_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> tuple[Path, OutputDir, RunLock]:
    """Claim and lock the run directory; with `overwrite`, remove the previous run's files (only cnnkit's)."""
    run = Path(cfg.out).expanduser() if cfg.out else _default_run_dir(cfg)
    check_run_dir(run, resume, overwrite)
    out = claim_dir(run)
    lock = RunLock(run).acquire()
    try:
        check_run_dir(run, resume, overwrite)  # again, now that no other run can change the folder
        if _holds_run(run) and not resume:
            out = claim_dir(run, overwrite=True)
    except BaseException:
        lock.release(remove=lock.created)
        raise
    return run, out, lock


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimizer (timm's), weight decay on weights only (never on norms and biases)."""
    opt = {"sgd": "nesterov", "adamw": "adamw", "rmsprop": "rmsproptf"}[cfg.optimizer]
    extra = {"eps": cfg.opt_eps} if cfg.opt_eps is not None else {}
    return create_optimizer_v2(model, opt=opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               filter_bias_and_bn=True, **extra)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: one-cycle (warm-up = its rising phase) or linear warm-up then cosine decay."""
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total_steps // 2)
    if total_steps < 4:  # too short to shape: constant learning rate
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=max(warmup, 2) / total_steps,  # >= 2 steps:
            # with one, torch's OneCycleLR divides by a zero-length warm-up phase
            anneal_strategy="linear", cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
    sched = torch.optim.lr_scheduler
    cosine = sched.CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup, 1), eta_min=cfg.lr * 1e-3)
    if warmup == 0:
        return cosine
    linear = sched.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def _checkpoint_meta(cfg: TrainConfig, data: ImageData, fingerprint: str, mean: Sequence[float],
                     std: Sequence[float], epoch: int, metrics: dict[str, float], ema: bool) -> dict[str, Any]:
    return {
        "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": data.classes,
        "in_chans": data.in_chans, "img_size": list(data.img_size),
        "normalization": {"mean": list(mean), "std": list(std)},
        "dataset": {"name": cfg.data, "fingerprint": fingerprint, "train_images": len(data),
                    "test_fraction": cfg.test_fraction, "split_seed": cfg.data_split_seed},
        "epoch": epoch, "metrics": metrics, "ema_weights": ema, "config": cfg.to_dict(),
    }


def metrics_csv(history: list[dict[str, float]]) -> str:
    """The run's metrics.csv: a header and one row per finished epoch."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def budget_clock() -> float:
    """The clock a budget is counted on (a function of its own so that tests can run it fake)."""
    return time.perf_counter()


def measure_pace(run: "_Run", min_steps: int = 4, max_steps: int = 30) -> tuple[float, float]:
    """Seconds per training step, and per validation pass plus checkpoint, of this run on this machine,
    measured on a copy of its model and optimizer with its own batches (the run's weights and random state
    are left as they were). Steps are timed after two warm-up steps, for about 2% of the budget."""
    import copy
    import random

    import numpy as np

    cfg = run.cfg
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    model = copy.deepcopy(run.model).train()
    optimizer = build_optimizer(model, cfg)
    stepper = torch.compile(model) if cfg.compile else model
    run.train_loader.set_epoch(0)
    times: list[float] = []
    deadline = time.perf_counter() + 0.02 * (cfg.budget or 0)
    for i, (x, y) in enumerate(run.train_loader):
        t = time.perf_counter()
        if cfg.pretext:
            x, y = rotate_batch(x, cfg.rotations)
        with autocast(run.device, run.amp):
            logits = stepper(x)
        if run.distiller is not None:  # a distillation step runs its teachers too
            loss = run.distiller.loss(x, logits, y)
        else:
            loss = F.cross_entropy(logits.float(), y if y.ndim == 1 else y.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())  # wait for the device
        if i >= 2:
            times.append(time.perf_counter() - t)
        if len(times) >= max_steps or (len(times) >= min_steps and time.perf_counter() > deadline):
            break
    if not times:  # an epoch shorter than the warm-up: time what there was
        times = [time.perf_counter() - t]
    step_s = sorted(times)[len(times) // 2] * 1.05  # median; the real loop also updates EMA and metrics
    extra_s = 0.0
    if run.val_loader is not None:
        model.eval()
        t = time.perf_counter()
        with torch.no_grad(), autocast(run.device, run.amp):
            for n, (x, _) in enumerate(run.val_loader):
                model(rotate_batch(x, cfg.rotations)[0] if cfg.pretext else x)
                if cfg.tta:
                    model(x.flip(3))
                if n == 1:
                    break
        per_batch = (time.perf_counter() - t) / (n + 1)
        extra_s += per_batch * len(run.val_loader)
    t = time.perf_counter()
    from safetensors.torch import save

    save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    extra_s += 4 * (time.perf_counter() - t) + 0.05  # best, last and the training state (about twice the weights)
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])
    return step_s, extra_s


@dataclass
class _Run:
    """The state of one training run, phase by phase."""

    cfg: TrainConfig
    resuming: bool
    overwrite: bool
    progress: bool
    started: float = 0.0  # budget_clock() when fit was called: the budget's clock starts there
    start_epoch: int = 0
    best_acc: float = -1.0
    stale: int = 0
    elapsed_before: float = 0.0
    stopped_early: bool = False
    lengthened: bool = False  # a budget's plan is lengthened once at most
    reuses_memory: bool = False  # freed memory kept for the next steps (runtime.reuse_freed_memory)
    history: list[dict[str, float]] = field(default_factory=list)
    lock: RunLock | None = None
    tb: Any = None
    first_loss: float | None = None  # mean loss of the run's first 20-step window (the divergence guard's base)
    ranks: Ranks = field(default_factory=Ranks)
    start_step: int = 0  # steps of `start_epoch` already taken (a run resumed mid-epoch)
    partial: dict[str, float] | None = None  # that epoch's running sums when it was saved
    aux_params: list = field(default_factory=list)  # trained beside the model, outside DistributedDataParallel

    # -- set up ---------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Threads, seeds, device, data and model: everything but the run directory (lr_find stops here)."""
        cfg = self.cfg
        set_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)
        self.device = pick_device(cfg.device)
        if launched_by_torchrun() and self.device.type == "cuda":  # one GPU per process: its local rank's
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        self.ranks = init_ranks(self.device)
        self.progress = self.progress and self.ranks.main
        if self.ranks.distributed and cfg.batch_size % self.ranks.world:
            raise ConfigError(f"the batch size {cfg.batch_size} is the global batch: it must be a multiple of the "
                              f"{self.ranks.world} processes")
        self.amp = autocast_dtype(cfg.amp, self.device)  # checks --amp against the device; auto decided with the model
        self._load_data()
        self._build_model()

    def set_up(self) -> None:
        cfg = self.cfg
        self.prepare()
        problem = None
        if self.ranks.main:  # only rank 0 writes: it claims the folder, the others learn where it is
            try:
                self.dir, self.out, self.lock = open_run_dir(cfg, self.resuming, self.overwrite)
            except Exception as e:
                problem = e
        where = broadcast(str(self.dir) if self.ranks.main and not problem else None, self.ranks)
        if problem:
            raise problem
        if where is None:
            raise ConfigError("rank 0 could not open the run directory; its error says why")
        self.dir = Path(where)
        if self.resuming and (self.dir / "last.safetensors").exists():
            self._restore()
        elif cfg.budget is not None and cfg.max_steps is None:
            self._plan_budget()
            cfg = self.cfg  # the plan may have chosen the fast recipe instead
        if self.ranks.main:
            self._write_config()
            atomic_write_text(self.dir / "metrics.csv", metrics_csv(self.history))
            self._open_tensorboard()
        self.bar = TrainProgress(self.epochs, self.steps_per_epoch, enabled=self.progress,
                                 total_steps=self.total_steps)
        if self.progress:  # what `auto` chose on this machine, and why
            layout = self.layout_note
            procs = f"{self.ranks.world} processes × " if self.ranks.distributed else ""
            self.bar.console.print(f"cnnkit train: {cfg.model} on {cfg.data}, {self.device.type}, {self.precision}, "
                                   f"{layout}, {procs}{torch.get_num_threads()} threads, {self.data_note} "
                                   f"-> {self.dir}", highlight=False, soft_wrap=True)
            if self.start_step:
                self.bar.console.print(f"resumed at epoch {self.start_epoch + 1}, step {self.start_step} of "
                                       f"{self.steps_per_epoch}", highlight=False)
            if cfg.budget is not None:
                note = getattr(self, "plan_note", f"resumed with its plan of {self.total_steps} steps")
                self.bar.console.print(f"budget {cfg.budget:.0f} s: {note}", highlight=False, soft_wrap=True)

    @property
    def total_steps(self) -> int:
        return self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def _load_data(self) -> None:
        cfg = self.cfg
        self.data_note = "in memory"
        if cfg.data.startswith("webdataset:"):
            return self._load_shards()
        if cfg.data.startswith("imagefolder:"):  # listed first, decoded now or by the loader's workers
            from cnnkit.data.datasets import decode_files, scan_imagefolder
            from cnnkit.data.stream import choose_mode

            files = scan_imagefolder(cfg.data.split(":", 1)[1], "train", cfg.img_size, None, cfg.test_fraction,
                                     cfg.data_split_seed)
            mode, self.data_note = choose_mode(cfg.data_mode, files, self.ranks.world)
            self.full = decode_files(files, cfg.strict) if mode == "memory" else files
        else:
            if cfg.data_mode == "stream":
                raise ConfigError(f"--data-mode stream reads image folders (imagefolder:DIR); {cfg.data} is "
                                  f"loaded in memory")
            self.full = load_dataset(cfg.data, "train", data_dir=cfg.data_dir, download=cfg.download,
                                     strict=cfg.strict, img_size=cfg.img_size, test_fraction=cfg.test_fraction,
                                     seed=cfg.data_split_seed)
        if cfg.val_fraction > 0:
            tr_idx, va_idx = train_val_split(self.full.labels, cfg.val_fraction, cfg.data_split_seed)
            self.train_set, self.val_set = self.full.subset(tr_idx, "train"), self.full.subset(va_idx, "val")
        else:
            self.train_set, self.val_set = self.full, None
        if cfg.train_images is not None and cfg.train_images < len(self.train_set):
            _, keep = train_val_split(self.train_set.labels, cfg.train_images / len(self.train_set), cfg.seed)
            self.train_set = self.train_set.subset(keep, "train")
        if cfg.train_images_per_class is not None:  # few labels: K of each class
            self.train_set = self.train_set.subset(
                per_class_subset(self.train_set.labels, cfg.train_images_per_class, cfg.seed), "train")
        if cfg.pretext == "rotnet" and cfg.rotations == 4 and self.full.img_size[0] != self.full.img_size[1]:
            h, w = self.full.img_size
            raise ConfigError(f"RotNet with 4 rotations needs square images, these are {h}×{w}; give --img-size N "
                              f"or --rotations 2 (0° and 180°)")
        if len(self.train_set) == 0:
            raise ConfigError(f"{cfg.data}: no training images left after holding out the validation split")
        if isinstance(self.train_set, ImageData):
            self.mean, self.std = channel_stats(self.train_set.images)
        else:  # from a fixed sample, decoded by workers: the same on every rank
            from cnnkit.data.stream import sample_channel_stats

            self.mean, self.std = sample_channel_stats(self.train_set, workers=cfg.workers)
            self.data_note = f"streamed ({self.data_note})"
        self.fingerprint = self.full.fingerprint()

    def _load_shards(self) -> None:
        """WebDataset shards written by `cnnkit data shard`: train from the train shards, validate on the val ones."""
        from cnnkit.data.shards import open_webdataset

        cfg = self.cfg
        if cfg.train_images is not None or cfg.train_images_per_class is not None:
            raise ConfigError("--train-images and --train-images-per-class pick images by index; WebDataset shards "
                              "are read in order: write shards of the subset instead")
        path = cfg.data.split(":", 1)[1]
        self.full = self.train_set = open_webdataset(path, "train")
        self.val_set = open_webdataset(path, "val") if cfg.val_fraction > 0 else None
        if self.val_set is not None and len(self.val_set) == 0:
            self.val_set = None
        self.mean, self.std = list(self.full.mean), list(self.full.std)
        self.fingerprint = self.full.fingerprint()
        self.data_note = "WebDataset shards (validation: the val shards)"

    def _build_model(self) -> None:
        cfg, full = self.cfg, self.full
        classes = cfg.rotations if cfg.pretext else full.num_classes  # RotNet: a head over the rotations
        model = create(cfg.model, num_classes=classes, in_chans=full.in_chans, img_size=full.img_size,
                       **cfg.model_kwargs)
        if cfg.init_from and not self.resuming:
            report = load_pretrained(model, cfg.init_from)
            if self.progress:
                print(report.summary())
        from cnnkit.train.layout import choose_execution

        self.amp, self.channels_last, self.precision, self.layout_note = choose_execution(
            model, cfg.model, cfg.model_kwargs, (full.in_chans, *full.img_size), cfg.batch_size, self.device,
            cfg.amp, cfg.channels_last)
        if self.ranks.distributed:  # every rank runs as rank 0 measured, so that they compute alike
            self.amp, self.channels_last, self.precision, self.layout_note = broadcast(
                (self.amp, self.channels_last, self.precision, self.layout_note), self.ranks)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if cfg.sync_bn and self.ranks.distributed:
            model = convert_sync_batchnorm(model, self.device)
        self.model = model.to(self.device, memory_format=memory_format)
        self.normalize = Normalize(self.mean, self.std, self.device, self.channels_last)
        self.train_loader = self._loader(self.train_set, cfg.batch_size, train=True)
        self.val_loader = self._loader(self.val_set, 512, train=False) if self.val_set else None
        if len(self.train_loader) == 0:
            raise ConfigError(f"{cfg.data}: {len(self.train_set)} training images make no batch of "
                              f"{cfg.batch_size} shared among {self.ranks.world} processes; lower --batch-size")
        self.distiller = None
        if cfg.distill:  # teachers, and for MEAL V2 a discriminator that trains with the student
            from cnnkit.train.distill import Distiller

            self.distiller = Distiller(cfg.distill, cfg.teachers, full.classes, full.in_chans, full.img_size,
                                       self.mean, self.std, self.device, self.amp, self.channels_last,
                                       cfg.kd_temperature, cfg.kd_alpha, cfg.disc_weight, cfg.label_smoothing)
        disc = self.distiller.discriminator if self.distiller is not None else None
        self.optimizer = build_optimizer(model if disc is None else nn.ModuleList([model, disc]), cfg)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.total_steps, self.steps_per_epoch)
        self.ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema > 0 else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.aux_params = list(disc.parameters()) if disc is not None and self.ranks.distributed else []
        stepper = model
        if self.ranks.distributed:  # gradients averaged over the ranks in the backward pass
            stepper = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step_model = torch.compile(stepper) if cfg.compile else stepper
        self.msd_heads = [m for m in model.modules() if isinstance(m, MultiSampleDropout)]
        self.drop_blocks = [m for m in model.modules() if isinstance(m, ScheduledDropBlock)]

    def _loader(self, data: Any, batch_size: int, train: bool) -> Any:
        """The loader for a set: in memory, streamed from files, or from WebDataset shards. Training batches are
        sharded across the ranks; validation gives each rank its share of the images (WebDataset: all)."""
        cfg, ranks = self.cfg, self.ranks
        opts = dict(shuffle=True, seed=cfg.seed, augment=cfg.augment, drop_last=len(data) > batch_size,
                    rank=ranks.rank, world=ranks.world) if train else {}
        if not train and ranks.distributed and not hasattr(data, "shards"):
            data = data.subset(torch.arange(ranks.rank, len(data), ranks.world), data.split)
        if isinstance(data, ImageData):
            return BatchLoader(data, batch_size, self.normalize, **opts)
        if hasattr(data, "shards"):
            from cnnkit.data.shards import WebDatasetLoader

            return WebDatasetLoader(data, batch_size, self.normalize, workers=cfg.workers, **opts)
        from cnnkit.data.stream import StreamLoader

        return StreamLoader(data, batch_size, self.normalize, workers=cfg.workers, **opts)

    def _restore(self) -> None:
        """Weights, optimizer, schedule, EMA, RNG and history of the last complete epoch."""
        cfg, last = self.cfg, self.dir / "last.safetensors"
        meta = read_meta(last)
        if meta["dataset"]["fingerprint"] != self.fingerprint:
            raise ConfigError(f"cannot resume {self.dir}: the training data changed since the run started "
                              f"(fingerprint {self.fingerprint}, saved {meta['dataset']['fingerprint']}); "
                              f"point --data-dir (or the image folder) at the original data")
        from safetensors.torch import load_file

        load_state_into(self.model, load_file(str(last)), last)
        for name in ("last.safetensors", "best.safetensors"):  # the header is the truth
            if (self.dir / name).exists():
                repair_sidecar(self.dir / name)
        saved = meta["config"]
        replan = (cfg.epochs, cfg.max_steps) != (saved["epochs"], saved.get("max_steps"))
        p = load_train_state(self.dir / meta["train_state"], self.optimizer, None if replan else self.scheduler,
                             self.ema, self._state_modules())
        self.start_epoch, self.best_acc, self.stale, self.history = p["epoch"], p["best_acc"], p["stale"], p["history"]
        self.elapsed_before = p["elapsed_seconds"]
        self.start_step, self.partial = p.get("step", 0), p.get("partial")  # saved mid-epoch: where it was
        if self.history:  # the guard's base after a resume: the first epoch's mean loss
            self.first_loss = float(self.history[0]["train_loss"])
        if self.start_epoch > self.epochs:
            raise ConfigError(f"{self.dir} already finished {self.start_epoch} epoch(s); pass --epochs "
                              f"{self.start_epoch} or more")  # == epochs: finished, resuming does nothing
        if replan:  # a new --epochs re-plans the schedule over the new length, fast-forwarded to this point;
            # built after the optimizer's state is restored, which replaced the groups' schedule fields
            self._rebuild_scheduler(self.start_epoch * self.steps_per_epoch + self.start_step)

    def _rebuild_scheduler(self, done_steps: int) -> None:
        """The schedule over the run's (new) length, fast-forwarded past the steps already taken."""
        self.scheduler = build_scheduler(self.cfg, self.optimizer, self.total_steps, self.steps_per_epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(min(done_steps, self.total_steps - 1)):
                self.scheduler.step()

    # -- plan to a budget -----------------------------------------------------------------------------------
    def _plan_budget(self) -> None:
        """Measure this machine's pace on the run's own model and data, then fix the run's length (kept in
        config.yaml and the checkpoints, so a resumed run keeps it)."""
        from cnnkit.train.budget import plan_steps, too_small

        cfg = self.cfg
        step_s, extra_s = broadcast(measure_pace(self), self.ranks)  # one plan for every rank: rank 0's
        spent = broadcast(budget_clock() - self.started, self.ranks)
        plan = plan_steps(cfg.budget - spent, self.steps_per_epoch, step_s, extra_s)
        problem = too_small(cfg.budget, spent, plan)
        if problem:
            raise ConfigError(problem)
        fallback = getattr(cfg, "_budget_fallback", None)
        if fallback and plan.total_steps < LONG_RECIPE_MIN_EPOCHS * self.steps_per_epoch:
            # the long recipe's wider net would get too few epochs on this machine: the fast one does better
            narrow = resolve_config(fallback)
            for key in ("out", "data", "data_dir", "init_from"):
                setattr(narrow, key, getattr(cfg, key))
            self.cfg = narrow
            self._build_model()
            self._plan_budget()
            self.plan_note += (f" (the long recipe fitted only {plan.total_steps / self.steps_per_epoch:.1f} "
                               f"epochs here, fewer than {LONG_RECIPE_MIN_EPOCHS}: trains the fast recipe)")
            return
        cfg.max_steps, cfg.epochs = plan.total_steps, plan.epochs
        self.plan_note = (f"set-up took {spent:.1f} s; {step_s * 1e3:.0f} ms per step, {extra_s:.1f} s per "
                          f"evaluation and checkpoint; planned {plan.describe()}")
        self._rebuild_scheduler(0)

    def keep_to_budget(self, epoch: int) -> None:
        """At an epoch's end: if the run is behind its plan (the machine got slower than measured), shorten
        what is left so that it still ends inside the budget; if it is well ahead early on (the measurement
        paid one-time costs), lengthen it. The schedule is re-planned from here."""
        from cnnkit.train.budget import replanned_total

        cfg = self.cfg
        if cfg.budget is None or self.resuming or epoch + 1 >= self.epochs:
            return
        elapsed = budget_clock() - self.started
        done = (epoch + 1) * self.steps_per_epoch
        pace = self.last_train_s / max(self.last_epoch_steps, 1)
        extra = budget_clock() - self.epoch_clock - self.last_train_s  # validation, checkpoint, callbacks
        total = broadcast(replanned_total(cfg.budget, elapsed, done, self.total_steps, self.steps_per_epoch, pace,
                                          extra, may_lengthen=not self.lengthened), self.ranks)  # rank 0 decides
        if total is None:
            return
        self.lengthened |= total > self.total_steps
        self.plan_note = (getattr(self, "plan_note", "") + f"; after epoch {epoch + 1}, at the pace kept "
                          f"({pace * 1e3:.0f} ms per step, {extra:.1f} s per evaluation and checkpoint), "
                          f"{'lengthened' if total > self.total_steps else 'shortened'} to {total} steps")
        cfg.max_steps = total
        cfg.epochs = self.epochs
        self.bar.set_epochs(self.epochs, self.total_steps)
        self._rebuild_scheduler(done)
        if self.ranks.main:
            self._write_config()

    def _write_config(self) -> None:
        """config.yaml: the resolved configuration, and under `chosen` what `auto` settled on here and why."""
        chosen = {"device": str(self.device), "precision": self.precision, "layout": self.layout_note,
                  "threads": torch.get_num_threads(), "data": self.data_note, "processes": self.ranks.world,
                  "memory": ("freed memory kept for the next steps (glibc malloc limits raised while training)"
                             if self.reuses_memory else "the C library's default malloc")}
        if getattr(self, "plan_note", None):
            chosen["budget_plan"] = self.plan_note
        atomic_write_text(self.dir / "config.yaml",
                          yaml.safe_dump({**self.cfg.to_dict(), "chosen": chosen}, sort_keys=False))

    def _open_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out.record_library_files(self.dir / "tb", TENSORBOARD_EVENTS)  # TensorBoard names its event files
        self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=self.start_epoch + 1 if self.start_epoch else None)

    # -- run an epoch ---------------------------------------------------------------------------------------
    def criterion(self, logits: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The loss of a batch `x` whose logits are `logits`: cross-entropy with the labels, or a distillation
        run's loss against its teachers' outputs on the same batch."""
        if self.distiller is not None:
            return self.distiller.loss(x, logits, target)
        smoothing = self.cfg.label_smoothing
        samples = self.msd_heads[0].last_samples if self.msd_heads else None  # average the per-sample losses
        if samples is not None:
            return torch.stack([F.cross_entropy(s.float(), target, label_smoothing=smoothing)
                                for s in samples]).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, steps, device = self.cfg, self.steps_per_epoch, self.device
        self.epoch_started = t0 = time.perf_counter()
        self.epoch_clock = budget_clock()
        self.model.train()
        first = self.start_step if epoch == self.start_epoch else 0  # resumed mid-epoch: continue from there
        self.train_loader.set_epoch(epoch, first)
        # running sums over the ranks' batches: loss × images, correct, images, and the last check's loss and images
        sums = torch.zeros(5, device=device)  # float32: MPS has no float64; exact counts up to 16 M images
        earlier = 0.0  # seconds this epoch ran before a mid-epoch resume
        if first and self.partial:  # rank 0 carries the sums saved with the step (they are global)
            if self.ranks.main:
                sums += torch.tensor(self.partial["sums"], device=device)
            earlier = self.partial.get("seconds", 0.0)
        before = float(self.partial["sums"][2]) if first and self.partial else 0.0  # images seen before resuming
        self.bar.start_epoch(epoch)
        last = min(steps, self.total_steps - epoch * steps)  # a budget's plan may end inside an epoch
        global_sums = sums
        for i, (x, y) in enumerate(self.train_loader, start=first):
            step = epoch * steps + i
            if i >= last:
                break
            for block in self.drop_blocks:  # DropBlock's rate grows linearly over the run
                block.set_progress(step / self.total_steps)
            if cfg.pretext:  # the labels are not used: every image in each rotation, labelled by its rotation
                x, y = rotate_batch(x, cfg.rotations)
            with autocast(device, self.amp):
                logits = self.step_model(x)
            loss = self.criterion(logits, y, x)
            self._step(loss)
            lr_used = self.optimizer.param_groups[0]["lr"]
            if step + 1 < self.total_steps:
                self.scheduler.step()  # stepping past the last step would extrapolate the schedule
            if self.ema is not None:
                self.ema.update(self.model, step=step)
            hard = y if y.ndim == 1 else y.argmax(1)
            sums[0] += loss.detach() * len(y)
            sums[1] += (logits.detach().argmax(1) == hard).sum()
            sums[2] += len(y)
            every = cfg.checkpoint_every
            checkpoint_now = every and (step + 1) % every == 0 and i + 1 < last
            if i % 20 == 19 or i == last - 1 or checkpoint_now:
                global_sums = all_sum(sums, self.ranks)  # one host sync every 20 steps
                total, seen = float(global_sums[0]), float(global_sums[2])
                mean_loss = total / seen
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"loss became {mean_loss} at epoch {epoch + 1}, step {i + 1}; stopped. The last good "
                        f"checkpoint is kept in {self.dir}; try a lower --lr or --grad-clip 1.0")
                window = (float(global_sums[3]), float(global_sums[4]))
                if seen > window[1]:
                    self._check_climb((total - window[0]) / (seen - window[1]), epoch, i)
                sums[3], sums[4] = sums[0], sums[2]  # this rank's loss sum and images at this check
                self.bar.update(i + 1, mean_loss, float(global_sums[1]) / seen,
                                (seen - before) / max(time.perf_counter() - t0, 1e-9))
            if checkpoint_now:
                self.checkpoint_step(epoch, i + 1, [float(v) for v in global_sums],
                                     earlier + time.perf_counter() - t0)
        global_sums = all_sum(sums, self.ranks)
        total, correct, seen = (float(v) for v in global_sums[:3])
        self.last_train_s, self.last_epoch_steps = budget_clock() - self.epoch_clock, last - first
        return {"epoch": epoch + 1, "train_loss": total / seen, "train_acc": correct / seen,
                "lr": lr_used, "images_per_s": seen / (earlier + time.perf_counter() - t0)}

    def _check_climb(self, window_loss: float, epoch: int, i: int) -> None:
        """Stop a run whose loss climbs well above where it started (a learning rate too high for the model):
        the mean loss of a 20-step window above both 3× and 2 more than the run's first window's."""
        if self.first_loss is None:
            self.first_loss = window_loss
            return
        if window_loss > max(3 * self.first_loss, self.first_loss + 2):
            lr = self.cfg.lr
            kept = (f"the last good checkpoint is kept in {self.dir}" if (self.dir / "last.safetensors").exists()
                    else "no epoch had finished; start again with --overwrite")
            raise TrainingDiverged(
                f"loss climbed from {self.first_loss:.2f} to {window_loss:.3g} by epoch {epoch + 1}, step {i + 1}: "
                f"the learning rate is too high for {self.cfg.model}; try --lr {lr / 10:g} ({kept})")

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        average_gradients(self.aux_params, self.ranks)  # DDP averaged the model's; these are beside it
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    # -- evaluate -------------------------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        if self.cfg.pretext:
            return self._evaluate_pretext()
        probs, labels = evaluate_loader(self.eval_model, self.val_loader, self.device, self.amp, self.cfg.tta)
        sums = torch.tensor([float(F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")),
                             float((probs.argmax(1) == labels).sum()), len(labels)], dtype=torch.float64)
        if self.ranks.distributed and not hasattr(self.val_set, "shards"):  # each rank scored its share
            sums = all_sum(sums.to(self.device), self.ranks).cpu()
        return {"val_loss": float(sums[0] / sums[2]), "val_acc": float(sums[1] / sums[2])}

    def _evaluate_pretext(self) -> dict[str, float]:
        """Rotation loss and accuracy on the validation images, each in all its rotations."""
        model = self.eval_model
        was = model.training
        model.eval()
        loss, correct, n = 0.0, 0, 0
        with torch.no_grad(), autocast(self.device, self.amp):
            for x, _ in self.val_loader:
                x, y = rotate_batch(x, self.cfg.rotations)
                logits = model(x).float()
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
        model.train(was)
        return {"val_loss": loss / n, "val_acc": correct / n}

    # -- checkpoint -----------------------------------------------------------------------------------------
    def checkpoint(self, epoch: int, metrics: dict[str, float]) -> None:
        """Write the epoch's checkpoints so that a kill at any instant leaves a consistent run to resume:
        best (if improved), then the training state, then last (which names that state), and only then
        remove the previous state and rewrite metrics.csv whole."""
        self.history.append({k: metrics.get(k, float("nan")) for k in METRIC_FIELDS})
        score = metrics.get("val_acc", metrics["epoch"])  # without validation, the latest is best
        improved = score > self.best_acc
        if improved:
            self.best_acc, self.stale = score, 0
        else:
            self.stale += 1
        if not self.ranks.main:  # only rank 0 writes; the others wait until it has
            barrier(self.ranks)
            return
        d = self.dir
        meta = _checkpoint_meta(self.cfg, self.full, self.fingerprint, self.mean, self.std, epoch + 1, metrics,
                                self.ema is not None)
        meta["precision"], meta["layout"] = self.precision, self.layout_note
        if self.cfg.pretext:  # the head predicts rotations; the dataset's classes are kept for the record
            meta["pretext"] = {"method": self.cfg.pretext, "rotations": self.cfg.rotations,
                               "data_classes": meta["classes"]}
            meta["classes"] = ROTATION_NAMES[self.cfg.rotations]
        if improved:
            save_checkpoint(d / "best.safetensors", self.eval_model, meta)
        state_name = f"state-e{epoch + 1:04d}.safetensors"
        save_train_state(d / state_name, self.optimizer, self.scheduler, self.ema,
                         {"epoch": epoch + 1, "best_acc": self.best_acc, "stale": self.stale,
                          "history": self.history, "elapsed_seconds": metrics["elapsed_seconds"]},
                         self._state_modules())
        save_checkpoint(d / "last.safetensors", self.model, {**meta, "train_state": state_name})
        if epoch + 1 in self.cfg.keep_epochs:  # e.g. a lottery-ticket rewind point for `cnnkit compress`
            save_checkpoint(d / f"epoch-{epoch + 1:04d}.safetensors", self.model, meta)
        self._drop_states(state_name)
        atomic_write_text(d / "metrics.csv", metrics_csv(self.history))
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
            if k in metrics:
                self.tb.add_scalar(k, metrics[k], epoch + 1)
        self.tb.flush()
        barrier(self.ranks)

    def _drop_states(self, keep: str) -> None:
        for old in self.dir.glob("state-e*.safetensors"):
            if old.name != keep and self.out.owns(old):
                old.unlink()

    def checkpoint_step(self, epoch: int, step: int, sums: list[float], seconds: float) -> None:
        """Mid-epoch (`--checkpoint-every`): the training state after `step` steps of `epoch`, and the weights
        as last.safetensors, so that a resumed run (or torchrun restarting its workers) continues from this
        step in the same data order. best.safetensors and metrics.csv change only at epochs' ends."""
        if not self.ranks.main:
            barrier(self.ranks)
            return
        d = self.dir
        previous = self.history[-1] if self.history else {}
        meta = _checkpoint_meta(self.cfg, self.full, self.fingerprint, self.mean, self.std, epoch, previous,
                                self.ema is not None)
        meta["precision"], meta["layout"], meta["step_in_epoch"] = self.precision, self.layout_note, step
        if self.cfg.pretext:
            meta["pretext"] = {"method": self.cfg.pretext, "rotations": self.cfg.rotations,
                               "data_classes": meta["classes"]}
            meta["classes"] = ROTATION_NAMES[self.cfg.rotations]
        state_name = f"state-e{epoch:04d}-s{step:07d}.safetensors"
        elapsed = self.elapsed_before + time.perf_counter() - self.fit_started
        save_train_state(d / state_name, self.optimizer, self.scheduler, self.ema,
                         {"epoch": epoch, "step": step, "partial": {"sums": sums, "seconds": seconds},
                          "best_acc": self.best_acc, "stale": self.stale, "history": self.history,
                          "elapsed_seconds": elapsed}, self._state_modules())
        save_checkpoint(d / "last.safetensors", self.model, {**meta, "train_state": state_name})
        self._drop_states(state_name)
        barrier(self.ranks)

    def _state_modules(self) -> dict[str, nn.Module]:
        """Trained modules beside the model that an exact resume needs (MEAL V2's discriminator)."""
        disc = self.distiller.discriminator if self.distiller is not None else None
        return {"discriminator": disc} if disc is not None else {}

    def should_stop(self) -> bool:
        return bool(self.cfg.early_stopping and self.val_loader is not None and self.stale >= self.cfg.early_stopping)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.lock is not None:
            self.lock.release()
        for loader in (getattr(self, "train_loader", None), getattr(self, "val_loader", None)):
            getattr(loader, "close", lambda: None)()  # streaming: stop the decoding workers
        leave(self.ranks)

    def result(self, seconds: float) -> FitResult:
        return FitResult(self.dir, self.cfg, self.history, self.dir / "best.safetensors",
                         self.dir / "last.safetensors", self.best_acc if self.val_loader is not None else None,
                         self.stopped_early, self.elapsed_before + seconds, len(self.train_set),
                         len(self.val_set) if self.val_set is not None else 0)
