"""Training: it learns, resumes bit for bit, survives out-of-memory, stops on NaN and Ctrl-C."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from resnets import checkpoint_format
from resnets.errors import UsageError
from resnets.training import (
    RECIPES,
    CheckpointError,
    Diverged,
    Interrupted,
    Trainer,
    build_trainer,
    learning_rate,
    load_checkpoint,
    make_config,
    resume_trainer,
    save_checkpoint,
)
from resnets.training.config import RECIPES_FP32
from resnets.training.loop import elapsed_so_far, seconds_since_process_start
from resnets.training.recorder import METRICS
from resnets.training.step import ExchangeOutOfMemory, train_step

from helpers import TINY, assert_same_weights, synthetic_dataset, write_dataset

DATA = synthetic_dataset()


def trainer(tmp_path: Path, name: str = "run", **settings: Any) -> Trainer:
    config = make_config(overrides={**TINY, **settings})
    return build_trainer(config, data=DATA, run_dir=tmp_path / name, quiet=True, log=lambda _: None)


def test_training_learns_and_writes_the_run_folder(tmp_path: Path) -> None:
    run = trainer(tmp_path, epochs=3, schedule="onecycle")
    summary = run.fit()
    assert summary["final_test_acc"] > 0.8  # chance is 0.1
    folder = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "curves.png", "summary.json"):
        assert (folder / name).stat().st_size > 0, name
    for name in ("last.pt", "best.pt"):
        assert (folder / "checkpoints" / name).is_file()
    with open(folder / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == METRICS and [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row in rows:  # an epoch's seconds cover its training and its evaluation
        train_seconds = len(DATA.train) / float(row["images_per_sec"])
        assert float(row["seconds"]) > train_seconds
    # elapsed: from the trainer's start, so at least the epochs' own seconds so far
    elapsed = [float(r["elapsed"]) for r in rows]
    assert elapsed == sorted(elapsed) and len(set(elapsed)) == 3
    for n in range(len(rows)):
        assert elapsed[n] >= sum(float(r["seconds"]) for r in rows[: n + 1])
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["epochs"] == 3 and saved["device"] == "cpu" and saved["peak_memory_bytes"] > 0
    assert saved["best_test_acc"] == max(float(r["test_acc"]) for r in rows)
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("augment", ["crop+flip", "crop+altflip"])
def test_resume_is_bitwise_identical(tmp_path: Path, augment: str) -> None:
    straight = trainer(tmp_path, "straight", epochs=2, augment=augment)
    straight.fit()
    first = trainer(tmp_path, "resumed", epochs=1, augment=augment)
    first.fit()
    resumed = resume_trainer(tmp_path / "resumed", {"epochs": 2}, data=DATA, quiet=True)
    resumed.fit()
    assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.history[-1]["train_loss"] == resumed.history[-1]["train_loss"]
    assert len(resumed.history) == 2
    # the resumed process adds its time to the first one's
    before = first.history[0]["elapsed"]
    assert resumed.history[0]["elapsed"] == before
    assert resumed.history[1]["elapsed"] >= before + resumed.history[1]["seconds"]


def test_elapsed_of_histories_before_the_column() -> None:
    old = [{"epoch": 1, "seconds": 2.5}, {"epoch": 2, "seconds": 3.0}]
    assert elapsed_so_far(old) == 5.5  # the epochs' own time: all that is known
    assert elapsed_so_far([*old, {"epoch": 3, "seconds": 1.0, "elapsed": 9.0}]) == 9.0
    assert elapsed_so_far([]) == 0.0
    assert 0 < seconds_since_process_start() < 24 * 3600 or not Path("/proc/self/stat").exists()


def test_ctrl_c_saves_a_checkpoint_and_resumes_mid_epoch(tmp_path: Path) -> None:
    straight = trainer(tmp_path, "straight", epochs=2)
    straight.fit()

    def press_ctrl_c(_: Trainer, step: int) -> None:
        if step == 17:  # in the middle of the second epoch (12 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)

    interrupted = trainer(tmp_path, "interrupted", epochs=2)
    interrupted.on_step = press_ctrl_c
    with pytest.raises(Interrupted) as caught:
        interrupted.fit()
    assert caught.value.exit_code == 130
    assert f"resnets train --resume {tmp_path / 'interrupted'}" in str(caught.value)
    state = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")
    assert state["position"]["epoch"] == 1 and state["position"]["batch"] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed = resume_trainer(tmp_path / "interrupted", data=DATA, quiet=True)
    resumed.fit()
    assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())


def test_checkpoint_every_keeps_a_crash_mid_epoch_cheap(tmp_path: Path) -> None:
    """With --checkpoint-every 4 a process that dies at step 18 (in the middle of epoch 2,
    12 steps an epoch) loses only the steps after its checkpoint at step 16; resuming from it
    ends with bitwise the weights of a run that never stopped, and the epoch's running loss
    and accuracy are carried over in the checkpoint."""
    straight = trainer(tmp_path, "straight", epochs=2)
    straight.fit()

    def crash(_: Trainer, step: int) -> None:
        if step == 18:
            raise RuntimeError("the process died")

    crashed = trainer(tmp_path, "crashed", epochs=2, checkpoint_every=4)
    crashed.on_step = crash
    with pytest.raises(RuntimeError, match="died"):
        crashed.fit()
    state = load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.pt")
    assert (state["position"]["epoch"], state["position"]["batch"]) == (1, 4)
    assert state["position"]["seen"] == 4 * 50 and state["position"]["correct"] > 0
    resumed = resume_trainer(tmp_path / "crashed", data=DATA, quiet=True)
    resumed.fit()
    assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())
    assert resumed.history[-1]["train_acc"] == straight.history[-1]["train_acc"]


def limit_forward(run: Trainer, most: int) -> list[int]:
    """Make the model fail as CUDA does for training batches larger than `most`; returns the
    sizes it ran on."""
    forward = run.model.forward
    sizes: list[int] = []

    def limited_forward(x: torch.Tensor) -> torch.Tensor:
        if run.model.training and len(x) > most:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(len(x))
        return forward(x)

    run.model.forward = limited_forward  # type: ignore[method-assign]
    return sizes


def count_optimizer_steps(run: Trainer) -> list[int]:
    steps: list[int] = []
    optimizer_step = run.optimizer.step
    run.optimizer.step = lambda *a, **k: steps.append(1) or optimizer_step(*a, **k)  # type: ignore[method-assign]
    return steps


def test_out_of_memory_falls_back_to_micro_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reactive path alone (no plan): a step that runs out of memory is split."""
    run = trainer(tmp_path, epochs=1)
    monkeypatch.setattr(run, "plan_memory", lambda: None)
    notices: list[str] = []
    run.fallback.announce = notices.append
    sizes = limit_forward(run, 16)
    steps = count_optimizer_steps(run)
    run.fit()
    assert len(steps) == len(run.batches.train) == 12  # one optimizer step per batch of 50
    assert run.fallback.size == 12 and max(s for s in sizes if s != 100) <= 16
    assert len(notices) == 2  # 50 -> 25 -> 12, said once each
    assert "accumulating gradients" in notices[0]
    assert run.history[-1]["train_acc"] > 0.3


