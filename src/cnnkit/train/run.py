"""The state of one training run, declared in one place; the phases (`setup`, `rundir`, `budget`, `loop`,
`checkpoints`) read and update it, and `fit` calls them in order."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnkit.artifacts import OutputDir, RunLock
from cnnkit.tasks import Objective, Task
from cnnkit.train.config import TrainConfig
from cnnkit.train.distributed import Ranks


@dataclass
class Run:
    """One training run. Fields are grouped by the phase that sets them."""

    cfg: TrainConfig
    resuming: bool = False
    overwrite: bool = False
    progress: bool = True
    started: float = 0.0  # budget_clock() when fit was called: the budget's clock starts there
    fit_started: float = 0.0  # time.perf_counter() when fit was called
    fallback: dict[str, Any] | None = None  # a budget's options for the fast recipe, if the long one fits too few epochs
    # where it computes (setup.prepare)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ranks: Ranks = field(default_factory=Ranks)
    amp: torch.dtype | None = None
    channels_last: bool = False
    precision: str = ""
    layout_note: str = ""
    # data (setup.load_data)
    task: Task | None = None
    objective: Objective | None = None
    full: Any = None  # the training split before the validation split is held out
    train_set: Any = None
    val_set: Any = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    fingerprint: str = ""
    data_note: str = "in memory"
    # model and optimization (setup.build_model)
    model: nn.Module | None = None
    step_model: nn.Module | None = None  # what the loop calls: the model, wrapped for DDP and compiled as asked
    normalize: Any = None
    train_loader: Any = None
    val_loader: Any = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    ema: Any = None
    scaler: Any = None
    steps_per_epoch: int = 1
    aux_params: list = field(default_factory=list)  # trained beside the model, outside DistributedDataParallel
    drop_blocks: list = field(default_factory=list)
    # the run directory (rundir.open_run_dir)
    dir: Path | None = None
    out: OutputDir | None = None
    lock: RunLock | None = None
    tb: Any = None
    bar: Any = None
    # progress through the run (loop, checkpoints.restore)
    start_epoch: int = 0
    start_step: int = 0  # steps of `start_epoch` already taken (a run resumed mid-epoch)
    outputs: int = 0  # the model's outputs (its head's size), set when it is built
    partial: dict[str, Any] | None = None  # that epoch's running sums when it was saved
    best_score: float = -math.inf
    stale: int = 0
    elapsed_before: float = 0.0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    first_loss: float | None = None  # mean loss of the run's first 20-step window (the divergence guard's base)
    epoch_started: float = 0.0
    epoch_clock: float = 0.0
    last_train_s: float = 0.0
    last_epoch_steps: int = 0
    # a budget's plan (budget.plan_budget, budget.keep_to_budget)
    plan_note: str | None = None
    init_note: str | None = None  # what --init-from loaded (setup.build_model), said beside the run's first line
    paces: list[tuple[float, int, float]] = field(default_factory=list)  # recent epochs' (train s, steps, extra s)
    reuses_memory: bool = False  # freed memory kept for the next steps (runtime.reuse_freed_memory)

    @property
    def total_steps(self) -> int:
        return self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def metric_fields(self) -> list[str]:
        """metrics.csv's columns: the task's score is named after it (classification: train_acc, val_acc)."""
        s = self.task.score if self.task is not None else "acc"
        return ["epoch", "train_loss", f"train_{s}", "val_loss", f"val_{s}", "lr", "epoch_seconds", "elapsed_seconds",
                "images_per_s"]

    def should_stop(self) -> bool:
        return bool(self.cfg.early_stopping and self.val_loader is not None and self.stale >= self.cfg.early_stopping)

    def close(self) -> None:
        from cnnkit.train.distributed import leave

        if self.tb is not None:
            self.tb.close()
        if self.lock is not None:
            self.lock.release()
        for loader in (self.train_loader, self.val_loader):
            getattr(loader, "close", lambda: None)()  # streaming: stop the decoding workers
        leave(self.ranks)
