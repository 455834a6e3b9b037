"""The training loop: epochs of device-resident batches, checkpoints, and a run folder.

A run folder holds `config.yaml` (every setting, resolved), `metrics.csv`, `curves.png`,
`checkpoints/last.pt`, `checkpoints/best.pt` and `summary.json`.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from resnets.data import Dataset, DeviceBatches, load_fashion_mnist
from resnets.errors import ResnetsError, UsageError
from resnets.models import ResNet, create_model
from resnets.training.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    run_dir_of,
    save_checkpoint,
)
from resnets.training.config import TrainConfig, make_config
from resnets.training.evaluate import evaluate
from resnets.training.memory import MemoryFallback
from resnets.training.plots import plot_confusion, plot_curves
from resnets.training.runtime import (
    autocast,
    keep_freed_host_memory,
    peak_memory_bytes,
    reset_peak_memory,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    seeded,
)

METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_sec",
           "seconds", "lr")  # fmt: skip
# Settings that may change when a run is resumed; the rest define the run.
RESUMABLE = ("epochs", "device", "data_dir", "micro_batch", "eval_batch_size", "eval_every",
             "compile")  # fmt: skip
NAN_CHECK_EVERY = 20  # steps between finiteness checks (each costs a device sync)


class Interrupted(ResnetsError):
    """Ctrl-C: the checkpoint is written and the message says how to resume."""

    exit_code = 130


class Diverged(ResnetsError):
    """The loss became NaN or infinite."""


def build_model(config: TrainConfig) -> ResNet:
    """The configured network for 1-channel, 10-class Fashion-MNIST, seeded by the run's seed."""
    with seeded(config.seed):
        return create_model(
            config.model, in_channels=1, num_classes=10, small_input=config.small_input,
            width=config.width, zero_init_residual=config.zero_init_residual,
        )  # fmt: skip