def test_the_plan_finds_a_micro_batch_that_fits_before_training(tmp_path: Path) -> None:
    """A probe that runs out of memory is halved until one fits, and training then never
    needs the fallback."""
    run = trainer(tmp_path, epochs=1)
    notices: list[str] = []
    run.fallback.announce = notices.append
    sizes = limit_forward(run, 16)
    steps = count_optimizer_steps(run)
    run.fit()
    assert notices == []  # the fallback was never needed
    assert run.fallback.size == 12  # 50 -> 25 -> 12
    assert len(steps) == len(run.batches.train) == 12
    assert max(s for s in sizes if s != 100) <= 16


@pytest.mark.parametrize("targets", ["classes", "soft"])
def test_micro_batches_take_the_same_optimizer_step(tmp_path: Path, targets: str) -> None:
    """One `train_step` on the whole batch and one in micro-batches of 12 (12+12+12+12+2, so
    the last share is small) move the weights to the same place.

    The comparison is made with BatchNorm in eval mode (running statistics), where each image's
    output depends on that image alone, so the summed, share-weighted micro-batch gradients
    must equal the batch gradient. In train mode BN normalises by each micro-batch's own
    statistics: that changes the function being differentiated, so a difference there is
    legitimate and not what this test is about. Momentum, weight decay and label smoothing are
    on, so every part of the optimizer step sees the accumulated gradients.
    """
    settings = {"momentum": 0.9, "weight_decay": 5e-4, "label_smoothing": 0.1}
    whole = trainer(tmp_path, "whole", **settings)
    split = trainer(tmp_path, "split", **settings)
    split.fallback.size = 12
    assert_same_weights(whole.model.state_dict(), split.model.state_dict())
    x, y = next(iter(whole.batches.train.epoch(0)))
    if targets == "soft":  # mixup-like targets: two classes per image, shares 0.7 / 0.3
        y = 0.7 * torch.nn.functional.one_hot(y, 10) + 0.3 * torch.nn.functional.one_hot(
            y.roll(1), 10
        )
    sizes: list[int] = []
    split.model.register_forward_pre_hook(lambda _, inputs: sizes.append(len(inputs[0])))
    results = []
    for run in (whole, split):
        run.model.eval()
        run._set_lr(0)
        results.append(train_step(run.parts, x, y))
    assert sizes == [12, 12, 12, 12, 2]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)  # summed loss
    assert int(results[0][1]) == int(results[1][1])  # correct count
    moved = whole.model.state_dict()
    start = trainer(tmp_path, "start", **settings).model.state_dict()
    for key, value in split.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, moved[key], rtol=0, atol=1e-6, msg=key)
    assert not torch.equal(moved["fc.weight"], start["fc.weight"])  # the step did move them
    # the momentum buffers (the gradients plus weight decay) agree too
    for a, b in zip(whole.optimizer.state.values(), split.optimizer.state.values(), strict=True):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=1e-5, atol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run = trainer(tmp_path, epochs=3)
    forward = run.model.forward
    run.model.forward = lambda x: forward(x) * (float("nan") if run.position.epoch == 1 else 1.0)
    with pytest.raises(Diverged, match="became nan in epoch 2"):
        run.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["position"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"value": torch.arange(3)}, path)

    def broken_save(obj: object, file: Any) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_format.torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"value": torch.arange(5)}, path)
    assert torch.equal(load_checkpoint(path)["value"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


@pytest.mark.parametrize(
    "content,message",
    [(None, "truncated or not a checkpoint"), (b"hello", "truncated or not a checkpoint")],
)
def test_bad_checkpoints_are_named(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"value": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content is None else content)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value) and len(str(caught.value).splitlines()) == 1
    torch.save({"something": "else"}, path)
    with pytest.raises(CheckpointError, match="not a resnets checkpoint"):
        load_checkpoint(path)


def test_resume_refuses_to_change_what_defines_the_run(tmp_path: Path) -> None:
    trainer(tmp_path, epochs=1).fit()
    with pytest.raises(UsageError, match="cannot change model"):
        resume_trainer(tmp_path / "run", {"model": "resnet18"}, data=DATA, quiet=True)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_learning_rate_schedules(schedule: str) -> None:
    config = make_config(overrides={"lr": 0.4, "schedule": schedule, "warmup_epochs": 1.0})
    rates = [learning_rate(config, step, 100, 10) for step in range(100)]
    assert max(rates) == pytest.approx(0.4)
    if schedule == "constant":
        assert set(rates) == {0.4}
    else:
        assert rates[0] < 0.1 and rates[-1] < 0.001
        peak = rates.index(max(rates))
        assert all(a <= b for a, b in zip(rates[:peak], rates[1 : peak + 1], strict=True))
        assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1 :], strict=False))
        assert peak == (9 if schedule == "cosine" else 25)


