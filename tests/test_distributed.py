"""Data-parallel training: two CPU processes (gloo on loopback) started by torchrun.

Each test starts `python -m torch.distributed.run --standalone --nproc-per-node 2 -m resnets
train ...` as a subprocess with a timeout, on a tiny synthetic data set written to disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, run_cli, synthetic_dataset, write_dataset

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 90  # seconds for one torchrun; a run here takes about 6

# lr 0.01 and 2 steps an epoch: at lr 0.1 this tiny network's training amplifies float
# rounding differences (even 1 process with and without channels-last) to 1e-2 within 4 steps,
# so no two differently summed runs could be compared at float tolerance.
SETTINGS = {**TINY, "lr": 0.01, "eval_batch_size": 64}
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]


def torchrun(*argv: str, cwd: Path, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    target = [str(script)] if script else ["-m", "resnets"]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         *target, *argv],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 training images (2 batches of 50) and 101 test images: 101 is odd, and its last
    evaluation batch of 37 is shared 18/19, so every image must be counted exactly once."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        data = synthetic_dataset(n_train=100, n_test=101)
        return write_dataset(tmp_path_factory.mktemp("ddp") / "data", data, monkeypatch)


def train_flags(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *FLAGS, f"--data-dir={data_dir}", "--no-verify", f"--out={out}", *extra]


@pytest.fixture(scope="module")
def two_process_run(data_dir: Path) -> Path:
    """A 2-process run of 2 epochs with --sync-bn, in a folder of its own."""
    work = data_dir.parent / "two"
    work.mkdir()
    done = torchrun(*train_flags(data_dir, work / "run", "--sync-bn"), cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    return work / "run"


def weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    return state["model"]  # type: ignore[no-any-return]


def test_two_processes_train_as_one_on_the_whole_batch(
    two_process_run: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each process takes half of every batch; with synchronised BatchNorm the weights end as
    one process's on the whole batch, up to float rounding (sums taken in another order)."""
    one = tmp_path / "one"
    code, _, err = run_cli(capsys, *train_flags(data_dir, one, "--quiet"))
    assert code == 0, err
    single, double = weights(one), weights(two_process_run)
    assert list(single) == list(double)  # no "module." prefix: DDP's wrapper is not saved
    for name, tensor in single.items():
        torch.testing.assert_close(double[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_one_process_writes_and_the_summary_matches_an_evaluation(
    two_process_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One run folder with one set of checkpoints, and the sharded evaluation's accuracy (an
    odd number of test images) is that of one process evaluating the checkpoint."""
    work = two_process_run.parent
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # no second (default) folder
    assert sorted(p.name for p in (two_process_run / "checkpoints").iterdir()) == [
        "best.pt", "last.pt"
    ]  # fmt: skip
    summary = json.loads((two_process_run / "summary.json").read_text())
    metrics = (two_process_run / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + SETTINGS["epochs"]
    code, out, err = run_cli(capsys, "eval", str(two_process_run / "checkpoints" / "last.pt"),
                             "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 101
    assert summary["final_test_acc"] == result["test_acc"]


def test_a_two_process_checkpoint_resumes_in_one_process(
    two_process_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_process_run, run)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "3", "--quiet")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_a_one_process_checkpoint_resumes_in_two(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, *train_flags(data_dir, run, "--epochs=1", "--quiet"))
    assert code == 0, err
    done = torchrun("train", "--resume", str(run), "--epochs", "2", "--sync-bn", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2
    assert done.stdout.count("done: 2 epochs") == 1  # one process speaks


def test_a_failure_on_one_process_ends_the_job(data_dir: Path, tmp_path: Path) -> None:
    """Rank 1 raises in its first step while rank 0 waits for its gradients: the job must end
    with an error, not wait for the process group's timeout."""
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(
        "import os, sys\n"
        "import resnets.training.loop as loop\n"
        "real = loop.train_step\n"
        "def failing(parts, x, y, total=None):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    return real(parts, x, y, total)\n"
        "loop.train_step = failing\n"
        "from resnets.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    start = time.monotonic()
    done = torchrun(*train_flags(data_dir, tmp_path / "run"), cwd=tmp_path, script=script)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stdout + done.stderr
    assert time.monotonic() - start < 60
