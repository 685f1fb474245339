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
        self.score = "acc"  # the task's score, as metrics.csv names it (learned from the first epoch's metrics)

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

    def note(self, text: str) -> None:
        """One line above the bar: something that changed the run while it trains (a budget's re-plan)."""
        if self.enabled:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def update(self, step: int, loss: float, acc: float, images_per_s: float) -> None:
        self.progress.update(self.task, completed=self.epoch * self.steps + step,
                             stats=f"loss {loss:.3f}  {self.score} {_shown(self.score, acc)}  "
                                   f"{images_per_s:,.0f} img/s")

    def end_epoch(self, m: dict[str, float]) -> None:
        """The epoch's line: loss and the task's score (an accuracy in percent) on train and validation."""
        self.score = next((k[6:] for k in m if k.startswith("train_") and k != "train_loss"), self.score)
        if not self.enabled:
            return
        s = self.score
        val_loss = f"  val_loss {m['val_loss']:.3f}" if m.get("val_loss") == m.get("val_loss") else ""
        val = f"{val_loss}  val_{s} {_shown(s, m['val_' + s])}" if f"val_{s}" in m else ""
        train = f"  {s} {_shown(s, m['train_' + s])}" if m["train_" + s] == m["train_" + s] else ""
        self.console.print(f"epoch {int(m['epoch'])}/{self.epochs}  loss {m['train_loss']:.3f}"
                           f"{train}{val}  {m['images_per_s']:,.0f} img/s  "
                           f"{m['epoch_seconds']:.1f}s", soft_wrap=True, highlight=False)


def _shown(score: str, value: float) -> str:
    """A score as a person reads it: an accuracy in percent with two decimals, as every command shows one
    (cnnkit.cli.console.percent, which training, below the CLI, does not import); another task's as a number."""
    if value != value:  # NaN: not measured (a detector's training score; its validation loss)
        return "-"
    return f"{100 * value:.2f}%" if score == "acc" else f"{value:.4f}"
