"""The training loop: epochs of batches, evaluation when due, checkpoints, Ctrl-C and SIGTERM.

The Trainer is handed its parts (model, batches, run folder, runtime) by
`resnets.training.factory.build_trainer`; it owns only the loop and the state that moves
(optimizer, scaler, EMA, position, history).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from resnets.data.batches import MIRRORS, DeviceBatches
from resnets.data.spec import DataSpec
from resnets.errors import ResnetsError, UsageError
from resnets.ood import EnergyThreshold
from resnets.pretrained import backbone_norms_eval, split_parameters
from resnets.training import distributed
from resnets.training.config import TrainConfig
from resnets.training.ema import build_ema
from resnets.training.evaluate import evaluate, predict
from resnets.training.memory import MemoryFallback
from resnets.training.plan import find_budget, optimizer_copies, plan_memory
from resnets.training.progress import DEFAULT_LOG_EVERY, LogEvery, ProgressLines, output_is_terminal
from resnets.training.recorder import RunFolder
from resnets.training.runtime import Runtime, peak_memory_bytes, reset_peak_memory
from resnets.training.schedule import learning_rate
from resnets.training.step import StepParts, train_step
from resnets.training.tensorboard import (
    SHOWN,
    TensorBoardLog,
    display_pixels,
    require_tensorboard,
)

NAN_CHECK_EVERY = 20  # steps between finiteness checks (each costs a device sync)
# How much lower the test accuracy with flip TTA may be than without before a run warns.
TTA_TOLERANCE = 0.005


def notice(quiet: bool) -> Callable[[str], None]:
    """Where a run's one-line notes go: above the progress bar, or nowhere when quiet."""
    if quiet:
        return lambda _: None
    return lambda message: tqdm.write(
        message if message.startswith("warning:") else f"note: {message}"
    )


class Interrupted(ResnetsError):
    """Ctrl-C or SIGTERM: the checkpoint is written and the message says how to resume.

    `exit_code` is 128 + the signal's number, as a shell reports a process the signal ended:
    130 after SIGINT (Ctrl-C), 143 after SIGTERM.
    """

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM: training stops at once, without saving.

    A KeyboardInterrupt, so that no `except Exception` on the way catches it.
    """

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Diverged(ResnetsError):
    """The loss became NaN or infinite."""


@dataclass
class Batches:
    """The batches of each split; `val` only when a validation split is held out."""

    train: DeviceBatches
    test: DeviceBatches
    val: DeviceBatches | None = None


@dataclass
class Position:
    """Where training stands: completed epochs, and batches done within the next one."""

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_seconds: float = 0.0


def _parameter_groups(
    model: nn.Module, weight_decay: float, lr_backbone: float = 1.0, freeze_backbone: bool = False
) -> list[dict[str, Any]]:
    """Weight decay on weights of convolutions and the classifier, not on BN or biases.

    With `freeze_backbone` only the classifier's parameters are in the groups; with
    `lr_backbone` other than 1 the backbone's are in groups of their own whose `lr_scale`
    multiplies the learning rate. Otherwise the groups are the two above, as they always were.
    """

    def split(params: list[nn.Parameter], **extra: Any) -> list[dict[str, Any]]:
        return [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, **extra},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0, **extra},
        ]

    if not freeze_backbone and lr_backbone == 1:
        return split(list(model.parameters()))
    backbone, head = split_parameters(model)
    if freeze_backbone:
        return split(head)
    return split(backbone, lr_scale=lr_backbone) + split(head)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _parameter_groups(
        model, config.weight_decay, config.lr_backbone, config.freeze_backbone
    )
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = config.lr * group["lr_scale"]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    momentum = config.resolved_momentum()
    nesterov = config.optimizer == "nesterov"
    if nesterov and momentum <= 0:
        raise UsageError("nesterov needs a positive --momentum")
    return torch.optim.SGD(groups, lr=config.lr, momentum=momentum, nesterov=nesterov)


def build_step_models(
    model: nn.Module, device: torch.device, world: int, compile: bool
) -> tuple[nn.Module, nn.Module]:
    """(evaluation model, training step's model) for `model`: the model itself, compiled with
    --compile; for the step under torchrun (`world` > 1), a DistributedDataParallel around it
    (compiled too), which averages the processes' gradients."""
    eval_model: nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]
    if world == 1:
        return eval_model, eval_model
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return eval_model, torch.compile(ddp) if compile else ddp  # type: ignore[return-value]


