"""The training loop: `fit(**options)` trains a model into a run directory and returns a FitResult."""

from __future__ import annotations

import csv
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from cnnkit.data import BatchLoader, ImageData, Normalize, channel_stats, load_dataset, train_val_split
from cnnkit.errors import CheckpointError, ConfigError, TrainingDiverged
from cnnkit.models import create
from cnnkit.models.layers import MultiSampleDropout, ScheduledDropBlock
from cnnkit.models.weights import load_pretrained
from cnnkit.runtime import autocast, autocast_dtype, pick_device, seed_everything, set_threads
from cnnkit.artifacts import atomic_write_text, read_meta, save_checkpoint
from cnnkit.train.config import TrainConfig, resolve_config
from cnnkit.train.progress import TrainProgress
from cnnkit.train.state import load_train_state, save_train_state

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                 "elapsed_seconds", "images_per_s"]


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


def _run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    run = Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.model.replace('/', '-')}-{cfg.data.split(':')[0]}"
    if not cfg.out and not resume:  # default names never overwrite: runs/x, runs/x-2, runs/x-3, ...
        base, i = run, 2
        while (run / "last.safetensors").exists():
            run, i = base.with_name(f"{base.name}-{i}"), i + 1
    if (run / "last.safetensors").exists() and not resume:
        if not overwrite:
            raise ConfigError(f"{run} already holds a run; pass --resume to continue it, or another --out")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return run


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: one-cycle (warm-up = its rising phase) or linear warm-up then cosine decay."""
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total_steps // 2)
    if total_steps < 4:  # too short to shape: constant learning rate
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=max(warmup, 1) / total_steps,
            anneal_strategy="linear", cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
    sched = torch.optim.lr_scheduler
    cosine = sched.CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup, 1), eta_min=cfg.lr * 1e-3)
    if warmup == 0:
        return cosine
    linear = sched.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: BatchLoader, device: torch.device, amp: torch.dtype | None,
                    tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and labels over a loader; flip TTA averages with the mirrored image."""
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        with autocast(device, amp):
            p = model(x).float().softmax(1)
            if tta:
                p = 0.5 * (p + model(x.flip(3)).float().softmax(1))
        probs.append(p)
        labels.append(y)
    return torch.cat(probs).cpu(), torch.cat(labels).cpu()


def _checkpoint_meta(cfg: TrainConfig, data: ImageData, fingerprint: str, mean: Sequence[float],
                     std: Sequence[float], epoch: int, metrics: dict[str, float], ema: bool) -> dict[str, Any]:
    return {
        "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": data.classes,
        "in_chans": data.in_chans, "img_size": list(data.img_size),
        "normalization": {"mean": list(mean), "std": list(std)},
        "dataset": {"name": cfg.data, "fingerprint": fingerprint, "train_images": len(data)},
        "epoch": epoch, "metrics": metrics, "ema_weights": ema, "config": cfg.to_dict(),
    }


