"""The resolved training configuration: defaults, then a named recipe for the dataset, then the user's options."""

from __future__ import annotations

import copy
import math
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cnnkit.data.compat import DEFAULT_VAL_FRACTION
from cnnkit.data.transforms import AugmentConfig
from cnnkit.errors import ConfigError, close_matches
from cnnkit.train.recipes import family_recipe

OPTIMIZERS = ("sgd", "adamw", "rmsprop")


@dataclass
class TrainConfig:
    """Everything that decides a training run. Written to `<run>/config.yaml`."""

    model: str = "resnet9"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "sample"
    data_dir: str | None = None
    download: bool = False
    strict: bool = False  # imagefolder: stop at the first unreadable image instead of skipping it
    img_size: int | list[int] | None = None  # imagefolder: resize to this side or [H, W] (default: the images' common size, else 64)
    test_fraction: float = 0.2  # flat imagefolder (no train/ and test/ sub-folders): share held out as the test split
    recipe: str | None = "fast"
    model_recipe: str | None = None  # which optimization recipe applies: '<recipe>:<data family>' or a model family's
    epochs: int = 10
    budget: float | None = None  # seconds: plan the run (steps, evaluations, checkpoints) to end within them
    max_steps: int | None = None  # optimizer steps in all (set by the budget's plan); None: epochs × steps per epoch
    batch_size: int = 256
    optimizer: str = "sgd"  # 'sgd' (Nesterov momentum), 'adamw' or 'rmsprop' (TensorFlow-style, as the papers')
    lr: float = 0.1
    momentum: float = 0.9
    opt_eps: float | None = None  # the optimizer's epsilon (None: its default; RMSProp recipes set it)
    weight_decay: float = 5e-4  # applied to weights only, never to norms and biases
    schedule: str = "onecycle"  # 'onecycle' or 'cosine'
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    ema: float = 0.0  # EMA decay of the weights; 0 turns EMA off
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: str = "auto"  # 'auto', 'bf16', 'fp16' or 'off'
    channels_last: bool | str = "auto"  # True, False or 'auto' (measured once per model and machine; see train/layout)
    compile: bool = False
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    init_from: str | None = None  # weight file (timm, torchvision or cnnkit) to start from
    early_stopping: int = 0  # stop after this many epochs without validation improvement; 0 turns it off
    train_images: int | None = None  # train on a stratified, seeded subset of this many images
    train_images_per_class: int | None = None  # train on this many images of each class (seeded): few labels
    pretext: str | None = None  # a self-supervised task instead of the labels: 'rotnet' (`cnnkit pretrain`)
    rotations: int = 4  # rotnet: 4 (0/90/180/270°) or 2 (0/180°, the paper's ablation)
    distill: str | None = None  # learn from teachers: 'kd' (Hinton 2015) or 'meal-v2' (no labels; `cnnkit distill`)
    teachers: list[str] = field(default_factory=list)  # the teachers' checkpoints or run directories
    kd_temperature: float = 4.0  # kd: softmax temperature T of teachers and student
    kd_alpha: float = 0.9  # kd: weight of the soft (T²-scaled) loss; 1 − α weighs the hard labels
    disc_weight: float = 1.0  # meal-v2: scale of the discriminator's reversed gradient into the student
    val_fraction: float = DEFAULT_VAL_FRACTION  # share of the training split held out (stratified, by seed) for validation
    tta: bool = False  # flip test-time augmentation when validating
    keep_epochs: list[int] = field(default_factory=list)  # also save the weights after these epochs (epoch-NNNN)
    seed: int = 0
    split_seed: int | None = None  # seeds the validation (and a flat folder's test) split; None: `seed`. Runs that
    # share it hold out the same images whatever their own seed (model-soup ingredients must)
    deterministic: bool = False
    device: str = "auto"
    threads: int = 0  # CPU threads; 0 keeps torch's default
    out: str | None = None  # run directory (default runs/<model>-<data>)
    data_mode: str = "auto"  # image folders: 'memory' (decoded once), 'stream' (decoded by workers), 'auto'
    workers: int | None = None  # streaming: decoding processes per training process (None: the CPUs shared, ≤ 8)
    sync_bn: bool = False  # several processes: BatchNorm statistics of the global batch (CPU and CUDA)
    checkpoint_every: int = 0  # also save the full training state every this many steps, mid-epoch; 0 off

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        self._check_types()
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
            (self.train_images is None or self.train_images > 0,
             f"train_images must be positive, got {self.train_images}"),
            (self.train_images_per_class is None or (isinstance(self.train_images_per_class, int)
                                                     and not isinstance(self.train_images_per_class, bool)
                                                     and self.train_images_per_class > 0),
             f"images per class must be a positive whole number, got {self.train_images_per_class!r}"),
            (self.pretext in (None, "rotnet"), f"pretext task must be rotnet, got {self.pretext!r}"),
            (self.distill in (None, "kd", "meal-v2"), f"distillation method must be kd or meal-v2, got {self.distill!r}"),
            (bool(self.teachers) == (self.distill is not None),
             "distillation needs --teacher (one or more) and a method; teachers without a method do nothing"),
            (not (self.distill and self.pretext), "distillation and a pretext task do not combine"),
            (self.kd_temperature > 0, f"distillation temperature must be positive, got {self.kd_temperature}"),
            (0.0 <= self.kd_alpha <= 1.0, f"kd alpha (the soft loss's weight) must lie in [0, 1], got {self.kd_alpha}"),
            (self.disc_weight >= 0, f"discriminator weight must be 0 (off) or more, got {self.disc_weight}"),
            (self.rotations in (2, 4), f"rotations must be 2 (0/180°) or 4 (0/90/180/270°), got {self.rotations!r}"),
            (0.0 <= self.val_fraction < 1.0, f"validation fraction must be in [0, 1), got {self.val_fraction}"),
            (0.0 < self.test_fraction < 1.0, f"test fraction must be in (0, 1), got {self.test_fraction}"),
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
                 "label_smoothing": float, "ema": float, "kd_temperature": float, "kd_alpha": float,
                 "disc_weight": float, "grad_clip": float, "val_fraction": float,
                 "test_fraction": float, "model": str, "data": str, "optimizer": str, "schedule": str,
                 "amp": str, "device": str, "download": bool, "strict": bool,
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
    },
}