def test_ema_follows_the_model_early_and_averages_later() -> None:
    from torch.optim.swa_utils import AveragedModel

    from resnets.training.ema import ema_with_warmup

    model = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(0.999), use_buffers=True)
    for step in range(1, 3001):
        model.weight.data.fill_(float(step))
        ema.update_parameters(model)
        if step == 20:  # plain EMA at 0.999 would hold about 1.2 here
            assert ema.module.weight.item() > 10
    # By step 3000 the decay has ramped to (1 + 3000) / (10 + 3000), about 0.997: the average
    # trails the model by roughly 1 / (1 - 0.997), about 330 steps.
    assert 2600 < ema.module.weight.item() < 2800


def test_ema_and_tta_evaluate(tmp_path: Path) -> None:
    run = trainer(tmp_path, epochs=2, ema=0.999, tta=True)
    run.fit()
    assert run.history[-1]["test_acc"] > 0.5  # a 0.999 EMA without warm-up scores at chance
    averaged = run.ema.module.state_dict()
    assert not torch.equal(averaged["fc.weight"], run.model.state_dict()["fc.weight"])


def test_a_new_run_never_overwrites_an_old_one(tmp_path: Path) -> None:
    trainer(tmp_path, epochs=1).fit()
    with pytest.raises(UsageError, match="already holds a run; continue it with --resume"):
        trainer(tmp_path, epochs=1).fit()


