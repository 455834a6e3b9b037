"""Builds the parts of a run from its settings: runtime, data, model, batches, run folder.

`build_trainer(config)` assembles a Trainer from all of them; evaluation and benchmarks call
only the builders they need (`load_data`, `build_model`, `build_batches`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.data.batches import MIRRORS, DeviceBatches, parse_augment
from resnets.data.datasets import (
    DataOptions,
    Dataset,
    Split,
    count_train_images,
    declared_mirror,
    get_entry,
    load_dataset,
)
from resnets.data.spec import DataSpec
from resnets.errors import DataError, UsageError
from resnets.models import create_model, default_input_size
from resnets.pretrained import apply_weights, freeze_backbone, read_weights
from resnets.training import distributed
from resnets.training.checkpoint import (
    RESUME_KEYS,
    CheckpointError,
    check_state_dict,
    find_checkpoint,
    load_checkpoint,
    reason_of,
    run_dir_of,
    saved_config,
    saved_data_spec,
)
from resnets.training.config import TrainConfig, stretch_to_min_steps
from resnets.training.loop import Batches, Trainer, notice
from resnets.training.memory import format_bytes
from resnets.training.plan import DATA_SHARE, activation_lower_bound, find_budget
from resnets.training.progress import LogEvery
from resnets.training.recorder import RunFolder, default_run_dir
from resnets.training.runtime import Runtime, seeded

# Settings that may change when a run is resumed; the rest define the run.
RESUMABLE = ("epochs", "device", "data_dir", "micro_batch", "eval_batch_size", "eval_every",
             "compile", "verify", "memory_budget", "sync_bn", "checkpoint_every")  # fmt: skip


def data_options(config: TrainConfig, quiet: bool = False) -> DataOptions:
    return DataOptions(
        data_dir=config.data_dir, verify=config.verify, progress=not quiet,
        labels=config.labels, color=config.color,
        cache_size=config.cache_size or config.image_size, warn=notice(quiet),
    )  # fmt: skip


def load_data(config: TrainConfig, quiet: bool = False) -> Dataset:
    """The configured data set with its subsets and validation hold-out."""
    data = load_dataset(
        config.dataset, data_options(config, quiet), train_samples=config.train_samples,
        test_samples=config.test_samples, val_fraction=config.val_fraction, seed=config.seed,
    )  # fmt: skip
    for note in data.notes:
        notice(quiet)(note)
    return data


# How long the other processes of a machine wait for its first one to find, download, check or
# decode the data (a large image folder takes a while), before they give up.
DATA_WAIT = timedelta(hours=2)


def load_data_per_node(
    config: TrainConfig, quiet: bool, place: distributed.Dist
) -> Dataset:
    """`load_data` for a data-parallel run: the first process on each machine finds, downloads,
    checks (and for a folder, decodes) the data while the others wait; they then read what it
    left, without checking the digests again."""
    if place.world == 1:
        return load_data(config, quiet)
    first = place.local_rank == 0
    if not first:
        distributed.barrier(DATA_WAIT)
    data = load_data(config if first else dataclasses.replace(config, verify=False), quiet)
    if first:
        distributed.barrier(DATA_WAIT)
    return data


def _mirroring(
    config: TrainConfig, name: str, mirror_ok: bool, mirror_why: str
) -> tuple[TrainConfig, bool, str]:
    """The settings with mirroring decided for data set `name`, whether it is allowed, and one
    line that says whether it is on and why: the data set's own fact (`mirror_ok`, said by
    `mirror_why`), unless --mirror/--no-mirror overrides it. Where it is off, flip and altflip
    leave `augment` and flip TTA is off."""
    parts = parse_augment(config.augment)
    asked = [p for p in parts if p in MIRRORS] + (["flip TTA"] if config.tta else [])
    if config.mirror is None:
        allowed = mirror_ok
        said = mirror_why or ("a mirror image keeps its label" if allowed else
                              "a mirror image changes its label")  # fmt: skip
        why = f"{name}: {said}"
    else:
        allowed = config.mirror
        why = "--mirror" if allowed else "--no-mirror"
        if allowed and not mirror_ok:
            why += f", overriding {name}: {mirror_why or 'a mirror image changes its label'}"
    if not asked:
        return config, allowed, (
            f"mirroring off: the settings ask for no flip and no flip TTA ({why})"
        )
    if allowed:
        return config, allowed, f"mirroring on ({', '.join(asked)}): {why}"
    kept = "+".join(p for p in parts if p not in MIRRORS) or "none"
    fitted = dataclasses.replace(config, augment=kept, tta=False)
    return fitted, allowed, f"mirroring off ({' and '.join(asked)} dropped): {why}"


def decide_mirroring(config: TrainConfig, spec: DataSpec) -> tuple[TrainConfig, DataSpec, str]:
    """The settings and spec with mirroring decided (see `_mirroring`), and the line that says
    so; the spec's `mirror_ok` becomes what this run assumes."""
    fitted, allowed, line = _mirroring(config, spec.name, spec.mirror_ok, spec.mirror_why)
    return fitted, dataclasses.replace(spec, mirror_ok=allowed), line


