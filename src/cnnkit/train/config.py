"""The resolved training configuration: defaults, then a named recipe for the dataset, then the user's options."""

from __future__ import annotations

import copy
import math
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnkit.data.settings import (DEFAULT_VAL_FRACTION, PATH_SOURCES, TRAINING_DATASETS, AugmentConfig,
                                  is_detection_data, is_restoration_data, is_segmentation_data)
from cnnkit.errors import ConfigError, close_matches
from cnnkit.train.recipes import family_recipe

OPTIMIZERS = ("sgd", "adamw", "rmsprop")


@dataclass
class TrainConfig:
    """Everything that decides a training run. Written to `<run>/config.yaml`."""

    # A field whose `metadata` has a "help" is an option of `cnnkit train` and `distill` (made by cnnkit.cli.train):
    # "help" its text; "option" its name when not --<field-name>; "form" how the command line writes a value not
    # of the field's own type ("path"; "key=value", repeatable; "duration" such as 3m; "size": N or HxW); "min" the
    # smallest number the command line takes. Options default to None there: not given, resolve_config decides.
    task: str = "classify"  # what the model outputs and learns (a registered cnnkit.tasks task)
    model: str = field(default="resnet9", metadata={
        "help": "Model name (see `cnnkit models list`); default from the recipe."})
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Model option key=value (repeatable).", "option": "--model-kw", "form": "key=value"})
    data: str = field(default="sample", metadata={
        "help": f"{', '.join(TRAINING_DATASETS[:-1])} or {TRAINING_DATASETS[-1]} (imagefolder: a folder of class "
                f"folders; masks: images/ and masks/ folders of index PNGs; voc: the Pascal VOC layout; coco: a COCO "
                f"instances file (masks, voc and coco train the segment task); yolo, voc-boxes, coco-boxes: boxes in "
                f"the YOLO, Pascal VOC or COCO format (they train the detect task); webdataset: the shards `cnnkit "
                f"data shard` wrote, validated on their val shards)."})
    data_dir: str | None = field(default=None, metadata={
        "help": "Data root (default $CNNKIT_DATA, else ~/.cache/cnnkit/data).", "form": "path"})
    download: bool = field(default=False, metadata={"help": "Fetch the dataset if missing."})
    strict: bool = field(default=False, metadata={  # else unreadable images are skipped (and named)
        "help": "Stop at the first unreadable image."})
    img_size: int | list[int] | None = field(default=None, metadata={  # None: the images' common size, else 64
        "help": "imagefolder, masks, voc, coco and the box files: resize images (and masks, boxes) to N×N (e.g. "
                "32) or to height×width (e.g. 48x32).", "form": "size"})
    channels: int | None = field(default=None, metadata={  # None: the source's own (RGB for photographs)
        "help": "photographs, photofolder and pairfolder: read the images as 1 channel, their luma Y (what SRCNN and "
                "ESPCN train on and the super-resolution papers score), or 3 (RGB, the default)."})
    test_fraction: float = field(default=0.2, metadata={
        "help": "Flat imagefolder (no train/ and test/ sub-folders): share of each class held out as the test split, "
                "chosen by --seed (default 0.2); likewise of the images of masks:DIR without train/ and test/, "
                "coco:FILE.json and coco-boxes:FILE.json, and of box files without a test or val split."})
    drop_bad_boxes: bool = field(default=False, metadata={  # else a bad box is an error (one line, exit 2)
        "help": "yolo, voc-boxes, coco-boxes: leave out boxes that are malformed, of an unknown class, without area "
                "or outside their image (one warning counts them) instead of stopping at the first."})
    recipe: str | None = field(default="fast", metadata={
        "help": "Named defaults per dataset: fast or long (default fast)."})
    model_recipe: str | None = None  # which optimization recipe applies: '<recipe>:<data family>' or a model family's
    epochs: int = field(default=10, metadata={"help": "Training epochs (default from the recipe).", "min": 1})
    budget: float | None = field(default=None, metadata={  # seconds
        "help": "Train to a time budget instead of --epochs, e.g. 90s, 3m, 1h: measures this machine's pace and plans "
                "the run, evaluations and checkpoints included, to end inside it.", "form": "duration"})
    max_steps: int | None = None  # optimizer steps in all (set by the budget's plan); None: epochs × steps per epoch
    batch_size: int = field(default=256, metadata={"help": "Images per step (default from the recipe).", "min": 1})
    optimizer: str = field(default="sgd", metadata={  # RMSProp TensorFlow-style, as the papers'
        "help": "sgd (Nesterov), adamw or rmsprop (default: the model family's recipe, see `cnnkit models info`)."})
    lr: float = field(default=0.1, metadata={"help": "Peak learning rate."})
    momentum: float = 0.9
    opt_eps: float | None = None  # the optimizer's epsilon (None: its default; RMSProp recipes set it)
    weight_decay: float = field(default=5e-4, metadata={
        "help": "Weight decay, on weights only (not norms, biases)."})
    schedule: str = field(default="onecycle", metadata={"help": "onecycle or cosine."})
    warmup_epochs: float = field(default=1.0, metadata={"help": "Epochs of learning-rate warm-up."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing in [0, 1)."})
    dice: float = field(default=0.0, metadata={
        "help": "Segmentation: add this weight × the Dice loss to the pixel cross-entropy (0 = off)."})
    ema: float = field(default=0.0, metadata={"help": "EMA decay of the weights (0 = off)."})
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={
        "help": f"Augmentation key=value (repeatable): {', '.join(f.name for f in dataclasses.fields(AugmentConfig))}.",
        "form": "key=value"})
    amp: str = field(default="auto", metadata={
        "help": "auto (bf16 where the CPU or GPU computes it natively, else fp32), bf16, fp16 or off."})
    channels_last: bool | str = field(default="auto", metadata={  # 'auto': measured once per model and machine
        "help": "Channels-last (or, --no-channels-last, NCHW) memory layout; default: on a CPU whichever trains "
                "this model faster, measured once per model and machine; on a GPU channels-last."})  # train/layout
    compile: bool = field(default=False, metadata={"help": "torch.compile the model."})
    grad_clip: float = field(default=0.0, metadata={"help": "Max gradient norm (0 = off)."})
    init_from: str | None = field(default=None, metadata={
        "help": "Start from these weights: a timm/torchvision .pth/.safetensors file or a cnnkit run.", "form": "path"})
    early_stopping: int = field(default=0, metadata={  # epochs without validation improvement
        "help": "Patience in epochs (0 = off)."})
    train_images: int | None = field(default=None, metadata={  # seeded
        "help": "Train on a stratified subset of this many images."})
    train_images_per_class: int | None = field(default=None, metadata={
        "help": "Train on this many images of each class (seeded): few labels, e.g. with --init-from a `cnnkit pretrain` "
                "run.", "min": 1})
    pretext: str | None = None  # a self-supervised task instead of the labels: 'rotnet' (`cnnkit pretrain`)
    rotations: int = 4  # rotnet: 4 (0/90/180/270°) or 2 (0/180°, the paper's ablation)
    distill: str | None = None  # learn from teachers: 'kd' (Hinton 2015) or 'meal-v2' (no labels; `cnnkit distill`)
    teachers: list[str] = field(default_factory=list)  # the teachers' checkpoints or run directories
    kd_temperature: float = 4.0  # kd: softmax temperature T of teachers and student
    kd_alpha: float = 0.9  # kd: weight of the soft (T²-scaled) loss; 1 − α weighs the hard labels
    disc_weight: float = 1.0  # meal-v2: scale of the discriminator's reversed gradient into the student
    val_fraction: float = field(default=DEFAULT_VAL_FRACTION, metadata={  # stratified, by the split seed
        "help": f"Share of train held out for validation (default {DEFAULT_VAL_FRACTION}; 0: none). webdataset: "
                f"the val shards are the validation split (0 leaves them out)."})
    tta: bool = field(default=False, metadata={"help": "Flip test-time augmentation in validation."})
    keep_epochs: list[int] = field(default_factory=list, metadata={
        "help": "Also keep the weights after this epoch as RUN/epoch-NNNN.safetensors (repeatable).",
        "option": "--keep-epoch"})
    seed: int = field(default=0, metadata={
        "help": "Random seed of initialization, splits, order and augmentation (default 0)."})
    split_seed: int | None = field(default=None, metadata={  # None: `seed`
        "help": "Seed of the held-out validation (and flat folder's test) split, default --seed: runs that share it "
                "hold out the same images (model-soup ingredients)."})
    deterministic: bool = field(default=False, metadata={
        "help": "Deterministic kernels: the same seed gives the same weights, bit for bit."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present, else CPU), cpu or cuda[:N]."})
    threads: int = field(default=0, metadata={"help": "CPU threads (0 = torch default)."})
    out: str | None = field(default=None, metadata={
        "help": "Run directory (default runs/<model>-<data>; for `cnnkit pretrain` runs/<model>-<data>-rotnet).",
        "form": "path"})
    data_mode: str = field(default="auto", metadata={
        "help": "imagefolder, masks, voc, coco: memory (decode once, hold in RAM), stream (decode and augment in "
                "worker processes, bounded memory) or auto (stream when the decoded set would take more than a quarter of the "
                "available memory; default)."})
    workers: int | None = field(default=None, metadata={
        "help": "Streaming: decoding processes per training process (default: the CPUs shared among the processes, "
                "≤ 8).", "min": 0})
    sync_bn: bool = field(default=False, metadata={  # CPU and CUDA
        "help": "Several processes: BatchNorm with the global batch's statistics."})
    checkpoint_every: int = field(default=0, metadata={
        "help": "Also save the full training state every N steps, mid-epoch, so that --resume (or torchrun "
                "--max-restarts) continues from that step (0 = only at epochs' ends).", "min": 0})

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        self._check_types()
        from cnnkit.tasks import get_task  # here: the CLI reads this module at start-up, without torch

        get_task(self.task)  # an unknown task: one line naming the registered ones
        checks = [
            (self.optimizer in OPTIMIZERS,
             f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.opt_eps is None or (isinstance(self.opt_eps, (int, float)) and not isinstance(self.opt_eps, bool)
                                      and self.opt_eps > 0), f"optimizer epsilon must be positive, got {self.opt_eps!r}"),
            (self.schedule in ("onecycle", "cosine"), f"schedule must be 'onecycle' or 'cosine', got {self.schedule!r}"),
            (self.amp in ("auto", "bf16", "fp16", "off"), f"amp must be auto, bf16, fp16 or off, got {self.amp!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.budget is None or (isinstance(self.budget, (int, float)) and not isinstance(self.budget, bool)
                                     and math.isfinite(self.budget) and self.budget >= 10),
             f"a training budget must be at least 10 seconds, got {self.budget!r}"),
            (self.max_steps is None or (isinstance(self.max_steps, int) and not isinstance(self.max_steps, bool)
                                        and self.max_steps >= 1), f"max_steps must be at least 1, got {self.max_steps!r}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (0.0 <= self.ema < 1.0, f"EMA decay must be in [0, 1), got {self.ema}"),
            (0.0 <= self.label_smoothing < 1.0, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0.0 <= self.dice and math.isfinite(self.dice), f"the Dice weight must be 0 or more, got {self.dice}"),
            (self.dice == 0 or self.task == "segment", "--dice is a segmentation loss; this run's task is "
                                                      f"{self.task}"),
            (self.train_images is None or self.train_images > 0,
             f"train_images must be positive, got {self.train_images}"),
            (self.train_images_per_class is None or (isinstance(self.train_images_per_class, int)
                                                     and not isinstance(self.train_images_per_class, bool)
                                                     and self.train_images_per_class > 0),
             f"images per class must be a positive whole number, got {self.train_images_per_class!r}"),
            (self.pretext in (None, "rotnet"), f"unknown pretraining method {self.pretext!r}; choose rotnet"),
            (self.distill in (None, "kd", "meal-v2"), f"distillation method must be kd or meal-v2, got {self.distill!r}"),
            (bool(self.teachers) == (self.distill is not None),
             "give the student's teacher(s): --teacher RUN (repeatable), and a distillation method; teachers "
             "without a method do nothing"),
            (not (self.distill and self.pretext), "distillation and a pretext task do not combine"),
            (self.kd_temperature > 0, f"distillation temperature must be positive, got {self.kd_temperature}"),
            (0.0 <= self.kd_alpha <= 1.0, f"kd alpha (the soft loss's weight) must lie in [0, 1], got {self.kd_alpha}"),
            (self.disc_weight >= 0, f"discriminator weight must be 0 (off) or more, got {self.disc_weight}"),
            (self.rotations in (2, 4), f"--rotations must be 2 (0/180°) or 4 (0/90/180/270°), got {self.rotations!r}"),
            (0.0 <= self.val_fraction < 1.0, f"validation fraction must be in [0, 1), got {self.val_fraction}"),
            (not self.data.startswith("webdataset:") or self.val_fraction in (0, DEFAULT_VAL_FRACTION),
             f"--val-fraction {self.val_fraction} does not apply to webdataset: its val shards are the validation "
             f"split (chosen by `cnnkit data shard --val-fraction`); leave --val-fraction out, or give 0 to train "
             f"without validation"),
            (self.channels in (None, 1, 3) and not isinstance(self.channels, bool),
             f"--channels must be 1 (luma) or 3 (RGB), got {self.channels!r}"),
            (self.channels is None or is_restoration_data(self.data),
             f"--channels reads photographs (photographs, photofolder:DIR, pairfolder:DIR) as luma or RGB; {self.data} "
             f"gives its own channels"),
            (0.0 < self.test_fraction < 1.0,
             f"--test-fraction must be strictly between 0 and 1, e.g. 0.2; got {self.test_fraction}"),
            (self.img_size is None or (isinstance(self.img_size, int) and self.img_size > 0)
             or (isinstance(self.img_size, (list, tuple)) and len(self.img_size) == 2
                 and all(isinstance(v, int) and v > 0 for v in self.img_size)),
             f"image size must be a positive side N or HxW, got {self.img_size}"),
            (self.split_seed is None or (isinstance(self.split_seed, int) and not isinstance(self.split_seed, bool)),
             f"split seed must be a whole number, got {self.split_seed!r}"),
            (self.threads >= 0, f"threads must be 0 (torch's default) or more, got {self.threads}"),
            (self.data_mode in ("auto", "memory", "stream"),
             f"data mode must be auto, memory or stream, got {self.data_mode!r}"),
            (self.workers is None or (isinstance(self.workers, int) and not isinstance(self.workers, bool)
                                      and self.workers >= 0), f"workers must be 0 or more, got {self.workers!r}"),
            (isinstance(self.checkpoint_every, int) and not isinstance(self.checkpoint_every, bool)
             and self.checkpoint_every >= 0,
             f"--checkpoint-every must be a number of steps, 0 (off) or more, got {self.checkpoint_every!r}"),
            (self.early_stopping >= 0, f"early stopping patience must be 0 (off) or more, got {self.early_stopping}"),
            (self.grad_clip >= 0, f"gradient clipping norm must be 0 (off) or positive, got {self.grad_clip}"),
            (self.weight_decay >= 0, f"weight decay must be non-negative, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, "warm-up epochs must be non-negative"),
            (all(isinstance(e, int) and 1 <= e <= self.epochs for e in self.keep_epochs),
             f"epochs to keep must lie between 1 and {self.epochs}, got {self.keep_epochs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def _check_types(self) -> None:
        """Each field holds its declared kind of value (a config.yaml or a Python call may give anything)."""
        kinds = {"epochs": int, "batch_size": int, "seed": int, "threads": int, "early_stopping": int,
                 "lr": float, "momentum": float, "weight_decay": float, "warmup_epochs": float,
                 "label_smoothing": float, "dice": float, "ema": float, "kd_temperature": float, "kd_alpha": float,
                 "disc_weight": float, "grad_clip": float, "val_fraction": float,
                 "test_fraction": float, "model": str, "data": str, "optimizer": str, "schedule": str,
                 "amp": str, "device": str, "download": bool, "strict": bool, "drop_bad_boxes": bool,
                 "compile": bool, "tta": bool, "deterministic": bool, "sync_bn": bool, "data_mode": str}
        for name, kind in kinds.items():
            value = getattr(self, name)
            ok = (isinstance(value, bool) if kind is bool else
                  isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
                  isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, str))
            if not ok:
                what = {bool: "true or false", float: "a number", int: "a whole number", str: "text"}[kind]
                raise ConfigError(f"training option {name} must be {what}, got {value!r}")
        if not (isinstance(self.channels_last, bool) or self.channels_last == "auto"):
            raise ConfigError(f"training option channels_last must be true, false or auto, got {self.channels_last!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a mapping of model options, got {self.model_kwargs!r}")
        if self.train_images is not None and (not isinstance(self.train_images, int) or isinstance(self.train_images, bool)):
            raise ConfigError(f"train_images must be a whole number, got {self.train_images!r}")
        if not (isinstance(self.teachers, list) and all(isinstance(t, str) for t in self.teachers)):
            raise ConfigError(f"teachers must be a list of checkpoint paths, got {self.teachers!r}")
        if not isinstance(self.keep_epochs, list):
            raise ConfigError(f"keep_epochs must be a list of epochs, got {self.keep_epochs!r}")

    @property
    def data_split_seed(self) -> int:
        """The seed of the held-out splits: `split_seed`, else `seed`."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}"
                              f"{close_matches(unknown[0], known)}")
        return cls(**copy.deepcopy(values))


LONG_RECIPE_FROM_S = 360  # from this budget on, --budget without --recipe tries the `long` recipe (a wider net) ...
LONG_RECIPE_MIN_EPOCHS = 8  # ... and keeps it if this machine fits this many of its epochs, else takes `fast`


def dataset_family(data: str) -> str:
    """Which recipe table a dataset uses."""
    if data in ("sample", "fashion-mnist", "mnist"):
        return "mnist-like"
    if data == "cifar10":
        return "cifar10"
    if data.startswith("cluttered-"):
        return "cluttered"
    if is_segmentation_data(data) or is_detection_data(data):
        return "scenes"  # detection files: `scenes-detect` (their task is detect)
    if is_restoration_data(data):
        return "photographs"
    return "imagefolder"


# Defaults chosen on a validation split carved from the training set (never on the test set); see
# benchmarks/time_to_accuracy.py for how they perform on full Fashion-MNIST on a 2-core CPU.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "fast": {
        # Fashion-MNIST, 54k/6k split: 6 epochs gave 94.3% validation accuracy with flip only, 93.3% with a
        # padded crop added (too strong for so short a schedule); 5 epochs fit 3 minutes on 2 cores.
        # Pooling before BN and ReLU (`pool_first`): same convolutions, 1.22× faster fp32 training (trainer_overhead).
        "mnist-like": dict(model="resnet9", model_kwargs={"width": 16, "pool_first": True}, epochs=5, batch_size=256,
                           lr=0.2, optimizer="sgd", weight_decay=5e-4, schedule="onecycle", warmup_epochs=1.5,
                           label_smoothing=0.1, augment={"crop_padding": 0, "hflip": True}, tta=True),
        # 64×64 canvases, 5× the pixels of Fashion-MNIST: the same network, fewer epochs for the same budget.
        "cluttered": dict(model="resnet9", model_kwargs={"width": 16}, epochs=4, batch_size=128, lr=0.1,
                          optimizer="sgd", weight_decay=5e-4, schedule="onecycle", warmup_epochs=1,
                          label_smoothing=0.1, augment={"crop_padding": 0, "hflip": True}),
        "cifar10": dict(model="resnet9", model_kwargs={"width": 32}, epochs=12, batch_size=256, lr=0.2,
                        schedule="onecycle", warmup_epochs=2, label_smoothing=0.1,
                        augment={"crop_padding": 4, "hflip": True}, tta=True),
        "imagefolder": dict(model="resnet9", model_kwargs={"width": 16}, epochs=15, batch_size=64, lr=0.05,
                            schedule="onecycle", warmup_epochs=1, label_smoothing=0.1,
                            augment={"crop_padding": 4, "hflip": True}),
        # fashion-scenes (segmentation): a U-Net working at half resolution (stride-2 stem) with four poolings, a 3×3
        # 256-channel bottleneck that sees whole objects: 244 ms per step of 32 on a 2-core Xeon (fp32, NCHW, which
        # fit measured faster; 191-245 ms once the step's mIoU took max's indices) against 408 ms for the
        # full-resolution width-16 U-Net (the first setting), whose validation mIoU had most classes confused after
        # 4 epochs; not tuned further (see the Segment page)
        # fashion-scenes' boxes (a detector given): FCOS on the small backbone's FPN, the detection family's settings.
        # Screened in 5-minute budgets (seed 0, validation mAP, 2-core AMD EPYC, fp32): RetinaNet 0.22 (0.20 with
        # a GIoU box loss), FCOS 0.33 with the generic recipe's batch 128 (0.30 with two blocks per stage, 0.32
        # at width 24), FCOS 0.46 at batch 32 with weight decay 1e-4 and one-cycle, 0.48 with lr 2e-3 (kept; a
        # score threshold of 0.05 instead of torchvision's 0.2 changed its validation mAP by 0.0006: kept 0.2)
        "scenes-detect": dict(model="fcos_small", model_kwargs={"width": 16}, task="detect", epochs=12,
                              batch_size=32, lr=2e-3, optimizer="adamw", weight_decay=1e-4, schedule="onecycle",
                              warmup_epochs=1, grad_clip=1.0, label_smoothing=0.0,
                              augment={"crop_padding": 0, "hflip": True}, tta=False),
        # photographs (restoration): ESPCN at ×3, the setting; the restoration family's optimization (no
        # warm-up: the papers have none, and a photograph set's epoch is long)
        "photographs": dict(model="espcn", model_kwargs={"scale": 3}, task="restore", epochs=10, batch_size=16,
                            lr=1e-3, optimizer="adamw", weight_decay=0.0, schedule="cosine", warmup_epochs=0,
                            grad_clip=0.0, label_smoothing=0.0, augment={"crop_padding": 0, "hflip": True}, tta=False),
        "scenes": dict(model="unet_small", model_kwargs={"width": 16, "depth": 4, "stem_stride": 2}, task="segment",
                       epochs=12, batch_size=32,
                       lr=3e-3, optimizer="adamw", weight_decay=1e-4, schedule="onecycle", warmup_epochs=1,
                       label_smoothing=0.0, augment={"crop_padding": 0, "hflip": True}, tta=True),
    },
    "long": {
        # Fashion-MNIST, 54k/6k split: width 16 without crop plateaued at 94.5% validation accuracy by epoch 10
        # (of 14); width 24 with a 2-pixel padded crop was at 94.4% after a 10-epoch schedule and still rising.
        # 25 epochs at width 24 fill 30 minutes on 2 cores, test evaluation after every epoch included.
        "mnist-like": dict(model="resnet9", model_kwargs={"width": 24, "pool_first": True}, epochs=25, batch_size=256, lr=0.2,
                           optimizer="sgd", weight_decay=5e-4, schedule="onecycle", warmup_epochs=2,
                           label_smoothing=0.1, ema=0.999, augment={"crop_padding": 2, "hflip": True}, tta=True),
        "cluttered": dict(model="resnet9", model_kwargs={"width": 24}, epochs=12, batch_size=128, lr=0.1,
                          optimizer="sgd", weight_decay=5e-4, schedule="onecycle", warmup_epochs=2,
                          label_smoothing=0.1, ema=0.999, augment={"crop_padding": 4, "hflip": True}),
        "cifar10": dict(model="resnet9", model_kwargs={"width": 64}, epochs=40, batch_size=256, lr=0.2,
                        schedule="onecycle", warmup_epochs=5, label_smoothing=0.1, ema=0.999,
                        augment={"crop_padding": 4, "hflip": True, "policy": "trivialaugment", "erasing": 0.25},
                        tta=True),
        "imagefolder": dict(model="resnet9", model_kwargs={"width": 32}, epochs=60, batch_size=64, lr=0.05,
                            schedule="cosine", warmup_epochs=3, label_smoothing=0.1, ema=0.999,
                            augment={"crop_padding": 4, "hflip": True, "policy": "trivialaugment"}),
        # the fast recipe's detector; at a 10-minute budget (which trains this recipe) a random-resized crop
        # (area 0.6-1, boxes cropped with the image) and weight averaging (EMA 0.999) reached validation mAP 0.517
        # against 0.490 without them (seed 0, 2-core AMD EPYC, fp32: benchmarks/detect_screen.py's 10-minute arms)
        "scenes-detect": dict(model="fcos_small", model_kwargs={"width": 16}, task="detect", epochs=30,
                              batch_size=32, lr=2e-3, optimizer="adamw", weight_decay=1e-4, schedule="onecycle",
                              warmup_epochs=2, grad_clip=1.0, label_smoothing=0.0, ema=0.999,
                              augment={"crop_padding": 0, "resized_crop": 0.6, "hflip": True}, tta=False),
        "photographs": dict(model="espcn", model_kwargs={"scale": 3}, task="restore", epochs=30, batch_size=16,
                            lr=1e-3, optimizer="adamw", weight_decay=0.0, schedule="cosine", warmup_epochs=0,
                            grad_clip=0.0, label_smoothing=0.0, augment={"crop_padding": 0, "hflip": True}, tta=False),
        # the fast recipe's network and settings on a longer schedule (not tuned apart)
        "scenes": dict(model="unet_small", model_kwargs={"width": 16, "depth": 4, "stem_stride": 2}, task="segment",
                       epochs=30, batch_size=32, lr=3e-3, optimizer="adamw", weight_decay=1e-4, schedule="onecycle",
                       warmup_epochs=2,
                       label_smoothing=0.0, augment={"crop_padding": 0, "hflip": True}, tta=True),
    },
}


# When the user picks another optimizer than the recipe's and gives no rate or decay: what suits that optimizer.
OPTIMIZER_DEFAULTS = {"sgd": dict(lr=0.1, weight_decay=5e-4, opt_eps=None),
                      "adamw": dict(lr=1e-3, weight_decay=0.05, opt_eps=None),
                      "rmsprop": dict(lr=0.016, weight_decay=4e-5, opt_eps=1e-3)}


def resolve_config(overrides: dict[str, Any] | None = None, base: TrainConfig | None = None) -> TrainConfig:
    """Defaults, then the dataset's recipe, then the model family's optimization recipe when the model is not
    the dataset recipe's own, then the explicitly given options (None means 'not given')."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = (base or TrainConfig()).to_dict()
    if "budget" in given:
        if "epochs" in given:
            raise ConfigError("give --epochs or --budget, not both: a budget plans the epochs itself")
        if "recipe" not in given and base is None:  # a longer budget may afford the recipe that goes further
            given["recipe"] = "long" if given["budget"] >= LONG_RECIPE_FROM_S else "fast"
    recipe = given.get("recipe", values.get("recipe"))
    model_task = _model_task(given.get("model"))
    if "data" not in given and base is None and model_task in ("segment", "detect", "restore"):
        # a segmentation or detection model's default data: scenes, not the sample; a restoration model's: photographs
        given["data"] = "photographs" if model_task == "restore" else "fashion-scenes"
    data = given.get("data", values["data"])
    if "task" not in given and base is None and (model_task == "detect" or is_detection_data(data)):
        given["task"] = "detect"  # a detector learns the data's boxes; boxes train a detector
    if "task" not in given and base is None and (model_task == "restore" or is_restoration_data(data)):
        given["task"] = "restore"  # photographs without labels: restored, the only thing they can teach
    family = dataset_family(data)
    if family == "scenes" and given.get("task", values.get("task")) == "detect":
        family = "scenes-detect"
    elif is_detection_data(data):  # boxes' images for another task (e.g. classify): an image folder's recipe
        family = "imagefolder"
    preset: dict[str, Any] = {}
    if recipe:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}{close_matches(recipe, RECIPES)}; "
                              f"choose one of {', '.join(RECIPES)}")
        preset = copy.deepcopy(RECIPES[recipe][family])
    model = given.get("model", preset.get("model", values["model"]))
    if preset:
        if model != preset.get("model"):  # the recipe's model options only fit the recipe's model
            preset.pop("model_kwargs", None)
            values["model_kwargs"] = {}
        values.update({k: v for k, v in preset.items() if k != "augment"})
        values["augment"] = {**AugmentConfig().__dict__, **preset.get("augment", {})}
    if base is None or "model" in given:
        if preset and model == preset.get("model"):
            values["model_recipe"] = f"{recipe}:{family}"  # tuned for this very model
        else:  # another model: its family's optimization recipe, not the one tuned for the recipe's model
            family = family_recipe(model)
            values.update(copy.deepcopy(family.settings))
            values["model_recipe"] = family.name
    if "optimizer" in given and given["optimizer"] != values["optimizer"]:
        values.update({k: v for k, v in OPTIMIZER_DEFAULTS.get(given["optimizer"], {}).items() if k not in given})
    if "task" not in given and is_segmentation_data(data):  # the data's targets say what the task is
        values["task"] = "segment"
    augment = given.pop("augment", None)
    values.update(given)
    if augment:
        values["augment"] = {**values["augment"], **(augment if isinstance(augment, dict) else augment.__dict__)}
    return TrainConfig.from_dict(values)


def _model_task(model: str | None) -> str | None:
    """The task a registered model is built for (None: no model given, or a name the registry lacks)."""
    from cnnkit.models.registry import get_entry

    try:
        return get_entry(model).task if model else None
    except Exception:  # an unknown or timm name: reported (with close matches) when the model is built
        return None


PATH_OPTIONS = ("out", "data_dir", "init_from")  # stored absolute, so that a run resumes from any folder


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else path


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """The options with every path made absolute (each once, where it enters)."""
    values = dict(values)
    for key in PATH_OPTIONS:
        if values.get(key) is not None:
            values[key] = _absolute(str(values[key]))
    data = values.get("data")
    kind, colon, where = (data or "").partition(":")
    if colon and kind in PATH_SOURCES:
        values["data"] = f"{kind}:{_absolute(where)}"
    if values.get("teachers"):
        values["teachers"] = [_absolute(str(t)) for t in values["teachers"]]
    return values


def resolve_new_run(config: TrainConfig | dict[str, Any] | None,
                    options: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any] | None]:
    """What a new run trains, with its paths absolute, and the fast recipe's options to fall back to if a budget's
    long recipe fits too few epochs here (None if there is no such choice)."""
    if isinstance(config, TrainConfig):
        cfg, fallback = (resolve_config(options, base=config) if options else config), None
    else:
        merged = {**(config or {}), **options}
        cfg = resolve_config(merged)
        fallback = long_recipe_fallback(merged, chosen=cfg)
    paths = absolute_paths({k: getattr(cfg, k) for k in (*PATH_OPTIONS, "data", "teachers")})
    return dataclasses.replace(cfg, **paths), fallback


def long_recipe_fallback(overrides: dict[str, Any] | None, base: TrainConfig | None = None,
                         chosen: TrainConfig | None = None) -> dict[str, Any] | None:
    """The options to train instead when `resolve_config(overrides, base)` (`chosen`, where already resolved) chose
    the long recipe for a budget (no recipe given) and the machine fits fewer than LONG_RECIPE_MIN_EPOCHS of its
    epochs: the fast recipe. None when the long recipe was not chosen that way, or trains what the fast one does."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if base is not None or "recipe" in given or "budget" not in given or given["budget"] < LONG_RECIPE_FROM_S:
        return None
    fast = {**(overrides or {}), "recipe": "fast"}
    if _same_but_length(chosen or resolve_config(overrides), resolve_config(fast)):
        return None  # the two recipes train the same network the same way: the budget sets the length either way
    return fast


def _same_but_length(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs differ in nothing but their recipe's name and schedule length (epochs, warm-up)."""
    length = ("recipe", "epochs", "warmup_epochs")
    return all(getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(a) if f.name not in length)
