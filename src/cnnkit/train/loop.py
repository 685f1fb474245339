"""The loop of one epoch: batches through the task's objective, the optimizer step, running metrics, the
divergence guard and mid-epoch checkpoints; and validation at the epoch's end."""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn

from cnnkit.errors import TrainingDiverged
from cnnkit.evaluate.loop import validation_metrics, validation_sums
from cnnkit.runtime import autocast
from cnnkit.train import budget
from cnnkit.train.checkpoints import save_step
from cnnkit.train.distributed import all_sum, average_gradients
from cnnkit.train.run import Run


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """Train one epoch (from a resumed step where the run stopped mid-epoch); its mean loss, score, pace."""
    steps, device = run.steps_per_epoch, run.device
    run.epoch_started = t0 = time.perf_counter()
    run.epoch_clock = budget.budget_clock()
    run.model.train()
    first = run.start_step if epoch == run.start_epoch else 0  # resumed mid-epoch: continue from there
    run.train_loader.set_epoch(epoch, first)
    # running sums over the ranks' batches: loss × images, images, the last check's loss and images, and what
    # the task's score is made from (its score_sum, summed)
    sums = torch.zeros(4 + run.task.score_size(run.outputs), device=device)  # float32 (MPS has no float64):
    # exact counts up to 16 M
    earlier = 0.0  # seconds this epoch ran before a mid-epoch resume
    if first and run.partial:  # rank 0 carries the sums saved with the step (they are global)
        if run.ranks.main:
            sums += torch.tensor(_current_layout(run.partial), device=device)
        earlier = run.partial.get("seconds", 0.0)
    before = _current_layout(run.partial)[1] if first and run.partial else 0.0  # images seen before resuming
    run.bar.start_epoch(epoch)
    last = min(steps, run.total_steps - epoch * steps)  # a budget's plan may end inside an epoch
    global_sums, lr_used = sums, run.optimizer.param_groups[0]["lr"]
    for i, (x, y) in enumerate(run.train_loader, start=first):
        if i >= last:
            break
        lr_used = _train_step(run, epoch * steps + i, x, y, sums)
        every = run.cfg.checkpoint_every
        checkpoint_now = every and (epoch * steps + i + 1) % every == 0 and i + 1 < last
        if i % 20 == 19 or i == last - 1 or checkpoint_now:
            global_sums = all_sum(sums, run.ranks)  # one host sync every 20 steps
            _check_sums(run, global_sums, epoch, i)
            sums[2], sums[3] = sums[0], sums[1]  # this rank's loss sum and images at this check
            seen = float(global_sums[1])
            run.bar.update(i + 1, float(global_sums[0]) / seen, run.task.score_value(global_sums[4:].cpu(), seen),
                           (seen - before) / max(time.perf_counter() - t0, 1e-9))
        if checkpoint_now:
            save_step(run, epoch, i + 1, [float(v) for v in global_sums], earlier + time.perf_counter() - t0)
    global_sums = all_sum(sums, run.ranks)
    total, seen = float(global_sums[0]), float(global_sums[1])
    run.last_train_s, run.last_epoch_steps = budget.budget_clock() - run.epoch_clock, last - first
    return {"epoch": epoch + 1, "train_loss": total / seen,
            f"train_{run.task.score}": run.task.score_value(global_sums[4:].cpu(), seen),
            "lr": lr_used, "images_per_s": seen / (earlier + time.perf_counter() - t0)}


def _train_step(run: Run, step: int, x: torch.Tensor, y: torch.Tensor, sums: torch.Tensor) -> float:
    """One optimizer step on a batch through the objective; adds to the running sums; the lr it used."""
    for block in run.drop_blocks:  # DropBlock's rate grows linearly over the run
        block.set_progress(step / run.total_steps)
    x, target = run.objective.batch(x, run.task.targets(x, y))
    with autocast(run.device, run.amp):
        outputs = run.objective.forward(run.step_model, x, target)
    loss = run.objective.loss(outputs, target, x)
    _step(run, loss)
    lr_used = run.optimizer.param_groups[0]["lr"]
    if step + 1 < run.total_steps:
        run.scheduler.step()  # stepping past the last step would extrapolate the schedule
    if run.ema is not None:
        run.ema.update(run.model, step=step)
    sums[0] += loss.detach() * len(target)
    sums[1] += len(target)
    if isinstance(outputs, torch.Tensor):  # a detector in training gives its losses, not boxes to score
        sums[4:] += run.task.score_counts(outputs.detach(), target, run.outputs).flatten()
    return lr_used


def _current_layout(partial: dict) -> list[float]:
    """A mid-epoch checkpoint's running sums in today's layout (SUMS_LAYOUT): [loss, images, window loss, window
    images, score...]; checkpoints written before tasks had scores of their own saved [loss, score, images,
    window loss, window images] and no layout number."""
    saved = [float(v) for v in partial["sums"]]
    if partial.get("layout", 1) == 1:
        return [saved[0], saved[2], saved[3], saved[4], saved[1]]
    return saved


def _step(run: Run, loss: torch.Tensor) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
    else:
        loss.backward()
    average_gradients(run.aux_params, run.ranks)  # DDP averaged the model's; these are beside it
    if run.cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()


def _check_sums(run: Run, global_sums: torch.Tensor, epoch: int, i: int) -> None:
    """Stop a run whose loss is not finite, or climbs well above where it started (a learning rate too high
    for the model): the mean loss of a 20-step window above both 3× and 2 more than the run's first window's."""
    total, seen = float(global_sums[0]), float(global_sums[1])
    if not math.isfinite(total / seen):
        raise TrainingDiverged(
            f"loss became {total / seen} at epoch {epoch + 1}, step {i + 1}; stopped. The last good "
            f"checkpoint is kept in {run.dir}; try a lower --lr or --grad-clip 1.0")
    window_loss_sum, window_seen = float(global_sums[2]), float(global_sums[3])
    if seen <= window_seen:
        return
    window_loss = (total - window_loss_sum) / (seen - window_seen)
    if run.first_loss is None:
        run.first_loss = window_loss
        return
    if window_loss > max(3 * run.first_loss, run.first_loss + 2):
        lr = run.cfg.lr
        kept = (f"the last good checkpoint is kept in {run.dir}" if (run.dir / "last.safetensors").exists()
                else "no epoch had finished; start again with --overwrite")
        raise TrainingDiverged(
            f"loss climbed from {run.first_loss:.2f} to {window_loss:.3g} by epoch {epoch + 1}, step {i + 1}: "
            f"the learning rate is too high for {run.cfg.model}; try --lr {lr / 10:g} ({kept})")


def validate(run: Run) -> dict[str, float]:
    """The task's loss and score on the validation split (each rank scores its share; WebDataset: all)."""
    if run.val_loader is None:
        return {}
    tta = run.cfg.tta and run.objective.flip_invariant
    sums = validation_sums(run.eval_model, run.val_loader, run.task, run.device, run.amp, tta, run.objective.batch,
                           run.outputs)
    if run.ranks.distributed and not hasattr(run.val_set, "shards"):
        sums = all_sum(sums.to(run.device), run.ranks).cpu()
    return validation_metrics(sums, run.task)