def test_eval_every_skips_test_passes_but_always_tests_the_last_epoch(tmp_path: Path) -> None:
    run = trainer(tmp_path, epochs=3, eval_every=2)
    summary = run.fit()
    with open(tmp_path / "run" / "metrics.csv") as file:
        tested = [row["test_acc"] != "" for row in csv.DictReader(file)]
    assert tested == [False, True, True]
    assert summary["final_test_acc"] == run.history[-1]["test_acc"] > 0.5
    assert (tmp_path / "run" / "curves.png").is_file()


FAULTS_ON_REUSE = """
import resource, sys
import torch
from resnets.training.runtime import keep_freed_host_memory
kept = sys.argv[1] == "keep" and keep_freed_host_memory()
def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step() -> None:  # three 48 MiB tensors alive at once, as a step's activations are
    a = torch.ones(12 * 2**20)
    b = a * 2
    (a + b).sum()
for _ in range(5):  # warm-up: the heap grows to its steady size
    step()
before = faults()
for _ in range(8):
    step()
print(int(kept), faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_host_memory_is_reused_without_page_faults() -> None:
    def run(mode: str) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", FAULTS_ON_REUSE, mode], capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        kept, faults = done.stdout.split()
        return int(kept), int(faults)

    pages = 48 * 2**20 // os.sysconf("SC_PAGE_SIZE")  # in one tensor
    kept, default_faults = run("default")
    assert not kept and default_faults > 8 * 3 * pages // 2, "default malloc faults each in"
    kept, kept_faults = run("keep")
    # 24 tensors allocated; now and then the heap's layout lets one of them fault in afresh.
    assert kept and kept_faults <= 2 * pages, "later steps reuse the first steps' pages"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """DATA written as Fashion-MNIST files; the system copy and the cache are out of reach."""
    from resnets.data import FASHION_MNIST

    monkeypatch.setattr(FASHION_MNIST, "system_dir", tmp_path / "no-system-copy")
    monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "empty-cache"))
    return str(write_dataset(tmp_path / "data", DATA, monkeypatch))


def test_validation_hold_out_chooses_the_best_epoch(tmp_path: Path, data_dir: str) -> None:
    lines: list[str] = []
    settings = {**TINY, "epochs": 3, "val_fraction": 0.2, "data_dir": data_dir}
    config = make_config(overrides=settings)
    run = build_trainer(config, run_dir=tmp_path / "run", log=lines.append)
    assert (run.batches.train.count, run.batches.val.count) == (480, 120)  # 20% of each class
    summary = run.fit()
    assert summary["selected_on"] == "val"
    history = run.history
    top = max(r["val_acc"] for r in history)
    best = [r for r in history if r["val_acc"] == top][-1]  # the last of equals
    assert summary["best_val_acc"] == top and summary["best_epoch"] == best["epoch"]
    assert summary["best_test_acc"] == best["test_acc"]
    assert summary["final_val_acc"] == history[-1]["val_acc"]
    best_pt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best_pt["position"]["epoch"] == best["epoch"]
    with open(tmp_path / "run" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert all(row["val_acc"] != "" and row["val_loss"] != "" for row in rows)
    assert [float(r["val_acc"]) for r in rows] == [r["val_acc"] for r in history]
    assert "best on validation" in lines[-1] and "chosen on the test set" not in lines[-1]


def test_without_a_hold_out_the_test_set_chooses_and_says_so(tmp_path: Path) -> None:
    lines: list[str] = []
    config = make_config(overrides={**TINY, "epochs": 1})
    summary = build_trainer(config, data=DATA, run_dir=tmp_path / "run", log=lines.append).fit()
    assert summary["selected_on"] == "test" and "best_val_acc" not in summary
    assert "chosen on the test set" in lines[-1]
    with open(tmp_path / "run" / "metrics.csv") as file:
        assert [row["val_acc"] for row in csv.DictReader(file)] == [""]


def test_version_1_checkpoints_load_and_evaluate(tmp_path: Path, data_dir: str) -> None:
    from resnets.data import FASHION_MNIST
    from resnets.training import evaluate_checkpoint

    run = trainer(tmp_path, epochs=1, data_dir=data_dir)
    run.fit()
    current = evaluate_checkpoint(tmp_path / "run", confusion_png=False)
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    state["version"] = 1
    for key in ("model_name", "model_kwargs", "data_spec"):
        del state[key]
    for row in state["history"]:
        del row["val_loss"], row["val_acc"]
    old = tmp_path / "v1.pt"
    torch.save(state, old)

    upgraded = load_checkpoint(old)
    assert upgraded["version"] == 2 and upgraded["model_name"] == "cifar_resnet20"
    assert upgraded["model_kwargs"] == run.model_kwargs
    assert upgraded["data_spec"] == FASHION_MNIST.spec.to_dict()
    assert upgraded["history"][0]["val_acc"] is None
    result = evaluate_checkpoint(old, confusion_png=False)
    assert result["test_acc"] == current["test_acc"] == run.history[-1]["test_acc"]
    assert result["images"] == len(DATA.test) and result["dataset"] == "fashion-mnist"


def test_step_schedule() -> None:
    """lr/10 for the warm-up, lr until the first milestone, then lr/10, then lr/100."""
    settings = {"lr": 0.1, "schedule": "step", "warmup_epochs": 0.5, "milestones": (2, 3.5)}
    config = make_config(overrides=settings)
    rates = [learning_rate(config, step, 50, 10) for step in range(50)]
    expected = [0.01] * 5 + [0.1] * 15 + [0.01] * 15 + [0.001] * 15
    assert rates == pytest.approx(expected, rel=1e-12)
    assert rates[4] != rates[5] and rates[19] != rates[20] and rates[34] != rates[35]


def test_step_schedule_milestones_must_increase() -> None:
    with pytest.raises(UsageError, match="increasing order"):
        make_config(overrides={"schedule": "step", "milestones": (3, 2)})


def test_cifar_paper_recipe_has_the_papers_numbers() -> None:
    config = make_config(recipe="cifar-paper")
    assert config.dataset == "cifar10" and config.model == "cifar_resnet20"
    paper = (config.batch_size, config.lr, config.momentum, config.weight_decay)
    assert paper == (128, 0.1, 0.9, 1e-4)
    assert config.optimizer == "sgd" and config.schedule == "step"
    steps = -(-50_000 // config.batch_size)  # 391 steps per epoch
    assert steps == 391
    iterations = [m * steps for m in config.milestones]
    assert iterations == pytest.approx([32_000, 48_000], abs=steps / 2)
    assert config.epochs * steps == pytest.approx(64_000, abs=steps)
    assert config.warmup_epochs * steps == pytest.approx(400, abs=1)  # at lr 0.01
    lrs = [learning_rate(config, s, config.epochs * steps, steps) for s in (0, 400, 32_100, 48_100)]
    assert lrs == pytest.approx([0.01, 0.1, 0.01, 0.001])
    assert "crop" in config.augment and "flip" in config.augment


class _OutOfMemoryOnBackward:
    """A GradScaler stand-in whose `backward` runs out of memory on the listed calls."""

    def __init__(self, scaler: Any, failing: set[int]) -> None:
        self.scaler, self.failing, self.calls = scaler, failing, 0

    def scale(self, loss: torch.Tensor) -> Any:
        outer = self

        class Scaled:
            def backward(self) -> None:
                outer.calls += 1
                if outer.calls in outer.failing:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                outer.scaler.scale(loss).backward()

        return Scaled()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scaler, name)


@pytest.mark.parametrize(("failing", "raised"), [({1}, False), ({2}, True)])
def test_out_of_memory_while_exchanging_gradients_stops_instead_of_retrying(
    tmp_path: Path, failing: set[int], raised: bool
) -> None:
    """In a data-parallel step (world 2) of two micro-batches, running out of memory in the
    first (gradients kept local) is retried with smaller micro-batches; in the last one, whose
    backward exchanges gradients with the other processes, a retry would put this process out
    of step with them, so the step stops with the micro-batch to use."""
    run = trainer(tmp_path)
    run.parts.world = 2
    run.parts.scaler = _OutOfMemoryOnBackward(run.parts.scaler, failing)  # type: ignore[assignment]
    run.fallback.size = 25
    run.fallback.announce = lambda _: None
    x, y = next(iter(run.batches.train.epoch(0)))
    if raised:
        with pytest.raises(ExchangeOutOfMemory, match="--micro-batch 12"):
            train_step(run.parts, x, y, total=2 * len(x))
        assert run.fallback.size == 25  # not retried
    else:
        train_step(run.parts, x, y, total=2 * len(x))
        assert run.fallback.size == 12  # retried in smaller micro-batches


@pytest.mark.parametrize(
    ("recipe", "precision"),
    # the bf16 settings differ from the fp32 ones only where a recipe has both
    [(name, "fp32") for name in sorted(RECIPES)] + [(name, "bf16") for name in RECIPES_FP32],
)
def test_every_recipe_builds_and_trains_a_few_steps(
    tmp_path: Path, recipe: str, precision: str
) -> None:
    """Each recipe's settings, its fp32 and its bf16 ones, validate, build their network and
    batches, and take two optimizer steps and an evaluation on a small separable set (on the
    CPU, with one short epoch instead of the recipe's length); the loss stays finite."""
    config = make_config(
        recipe,
        overrides={"epochs": 1, "device": "cpu", "precision": precision, "batch_size": 50,
                   "eval_batch_size": 100, "eval_every": 1, "milestones": ()},
    )  # fmt: skip
    data = synthetic_dataset(n_train=100, n_test=100)
    run = build_trainer(config, data=data, run_dir=tmp_path / "run", quiet=True, log=lambda _: None)
    summary = run.fit()
    assert len(run.batches.train) == 2
    assert summary["epochs"] == 1 and 0 <= summary["final_test_acc"] <= 1
    assert all(math.isfinite(row["train_loss"]) for row in run.history)
