"""A rich progress bar for training: loss, accuracy, images/s and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """One bar over all training steps; prints a line per epoch."""

    def __init__(self, epochs: int, steps_per_epoch: int, enabled: bool = True, total_steps: int | None = None):
        self.epochs, self.steps = epochs, steps_per_epoch
        self.total = total_steps or epochs * steps_per_epoch
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
                                 disable=not enabled, transient=True)
        self.task = None
        self.epoch = 0

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.task is None:
            self.task = self.progress.add_task("train", total=self.total, completed=epoch * self.steps,
                                               epoch=epoch + 1, epochs=self.epochs, stats="")
        self.progress.update(self.task, epoch=epoch + 1)

    def set_epochs(self, epochs: int, total_steps: int) -> None:
        """The run was re-planned (a budget's run fell behind): show its new length."""
        self.epochs, self.total = epochs, total_steps
        if self.task is not None:
            self.progress.update(self.task, total=total_steps, epochs=epochs)

    def update(self, step: int, loss: float, acc: float, images_per_s: float) -> None:
        self.progress.update(self.task, completed=self.epoch * self.steps + step,
                             stats=f"loss {loss:.3f}  acc {acc:.3f}  {images_per_s:,.0f} img/s")

    def end_epoch(self, m: dict[str, float]) -> None:
        if not self.enabled:
            return
        val = f"  val_loss {m['val_loss']:.3f}  val_acc {m['val_acc']:.4f}" if "val_acc" in m else ""
        self.console.print(f"epoch {int(m['epoch'])}/{self.epochs}  loss {m['train_loss']:.3f}  "
                           f"acc {m['train_acc']:.4f}{val}  {m['images_per_s']:,.0f} img/s  "
                           f"{m['epoch_seconds']:.1f}s", soft_wrap=True)
