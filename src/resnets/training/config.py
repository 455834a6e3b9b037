"""Every training setting in one dataclass, its defaults (the chapter's experiment), recipes,
and loading from TOML or YAML files.

Precedence, lowest first: defaults, `--recipe`, `--config FILE`, command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from resnets.data.batches import parse_augment
from resnets.data.datasets import check_data_dir, get_entry
from resnets.errors import UsageError, shown
from resnets.models.geometry import check_training_batch, fewest_training_images
from resnets.models.specs import MODEL_SPECS, UnknownModelError, check_stem
from resnets.training.memory import parse_memory_budget
from resnets.training.runtime import cpu_has_native_bf16, cpu_kernels

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("sgd", "nesterov", "adamw")
SCHEDULES = ("constant", "onecycle", "cosine", "step")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LABELS = ("fine", "coarse")
COLORS = ("auto", "gray", "rgb")

# torch.manual_seed takes 64 bits and the batches seed with seed * 1_000_003 + epoch; 32 bits
# leave room for both (and are what numpy and most tools call a seed).
SEED_LIMIT = 2**32

# Every float setting: (name, lowest, highest or None, lowest allowed). NaN and inf never are.
FLOAT_RANGES: tuple[tuple[str, float, float | None, bool], ...] = (
    ("lr", 0, None, False),
    ("momentum", 0, 1, True),
    ("weight_decay", 0, None, True),
    ("warmup_epochs", 0, None, True),
    ("label_smoothing", 0, 1, True),
    ("ema", 0, 1, True),
    ("width", 0, None, False),
    ("val_fraction", 0, 1, True),
    ("lr_backbone", 0, None, True),
)


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """A training run. The defaults are the chapter's: ResNet-18 at 96x96, SGD, lr 0.05, batch
    256, 5 epochs, Xavier initialisation (the d2l_resnet18 model's own)."""

    model: str = _setting("d2l_resnet18", "model name (see `resnets models`)")
    epochs: int = _setting(5, "total epochs (with --resume: train until this many)")
    min_steps: int | None = _setting(
        None, "train at least this many optimizer steps: on a small data set the epochs are "
        "raised to reach it, milestones, warm-up and eval_every scaled alike (the recipes set "
        "it; epochs given with --epochs or --config win)"
    )
    batch_size: int = _setting(256, "images per optimizer step")
    lr: float = _setting(0.05, "peak learning rate")
    optimizer: str = _setting(
        "sgd", "sgd, nesterov (SGD with Nesterov momentum) or adamw", OPTIMIZERS
    )
    momentum: float | None = _setting(None, "momentum (default: 0 for sgd, 0.9 for nesterov)")
    weight_decay: float = _setting(0.0, "weight decay (not applied to BN and biases)")
    schedule: str = _setting("constant", "learning-rate schedule", SCHEDULES)
    warmup_epochs: float = _setting(
        0.0, "warm-up in epochs: linear (cosine), or at lr/10 (step)"
    )
    milestones: tuple[float, ...] = _setting(
        (), "epochs after which the step schedule divides the learning rate by 10"
    )
    label_smoothing: float = _setting(0.0, "label smoothing of the cross-entropy loss")
    augment: str = _setting(
        "none", "training augmentation, parts joined with +: crop, flip, altflip (each image "
        "mirrored in every other epoch), erase, rrc (random resized crop), mixup, cutmix; or none"
    )
    image_size: int = _setting(96, "side of the square input (28 keeps the native size)")
    small_input: bool = _setting(False, "3x3 stride-1 stem without max pool (for 28-32px)")
    stem_stride: int = _setting(
        1, "stride of the small-input stem's 3x3 conv: 2 halves every map after it (a quarter "
        "of the work, for fast training at 28-32px; quick, and fast in fp32, use it)"
    )
    stem_pool: bool = _setting(
        False, "take the stem's stride 2 with a 2x2 max pool after its conv (which then runs at "
        "stride 1 and sees every pixel): about a tenth dearer a step (fast in fp32 uses it)"
    )
    width: float = _setting(1.0, "channel width multiplier of the model")
    zero_init_residual: bool = _setting(False, "start each block's last BN gamma at zero")
    precision: str = _setting(
        "auto", "auto: bf16 where native (CUDA, AVX-512 BF16/AMX CPUs)", PRECISIONS
    )
    channels_last: bool | None = _setting(
        None, "NHWC memory format (default: on, faster on CPUs and CUDA GPUs; off on MPS)"
    )
    compile: bool = _setting(False, "torch.compile the model")
    sync_bn: bool = _setting(
        False, "under torchrun, BatchNorm statistics over the whole batch of all processes "
        "(SyncBatchNorm) instead of each process's share"
    )
    device: str = _setting("auto", "auto, cpu, cuda, cuda:N or mps")
    seed: int = _setting(0, "seed for initialisation, shuffling and augmentation")
    dataset: str = _setting("fashion-mnist", "data set (see `resnets datasets`)")
    data_dir: str | None = _setting(None, "where the data set's files are (see README)")
    verify: bool = _setting(True, "check data files against their published digests")
    val_fraction: float = _setting(
        0.0, "hold out this share of each training class to choose the best epoch on"
    )
    labels: str = _setting("fine", "CIFAR-100 labels: fine (100) or coarse (20)", LABELS)
    color: str = _setting("auto", "folder images: auto (from the data), gray or rgb", COLORS)
    cache_size: int | None = _setting(
        None, "folder images: side of the decoded cache (default: --image-size)"
    )
    memory_budget: str | None = _setting(
        None, "memory the images may take before they are streamed from disk, e.g. 6GiB or "
        "50%% (default: half the memory available)"
    )
    out: str | None = _setting(None, "run folder (default runs/<timestamp>-<model>)")
    train_samples: int | None = _setting(None, "use only the first N training images")
    test_samples: int | None = _setting(None, "use only the first N test images")
    micro_batch: int | None = _setting(None, "split each batch into micro-batches of N")
    eval_batch_size: int = _setting(512, "images per evaluation batch")
    eval_every: int = _setting(1, "test every N epochs, and after the last")
    checkpoint_every: int | None = _setting(
        None, "also save checkpoints/last.pt every N optimizer steps within an epoch, so a "
        "stopped or restarted run (torchrun --max-restarts) loses at most N steps"
    )
    tensorboard: bool = _setting(
        False, "also write TensorBoard event files into RUN/tensorboard/ (losses, accuracies, "
        "learning rate, images/s, test images with predictions; needs pip install "
        "'resnets[tensorboard]')"
    )
    tta: bool = _setting(False, "evaluate on each image and its mirror image, averaged")
    mirror: bool | None = _setting(
        None, "mirror images (flip, altflip, --tta): default as the data set says (a folder: "
        "its dataset.toml's mirror, else yes); --no-mirror turns them all off, --mirror "
        "keeps them where the data set says no"
    )
    ema: float = _setting(0.0, "decay of an exponential moving average of the weights (0: off)")
    weights: str | None = _setting(
        None, "start from these weights: a torchvision .pth, or a resnets run folder, checkpoint "
        "or safetensors file; nothing is downloaded unless an http(s) URL is given (into "
        "torch.hub's cache). The first conv is adapted to the data's channels and the "
        "classifier is new for another number of classes; any other shape that differs is an "
        "error"
    )
    freeze_backbone: bool = _setting(
        False, "train the classifier only: the rest keeps its weights, and its BatchNorm layers "
        "stay in eval mode, so their running statistics are frozen too"
    )
    lr_backbone: float = _setting(
        1.0, "multiplier of the learning rate for every parameter but the classifier's (which "
        "gets the full rate), e.g. 0.1 when fine-tuning"
    )

    def resolved_momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.optimizer == "nesterov" else 0.0

    def validate(self) -> TrainConfig:
        """Raise UsageError naming the first bad setting."""
        hints = typing.get_type_hints(TrainConfig)
        if isinstance(self.milestones, list):
            self.milestones = tuple(self.milestones)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "milestones":
                if not isinstance(value, tuple) or not all(
                    isinstance(m, int | float) and not isinstance(m, bool) for m in value
                ):
                    raise UsageError(f"milestones must be a list of epochs, not {shown(value)}")
                continue
            allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
            if float in allowed:
                allowed = (*allowed, int)
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                kinds = " or ".join(t.__name__ for t in allowed if t is not type(None))
                raise UsageError(f"{f.name} must be {kinds}, not {shown(value)}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise UsageError(
                    f"{f.name} must be one of {', '.join(choices)}, not {shown(value)}"
                )
        positive = ("epochs", "batch_size", "image_size", "eval_batch_size", "eval_every")
        optional_positive = (
            "train_samples", "test_samples", "micro_batch", "cache_size", "checkpoint_every",
            "min_steps",
        )
        for name in positive + optional_positive:
            value = getattr(self, name)
            if value is None and name in optional_positive:
                continue
            if value < 1:
                raise UsageError(f"{name} must be a positive integer, not {value!r}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise UsageError(
                f"seed must be a whole number from 0 to 2**32 - 1, not {shown(self.seed)}"
            )
        for name, low, high, closed in FLOAT_RANGES:
            value = getattr(self, name)
            if value is None:
                continue
            inside = math.isfinite(value) and (low < value or (closed and low == value))
            if not inside or (high is not None and not value < high):
                if high is None:
                    span = f"{'>=' if closed else '>'} {low}"
                else:
                    span = f"in {'[' if closed else '('}{low}, {high})"
                raise UsageError(f"{name} must be a finite number {span}, not {value}")
        if any(not math.isfinite(m) or m <= 0 for m in self.milestones):
            epochs = " ".join(map(str, self.milestones))
            raise UsageError(f"milestones must be finite positive epochs, not {epochs[:60]}")
        if self.schedule == "step" and list(self.milestones) != sorted(self.milestones):
            raise UsageError(f"milestones must be in increasing order: {self.milestones}")
        if self.model not in MODEL_SPECS:
            raise UnknownModelError(self.model)
        check_stem(self.model, self.small_input, self.stem_stride, self.stem_pool)
        self._check_batch_trains()
        parse_augment(self.augment)
        get_entry(self.dataset)
        check_data_dir(self.dataset, self.data_dir)
        if self.memory_budget is not None:
            parse_memory_budget(self.memory_budget, of=1)
        if self.freeze_backbone and self.lr_backbone != 1:
            raise UsageError(
                "lr_backbone has no effect with freeze_backbone (the backbone does not train); "
                "give one of them"
            )
        return self

    def fewest_images(self) -> int:
        """The fewest images one training pass of this run takes: 2 where the network's last
        map is 1x1 and its BatchNorm trains, else 1."""
        if self.freeze_backbone:
            return 1
        return fewest_training_images(
            self.model, self.image_size, self.small_input, self.stem_stride
        )

    def _check_batch_trains(self) -> None:
        """Refuse a batch (or micro-batch) too small for BatchNorm at this image size, before
        any data is read. A frozen backbone keeps its BatchNorm layers in eval mode: any batch
        trains it. (Each process's share under torchrun is checked by the Trainer.)"""
        if self.freeze_backbone:
            return
        for what, images in (("batch size", self.batch_size), ("micro-batch", self.micro_batch)):
            if images is not None:
                check_training_batch(
                    self.model, self.image_size, self.small_input, images, f"{what} {images}",
                    self.stem_stride,
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Named recipes: overrides of the defaults. See BENCHMARKS.md for what each one measured. Each
# takes at least the optimizer steps it takes on the data set it was made for (`min_steps`,
# RECIPE_BASIS), so that a smaller data set trains for as many steps in more epochs.
RECIPES: dict[str, dict[str, Any]] = {
    "chapter": {"min_steps": 5 * 235},
    # the quarter-width ResNet-18 at 28 px. `quick`: its stem at stride 2 (a quarter of the
    # work per image), 9 epochs of 512 for 93%, one set of settings for every precision: in
    # bf16 too it took fewer seconds than the stride-1 network's 6 epochs of 256 (BENCHMARKS.md,
    # "Fast on every CPU"). `fast`: 12 epochs at stride 1 for 94% ("Faster still").
    "quick": {
        "model": "resnet18", "small_input": True, "width": 0.25, "image_size": 28,
        "stem_stride": 2, "epochs": 9, "batch_size": 512, "optimizer": "nesterov", "lr": 0.4,
        "weight_decay": 5e-4, "schedule": "onecycle", "label_smoothing": 0.1,
        "augment": "altflip", "zero_init_residual": True, "tta": True, "eval_every": 9,
        "min_steps": 9 * 118,
    },
    "fast": {
        "model": "resnet18", "small_input": True, "width": 0.25, "image_size": 28,
        "epochs": 12, "batch_size": 256, "optimizer": "nesterov", "lr": 0.2,
        "weight_decay": 5e-4, "schedule": "onecycle", "label_smoothing": 0.1,
        "augment": "flip", "zero_init_residual": True, "tta": True, "eval_every": 12,
        "min_steps": 12 * 235,
    },
    "best": {
        "model": "resnet18", "small_input": True, "width": 0.5, "image_size": 28,
        "epochs": 50, "batch_size": 256, "optimizer": "nesterov", "lr": 0.2,
        "weight_decay": 5e-4, "schedule": "onecycle", "label_smoothing": 0.1,
        "augment": "crop+flip+erase", "zero_init_residual": True, "tta": True, "ema": 0.999,
        "eval_every": 5, "min_steps": 50 * 235,
    },
    # He et al. 2015, section 4.2: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1
    # divided by 10 at 32k and 48k iterations, stop at 64k; pad 4, random 32x32 crop, mirror.
    # At 391 steps per epoch (50,000 images) those are epochs 81.8, 122.8 and 163.7. The 400
    # iterations at lr 0.01 are the paper's warm-up for ResNet-110; shallower nets take it too.
    "cifar-paper": {
        "dataset": "cifar10", "model": "cifar_resnet20", "image_size": 32, "epochs": 164,
        "batch_size": 128, "optimizer": "sgd", "momentum": 0.9, "lr": 0.1,
        "weight_decay": 1e-4, "schedule": "step", "milestones": (81.84, 122.76),
        "warmup_epochs": 1.024, "augment": "crop+flip", "eval_batch_size": 1000,
        "eval_every": 4, "min_steps": 64_000,
    },
}  # fmt: skip


# Where a run computes in fp32 on a CPU (no native bf16: AVX2 laptops, AMD Zen 2 and 3, many
# cloud machines), a step costs about three times what it does in native bf16, so these replace
# some of `fast`'s settings: the small-input stem at stride 2 (a quarter of the work per image),
# taken by a max pool after its conv, and batches of 512 at twice the learning rate for more
# epochs, mirrored in alternate epochs as `quick` is. The pooled stem costs about a tenth more
# a step than the strided conv and was more accurate in fewer epochs. BENCHMARKS.md, "Fast on
# every CPU", has the trials that chose them. With native bf16 (or on a GPU) the recipe is as
# above.
RECIPES_FP32: dict[str, dict[str, Any]] = {
    "fast": {
        "stem_stride": 2, "stem_pool": True, "epochs": 17, "batch_size": 512, "lr": 0.4,
        "eval_every": 17, "min_steps": 17 * 118, "augment": "altflip",
    },
}  # fmt: skip


# The epochs and training images each recipe's min_steps was counted at (235 batches of 256, or
# 118 of 512, make an epoch of Fashion-MNIST's 60,000 images; cifar-paper stops at the paper's
# 64k iterations).
RECIPE_BASIS: dict[str, str] = {
    "chapter": "5 epochs at 60,000 images", "quick": "9 epochs at 60,000 images",
    "fast": "12 epochs at 60,000 images", "best": "50 epochs at 60,000 images",
    "cifar-paper": "64k iterations at 50,000 images",
}  # fmt: skip
RECIPE_BASIS_FP32: dict[str, str] = {"fast": "17 epochs at 60,000 images, in fp32"}


def computes_fp32_on_cpu(precision: str, device: str) -> bool:
    """Whether a run with these settings will compute in fp32 on the CPU, decided without
    touching a device: `auto` is the CPU where no CUDA or MPS device is, and fp32 there where
    the CPU has no native bf16 (as `Runtime.resolve` decides)."""
    if device == "auto":
        gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
        on_cpu = not gpu
    else:
        on_cpu = device == "cpu"
    if not on_cpu:
        return False
    return precision == "fp32" or (precision == "auto" and not cpu_has_native_bf16())


def recipe_settings(name: str, precision: str = "auto", device: str = "auto") -> dict[str, Any]:
    """A recipe's settings for a run at this precision on this device: its fp32 ones
    (RECIPES_FP32) where the run computes in fp32 on the CPU."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    extra = RECIPES_FP32.get(name, {}) if computes_fp32_on_cpu(precision, device) else {}
    return {**RECIPES[name], **extra}


def recipe_note(name: str, config: TrainConfig) -> str | None:
    """One line saying which of a recipe's settings a CPU run took and why; None for a recipe
    that has one set only, or a run off the CPU."""
    if name not in RECIPES_FP32:
        return None
    fp32 = computes_fp32_on_cpu(config.precision, config.device)
    if not fp32 and not computes_fp32_on_cpu("fp32", config.device):
        return None  # not on the CPU
    pooled = " by a max pool" if config.stem_pool else ""
    stem = f" (small-input stem at stride 2{pooled})" if config.stem_stride == 2 else ""
    what = (
        f"{config.model} at width {config.width:g}{stem}, {config.image_size}px, "
        f"{config.epochs} epochs of {config.batch_size}"
    )
    if fp32:
        return (
            f"recipe {name}: its fp32 settings, {what}, since this run computes in fp32 on the "
            f"CPU (--precision {config.precision}; {cpu_kernels()})"
        )
    return (
        f"recipe {name}: its bf16 settings, {what}, since this run computes in bf16 on the CPU "
        f"({cpu_kernels()}); in fp32 it would take its fp32 settings"
    )


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Optimizer steps in an epoch: every batch, the last (smaller) one included."""
    return max(1, -(-train_images // batch_size))


def stretch_to_min_steps(config: TrainConfig, train_images: int) -> tuple[TrainConfig, str]:
    """The settings with `epochs` raised until the run takes `min_steps` optimizer steps on
    `train_images` images, and a line that says what was resolved and why.

    The schedule is a function of the total steps, so onecycle and cosine stretch with it;
    settings counted in epochs (milestones, warm-up) and the evaluation cadence are scaled by
    the same factor, so the run evaluates as often and decays at the same share of training.
    """
    per_epoch = steps_per_epoch(train_images, config.batch_size)
    steps = config.epochs * per_epoch
    at = f"at {train_images:,} training images ({per_epoch:,} steps of {config.batch_size})"
    if config.min_steps is None:
        return config, f"{config.epochs} epochs {at}: {steps:,} steps (no min_steps)"
    basis = next(
        (f"{name}: {bases[name]}; " for table, bases in _recipe_bases()
         for name, settings in table.items()
         if settings.get("min_steps") == config.min_steps and name in bases), "",
    )  # fmt: skip
    needed = -(-config.min_steps // per_epoch)
    if needed <= config.epochs:
        return config, (
            f"{basis}{config.epochs} epochs {at}: {steps:,} steps, at least min_steps "
            f"{config.min_steps:,}"
        )
    factor = needed / config.epochs
    stretched = dataclasses.replace(
        config, epochs=needed, warmup_epochs=config.warmup_epochs * factor,
        milestones=tuple(m * factor for m in config.milestones),
        eval_every=max(1, round(config.eval_every * factor)),
    )  # fmt: skip
    return stretched, (
        f"{basis}{at}, {needed} epochs ({needed * per_epoch:,} steps) to reach min_steps "
        f"{config.min_steps:,} instead of {config.epochs} ({steps:,} steps); give --epochs to "
        "choose yourself"
    )


def _recipe_bases() -> tuple[tuple[dict[str, dict[str, Any]], dict[str, str]], ...]:
    return ((RECIPES, RECIPE_BASIS), (RECIPES_FP32, RECIPE_BASIS_FP32))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML (.toml) or YAML (anything else) file, keys as in TrainConfig.

    Dashes in keys are accepted (`batch-size`), so a file can mirror the flags.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"cannot read config file {path}: {reason}") from error
    except ValueError as error:  # a NUL in the name, or bytes that are not UTF-8 text
        what = "not a text file (UTF-8 TOML or YAML)"
        if not isinstance(error, UnicodeDecodeError):
            what = "not a usable file name"
        raise UsageError(f"config file {path}: {what}") from error
    if "\x00" in text:
        raise UsageError(f"config file {path}: not a text file (UTF-8 TOML or YAML)")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0]
        raise UsageError(f"config file {path} is not valid TOML/YAML: {first}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of settings")
    settings = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(settings) - set(field_names()))
    if unknown:
        raise UsageError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return {name: _number_from_text(path, name, value) for name, value in settings.items()}


def _number_from_text(path: Path, name: str, value: Any) -> Any:
    """A number written as text (YAML 1.1 reads `1e-2` as a string) as the number the setting
    takes: int for whole-number settings, float for the rest. Text that is no number is an
    error naming the file and the setting; values of other types are left to `validate`."""
    if name == "milestones":
        if isinstance(value, list):
            return tuple(_number_from_text(path, "lr", item) for item in value)
        return value
    hint = typing.get_type_hints(TrainConfig)[name]
    kinds = typing.get_args(hint) or (hint,)
    kind = int if int in kinds else float if float in kinds else None
    if kind is None or not isinstance(value, str):
        return value
    try:
        return kind(value.strip())
    except ValueError:
        number = "a whole number" if kind is int else "a number"
        raise UsageError(
            f"config file {path}: {name} must be {number}, not {shown(value)}"
        ) from None


def make_config(
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults, then a recipe, then a file, then explicit overrides (None values are skipped).

    Epochs given by the file or the overrides drop the recipe's `min_steps` (unless they give
    one too): the user's number of epochs is the one trained. A recipe's settings are those
    for the precision and device the file and overrides choose (`recipe_settings`)."""
    settings: dict[str, Any] = {}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if config_file is not None:
        given = {**read_config_file(config_file), **given}
    if recipe is not None:
        precision, device = given.get("precision", "auto"), given.get("device", "auto")
        if not (isinstance(precision, str) and isinstance(device, str)):
            precision = device = "auto"  # validate() names the bad setting
        settings.update(recipe_settings(recipe, precision, device))
    settings.update(given)
    if "epochs" in given and "min_steps" not in given:
        settings["min_steps"] = None  # epochs the user chose win over a recipe's minimum
    unknown = sorted(set(settings) - set(field_names()))
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}")
    return TrainConfig(**settings).validate()
