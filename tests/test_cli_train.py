"""`resnets train` and `resnets eval` as a user runs them: output, files, exit codes, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from resnets.cli import main
from resnets.data import FASHION_MNIST
from resnets.training import load_checkpoint

from helpers import TINY, assert_same_weights, synthetic_dataset, timeout, write_dataset
from helpers import run_cli as run


def flags(settings: dict) -> list[str]:
    return [
        item
        for key, value in settings.items()
        for item in (f"--{key.replace('_', '-')}", str(value))
    ]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A synthetic data set on disk; the real system copy, cache and network are out of reach."""
    monkeypatch.setattr(FASHION_MNIST, "system_dir", tmp_path / "no-system-copy")
    monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    return write_dataset(tmp_path / "data", synthetic_dataset(), monkeypatch)


def _offline(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("no network in tests")



def test_train_then_eval(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", *flags(TINY), "--data-dir", str(data_dir), "--out",
                         str(out_dir), "--log-every", "0")  # no progress line on a slow day
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == (
        "note: mirroring off: the settings ask for no flip and no flip TTA (fashion-mnist: a "
        "mirrored garment is the same garment)"
    )
    # the wait for the memory probes is announced before it starts
    assert lines[1].startswith("note: planning memory: probing training steps of up to 50 ")
    assert lines[2].startswith("note: memory: the whole batch of 50 fits;")
    assert lines[3].startswith(
        "training cifar_resnet20 on fashion-mnist on cpu (fp32, channels-last)"
    )
    assert "images, 1 channel (grey), at 16px" in lines[3]
    assert (
        lines[4].startswith("epoch 1, loss ") and "test acc" in lines[4] and "images/s" in lines[4]
    )
    assert lines[-1].startswith("done: 2 epochs in ")

    code, out, err = run(capsys, "eval", str(out_dir), "--data-dir", str(data_dir), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"test_acc", "test_loss", "per_class"} <= set(result)
    assert list(result["per_class"]) == list(FASHION_MNIST.spec.classes)
    # each is the exact fraction, as float64 gives it: no float32 noise (0.8899999856948853)
    for row, (name, acc) in enumerate(result["per_class"].items()):
        counts = result["confusion"][row]
        assert acc == counts[row] / max(1, sum(counts)), name
        assert len(repr(acc)) <= 20 and repr(acc) == repr(float(f"{acc:.15g}"))
    assert result["test_acc"] == json.loads((out_dir / "summary.json").read_text())["best_test_acc"]
    assert (out_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    code, out, _ = run(
        capsys, "eval", str(out_dir / "checkpoints" / "last.pt"), "--data-dir", str(data_dir)
    )
    assert code == 0 and "Ankle boot" in out and "confusion matrix" in out

    code, out, err = run(capsys, "train", "--resume", str(out_dir), "--epochs", "3", "--quiet")
    assert code == 0, err
    assert out.strip().splitlines() == [out.strip()] and out.startswith("done: 3 epochs")


def test_resuming_a_finished_run_says_there_is_nothing_left(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: "training ...", 14 s of memory probes, then "done". Now one line, before any
    data are read or memory probed, and exit 0."""
    out_dir = tmp_path / "run"
    argv = ["train", *flags({**TINY, "epochs": 1}), "--data-dir", str(data_dir)]
    code, _, err = run(capsys, *argv, "--out", str(out_dir), "--quiet")
    assert code == 0, err
    from resnets.training import factory, plan

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run read its data or probed memory")

    monkeypatch.setattr(factory, "load_data", never)
    monkeypatch.setattr(plan, "plan_memory", never)
    for more in ([], ["--epochs", "1"]):
        code, out, err = run(capsys, "train", "--resume", str(out_dir), *more)
        assert (code, err) == (0, "")
        assert out == (
            f"{out_dir} has trained 1 of 1 epochs: nothing left to do. To train longer, give "
            f"a new total: resnets train --resume {out_dir} --epochs 6\n"
        )


def test_a_log_file_gets_progress_lines_instead_of_a_bar(tmp_path: Path, data_dir: Path) -> None:
    """With standard output a file (nohup, CI, `make run > log`), a line every N steps; before,
    nothing came until the epoch ended."""
    log = tmp_path / "train.log"
    argv = ["train", *flags({**TINY, "epochs": 1}), "--data-dir", str(data_dir), "--no-verify",
            "--out", str(tmp_path / "run"), "--log-every", "2"]  # fmt: skip
    env = {**os.environ, "RESNETS_DATA": str(tmp_path / "empty-cache")}
    with log.open("w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "resnets.cli", *argv], env=env, stdout=stdout,
            stderr=subprocess.PIPE, text=True, timeout=timeout(300),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    progress = [line for line in lines if line.startswith("epoch 1/1, batch ")]
    steps = len(synthetic_dataset().train) // TINY["batch_size"]
    assert len(progress) == (steps - 1) // 2 >= 1  # every 2 steps, none after the last
    assert progress[0].startswith(f"epoch 1/1, batch 2/{steps} (")
    assert "loss " in progress[0] and "images/s, about " in progress[0]
    epoch_line = next(line for line in lines if line.startswith("epoch 1,"))
    assert lines.index(progress[-1]) < lines.index(epoch_line)
    assert "\r" not in log.read_text()  # no bar in the file


def test_config_files_and_flag_precedence(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "settings.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {**TINY, "epochs": 5}.items()))
    out_dir = tmp_path / "run"
    argv = ["train", "--config", str(toml), "--epochs", "1", "--data-dir", str(data_dir)]
    code, _, err = run(capsys, *argv, "--out", str(out_dir), "--quiet")
    assert code == 0, err
    saved = (out_dir / "config.yaml").read_text()
    assert "epochs: 1\n" in saved and "model: cifar_resnet20\n" in saved

    yaml_file = tmp_path / "settings.yaml"
    yaml_file.write_text("batch-size: 64\nlearning_rate: 0.1\n")
    code, _, err = run(capsys, "train", "--config", str(yaml_file))
    assert code == 2 and err.strip() == (
        f"resnets: error: config file {yaml_file}: unknown setting(s) learning_rate"
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "resnet19"], "unknown model 'resnet19'"),
        (["--recipe", "fastest"], "unknown recipe 'fastest'; choose one of: chapter, quick"),
        (["--batch-size", "0"], "batch_size must be a positive integer, not 0"),
        (["--device", "cuda:3"], "device cuda:3 asked for"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 autocast is for GPUs"),
    ],
)
def test_train_usage_errors(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "train", "--data-dir", str(data_dir), *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_data_explains_the_three_ways(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "train", *flags(TINY))  # no --data-dir, nothing cached, offline
    assert code == 2 and "Traceback" not in err
    assert "apt-get install dataset-fashion-mnist" in err
    assert "--data-dir" in err and "download" in err
    assert len(err.strip().splitlines()) <= 8


def test_incomplete_data_dir_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code, _, err = run(capsys, "train", "--data-dir", str(empty))
    assert code == 2 and str(empty) in err and "train-images-idx3-ubyte" in err


def test_eval_of_a_broken_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "model.pt"
    broken.write_bytes(b"\x00" * 100)
    code, _, err = run(capsys, "eval", str(broken))
    assert code == 2 and err.startswith(f"resnets: error: {broken}: truncated or not a checkpoint")
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "eval", str(tmp_path / "missing-run"))
    assert code == 2 and "no such run folder or checkpoint file" in err


STOPS = {
    "SIGINT": (signal.SIGINT, 130, "note: stopping after this step (Ctrl-C again to abort "
               "without saving)", "resnets: interrupted in epoch "),
    "SIGTERM": (signal.SIGTERM, 143, "note: SIGTERM: stopping after this step (a second signal "
                "aborts without saving)", "resnets: interrupted by SIGTERM in epoch "),
}  # fmt: skip


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_signal_to_a_real_process_saves_and_resumes_bit_for_bit(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], stop: str
) -> None:
    """`resnets train` in its own process gets a real SIGINT (Ctrl-C) or SIGTERM (a scheduler's
    stop) during training: it saves, says how to resume and exits 130 or 143; `--resume` then
    ends where an uninterrupted run ends."""
    number, exit_code, note, last_line = STOPS[stop]
    out_dir = tmp_path / "interrupted"
    # Far more epochs than it will get through: the interruption surely lands mid-run. With
    # the constant schedule, the first epochs do not depend on the total.
    argv = ["train", *flags({**TINY, "epochs": 100}), "--data-dir", str(data_dir), "--no-verify"]
    env = {**os.environ, "RESNETS_DATA": str(tmp_path / "empty-cache"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "resnets.cli", *argv, "--out", str(out_dir)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout(60)
        while not (out_dir / "metrics.csv").exists():  # written after the first epoch
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        os.kill(process.pid, number)
        stdout, stderr = process.communicate(timeout=timeout(60))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr
    assert f"Resume with: resnets train --resume {out_dir}" in stderr
    assert stderr.strip().splitlines()[-1].startswith(last_line)
    assert "training cifar_resnet20 on fashion-mnist" in stdout and "\nepoch 1, loss" in stdout
    assert note in stdout
    position = load_checkpoint(out_dir / "checkpoints" / "last.pt")["position"]
    assert position["batch"] > 0  # stopped after a step, inside an epoch
    epochs = position["epoch"] + 1  # finish the epoch it was stopped in

    code, out, err = run(capsys, "train", "--resume", str(out_dir), "--epochs", str(epochs),
                         "--quiet")  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"done: {epochs} epochs")
    straight = tmp_path / "straight"
    code, _, err = run(capsys, *argv, "--epochs", str(epochs), "--out", str(straight), "--quiet")
    assert code == 0, err
    resumed = load_checkpoint(out_dir / "checkpoints" / "last.pt")["model"]
    expected = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    assert_same_weights(resumed, expected)


# `resnets train` on a disk so slow that saving after the first signal takes SAVE_SECONDS: the
# second signal must land while that checkpoint is being written.
SLOW_SAVE_AFTER_A_SIGNAL = """
import sys, time, torch
from resnets.cli import main
from resnets.training.loop import Trainer
SAVE_SECONDS = float(sys.argv.pop(1))
stopping, trainer_save, torch_save = [], Trainer.save, torch.save
def save(self, name):
    if self._stop_requested:
        stopping.append(name)
    trainer_save(self, name)
def slow_save(*args, **kwargs):
    if stopping:
        time.sleep(SAVE_SECONDS)
    torch_save(*args, **kwargs)
Trainer.save, torch.save = save, slow_save
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "first,second,exit_code",
    [(signal.SIGINT, signal.SIGTERM, 143), (signal.SIGTERM, signal.SIGINT, 130)],
    ids=["SIGINT-then-SIGTERM", "SIGTERM-then-SIGINT"],
)
def test_a_second_signal_aborts_at_once_without_saving(
    tmp_path: Path, data_dir: Path, first: int, second: int, exit_code: int
) -> None:
    out_dir = tmp_path / "run"
    settings = {**TINY, "epochs": 100, "train_samples": 100, "test_samples": 100}
    argv = ["train", *flags(settings), "--data-dir", str(data_dir), "--no-verify"]
    env = {**os.environ, "RESNETS_DATA": str(tmp_path / "empty-cache"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE_AFTER_A_SIGNAL, str(timeout(120)), *argv, "--out",
         str(out_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    checkpoints = out_dir / "checkpoints"
    try:
        deadline = time.monotonic() + timeout(60)
        while not (out_dir / "metrics.csv").exists():  # written after the first epoch
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        os.kill(process.pid, first)
        while not list(checkpoints.glob(".*.tmp")):  # the slow save has begun
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline + timeout(60), "no save began after the signal"
            time.sleep(0.02)
        os.kill(process.pid, second)
        start = time.monotonic()
        _, stderr = process.communicate(timeout=timeout(60))
        aborted_in = time.monotonic() - start
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == exit_code, stderr
    assert aborted_in < timeout(30)  # not after the save, which takes four times that
    line = stderr.strip().splitlines()[-1]
    name = "Ctrl-C" if second == signal.SIGINT else "SIGTERM"
    assert line.startswith(
        f"resnets: interrupted again ({name}): stopped at once without saving; the last good "
        f"checkpoint is {checkpoints / 'last.pt'} (epoch "
    ), stderr
    assert "Traceback" not in stderr and list(checkpoints.glob("*.tmp")) == []
    position = load_checkpoint(checkpoints / "last.pt")["position"]
    assert position["batch"] == 0  # an epoch's checkpoint, not one written after the signal
    assert line.endswith(f"(epoch {position['epoch']})")


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exception, match="unknown model"):
        main(["--debug", "summary", "resnet19"])


def test_resume_takes_no_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--resume", str(tmp_path), "--recipe", "fast")
    assert code == 2 and "--resume continues a run with its saved settings" in err


def test_an_unexpected_file_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure outside the run folder (here: the image cache) still gets one line."""
    import resnets.data.folder as folder

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "cache"))

    monkeypatch.setattr(folder, "load_image_folder", full)
    (tmp_path / "images" / "a").mkdir(parents=True)
    images = str(tmp_path / "images")
    code, _, err = run(capsys, "train", "--dataset", "folder", "--data-dir", images)
    assert code == 1 and err.strip() == (
        f"resnets: error: {tmp_path / 'cache'}: No space left on device"
    )
