"""The training loop: `fit(**options)` trains a model into a run directory and returns a FitResult.

`fit` reads top to bottom as its phases, each in its own module: resolve the configuration and the run
directory (`rundir`), set up the task, data, model and optimizer (`setup`), restore a resumed run
(`checkpoints`) or plan a budget (`budget`), then for each epoch train (`loop`), validate, checkpoint and keep
to the budget. Every file of the run is written atomically into a claimed run directory, which records what
cnnkit wrote there and is locked while the run lasts; a run killed at any moment resumes from its last
complete epoch. What the model learns is the task's business (`cnnkit.tasks`): the loop only calls it.
"""

from __future__ import annotations

import math

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import atomic_write_text
from cnnkit.data import Normalize
from cnnkit.errors import ConfigError
from cnnkit.runtime import reuse_freed_memory
from cnnkit.train import budget
from cnnkit.train.checkpoints import restore, save_epoch
from cnnkit.train.config import TrainConfig
from cnnkit.train.distributed import broadcast, elastic_restart
from cnnkit.train.loop import train_epoch, validate
from cnnkit.train.progress import TrainProgress
from cnnkit.train.run import Run
from cnnkit.train.rundir import (holds_run, metrics_csv, open_run_dir, open_tensorboard, resolve_run,
                                 write_config)
from cnnkit.train.setup import prepare


@dataclass
class FitResult:
    """What a run produced. `best_val_acc` is the best validation score of the run's task (accuracy for
    classification), None without a validation split."""

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
    if resume is None and elastic_restart() and out and holds_run(Path(out).expanduser()):
        # torchrun restarted the workers after one failed: continue the run from its last saved step
        resume, overwrite, config, options = out, False, None, {}
    cfg, fallback = resolve_run(config, resume, options)
    run = Run(cfg, resuming=resume is not None, overwrite=overwrite, progress=progress,
              started=budget.budget_clock(), fit_started=started, fallback=fallback)
    try:
        with reuse_freed_memory() as run.reuses_memory:  # the steps' tensors reuse the previous steps' memory
            _train(run, started, callbacks)
    finally:
        run.close()
    return _result(run, time.perf_counter() - started)


def _train(run: Run, started: float, callbacks: Sequence[Callable[[EpochEnd], None]]) -> None:
    """Set the run up and train its epochs (validating, checkpointing and keeping to a budget after each)."""
    set_up(run)
    with run.bar:
        epoch = run.start_epoch - 1
        while (epoch := epoch + 1) < run.epochs:  # a budget's run may shorten itself as it goes
            metrics = train_epoch(run, epoch)
            metrics.update(validate(run))
            metrics["epoch_seconds"] = time.perf_counter() - run.epoch_started
            metrics["elapsed_seconds"] = run.elapsed_before + time.perf_counter() - started
            save_epoch(run, epoch, metrics)
            run.bar.end_epoch(metrics)
            for cb in callbacks:
                cb(EpochEnd(epoch + 1, metrics, run.model, run.eval_model, run.normalize, run.device, run.dir))
            if budget.keep_to_budget(run, epoch):
                run.bar.set_epochs(run.epochs, run.total_steps)
                if run.ranks.main:
                    write_config(run)
            if run.should_stop():
                run.stopped_early = True
                break


def set_up(run: Run) -> None:
    """Prepare the run, open its directory (rank 0), restore it or plan its budget, and write its config."""
    prepare(run)
    problem = None
    if run.ranks.main:  # only rank 0 writes: it claims the folder, the others learn where it is
        try:
            run.dir, run.out, run.lock = open_run_dir(run.cfg, run.resuming, run.overwrite)
        except Exception as e:
            problem = e
    where = broadcast(str(run.dir) if run.ranks.main and not problem else None, run.ranks)
    if problem:
        raise problem
    if where is None:
        raise ConfigError("rank 0 could not open the run directory; its error says why")
    run.dir = Path(where)
    if run.resuming and (run.dir / "last.safetensors").exists():
        restore(run)
    elif run.cfg.budget is not None and run.cfg.max_steps is None:
        budget.plan_budget(run)  # the plan may choose the fast recipe instead
    if run.ranks.main:
        write_config(run)
        atomic_write_text(run.dir / "metrics.csv", metrics_csv(run.history, run.metric_fields))
        open_tensorboard(run)
    run.bar = TrainProgress(run.epochs, run.steps_per_epoch, enabled=run.progress, total_steps=run.total_steps)
    if run.progress:
        _say_what_auto_chose(run)


def _say_what_auto_chose(run: Run) -> None:
    cfg, say = run.cfg, run.bar.console.print
    procs = f"{run.ranks.world} processes × " if run.ranks.distributed else ""
    say(f"cnnkit train: {cfg.model} on {cfg.data}, {run.device.type}, {run.precision}, {run.layout_note}, "
        f"{procs}{torch.get_num_threads()} threads, {run.data_note} -> {run.dir}", highlight=False, soft_wrap=True)
    if run.init_note:
        say(run.init_note, highlight=False, soft_wrap=True, markup=False)
    if run.start_step:
        say(f"resumed at epoch {run.start_epoch + 1}, step {run.start_step} of {run.steps_per_epoch}", highlight=False)
    if cfg.budget is not None:
        note = run.plan_note or f"resumed with its plan of {run.total_steps} steps"
        say(f"budget {cfg.budget:.0f} s: {note}", highlight=False, soft_wrap=True)


def _result(run: Run, seconds: float) -> FitResult:
    return FitResult(run.dir, run.cfg, run.history, run.dir / "best.safetensors", run.dir / "last.safetensors",
                     run.best_score if run.val_loader is not None and math.isfinite(run.best_score) else None,
                     run.stopped_early,
                     run.elapsed_before + seconds, len(run.train_set),
                     len(run.val_set) if run.val_set is not None else 0)
