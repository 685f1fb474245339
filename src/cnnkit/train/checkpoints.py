"""A run's checkpoints: what each records, writing them at an epoch's end (or mid-epoch) so that a kill at any
instant leaves a consistent run, and restoring a run from them."""

from __future__ import annotations

import math

import time
from typing import Any

from cnnkit.artifacts import atomic_write_text, load_state_into, read_meta, repair_sidecar, save_checkpoint
from cnnkit.errors import ConfigError
from cnnkit.train.distributed import barrier
from cnnkit.train.optim import build_scheduler
from cnnkit.train.rundir import metrics_csv
from cnnkit.train.run import Run
from cnnkit.train.state import load_train_state, save_train_state


def checkpoint_meta(run: Run, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    """What every checkpoint of the run records beside the weights: the task and the names of the model's
    outputs, the input it takes, the data it learned from, the epoch and its metrics, and the config."""
    cfg, data = run.cfg, run.full
    data_classes = list(data.classes)
    meta = {
        "task": run.task.name, "model": cfg.model, "model_kwargs": cfg.model_kwargs,
        "classes": run.objective.output_names(run.task.output_names(data_classes)),
        "in_chans": data.in_chans, "img_size": list(data.img_size),
        "normalization": {"mean": list(run.mean), "std": list(run.std)},
        "dataset": {"name": cfg.data, "fingerprint": run.fingerprint, "train_images": len(data),
                    "test_fraction": cfg.test_fraction, "split_seed": cfg.data_split_seed},
        "epoch": epoch, "metrics": metrics, "ema_weights": run.ema is not None, "config": cfg.to_dict(),
        "precision": run.precision, "layout": run.layout_note,
    }
    meta.update(run.objective.meta(data_classes))  # e.g. RotNet's rotations and the data's own classes
    if getattr(data, "palette", None) is not None:  # a segmentation set's colour per class (cnnkit.tasks.segment)
        meta["palette"] = data.palette
    return meta


def save_epoch(run: Run, epoch: int, metrics: dict[str, float]) -> None:
    """Write the epoch's checkpoints so that a kill at any instant leaves a consistent run to resume:
    best (if improved), then the training state, then last (which names that state), and only then
    remove the previous state and rewrite metrics.csv whole."""
    run.history.append({k: metrics.get(k, float("nan")) for k in run.metric_fields})
    score = metrics.get(f"val_{run.task.score}", metrics["epoch"])  # without validation, the latest is best
    # an undefined score (NaN: e.g. a detection validation split without objects) ranks below every score, and
    # while no epoch has one the latest is best, so that a run always has a best checkpoint
    undefined = math.isnan(score)
    improved = score > run.best_score or (undefined and run.best_score == -math.inf)
    if improved and not undefined:
        run.best_score, run.stale = score, 0
    elif not improved:
        run.stale += 1
    if not run.ranks.main:  # only rank 0 writes; the others wait until it has
        barrier(run.ranks)
        return
    d, meta = run.dir, checkpoint_meta(run, epoch + 1, metrics)
    if improved:
        save_checkpoint(d / "best.safetensors", run.eval_model, meta)
    state_name = f"state-e{epoch + 1:04d}.safetensors"
    save_train_state(d / state_name, run.optimizer, run.scheduler, run.ema,
                     {"epoch": epoch + 1, "best_acc": run.best_score, "stale": run.stale,
                      "history": run.history, "elapsed_seconds": metrics["elapsed_seconds"]}, run.objective.modules)
    save_checkpoint(d / "last.safetensors", run.model, {**meta, "train_state": state_name})
    if epoch + 1 in run.cfg.keep_epochs:  # e.g. a lottery-ticket rewind point for `cnnkit compress`
        save_checkpoint(d / f"epoch-{epoch + 1:04d}.safetensors", run.model, meta)
    _drop_states(run, state_name)
    atomic_write_text(d / "metrics.csv", metrics_csv(run.history, run.metric_fields))
    for k in ("train_loss", f"train_{run.task.score}", "val_loss", f"val_{run.task.score}", "lr", "images_per_s"):
        if k in metrics:
            run.tb.add_scalar(k, metrics[k], epoch + 1)
    run.tb.flush()
    barrier(run.ranks)


def save_step(run: Run, epoch: int, step: int, sums: list[float], seconds: float) -> None:
    """Mid-epoch (`--checkpoint-every`): the training state after `step` steps of `epoch`, and the weights
    as last.safetensors, so that a resumed run (or torchrun restarting its workers) continues from this
    step in the same data order. best.safetensors and metrics.csv change only at epochs' ends."""
    if not run.ranks.main:
        barrier(run.ranks)
        return
    meta = checkpoint_meta(run, epoch, run.history[-1] if run.history else {})
    meta["step_in_epoch"] = step
    state_name = f"state-e{epoch:04d}-s{step:07d}.safetensors"
    elapsed = run.elapsed_before + time.perf_counter() - run.fit_started
    save_train_state(run.dir / state_name, run.optimizer, run.scheduler, run.ema,
                     {"epoch": epoch, "step": step, "partial": {"sums": sums, "layout": 2, "seconds": seconds},
                      "best_acc": run.best_score, "stale": run.stale, "history": run.history,
                      "elapsed_seconds": elapsed}, run.objective.modules)
    save_checkpoint(run.dir / "last.safetensors", run.model, {**meta, "train_state": state_name})
    _drop_states(run, state_name)
    barrier(run.ranks)


def _drop_states(run: Run, keep: str) -> None:
    for old in run.dir.glob("state-e*.safetensors"):
        if old.name != keep and run.out.owns(old):
            old.unlink()


def restore(run: Run) -> None:
    """Weights, optimizer, schedule, EMA, RNG and history of the last complete epoch (or saved step)."""
    cfg, last = run.cfg, run.dir / "last.safetensors"
    meta = read_meta(last)
    if meta["dataset"]["fingerprint"] != run.fingerprint:
        raise ConfigError(f"cannot resume {run.dir}: the training data changed since the run started "
                          f"(fingerprint {run.fingerprint}, saved {meta['dataset']['fingerprint']}); "
                          f"point --data-dir (or the image folder) at the original data")
    from safetensors.torch import load_file

    load_state_into(run.model, load_file(str(last)), last)
    for name in ("last.safetensors", "best.safetensors"):  # the header is the truth
        if (run.dir / name).exists():
            repair_sidecar(run.dir / name)
    saved = meta["config"]
    replan = (cfg.epochs, cfg.max_steps) != (saved["epochs"], saved.get("max_steps"))
    p = load_train_state(run.dir / meta["train_state"], run.optimizer, None if replan else run.scheduler,
                         run.ema, run.objective.modules)
    run.start_epoch, run.best_score, run.stale, run.history = p["epoch"], p["best_acc"], p["stale"], p["history"]
    run.elapsed_before = p["elapsed_seconds"]
    run.start_step, run.partial = p.get("step", 0), p.get("partial")  # saved mid-epoch: where it was
    if run.history:  # the guard's base after a resume: the first epoch's mean loss
        run.first_loss = float(run.history[0]["train_loss"])
    if run.start_epoch > run.epochs:
        raise ConfigError(f"{run.dir} already finished {run.start_epoch} epoch(s); pass --epochs "
                          f"{run.start_epoch} or more")  # == epochs: finished, resuming does nothing
    if replan:  # a new --epochs re-plans the schedule over the new length, fast-forwarded to this point;
        # built after the optimizer's state is restored, which replaced the groups' schedule fields
        run.scheduler = build_scheduler(cfg, run.optimizer, run.total_steps, run.steps_per_epoch,
                                        run.start_epoch * run.steps_per_epoch + run.start_step)