def fit(config: TrainConfig | dict[str, Any] | None = None, *, resume: str | Path | None = None,
        overwrite: bool = False, progress: bool = True,
        callbacks: Sequence[Callable[[EpochEnd], None]] = (), **options: Any) -> FitResult:
    """Train `model` on `data` as the config says; `resume=RUN_DIR` continues a run exactly where it stopped.

    Options are TrainConfig fields (e.g. `fit(model="resnet20", data="sample", epochs=5)`); an explicitly
    given option wins over the recipe, which wins over the defaults.
    """
    started = time.perf_counter()
    if resume is not None:
        last = Path(resume) / "last.safetensors"
        if not last.exists():
            raise CheckpointError(f"cannot resume: {last} does not exist")
        saved = read_meta(last)
        allowed = {"epochs", "device", "threads", "early_stopping"}  # what may change on resume
        changed = sorted(k for k, v in options.items() if v is not None and k not in allowed
                         and saved["config"].get(k) != v)
        if changed:
            raise ConfigError(f"--resume continues the saved configuration; cannot change: {', '.join(changed)}")
        cfg = TrainConfig.from_dict({**saved["config"], **{k: v for k, v in options.items() if v is not None},
                                     "out": str(resume)})  # the run may have been moved since
    elif isinstance(config, TrainConfig):
        cfg = resolve_config(options, base=config) if options else config
    else:
        cfg = resolve_config({**(config or {}), **options})

    set_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    device = pick_device(cfg.device)
    amp = autocast_dtype(cfg.amp, device)

    full = load_dataset(cfg.data, "train", data_dir=cfg.data_dir, download=cfg.download, strict=cfg.strict,
                        img_size=cfg.img_size)
    if cfg.val_fraction > 0:
        tr_idx, va_idx = train_val_split(full.labels, cfg.val_fraction, cfg.seed)
        train_set, val_set = full.subset(tr_idx, "train"), full.subset(va_idx, "val")
    else:
        train_set, val_set = full, None
    if cfg.train_images is not None and cfg.train_images < len(train_set):
        _, keep = train_val_split(train_set.labels, cfg.train_images / len(train_set), cfg.seed)
        train_set = train_set.subset(keep, "train")
    if len(train_set) == 0:
        raise ConfigError(f"{cfg.data}: no training images left after holding out the validation split")
    mean, std = channel_stats(train_set.images)
    fingerprint = full.fingerprint()

    model = create(cfg.model, num_classes=full.num_classes, in_chans=full.in_chans, img_size=full.img_size,
                   **cfg.model_kwargs)
    if cfg.init_from and resume is None:
        report = load_pretrained(model, cfg.init_from)
        if progress:
            print(report.summary())
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    normalize = Normalize(mean, std, device, cfg.channels_last)
    train_loader = BatchLoader(train_set, cfg.batch_size, normalize, shuffle=True, seed=cfg.seed,
                               augment=cfg.augment, drop_last=len(train_set) > cfg.batch_size)
    val_loader = BatchLoader(val_set, 512, normalize) if val_set is not None else None

    optimizer = create_optimizer_v2(model, opt="nesterov" if cfg.optimizer == "sgd" else "adamw", lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                    filter_bias_and_bn=True)
    steps_per_epoch = len(train_loader)
    scheduler = build_scheduler(cfg, optimizer, cfg.epochs * steps_per_epoch, steps_per_epoch)
    ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema > 0 else None
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    step_model = torch.compile(model) if cfg.compile else model

    run_dir = _run_dir(cfg, resume is not None, overwrite)
    history: list[dict[str, float]] = []
    start_epoch, best_acc, stale, elapsed_before = 0, -1.0, 0, 0.0
    if resume is not None:
        last_meta = read_meta(run_dir / "last.safetensors")
        if last_meta["dataset"]["fingerprint"] != fingerprint:
            raise ConfigError(f"cannot resume {run_dir}: the training data changed since the run started "
                              f"(fingerprint {fingerprint}, saved {last_meta['dataset']['fingerprint']})")
        model.load_state_dict(load_file(str(run_dir / "last.safetensors")))
        replan = cfg.epochs != last_meta["config"]["epochs"]
        p = load_train_state(run_dir / last_meta["train_state"], optimizer, None if replan else scheduler, ema)
        start_epoch, best_acc, stale, history = p["epoch"], p["best_acc"], p["stale"], p["history"]
        elapsed_before = p["elapsed_seconds"]
        if start_epoch >= cfg.epochs:
            raise ConfigError(f"{run_dir} already finished {start_epoch} epoch(s); pass a larger --epochs to go on")
        if replan:  # a new --epochs re-plans the schedule over the new length, fast-forwarded to this point
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(start_epoch * steps_per_epoch):
                    scheduler.step()
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch + 1 if start_epoch else None)
    csv_path = run_dir / "metrics.csv"
    if start_epoch == 0 or not csv_path.exists():
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerow(METRIC_FIELDS)
    else:  # keep only the epochs the resumed state knows about
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_FIELDS)
            w.writeheader()
            w.writerows(history)

    msd_heads = [m for m in model.modules() if isinstance(m, MultiSampleDropout)]
    drop_blocks = [m for m in model.modules() if isinstance(m, ScheduledDropBlock)]

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        samples = msd_heads[0].last_samples if msd_heads else None  # average the per-sample losses
        if samples is not None:
            return torch.stack([F.cross_entropy(s.float(), target, label_smoothing=cfg.label_smoothing)
                                for s in samples]).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)


    stopped_early = False
    bar = TrainProgress(cfg.epochs, steps_per_epoch, enabled=progress)
    try:
        with bar:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                model.train()
                train_loader.set_epoch(epoch)
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device)
                seen = 0
                bar.start_epoch(epoch)
                for i, (x, y) in enumerate(train_loader):
                    for block in drop_blocks:  # DropBlock's rate grows linearly over the run
                        block.set_progress((epoch * steps_per_epoch + i) / (cfg.epochs * steps_per_epoch))
                    with autocast(device, amp):
                        logits = step_model(x)
                    loss = criterion(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    if cfg.grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    lr_used = optimizer.param_groups[0]["lr"]
                    if epoch * steps_per_epoch + i + 1 < cfg.epochs * steps_per_epoch:
                        scheduler.step()  # stepping past the last step would extrapolate the schedule
                    if ema is not None:
                        ema.update(model, step=epoch * steps_per_epoch + i)
                    n = len(y)
                    seen += n
                    loss_sum += loss.detach() * n
                    hard = y if y.ndim == 1 else y.argmax(1)
                    correct += (logits.detach().argmax(1) == hard).sum()
                    if i % 20 == 19 or i == steps_per_epoch - 1:
                        mean_loss = float(loss_sum) / seen  # one host sync every 20 steps
                        if not math.isfinite(mean_loss):
                            raise TrainingDiverged(
                                f"loss became {mean_loss} at epoch {epoch + 1}, step {i + 1}; stopped. The last good "
                                f"checkpoint is kept in {run_dir}; try a lower --lr or --grad-clip 1.0")
                        bar.update(i + 1, mean_loss, float(correct) / seen, seen / (time.perf_counter() - t0))
                train_seconds = time.perf_counter() - t0
                eval_model = ema.module if ema is not None else model
                metrics = {"epoch": epoch + 1, "train_loss": float(loss_sum) / seen,
                           "train_acc": float(correct) / seen, "lr": lr_used,
                           "images_per_s": seen / train_seconds}
                if val_loader is not None:
                    probs, labels = evaluate_loader(eval_model, val_loader, device, amp, cfg.tta)
                    metrics["val_loss"] = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))
                    metrics["val_acc"] = float((probs.argmax(1) == labels).float().mean())
                metrics["epoch_seconds"] = time.perf_counter() - t0
                metrics["elapsed_seconds"] = elapsed_before + time.perf_counter() - started
                history.append({k: metrics.get(k, float("nan")) for k in METRIC_FIELDS})

                score = metrics.get("val_acc", metrics["epoch"])  # without validation, the latest is best
                improved = score > best_acc
                if improved:
                    best_acc, stale = score, 0
                else:
                    stale += 1
                meta = _checkpoint_meta(cfg, full, fingerprint, mean, std, epoch + 1, metrics, ema is not None)
                if improved:
                    save_checkpoint(run_dir / "best.safetensors", eval_model, meta)
                state_name = f"state-e{epoch + 1:04d}.safetensors"
                save_train_state(run_dir / state_name, optimizer, scheduler, ema,
                                 {"epoch": epoch + 1, "best_acc": best_acc, "stale": stale, "history": history,
                                  "elapsed_seconds": metrics["elapsed_seconds"]})
                # last.safetensors names its state file; the previous state file goes only once it is replaced,
                # so a run killed at any moment leaves a consistent last checkpoint to resume from.
                save_checkpoint(run_dir / "last.safetensors", model, {**meta, "train_state": state_name})
                if epoch + 1 in cfg.keep_epochs:  # e.g. a lottery-ticket rewind point for `cnnkit compress`
                    save_checkpoint(run_dir / f"epoch-{epoch + 1:04d}.safetensors", model, meta)
                for old in run_dir.glob("state-e*.safetensors"):
                    if old.name != state_name:
                        old.unlink()
                with open(csv_path, "a", newline="") as f:
                    csv.DictWriter(f, METRIC_FIELDS).writerow(history[-1])
                for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
                    if k in metrics:
                        tb.add_scalar(k, metrics[k], epoch + 1)
                tb.flush()
                bar.end_epoch(metrics)
                for cb in callbacks:
                    cb(EpochEnd(epoch + 1, metrics, model, eval_model, normalize, device, run_dir))
                if cfg.early_stopping and val_loader is not None and stale >= cfg.early_stopping:
                    stopped_early = True
                    break
    finally:
        tb.close()
    return FitResult(run_dir, cfg, history, run_dir / "best.safetensors", run_dir / "last.safetensors",
                     best_acc if val_loader is not None else None, stopped_early,
                     elapsed_before + time.perf_counter() - started, len(train_set),
                     len(val_set) if val_set is not None else 0)
