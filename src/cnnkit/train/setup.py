"""Setting a run up: threads, seeds and device; the data (split for validation, subsets, statistics); the
model, its loaders, optimizer, schedule and the task's objective. `prepare_run` is the whole phase, and all
that the learning-rate range test needs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.utils import ModelEmaV3

from cnnkit.data import (BatchLoader, ImageData, IndexedImageSet, Normalize, channel_stats, open_training_data,
                         per_class_subset, train_val_split)
from cnnkit.errors import CheckpointError, ConfigError
from cnnkit.models import create
from cnnkit.models.layers import ScheduledDropBlock
from cnnkit.models.weights import load_pretrained
from cnnkit.runtime import autocast_dtype, pick_device, seed_everything, set_threads
from cnnkit.tasks import TrainSetting, get_task
from cnnkit.train.config import TrainConfig
from cnnkit.train.distributed import broadcast, convert_sync_batchnorm, init_ranks, launched_by_torchrun
from cnnkit.train.optim import build_optimizer, build_scheduler
from cnnkit.train.run import Run


def prepare_run(cfg: TrainConfig, progress: bool = False, resuming: bool = False) -> Run:
    """A run set up up to its first step (threads, seeds, device, data, model, optimizer), without a run
    directory: what `fit` does first, and all that `lr_find` needs."""
    run = Run(cfg, resuming=resuming, progress=progress, fit_started=time.perf_counter())
    prepare(run)
    return run


def prepare(run: Run) -> None:
    """Threads, seeds, device, the task, data and model of `run`: everything but the run directory."""
    cfg = run.cfg
    set_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    run.device = pick_device(cfg.device)
    if launched_by_torchrun() and run.device.type == "cuda":  # one GPU per process: its local rank's
        run.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    run.ranks = init_ranks(run.device)
    run.progress = run.progress and run.ranks.main
    if run.ranks.distributed and cfg.batch_size % run.ranks.world:
        raise ConfigError(f"the batch size {cfg.batch_size} is the global batch: it must be a multiple of the "
                          f"{run.ranks.world} processes")
    run.amp = autocast_dtype(cfg.amp, run.device)  # checks --amp against the device; auto decided with the model
    run.task = get_task(cfg.task)
    run.objective = run.task.objective(cfg)
    load_data(run)
    build_model(run)


def load_data(run: Run) -> None:
    """The training data (through the data door), the validation split held out of it unless the source has
    its own, the subsets asked for, and the channel statistics."""
    cfg = run.cfg
    opened = open_training_data(cfg.data, cfg.data_mode, run.ranks.world, cfg.val_fraction > 0,
                                data_dir=cfg.data_dir, download=cfg.download, strict=cfg.strict,
                                img_size=cfg.img_size, test_fraction=cfg.test_fraction, seed=cfg.data_split_seed,
                                bad_boxes="drop" if cfg.drop_bad_boxes else "error", in_chans=cfg.channels)
    run.full, run.data_note = run.task.data_for(opened.full), opened.note
    if opened.splits_itself:
        run.train_set, run.val_set = run.full, opened.val if opened.val is None else run.task.data_for(opened.val)
    elif cfg.val_fraction > 0:
        tr_idx, va_idx = train_val_split(run.full.labels, cfg.val_fraction, cfg.data_split_seed)
        cap = run.task.max_val_items
        if cap is not None and len(va_idx) > cap:  # the task's cap, a seeded draw: the rest is trained on
            order = torch.randperm(len(va_idx), generator=torch.Generator().manual_seed(cfg.data_split_seed))
            tr_idx = torch.cat([tr_idx, va_idx[order[cap:]]]).sort().values
            va_idx = va_idx[order[:cap]].sort().values
        run.train_set, run.val_set = run.full.subset(tr_idx, "train"), run.full.subset(va_idx, "val")
    else:
        run.train_set, run.val_set = run.full, None
    _take_subsets(run)
    run.objective.check_data(tuple(run.full.img_size))
    _check_task_fits(run)
    if len(run.train_set) == 0:
        raise ConfigError(f"{cfg.data}: no training images left after holding out the validation split")
    if opened.stats is not None:
        run.mean, run.std = opened.stats
    elif isinstance(run.train_set, ImageData):
        run.mean, run.std = channel_stats(run.train_set.images)
    else:  # from a fixed sample, decoded by workers: the same on every rank
        from cnnkit.data.stream import sample_channel_stats

        run.mean, run.std = sample_channel_stats(run.train_set, workers=cfg.workers)
        run.data_note = f"streamed ({run.data_note})"
    run.fingerprint = run.full.fingerprint()


def _check_task_fits(run: Run) -> None:
    """The data's targets and the model's outputs are the task's: a class per pixel needs masks and a
    segmentation model, a class per image a classifier (one line otherwise)."""
    cfg, pixels = run.cfg, run.task.name == "segment"
    if pixels != (getattr(run.full, "masks", None) is not None or getattr(run.full, "streams_masks", False)):
        raise ConfigError(f"{cfg.data} has {'no ' if pixels else ''}per-pixel masks: the {run.task.name} task "
                          f"{'needs data with masks (e.g. fashion-scenes)' if pixels else 'takes a class per image'}")
    if not cfg.model.startswith("timm/"):
        from cnnkit.models import get_entry, list_models

        entry = get_entry(cfg.model)
        if entry.task != run.task.name and {"segment", "detect", "restore"} & {entry.task, run.task.name}:
            raise ConfigError(f"{cfg.model} is a {entry.task} model, not a {run.task.name} one; choose one of "
                              f"{', '.join(list_models(task=run.task.name))}")
    elif run.task.name != "classify":
        raise ConfigError(f"timm models are classifiers; the {run.task.name} task needs one of its own models: "
                          f"see `cnnkit models list --task {run.task.name}`")


def _take_subsets(run: Run) -> None:
    """--train-images (a stratified share) and --train-images-per-class (K of each class) of the training split."""
    cfg = run.cfg
    if cfg.train_images is None and cfg.train_images_per_class is None:
        return
    if not isinstance(run.train_set, IndexedImageSet):
        raise ConfigError(f"--train-images and --train-images-per-class pick images by index; {cfg.data} is read "
                          f"in order: write shards of the subset instead")
    if cfg.train_images is not None and cfg.train_images < len(run.train_set):
        _, keep = train_val_split(run.train_set.labels, cfg.train_images / len(run.train_set), cfg.seed)
        run.train_set = run.train_set.subset(keep, "train")
    if cfg.train_images_per_class is not None:  # few labels: K of each class
        run.train_set = run.train_set.subset(
            per_class_subset(run.train_set.labels, cfg.train_images_per_class, cfg.seed), "train")


def build_model(run: Run) -> None:
    """The model (with its head sized by the task's objective), its execution choices, loaders, the
    objective bound to it, optimizer, schedule, EMA and the model the loop steps (DDP, compiled)."""
    cfg, full = run.cfg, run.full
    outputs = run.objective.output_names(run.task.output_names(list(full.classes)))
    run.outputs = len(outputs)
    derived = run.task.model_options(cfg.model, cfg.model_kwargs, run.train_set) if not run.resuming else {}
    if derived:  # e.g. a detector's anchor sizes from the training boxes: recorded in config.yaml and checkpoints
        cfg.model_kwargs = {**cfg.model_kwargs, **derived}
    model = create(cfg.model, num_classes=len(outputs), in_chans=full.in_chans, img_size=full.img_size,
                   **cfg.model_kwargs)
    if cfg.init_from and not run.resuming:  # said once the run is set up (a refusal after it stays one line)
        run.init_note = start_from(model, cfg)
    _choose_execution(run, model)
    memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
    if cfg.sync_bn and run.ranks.distributed:
        model = convert_sync_batchnorm(model, run.device)
    run.model = model.to(run.device, memory_format=memory_format)
    run.normalize = Normalize(run.mean, run.std, run.device, run.channels_last)
    run.train_loader = loader(run, run.train_set, cfg.batch_size, train=True)
    run.val_loader = loader(run, run.val_set, 512, train=False) if run.val_set else None
    if len(run.train_loader) == 0:
        raise ConfigError(f"{cfg.data}: {len(run.train_set)} training images make no batch of "
                          f"{cfg.batch_size} shared among {run.ranks.world} processes; lower --batch-size")
    run.objective.bind(TrainSetting(model, list(full.classes), full.in_chans, tuple(full.img_size), run.mean,
                                    run.std, run.device, run.amp, run.channels_last))
    beside = list(run.objective.modules.values())  # trained with the model (MEAL V2's discriminator)
    run.optimizer = build_optimizer(nn.ModuleList([model, *beside]) if beside else model, cfg)
    run.steps_per_epoch = len(run.train_loader)
    run.scheduler = build_scheduler(cfg, run.optimizer, run.total_steps, run.steps_per_epoch)
    run.ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema > 0 else None
    run.scaler = torch.amp.GradScaler("cuda") if run.amp == torch.float16 else None
    run.aux_params = [p for m in beside for p in m.parameters()] if run.ranks.distributed else []
    stepper = model
    if run.ranks.distributed:  # gradients averaged over the ranks in the backward pass
        stepper = nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.step_model = torch.compile(stepper) if cfg.compile else stepper
    run.drop_blocks = [m for m in model.modules() if isinstance(m, ScheduledDropBlock)]


def init_from_model(path: str | os.PathLike) -> tuple[str, dict[str, Any]] | None:
    """The model name and options of the cnnkit run or checkpoint `path` names (None for a timm or torchvision
    weight file, which carries no architecture)."""
    from cnnkit.artifacts import read_meta, resolve_checkpoint

    p = Path(path).expanduser()
    if not (p.is_dir() or p.suffix == ".safetensors"):
        return None
    file = resolve_checkpoint(p)
    try:
        meta = read_meta(file)
    except CheckpointError:  # plain safetensors weights (timm's): matched by name or position as they are
        return None
    model, options = meta.get("model"), meta.get("model_kwargs") or {}
    if not isinstance(model, str) or not isinstance(options, dict):
        return None
    return model, dict(options)


def model_flags(model: str, options: dict[str, Any]) -> str:
    """The command line's flags that build `model` with `options`."""
    return " ".join([f"--model {model}", *(f"--model-kw {k}={v}" for k, v in options.items())])


def start_from(model: nn.Module, cfg: TrainConfig) -> str:
    """Load --init-from into `model`, and say what was loaded. A cnnkit run's weights belong to its
    architecture: another model, or options whose weights do not fit, is refused in one line naming the flags
    that build the run's model; except a classifier run whose model and options are the segmentation model's
    `backbone` and `backbone_kw`, whose weights go into that backbone (a pretrained encoder)."""
    source = init_from_model(cfg.init_from)
    if source is None:
        return load_pretrained(model, cfg.init_from).summary()
    name, options = source
    asked = ", ".join(f"{k}={v}" for k, v in cfg.model_kwargs.items()) or "its default options"
    held = ", ".join(f"{k}={v}" for k, v in options.items())
    differs = (f"not the {cfg.model} asked for" if name != cfg.model else
               f"whose weights do not fit {name} with {asked}")
    refusal = (f"--init-from {cfg.init_from} holds a {name} model{f' ({held})' if held else ''}, {differs}: add "
               f"{model_flags(name, options)} (or leave out --model to train the run's model)")
    backbone = getattr(model, "backbone", None)
    if name != cfg.model and isinstance(getattr(backbone, "net", None), nn.Module) \
            and cfg.model_kwargs.get("backbone") == name and (cfg.model_kwargs.get("backbone_kw") or {}) == options:
        report = load_pretrained(backbone.net, cfg.init_from)  # a classifier run as a segmentation backbone
        return (f"--init-from {cfg.init_from}: a {name} run's weights as {cfg.model}'s backbone (made atrous; its "
                f"classifier head left out); {report.summary()}")
    if name != cfg.model and cfg.model_kwargs.get("backbone") == name:
        raise ConfigError(f"--init-from {cfg.init_from} holds a {name} model built with {held or 'its defaults'}: "
                          f"as {cfg.model}'s backbone, add --model-kw backbone_kw={json.dumps(options)}")
    if name != cfg.model:
        raise ConfigError(refusal)
    try:
        report = load_pretrained(model, cfg.init_from)
    except CheckpointError:
        if options != cfg.model_kwargs:  # the same model at other widths: its tensors do not fit
            raise ConfigError(refusal) from None
        raise
    return (f"--init-from {cfg.init_from}: a {name} run, trained as its model "
            f"({model_flags(cfg.model, cfg.model_kwargs)}); {report.summary()}")


def _choose_execution(run: Run, model: nn.Module) -> None:
    """Precision and memory layout, measured once per model and machine when `auto` (rank 0's choice for all)."""
    from cnnkit.train.layout import choose_execution

    cfg, full = run.cfg, run.full
    chosen = choose_execution(model, cfg.model, cfg.model_kwargs, (full.in_chans, *full.img_size), cfg.batch_size,
                              run.device, cfg.amp, cfg.channels_last)
    if run.ranks.distributed:  # every rank runs as rank 0 measured, so that they compute alike
        chosen = broadcast(chosen, run.ranks)
    run.amp, run.channels_last, run.precision, run.layout_note = chosen


def loader(run: Run, data: Any, batch_size: int, train: bool) -> Any:
    """The loader for a set: in memory, streamed from files, or from WebDataset shards. Training batches are
    sharded across the ranks; validation gives each rank its share of the images (WebDataset: all)."""
    cfg, ranks = run.cfg, run.ranks
    opts = dict(shuffle=True, seed=cfg.seed, augment=cfg.augment, drop_last=len(data) > batch_size,
                rank=ranks.rank, world=ranks.world) if train else {}
    if not train and ranks.distributed and not hasattr(data, "shards"):
        data = data.subset(torch.arange(ranks.rank, len(data), ranks.world), data.split)
    if isinstance(data, ImageData):
        return BatchLoader(data, batch_size, run.normalize, **opts)
    if hasattr(data, "shards"):
        from cnnkit.data.shards import WebDatasetLoader

        return WebDatasetLoader(data, batch_size, run.normalize, workers=cfg.workers, **opts)
    from cnnkit.data.stream import StreamLoader

    return StreamLoader(data, batch_size, run.normalize, workers=cfg.workers, **opts)