def resolve_before_data(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """What `--dry-run` can resolve without reading an image: mirroring (from the data set's
    facts, a folder's dataset.toml) and the epochs that reach `min_steps` (from the number of
    training images, a folder's files counted). Returns the settings and a line for each."""
    options = data_options(config, quiet=True)
    lines = []
    fact = declared_mirror(config.dataset, options)
    if fact is None:
        lines.append("mirroring: decided when the data are read (no folder found)")
    else:
        config, _, line = _mirroring(config, config.dataset, *fact)
        lines.append(line)
    count = count_train_images(
        config.dataset, options, config.train_samples, config.val_fraction
    )
    if count is None:
        lines.append(
            f"epochs: {config.epochs} (no min_steps)" if config.min_steps is None else
            f"epochs: {config.epochs}, raised when the data are read if they are too few for "
            f"min_steps {config.min_steps:,}"
        )  # fmt: skip
    else:
        config, line = stretch_to_min_steps(config, count)
        lines.append(f"epochs: {line}")
    return config, lines


def fit_to_data(config: TrainConfig, spec: DataSpec, quiet: bool = False) -> TrainConfig:
    """The settings with mirroring dropped where it is off (see `decide_mirroring`), the line
    that says so printed; the same object when nothing changed."""
    fitted, _, line = decide_mirroring(config, spec)
    notice(quiet)(line)
    return fitted


def stem_option(config: TrainConfig) -> dict[str, Any]:
    """`stem_stride` where it is not the usual 1, and `stem_pool` where it is set: left out
    otherwise, so a checkpoint's `model_kwargs` stay as they were before the options existed."""
    stride = {} if config.stem_stride == 1 else {"stem_stride": config.stem_stride}
    return {**stride, **({"stem_pool": True} if config.stem_pool else {})}


def model_kwargs(config: TrainConfig, spec: DataSpec) -> dict[str, Any]:
    """The keyword arguments of `create_model` for this run: they go into every checkpoint."""
    return {
        "in_channels": spec.channels, "num_classes": spec.num_classes,
        "small_input": config.small_input, "width": config.width,
        "zero_init_residual": config.zero_init_residual,
        **stem_option(config),
    }  # fmt: skip


def preflight(config: TrainConfig, precision: str) -> str:
    """What a run's memory plan starts from, found before any data is read (--dry-run): the
    activation memory of one image, on the meta device (nothing allocated), and the fewest
    images a training pass takes. Raises UsageError, one line, where the size cannot be had.

    Where the data decide the channels and classes (a folder), the model's own are used:
    they change the stem's input and the classifier's output only."""
    spec = get_entry(config.dataset).spec
    kwargs = {
        "in_channels": None if spec is None else spec.channels,
        "num_classes": None if spec is None else spec.num_classes,
        "small_input": config.small_input, "width": config.width,
        "zero_init_residual": config.zero_init_residual,
        **stem_option(config),
    }  # fmt: skip
    channels = default_input_size(config.model)[0] if spec is None else spec.channels
    side = config.image_size
    lower = activation_lower_bound(config.model, kwargs, (channels, side, side), precision)
    return (
        f"memory: one image needs at least {format_bytes(lower)} of activations at {side}px "
        f"({precision}); a training pass takes at least {config.fewest_images()} image(s)"
    )


def build_model(config: TrainConfig, spec: DataSpec, runtime: Runtime | None = None) -> nn.Module:
    """The configured network for the data, initialised from the run's seed, on the device."""
    with seeded(config.seed):
        model = create_model(config.model, **model_kwargs(config, spec))
    if runtime is not None:
        model = model.to(runtime.device, memory_format=runtime.memory_format)  # type: ignore[call-overload]
    return model


def start_from_weights(
    model: nn.Module,
    config: TrainConfig,
    weights: tuple[dict[str, torch.Tensor], str] | None,
    quiet: bool = False,
) -> None:
    """Load `weights` (`read_weights(config.weights)`) into the new model (a note says what was
    loaded and what is new), and freeze its backbone if asked (the optimizer then holds the
    classifier only)."""
    if weights is not None:
        report = apply_weights(model, *weights, strict_shapes=True)
        notice(quiet)(report.summary())
    if config.freeze_backbone:
        freeze_backbone(model)


@dataclasses.dataclass
class Parts:
    """A run's network and batches: what the Trainer trains and the benchmark times."""

    model: nn.Module
    model_kwargs: dict[str, Any]  # create_model's, saved in every checkpoint
    batches: Batches


def build_parts(
    config: TrainConfig,
    data: Dataset,
    runtime: Runtime,
    place: distributed.Dist,
    *,
    weights: tuple[dict[str, torch.Tensor], str] | None = None,
    quiet: bool = False,
) -> Parts:
    """The network for `config` (already fitted to `data`) on the device: initialised from the
    run's seed, started from `weights` and frozen as asked (`start_from_weights`), with
    synchronised BatchNorm under torchrun when asked; and the batches of every split.

    `build_trainer` and `resnets.bench.benchmark` both build their parts with this, so that a
    benchmark times what training runs."""
    model = build_model(config, data.spec, runtime)
    start_from_weights(model, config, weights, quiet)  # freezing applies to a resumed run too
    if place.world > 1 and config.sync_bn:
        model = distributed.sync_batch_norm(model, runtime.device)  # same parameters and keys
    batches = build_batches(config, data, runtime, quiet, place)
    return Parts(model, model_kwargs(config, data.spec), batches)


def build_batches(
    config: TrainConfig,
    data: Dataset,
    runtime: Runtime,
    quiet: bool = False,
    place: distributed.Dist | None = None,
) -> Batches:
    """Batches of every split; images beyond the memory budget are streamed from disk. In a
    data-parallel run (`place`) each process takes its share of every batch. A last training
    batch too small for every process to train on its share (BatchNorm needs 2 images where
    the last map is 1x1) is joined to the one before it."""
    place = place or distributed.Dist()
    splits = [s for s in (data.train, data.val, data.test) if s is not None]
    needed = sum(s.nbytes() for s in splits)
    budget = find_budget(config.memory_budget, runtime.device)
    stream = needed > DATA_SHARE * budget.headroom
    if stream:
        notice(quiet)(
            f"the images take {format_bytes(needed)}, more than half the memory left of a "
            f"budget of {budget.describe()}: batches are read from disk as they are needed"
        )

    def batches(split: Split, train: bool) -> DeviceBatches:
        size = config.batch_size if train else config.eval_batch_size
        return DeviceBatches(
            split, spec=data.spec, batch_size=size, image_size=config.image_size,
            device=runtime.device, shuffle=train,
            augment=config.augment if train else "none", seed=config.seed,
            channels_last=runtime.channels_last, stream=stream, shard=(place.rank, place.world),
            least=config.fewest_images() * place.world if train else 1,
        )  # fmt: skip

    return Batches(
        train=batches(data.train, True),
        test=batches(data.test, False),
        val=None if data.val is None else batches(data.val, False),
    )


def join_processes(config: TrainConfig) -> distributed.Dist:
    """Under torchrun, join the other processes (on cuda:LOCAL_RANK when training on CUDA)."""
    place = distributed.Dist.from_env()
    if place.world > 1:
        device = Runtime.resolve(device_of(config, place), config.precision, False).device
        place = distributed.init(device)
    return place


def device_of(config: TrainConfig, place: distributed.Dist) -> str:
    """The configured device; under torchrun on CUDA, each process's own GPU (LOCAL_RANK)."""
    if place.world > 1 and (
        config.device.startswith("cuda")
        or (config.device == "auto" and torch.cuda.is_available())
    ):
        return f"cuda:{place.local_rank}"
    return config.device


def build_trainer(
    config: TrainConfig,
    *,
    data: Dataset | None = None,
    run_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    quiet: bool = False,
    on_step: Callable[[Trainer, int], None] | None = None,
    fresh: bool = True,
    started: float | None = None,
    log_every: LogEvery | None = None,
) -> Trainer:
    """A Trainer with every part built from `config` (or `data` given in memory); `fresh`
    (a new run, not a resumed one) checks the run folder first. `log_every`: how often a
    progress line is written where standard output is not a terminal. `started` (a time.monotonic()
    value) is when the run began, for the `elapsed` column of metrics.csv; default: now."""
    started = time.monotonic() if started is None else started
    config = config.validate()
    place = join_processes(config)
    quiet = quiet or not place.is_main  # one process speaks for a data-parallel run
    # every process must agree on the folder (the default one is named by the clock)
    path = distributed.broadcast_object(
        str(run_dir or config.out or default_run_dir(config.model))
    )
    folder = RunFolder(path, writes=place.is_main)
    if fresh:
        folder.check(fresh=True)  # a bad --out is said before the data are read
    # a new run reads its --weights before the data, so that a bad file is said at once; a
    # resumed run has its own weights in its checkpoint
    weights = read_weights(config.weights) if fresh and config.weights is not None else None
    runtime = Runtime.resolve(device_of(config, place), config.precision, config.channels_last)
    data = data or load_data_per_node(config, quiet, place)
    config, spec, line = decide_mirroring(config, data.spec)
    notice(quiet)(line)
    data = dataclasses.replace(data, spec=spec)
    stretched, line = stretch_to_min_steps(config, len(data.train))
    if stretched.epochs != config.epochs:
        notice(quiet)(line)
    config = stretched
    parts = build_parts(config, data, runtime, place, weights=weights, quiet=quiet)
    return Trainer(
        config, runtime=runtime, model=parts.model, model_kwargs=parts.model_kwargs,
        spec=data.spec, batches=parts.batches, folder=folder,
        log=log, quiet=quiet, on_step=on_step, started=started, log_every=log_every,
    )  # fmt: skip


def start_trainer(config: TrainConfig, *, quiet: bool = False, **kwargs: Any) -> Trainer:
    """A new run; or, in processes that torchrun restarted (`--max-restarts`) after one of the
    job's processes failed, the same run continued from its last checkpoint. A restarted
    process runs the same command again, so the run folder must have a name that does not
    change between attempts: --out, or one made from torchrun's rendezvous id."""
    elastic = distributed.Elastic.from_env()
    if elastic.max_restarts > 0 and config.out is None:
        if elastic.run_id == "none":
            raise UsageError(
                "with torchrun --max-restarts, give --out (or torchrun's --rdzv-id), so that "
                "restarted processes find the run they continue"
            )
        named = Path("runs") / f"{config.model}-{elastic.run_id}"
        config = dataclasses.replace(config, out=str(named))
    if elastic.restart_count > 0 and config.out is not None:
        last = RunFolder(config.out).last
        if last.exists():
            changes = {name: getattr(config, name) for name in RESUMABLE}
            trainer = resume_trainer(config.out, changes, quiet=quiet, **kwargs)
            at = trainer.position
            notice(trainer.quiet)(
                f"torchrun restart {elastic.restart_count} of {elastic.max_restarts}: continuing "
                f"{config.out} from its last checkpoint (epoch {at.epoch + 1}, after batch "
                f"{at.batch})"
            )
            return trainer
    return build_trainer(config, quiet=quiet, **kwargs)


def resume_config(
    run_dir: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[Path, dict[str, Any], TrainConfig]:
    """The last checkpoint of `run_dir` (or a checkpoint file), its state, and the settings a
    resumed run would have: the saved ones with the changes in RESUMABLE applied."""
    path = find_checkpoint(run_dir, "last")
    state = load_checkpoint(path, keys=RESUME_KEYS)
    saved = state["config"]
    changes = {k: v for k, v in (overrides or {}).items() if v is not None and v != saved.get(k)}
    fixed = sorted(set(changes) - set(RESUMABLE))
    if fixed:
        raise UsageError(
            f"cannot change {', '.join(fixed)} when resuming; only {', '.join(RESUMABLE)} may "
            "change (start a new run for the rest)"
        )
    if "epochs" in changes:
        changes["min_steps"] = None  # the epochs asked for now win over the minimum
    return path, state, saved_config(path, {**saved, **changes})


def nothing_left(path: Path, state: dict[str, Any], config: TrainConfig) -> str | None:
    """What to say instead of resuming a run (`resume_config`'s answer) that has already
    trained the epochs asked for; None when it has some left."""
    done = int(state["position"]["epoch"])
    if done < config.epochs:
        return None
    run = run_dir_of(path)
    return (
        f"{run} has trained {done} of {config.epochs} epochs: nothing left to do. To train "
        f"longer, give a new total: resnets train --resume {run} --epochs {done + 5}"
    )


def resume_trainer(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    resumed: tuple[Path, dict[str, Any], TrainConfig] | None = None,
    **kwargs: Any,
) -> Trainer:
    """Continue the run in `run_dir` (or from a checkpoint file) from its last checkpoint
    (`resumed`: what `resume_config` read from it already).

    Only the settings in RESUMABLE may be changed; `epochs` is the new total.
    """
    path, state, config = resumed or resume_config(run_dir, overrides)
    trainer = build_trainer(config, run_dir=run_dir_of(path), fresh=False, **kwargs)
    saved_spec = saved_data_spec(state, path)
    if (trainer.spec.classes, trainer.spec.channels) != (saved_spec.classes, saved_spec.channels):
        raise DataError(
            f"{path} was trained on {saved_spec.channels}-channel images of "
            f"{saved_spec.num_classes} classes, but {config.dataset} now has "
            f"{trainer.spec.channels}-channel images of {trainer.spec.num_classes} classes; "
            "resume with the same data, or start a new run"
        )
    check_state_dict(trainer.model, state["model"], path)
    if trainer.ema is not None and state["ema"]:
        check_state_dict(trainer.ema, state["ema"], path, "EMA weights")
    try:
        trainer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # optimizer, rng, ...
        raise CheckpointError(
            f"{path}: its training state does not load ({reason_of(error)}); the file was edited "
            "or written by another version of resnets; start a new run"
        ) from error
    return trainer