def learning_rate(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate at optimizer step `step` (0-based), a pure function of the step.

    Written out rather than taken from torch.optim.lr_scheduler so that a resumed run needs
    no scheduler state: the step number alone gives the rate.
    constant: lr throughout. cosine: linear warm-up over `warmup_epochs`, then cosine to 0.
    onecycle: linear rise from lr/25 over the first quarter, then cosine to 0.
    """
    peak = config.lr
    if config.schedule == "constant":
        return peak
    if config.schedule == "cosine":
        warmup = round(config.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return peak * (step + 1) / warmup
    else:
        warmup = max(1, total_steps // 4)
        if step < warmup:
            return peak * (0.04 + 0.96 * step / warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_with_warmup(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """An EMA update for AveragedModel whose decay ramps up as min(decay, (1 + n) / (10 + n)).

    torch's get_ema_multi_avg_fn uses the full decay from the first step, so the average stays
    mostly initial weights for thousands of steps (0.999 ** 1000 = 0.37): a short run would be
    evaluated on a nearly untrained network. The ramp (as in TensorFlow's
    ExponentialMovingAverage with num_updates) lets early averages follow the model.
    """

    @torch.no_grad()
    def update(averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        weight = 1 - min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers such as BatchNorm's num_batches_tracked follow the model
            for avg, cur in zip(averaged, current, strict=True):
                avg.copy_(cur)

    return update


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights of convolutions and the classifier, not on BN or biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _parameter_groups(model, config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    momentum = config.resolved_momentum()
    nesterov = config.optimizer == "nesterov"
    if nesterov and momentum <= 0:
        raise UsageError("nesterov needs a positive --momentum")
    return torch.optim.SGD(groups, lr=config.lr, momentum=momentum, nesterov=nesterov)


def default_run_dir(config: TrainConfig) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{config.model}"


@dataclass
class Position:
    """Where training stands: completed epochs, and batches done within the next one."""

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_seconds: float = 0.0


class Trainer:
    """Trains `config.model` on Fashion-MNIST and writes the run folder.

    `log` receives the lines a person reads (one per epoch, notices, the final line); with
    `quiet`, only the final line. `on_step(trainer, step)` is called after every optimizer step
    (for tests and tools). Use `Trainer.resume(run_dir)` to continue a run. On the CPU it
    sets the process's malloc to keep freed memory (see `keep_freed_host_memory`).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        data: Dataset | None = None,
        log: Callable[[str], None] = print,
        quiet: bool = False,
        on_step: Callable[[Trainer, int], None] | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.config = config.validate()
        self.log, self.quiet, self.on_step = log, quiet, on_step
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            keep_freed_host_memory()  # no page faults on each step's activations
        self.precision = resolve_precision(config.precision, self.device)
        if self.precision == "fp16" and self.device.type == "cpu":
            raise UsageError("fp16 autocast is for GPUs; on the CPU use --precision bf16 or fp32")
        self.channels_last = resolve_channels_last(
            config.channels_last, self.device, self.precision
        )
        self.run_dir = Path(run_dir or config.out or default_run_dir(config))
        self.data = data or load_fashion_mnist(
            config.data_dir, train_samples=config.train_samples, test_samples=config.test_samples,
            progress=not quiet,
        )  # fmt: skip
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = build_model(config).to(self.device, memory_format=memory_format)
        self.step_model: nn.Module = torch.compile(self.model) if config.compile else self.model
        self.optimizer = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=ema_with_warmup(config.ema), use_buffers=True)
            if config.ema
            else None
        )
        self.train_batches = self._batches(self.data.train_images, self.data.train_labels, True)
        self.test_batches = self._batches(self.data.test_images, self.data.test_labels, False)
        self.fallback = MemoryFallback(config.micro_batch, self._notice)
        self.eval_fallback = MemoryFallback(None, self._notice)
        self.position = Position()
        self.history: list[dict[str, Any]] = []
        self._stop_requested = False

    def _batches(self, images: torch.Tensor, labels: torch.Tensor, train: bool) -> DeviceBatches:
        batch_size = self.config.batch_size if train else self.config.eval_batch_size
        return DeviceBatches(
            images, labels, batch_size=batch_size,
            image_size=self.config.image_size, device=self.device, shuffle=train,
            augment=self.config.augment if train else "none", seed=self.config.seed,
            channels_last=self.channels_last,
        )  # fmt: skip

    def _notice(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(f"note: {message}")

    # ---- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "position": asdict(self.position),
            "history": self.history,
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
        self.history = list(state["history"])
        self.fallback.size = self.config.micro_batch or state["micro_batch"]
        torch.random.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, name: str) -> Path:
        return save_checkpoint(self.state_dict(), self.run_dir / "checkpoints" / f"{name}.pt")

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: dict[str, Any] | None = None, **kwargs: Any):
        """Continue the run in `run_dir` (or from a checkpoint file) from its last checkpoint.

        Only the settings in RESUMABLE may be changed; `epochs` is the new total.
        """
        path = find_checkpoint(run_dir, "last")
        state = load_checkpoint(path)
        saved = state["config"]
        changes = {
            k: v for k, v in (overrides or {}).items() if v is not None and v != saved.get(k)
        }
        fixed = sorted(set(changes) - set(RESUMABLE))
        if fixed:
            raise UsageError(
                f"cannot change {', '.join(fixed)} when resuming; only {', '.join(RESUMABLE)} may "
                "change (start a new run for the rest)"
            )
        config = make_config(overrides={**saved, **changes})
        trainer = cls(config, run_dir=run_dir_of(path), **kwargs)
        trainer.load_state_dict(state)
        return trainer

    # ---- training ----------------------------------------------------------------------------

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch, in micro-batches if memory requires it."""
        n = len(x)
        smoothing = self.config.label_smoothing

        def accumulate(chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True):
                with autocast(self.device, self.precision):
                    logits = self.step_model(xs)
                loss = F.cross_entropy(logits.float(), ys, label_smoothing=smoothing)
                self.scaler.scale(loss * (len(xs) / n)).backward()
                loss_sum += loss.detach() * len(xs)
                correct += (logits.argmax(1) == ys).sum()
            return loss_sum, correct

        stats = self.fallback.run(n, accumulate, "micro-batch")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update_parameters(self.model)
        return stats

    def _set_lr(self, step: int) -> float:
        steps = len(self.train_batches)
        lr = learning_rate(self.config, step, self.config.epochs * steps, steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, batch: int) -> None:
        if not torch.isfinite(loss_sum):
            last = self.run_dir / "checkpoints" / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
            raise Diverged(
                f"the training loss became {float(loss_sum)} in epoch {epoch + 1} by batch "
                f"{batch}; stopped ({kept}). Try a lower --lr or --precision fp32."
            )

    def _train_epoch(self, epoch: int) -> None:
        pos = self.position
        steps = len(self.train_batches)
        batches: Iterator = itertools.islice(self.train_batches.epoch(epoch), pos.batch, None)
        bar = tqdm(
            batches, total=steps, initial=pos.batch, desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="batch", leave=False, disable=True if self.quiet else None,
        )  # fmt: skip
        self.model.train()
        loss_sum = torch.tensor(pos.loss_sum, device=self.device)
        correct = torch.tensor(pos.correct, device=self.device)
        start = time.perf_counter()
        for x, y in bar:
            self._set_lr(epoch * steps + pos.batch)
            step_loss, step_correct = self.train_step(x, y)
            loss_sum += step_loss
            correct += step_correct
            pos.batch += 1
            pos.seen += len(y)
            if pos.batch % NAN_CHECK_EVERY == 0:  # the epoch's end is checked after the loop
                self._check_finite(loss_sum, epoch, pos.batch)
                bar.set_postfix(loss=f"{float(loss_sum) / pos.seen:.4f}", refresh=False)
            if self.on_step:
                self.on_step(self, epoch * steps + pos.batch)
            if self._stop_requested:
                break
        self._check_finite(loss_sum, epoch, pos.batch)
        pos.train_seconds += time.perf_counter() - start
        pos.loss_sum, pos.correct = float(loss_sum), int(correct)

    def evaluate(self) -> dict[str, Any]:
        """Test loss and accuracy of the current weights (the EMA weights when enabled)."""
        model = self.ema.module if self.ema else self.step_model
        return evaluate(
            model, self.test_batches.epoch(0), device=self.device, precision=self.precision,
            tta=self.config.tta, fallback=self.eval_fallback,
        )  # fmt: skip

    def _finish_epoch(self, epoch: int, start: float) -> dict[str, Any]:
        """Evaluate (when due), and record the epoch; `seconds` covers training and evaluation.

        Epochs that are not evaluated (see `eval_every`) have None as test loss and accuracy.
        """
        pos = self.position
        due = (epoch + 1) % self.config.eval_every == 0 or epoch + 1 == self.config.epochs
        result = self.evaluate() if due else {"test_loss": None, "test_acc": None}
        row = {
            "epoch": epoch + 1,
            "train_loss": pos.loss_sum / pos.seen,
            "train_acc": pos.correct / pos.seen,
            "test_loss": result["test_loss"],
            "test_acc": result["test_acc"],
            "images_per_sec": pos.seen / pos.train_seconds if pos.train_seconds else 0.0,
            "seconds": time.perf_counter() - start,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        self.history.append(row)
        self.position = Position(epoch=epoch + 1)
        return row

    @contextmanager
    def _ctrl_c_stops_cleanly(self) -> Iterator[None]:
        """The first Ctrl-C ends training after the current step; a second one aborts at once."""

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self._notice("stopping after this step (Ctrl-C again to abort without saving)")

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def fit(self) -> dict[str, Any]:
        """Train until `config.epochs` epochs are done; return the run's summary."""
        fresh = self.position == Position()
        if fresh and (self.run_dir / "checkpoints" / "last.pt").exists():
            raise UsageError(
                f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir} "
                "or choose another --out"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(
            yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        )
        reset_peak_memory(self.device)
        if not self.quiet:
            self.log(
                f"training {self.config.model} on {self.device} ({self.precision}"
                f"{', channels-last' if self.channels_last else ''}), "
                f"{len(self.data.train_labels)} train / {len(self.data.test_labels)} test "
                f"images at {self.config.image_size}px; run folder {self.run_dir}"
            )
        with self._ctrl_c_stops_cleanly():
            while self.position.epoch < self.config.epochs:
                epoch = self.position.epoch
                start = time.perf_counter()
                self._train_epoch(epoch)
                if self._stop_requested:
                    self.save("last")
                    raise Interrupted(
                        f"interrupted in epoch {epoch + 1}; checkpoint saved to "
                        f"{self.run_dir / 'checkpoints' / 'last.pt'}. "
                        f"Resume with: resnets train --resume {self.run_dir}"
                    )
                row = self._finish_epoch(epoch, start)
                self._write_epoch(row)
        summary = self.summary()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.log(
            f"done: {summary['epochs']} epochs in {summary['total_seconds']:.1f} s, final test acc "
            f"{summary['final_test_acc']:.4f}, best {summary['best_test_acc']:.4f} (epoch "
            f"{summary['best_epoch']}); run folder {self.run_dir}"
        )
        return summary

    def _write_epoch(self, row: dict[str, Any]) -> None:
        self.save("last")
        tested = [r["test_acc"] for r in self._tested()]
        if row["test_acc"] is not None and row["test_acc"] >= max(tested):
            self.save("best")
        with open(self.run_dir / "metrics.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=METRICS)
            writer.writeheader()
            writer.writerows(self.history)
        plot_curves(self.history, self.run_dir / "curves.png", title=self.config.model)
        if not self.quiet:
            self.log(
                f"epoch {row['epoch']}, loss {row['train_loss']:.4f}, "
                f"train acc {row['train_acc']:.3f}, test acc "
                f"{'-' if row['test_acc'] is None else format(row['test_acc'], '.3f')}, "
                f"{row['images_per_sec']:.1f} images/s, {row['seconds']:.1f} s"
            )

    def _tested(self) -> list[dict[str, Any]]:
        """The epochs that were evaluated on the test set."""
        return [row for row in self.history if row["test_acc"] is not None]

    def summary(self) -> dict[str, Any]:
        tested = self._tested()
        best = max(tested, key=lambda r: r["test_acc"])
        return {
            "model": self.config.model,
            "epochs": len(self.history),
            "final_test_acc": tested[-1]["test_acc"],
            "best_test_acc": best["test_acc"],
            "best_epoch": best["epoch"],
            "total_seconds": sum(r["seconds"] for r in self.history),
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
        }


def evaluate_checkpoint(
    path: str | Path, overrides: dict[str, Any] | None = None, confusion_png: bool = True
) -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given checkpoint file) on the test set.

    `overrides` may set device, data_dir, test_samples, eval_batch_size and tta. Writes
    `confusion.png` into the run folder. Returns the metrics of `evaluate` plus `per_class` by
    class name, `checkpoint` and `epoch`.
    """
    file = find_checkpoint(path, "best")
    state = load_checkpoint(file)
    allowed = ("device", "data_dir", "test_samples", "eval_batch_size", "tta")
    changes = {k: v for k, v in (overrides or {}).items() if k in allowed and v is not None}
    config = make_config(overrides={**state["config"], **changes, "train_samples": 1})
    run_dir = run_dir_of(file)
    trainer = Trainer(config, run_dir=run_dir, quiet=True)
    trainer.load_state_dict(state)
    result = trainer.evaluate()
    classes = trainer.data.classes
    result["per_class"] = dict(zip(classes, result["per_class"], strict=True))
    result["checkpoint"] = str(file)
    result["epoch"] = trainer.position.epoch
    if confusion_png:
        title = f"{config.model}: test accuracy {100 * result['test_acc']:.2f}%"
        result["confusion_png"] = str(
            plot_confusion(result["confusion"], classes, run_dir / "confusion.png", title)
        )
    return result