# When the user picks another optimizer than the recipe's and gives no rate or decay: what suits that optimizer.
OPTIMIZER_DEFAULTS = {"sgd": dict(lr=0.1, weight_decay=5e-4, opt_eps=None),
                      "adamw": dict(lr=1e-3, weight_decay=0.05, opt_eps=None),
                      "rmsprop": dict(lr=0.016, weight_decay=4e-5, opt_eps=1e-3)}


def _model_family(model: str) -> str | None:
    from cnnkit.models.registry import TIMM_PREFIX, get_entry

    if model.startswith(TIMM_PREFIX):
        return None
    try:
        return get_entry(model).family
    except Exception:  # an unknown name is reported when the model is built, with close matches
        return None


def resolve_config(overrides: dict[str, Any] | None = None, base: TrainConfig | None = None) -> TrainConfig:
    """Defaults, then the dataset's recipe, then the model family's optimization recipe when the model is not
    the dataset recipe's own, then the explicitly given options (None means 'not given')."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = (base or TrainConfig()).to_dict()
    fallback = None
    if "budget" in given:
        if "epochs" in given:
            raise ConfigError("give --epochs or --budget, not both: a budget plans the epochs itself")
        if "recipe" not in given and base is None:  # a longer budget may afford the recipe that goes further
            given["recipe"] = "long" if given["budget"] >= LONG_RECIPE_FROM_S else "fast"
            if given["recipe"] == "long":
                fallback = {**(overrides or {}), "recipe": "fast"}
    recipe = given.get("recipe", values.get("recipe"))
    data = given.get("data", values["data"])
    preset: dict[str, Any] = {}
    if recipe:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}{close_matches(recipe, RECIPES)}; "
                              f"choose one of {', '.join(RECIPES)}")
        preset = copy.deepcopy(RECIPES[recipe][dataset_family(data)])
    model = given.get("model", preset.get("model", values["model"]))
    if preset:
        if model != preset.get("model"):  # the recipe's model options only fit the recipe's model
            preset.pop("model_kwargs", None)
            values["model_kwargs"] = {}
        values.update({k: v for k, v in preset.items() if k != "augment"})
        values["augment"] = {**AugmentConfig().__dict__, **preset.get("augment", {})}
    if base is None or "model" in given:
        if preset and model == preset.get("model"):
            values["model_recipe"] = f"{recipe}:{dataset_family(data)}"  # tuned for this very model
        else:  # another model: its family's optimization recipe, not the one tuned for the recipe's model
            family = family_recipe(model, _model_family(model))
            values.update(copy.deepcopy(family.settings))
            values["model_recipe"] = family.name
    if "optimizer" in given and given["optimizer"] != values["optimizer"]:
        values.update({k: v for k, v in OPTIMIZER_DEFAULTS.get(given["optimizer"], {}).items() if k not in given})
    augment = given.pop("augment", None)
    values.update(given)
    if augment:
        values["augment"] = {**values["augment"], **(augment if isinstance(augment, dict) else augment.__dict__)}
    cfg = TrainConfig.from_dict(values)
    cfg._budget_fallback = fallback  # not a field: what to train if the machine is too slow for the long recipe
    return cfg