def build_step_parts(
    model: nn.Module,
    config: TrainConfig,
    runtime: Runtime,
    world: int,
    fallback: MemoryFallback,
) -> tuple[nn.Module, StepParts]:
    """(evaluation model, what a training step reads and updates) for `model` as `config`
    says: step models (`build_step_models`), optimizer, gradient scaler (fp16 only); no
    weight average (the Trainer adds its own after DistributedDataParallel has broadcast the
    weights). The Trainer and the benchmark (resnets.bench) both build their steps with this."""
    eval_model, step_model = build_step_models(model, runtime.device, world, config.compile)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    parts = StepParts(
        model, step_model, optimizer, scaler, fallback, None,
        runtime.device, runtime.precision, config.label_smoothing, world,
    )  # fmt: skip
    return eval_model, parts


def channels_of(channels: int) -> str:
    """How a run's first line names its input: "1 channel (grey)" or "3 channels (RGB)"."""
    return "1 channel (grey)" if channels == 1 else f"{channels} channels (RGB)"


def seconds_since_process_start() -> float:
    """Wall seconds since this process started, from Linux's /proc; 0 where it cannot be read
    (the run's clock then starts when its trainer is built)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # starttime
    except (OSError, ValueError, IndexError):
        return 0.0


def elapsed_so_far(history: list[dict[str, Any]]) -> float:
    """Wall seconds the earlier processes of a resumed run spent up to its last recorded epoch:
    its `elapsed`, or for a history written before that column, the sum of epoch `seconds`.
    Time spent in an epoch that was interrupted before it ended is not known, so not counted."""
    if not history:
        return 0.0
    last = history[-1].get("elapsed")
    return float(last) if last is not None else float(sum(r["seconds"] for r in history))


class Trainer:
    """Trains `model` on `batches.train`, evaluating on `batches.val`/`batches.test`.

    `log` receives the lines a person reads (one per epoch, notices, the final line, and where
    standard output is not a terminal a progress line as `log_every` says); with `quiet`, only
    the final line. `on_step(trainer, step)` is called after every optimizer step
    (for tests and tools). Build one with `build_trainer` or `resume_trainer`.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        runtime: Runtime,
        model: nn.Module,
        model_kwargs: dict[str, Any],
        spec: DataSpec,
        batches: Batches,
        folder: RunFolder,
        log: Callable[[str], None] = print,
        quiet: bool = False,
        on_step: Callable[[Trainer, int], None] | None = None,
        started: float | None = None,
        log_every: LogEvery | None = None,
    ) -> None:
        self.config, self.runtime, self.spec = config, runtime, spec
        self.log_every = LogEvery.parse(DEFAULT_LOG_EVERY) if log_every is None else log_every
        # time.monotonic() when this process began the run (default: now); `elapsed` counts from it
        self.started = time.monotonic() if started is None else started
        self._elapsed_before = 0.0  # by earlier processes of a resumed run (set by fit)
        self.device, self.precision = runtime.device, runtime.precision
        self.channels_last = runtime.channels_last
        self.model, self.model_kwargs = model, model_kwargs
        self.batches, self.folder = batches, folder
        self.log, self.quiet, self.on_step = log, quiet, on_step
        self.place = distributed.info()
        self._check_shares(batches)
        self.fallback = MemoryFallback(config.micro_batch, self._notice, config.fewest_images())
        self.eval_fallback = MemoryFallback(None, self._notice)
        self.eval_model, self.parts = build_step_parts(
            model, config, runtime, self.place.world, self.fallback
        )
        self.step_model = self.parts.step_model
        self.optimizer, self.scaler = self.parts.optimizer, self.parts.scaler
        # the average starts from the weights as DistributedDataParallel broadcast them
        self.ema = self.parts.ema = build_ema(model, config.ema)
        self.position = Position()
        self.history: list[dict[str, Any]] = []
        # the energy threshold of the current weights, when measured (see _finish_epoch)
        self.ood: EnergyThreshold | None = None
        self.board: TensorBoardLog | None = None  # with --tensorboard, from the first epoch
        self._stop_requested = False
        self._stop_signal = signal.SIGINT

    def _check_shares(self, batches: Batches) -> None:
        """Every process needs at least one image of every training batch (its step joins the
        exchange of gradients), and two where the network's last map is 1x1 (BatchNorm). A
        short last batch is joined to the one before (`DeviceBatches`), so only a training
        split smaller than that is refused here, once its size is known."""
        train, world = batches.train, self.place.world
        fewest = self.config.fewest_images()
        if len(train) == 0:
            return
        smallest = min(train.batch_size, train.rows_in(len(train) - 1))
        if smallest >= fewest * world:
            return
        if world == 1:
            raise UsageError(
                f"{self.config.model} at {self.config.image_size}px ends in a 1x1 map, so "
                f"BatchNorm needs at least {fewest} images per training pass, but the training "
                f"split has {smallest}; use more training images or a larger --image-size"
            )
        raise UsageError(
            f"a training batch of {smallest} images cannot be shared by {world} processes "
            f"({fewest} each at least); use a --batch-size (and a number of training images) "
            f"that leaves every batch, the last included, {fewest} images per process"
        )

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def selected_on(self) -> str:
        """The split that chooses `best.pt`: validation when held out, else (as in the
        chapter) the test set."""
        return "val" if self.batches.val is not None else "test"

    def _notice(self, message: str) -> None:
        notice(self.quiet)(message)

    # ---- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "model_name": self.config.model,
            "model_kwargs": self.model_kwargs,
            "data_spec": self.spec.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "position": asdict(self.position),
            "history": self.history,
            "ood": self.ood.to_dict() if self.ood else None,
            "micro_batch": self.fallback.size,
            "rng": {
                "torch": torch.random.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.position = Position(**state["position"])
        if not self.place.is_main:  # the saved sums are of all processes: the first adds them
            self.position.loss_sum, self.position.correct = 0.0, 0
        self.history = list(state["history"])
        self.ood = EnergyThreshold.from_dict(state.get("ood"))
        self.fallback.size = self.config.micro_batch or state["micro_batch"]
        torch.random.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, name: str) -> None:
        self.folder.save(name, self.state_dict())

    # ---- training ----------------------------------------------------------------------------

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, total: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch (this process's share of `total` images), in
        micro-batches if memory requires it."""
        return train_step(self.parts, x, y, total)

    def _set_lr(self, step: int) -> float:
        steps = len(self.batches.train)
        lr = learning_rate(self.config, step, self.config.epochs * steps, steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
        return lr

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, batch: int) -> None:
        """Stop on a NaN or infinite loss; every process stops when any one's loss is."""
        if distributed.any_true(not bool(torch.isfinite(loss_sum))):
            raise Diverged(
                f"the training loss became {float(loss_sum)} in epoch {epoch + 1} by batch "
                f"{batch}; stopped ({self.folder.kept()}). Try a lower --lr or --precision fp32."
            )

    def _train_epoch(self, epoch: int) -> None:
        pos = self.position
        self.ood = None  # a threshold is saved only with the weights it was measured on
        steps = len(self.batches.train)
        batches: Iterator = itertools.islice(self.batches.train.epoch(epoch), pos.batch, None)
        bar = tqdm(
            batches, total=steps, initial=pos.batch, desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="batch", leave=False, disable=True if self.quiet else None,
        )  # fmt: skip
        lines = ProgressLines(
            self.log_every if not self.quiet and not output_is_terminal() else LogEvery(),
            self.log, f"epoch {epoch + 1}/{self.config.epochs}", steps, pos.batch,
        )  # fmt: skip
        self.model.train()
        if self.config.freeze_backbone:
            backbone_norms_eval(self.model)  # its running statistics stay as they were loaded
        loss_sum = torch.tensor(pos.loss_sum, device=self.device)
        correct = torch.tensor(pos.correct, device=self.device)
        start = time.perf_counter()
        for x, y in bar:
            self._set_lr(epoch * steps + pos.batch)
            total = self.batches.train.rows_in(pos.batch)  # of all processes together
            step_loss, step_correct = self.train_step(x, y, total)
            loss_sum += step_loss
            correct += step_correct
            pos.batch += 1
            pos.seen += total
            if pos.batch % NAN_CHECK_EVERY == 0:  # the epoch's end is checked after the loop
                self._check_finite(loss_sum, epoch, pos.batch)
                # this process's share of the loss, scaled up (exact for one process)
                shown = float(loss_sum) * self.place.world / pos.seen
                bar.set_postfix(loss=f"{shown:.4f}", refresh=False)
            if lines.step(pos.batch, total):
                lines.write(pos.batch, float(loss_sum) * self.place.world / pos.seen)
            if self.on_step:
                self.on_step(self, epoch * steps + pos.batch)
            if self._agree_after_step():
                break
            every = self.config.checkpoint_every
            if every and (epoch * steps + pos.batch) % every == 0 and pos.batch < steps:
                self._save_within_epoch(loss_sum, correct, time.perf_counter() - start)
        self._check_finite(loss_sum, epoch, pos.batch)
        pos.train_seconds += time.perf_counter() - start
        distributed.all_reduce_sum(loss_sum)
        distributed.all_reduce_sum(correct)
        pos.loss_sum, pos.correct = float(loss_sum), int(correct)

    def _save_within_epoch(
        self, loss_sum: torch.Tensor, correct: torch.Tensor, seconds: float
    ) -> None:
        """Save last.pt mid-epoch (--checkpoint-every). Every process takes part: the running
        loss and accuracy in the checkpoint are those of all processes together, and a resumed
        run continues them from there (see `load_state_dict`)."""
        pos = self.position
        started = pos.train_seconds
        pos.loss_sum = float(distributed.all_reduce_sum(loss_sum.detach().clone()))
        pos.correct = int(distributed.all_reduce_sum(correct.detach().clone()))
        pos.train_seconds = started + seconds
        self.save("last")
        pos.train_seconds = started  # the epoch's own clock adds its time at the end

    def _agree_after_step(self) -> bool:
        """Whether to stop now. A data-parallel run agrees on it (a signal seen by any process
        stops all of them at the same step) and on the micro-batch (the smallest any process
        fell back to on running out of memory), in one exchange per step."""
        if self.place.world == 1:
            return self._stop_requested
        unset = 2**62  # no micro-batch yet: the whole batch
        stop, negative = distributed.all_reduce_max(
            [int(self._stop_requested), -(self.fallback.size or unset)]
        )
        self.fallback.size = None if -negative == unset else -negative
        if stop:
            self._stop_requested = True
        return bool(stop)

    def evaluate(
        self, split: str = "test", compare_tta: bool = False, keep_energy: bool = False
    ) -> dict[str, Any]:
        """Loss and accuracy of the current weights (the EMA weights when enabled) on `split`;
        with `compare_tta`, also with and without flip TTA, and with `keep_energy` each image's
        energy score (see `evaluate`)."""
        batches = self.batches.val if split == "val" else self.batches.test
        if batches is None:
            raise UsageError("this run holds out no validation split (see --val-fraction)")
        model = self.ema.module if self.ema else self.eval_model  # never the DDP wrapper
        return evaluate(
            model, batches.epoch(0), device=self.device, precision=self.precision,
            tta=self.config.tta, num_classes=self.spec.num_classes, fallback=self.eval_fallback,
            progress=not self.quiet, total=len(batches), desc=f"eval {split}",
            keep_energy=keep_energy, sharded=self.place.world > 1, compare_tta=compare_tta,
        )  # fmt: skip

    def _mirrors(self) -> bool:
        """Whether this run mirrors images: flip or altflip in training, or flip TTA."""
        return self.config.tta or any(m in self.batches.train.augment for m in MIRRORS)

    def _warn_if_tta_hurts(self, result: dict[str, Any]) -> None:
        """Say so when averaging with mirror images lowers the held-out accuracy by more than
        TTA_TOLERANCE: mirroring then most likely changes what the images mean."""
        plain, tta = result["acc_plain"], result["acc_tta"]
        if plain - tta > TTA_TOLERANCE:
            folder = self.spec.name == "folder"
            declare = " or declare mirror = false in dataset.toml" if folder else ""
            self._notice(
                f"warning: flip TTA lowers the test accuracy from {plain:.2%} (images as they "
                f"are) to {tta:.2%} (averaged with their mirror images): a sign that mirroring "
                f"changes what the images mean; try --no-mirror{declare}"
            )

    def _finish_epoch(self, epoch: int, start: float) -> dict[str, Any]:
        """Evaluate (when due), and record the epoch; `seconds` covers training and evaluation.

        Epochs that are not evaluated (see `eval_every`) have None as their test (and
        validation) loss and accuracy.
        """
        pos = self.position
        due = (epoch + 1) % self.config.eval_every == 0 or epoch + 1 == self.config.epochs
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": pos.loss_sum / pos.seen,
                               "train_acc": pos.correct / pos.seen}  # fmt: skip
        compare = epoch + 1 == self.config.epochs and self._mirrors()  # at the end, cheaply
        for split in ("val", "test"):
            # the energy threshold comes from the split that chooses best.pt (one process's
            # whole split: under torchrun each process sees a share, and none is measured)
            held_out = split == self.selected_on and self.place.world == 1
            wanted = due and (split == "test" or self.batches.val)
            result = (
                self.evaluate(split, compare and split == "test", keep_energy=held_out)
                if wanted
                else {}
            )
            if "acc_tta" in result:
                self._warn_if_tta_hurts(result)
            row[f"{split}_loss"], row[f"{split}_acc"] = result.get("loss"), result.get("acc")
            if split == "test":  # metrics.csv keeps the test split's calibration error
                row["test_ece"] = result.get("ece")
            if "energy" in result:
                self.ood = EnergyThreshold.measure(result["energy"], split)
        row.update(
            images_per_sec=pos.seen / pos.train_seconds if pos.train_seconds else 0.0,
            seconds=time.perf_counter() - start,
            lr=self.optimizer.param_groups[0]["lr"],
            elapsed=self._elapsed_before + time.monotonic() - self.started,
        )
        self.history.append(row)
        self.position = Position(epoch=epoch + 1)
        return row

    @contextmanager
    def _ctrl_c_stops_cleanly(self) -> Iterator[None]:
        """The first Ctrl-C or SIGTERM ends training after the current step (and saves); a
        second one of either aborts at once, without saving."""

        def handler(signum: int, frame: Any) -> None:
            name = STOP_SIGNALS.get(signal.Signals(signum), f"signal {signum}")
            if self._stop_requested:
                raise Aborted(
                    f"interrupted again ({name}): stopped at once without saving; "
                    f"{self.folder.kept()}",
                    128 + signum,
                )
            self._stop_requested, self._stop_signal = True, signal.Signals(signum)
            if signum == signal.SIGINT:
                self._notice("stopping after this step (Ctrl-C again to abort without saving)")
            else:
                self._notice(
                    f"{name}: stopping after this step (a second signal aborts without saving)"
                )

        try:
            previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
        except ValueError:  # not the main thread: leave the signals alone
            yield
            return
        try:
            yield
        finally:
            for number, old in previous.items():
                signal.signal(number, old)

    def plan_memory(self) -> None:
        """Fit the micro-batch and evaluation batch sizes to the memory budget (see plan.py).

        A micro-batch given with --micro-batch is used as it is. In a data-parallel run the
        plan is of one process's share of a batch, and every process takes the smallest
        micro-batch and evaluation batch that any planned.
        """
        if self.config.micro_batch is not None:
            return
        size, world = self.config.image_size, self.place.world
        # the largest batch: a short last one may have been joined to the one before
        largest = self.batches.train.largest_batch() or self.config.batch_size
        share = -(-largest // world)
        # the probes run real steps: minutes for a large network on a CPU, so say so first
        self._notice(
            f"planning memory: probing training steps of up to {share} images at {size}px "
            "(--micro-batch N skips this)"
        )
        plan = plan_memory(
            model=self.model, model_name=self.config.model, model_kwargs=self.model_kwargs,
            runtime=self.runtime, shape=(self.spec.channels, size, size),
            batch_size=share, eval_batch_size=-(-self.config.eval_batch_size // world),
            optimizer_copies=optimizer_copies(
                self.config.optimizer, self.config.resolved_momentum(), self.config.ema
            ),
            budget=find_budget(self.config.memory_budget, self.device),
            current=self.fallback.size,
        )  # fmt: skip
        self.fallback.size = plan.micro_batch
        eval_batch = plan.eval_batch
        if world > 1:
            unset = 2**62
            self.fallback.size = distributed.all_reduce_min(plan.micro_batch or unset)
            self.fallback.size = None if self.fallback.size == unset else self.fallback.size
            eval_batch = distributed.all_reduce_min(plan.eval_batch) * world
        for batches in (self.batches.test, self.batches.val):
            if batches is not None:
                batches.batch_size = min(batches.batch_size, eval_batch)
        self._notice(plan.message)

    def fit(self) -> dict[str, Any]:
        """Train until `config.epochs` epochs are done; return the run's summary."""
        if self.config.tensorboard:
            require_tensorboard()  # said before any training, not after the first epoch
        try:
            return self._fit()
        finally:
            if self.board is not None:
                self.board.close()
                self.board = None

    def _fit(self) -> dict[str, Any]:
        if self.position.epoch < self.config.epochs:  # else a finished run: nothing to plan
            self.plan_memory()
        settings = {**self.config.to_dict(), "data_spec": self.spec.to_dict()}
        fresh = self.position == Position()
        position = None if fresh else asdict(self.position)
        for note in self.folder.start(settings, fresh=fresh, position=position):
            self._notice(note)
        reset_peak_memory(self.device)
        if not self.quiet:
            val = f" / {self.batches.val.count} validation" if self.batches.val else ""
            self.log(
                f"training {self.config.model} on {self.spec.name} on {self.device} "
                f"({self.precision}{', channels-last' if self.channels_last else ''}), "
                f"{self.batches.train.count} train{val} / {self.batches.test.count} test "
                f"images, {channels_of(self.spec.channels)}, at {self.config.image_size}px; "
                f"run folder {self.run_dir}"
            )
        self._elapsed_before = elapsed_so_far(self.history)
        with self._ctrl_c_stops_cleanly():
            while self.position.epoch < self.config.epochs:
                epoch = self.position.epoch
                start = time.perf_counter()
                self._train_epoch(epoch)
                if self._stop_requested:
                    self.save("last")
                    by = "" if self._stop_signal == signal.SIGINT else " by SIGTERM"
                    raise Interrupted(
                        f"interrupted{by} in epoch {epoch + 1}; checkpoint saved to "
                        f"{self.folder.last}. Resume with: resnets train --resume {self.run_dir}",
                        128 + self._stop_signal,
                    )
                row = self._finish_epoch(epoch, start)
                self._write_epoch(row)
        summary = self.summary()
        self.folder.write_summary(summary)
        if self.place.is_main:
            self.log(self._final_line(summary))
        return summary

    def _write_epoch(self, row: dict[str, Any]) -> None:
        self.save("last")
        key = f"{self.selected_on}_acc"
        scored = [r[key] for r in self.history if r[key] is not None]
        if row[key] is not None and row[key] >= max(scored):
            self.save("best")
        self.folder.write_metrics(self.history, title=f"{self.config.model} on {self.spec.name}")
        if self.config.tensorboard and self.folder.writes:
            self._write_board(row)
        if not self.quiet:
            val = "" if row["val_acc"] is None else f"val acc {row['val_acc']:.3f}, "
            test = "-" if row["test_acc"] is None else format(row["test_acc"], ".3f")
            self.log(
                f"epoch {row['epoch']}, loss {row['train_loss']:.4f}, "
                f"train acc {row['train_acc']:.3f}, {val}test acc {test}, "
                f"{row['images_per_sec']:.1f} images/s, {row['seconds']:.1f} s"
            )

    def _write_board(self, row: dict[str, Any]) -> None:
        """The epoch's scalars in RUN/tensorboard/ and, when it was evaluated, the first test
        images with the current weights' predictions (the event files appear with the first
        checkpoint, so a run stopped before it leaves a folder that a new run may use)."""
        if self.board is None:
            self.board = TensorBoardLog(self.run_dir / "tensorboard")
        self.board.epoch(row)
        if row["test_acc"] is None:
            return
        x, y = next(iter(self.batches.test.epoch(0)))
        x, y = x[:SHOWN], y[:SHOWN]
        model = self.ema.module if self.ema else self.eval_model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = predict(model, x, self.device, self.precision, tta=False)
        model.train(was_training)
        pixels = display_pixels(x, self.spec.mean, self.spec.std)
        self.board.predictions(row["epoch"], pixels, y.tolist(), logits, self.spec.classes)

    def summary(self) -> dict[str, Any]:
        """The run's outcome; `best_*` describe the epoch chosen on `selected_on`."""
        key = f"{self.selected_on}_acc"
        scored = [row for row in self.history if row[key] is not None]
        top = max(r[key] for r in scored)
        best = [r for r in scored if r[key] == top][-1]  # best.pt holds the last of equals
        tested = [row for row in self.history if row["test_acc"] is not None]
        summary = {
            "model": self.config.model,
            "dataset": self.spec.name,
            "epochs": len(self.history),
            "final_test_acc": tested[-1]["test_acc"],
            "selected_on": self.selected_on,
            "best_epoch": best["epoch"],
            "best_test_acc": best["test_acc"],
            "ece": best.get("test_ece"),  # of best.pt's weights on the test split
        }
        if self.selected_on == "val":
            summary["best_val_acc"] = best["val_acc"]
            summary["final_val_acc"] = scored[-1]["val_acc"]
        summary.update(
            total_seconds=sum(r["seconds"] for r in self.history),
            peak_memory_bytes=peak_memory_bytes(self.device),
            device=str(self.device),
            precision=self.precision,
            channels_last=self.channels_last,
        )
        return summary

    def _final_line(self, summary: dict[str, Any]) -> str:
        if summary["selected_on"] == "val":
            chosen = (
                f"best on validation {summary['best_val_acc']:.4f} (epoch "
                f"{summary['best_epoch']}, test acc {summary['best_test_acc']:.4f})"
            )
        else:
            chosen = (
                f"best {summary['best_test_acc']:.4f} (epoch {summary['best_epoch']}, chosen on "
                "the test set)"
            )
        return (
            f"done: {summary['epochs']} epochs in {summary['total_seconds']:.1f} s, final test acc "
            f"{summary['final_test_acc']:.4f}, {chosen}; run folder {self.run_dir}"
        )
