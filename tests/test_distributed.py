"""Data-parallel training: two CPU processes (gloo on loopback) started by torchrun.

Each test starts `python -m torch.distributed.run --standalone --nproc-per-node 2 -m resnets
train ...` as a subprocess with a timeout, on a tiny synthetic data set written to disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnets.errors import UsageError
from resnets.training import load_checkpoint, make_config, start_trainer

from helpers import (
    SRC,
    TINY,
    assert_same_weights,
    run_cli,
    synthetic_dataset,
    timeout,
    write_dataset,
)

TIMEOUT = timeout(90)  # seconds for one torchrun; a run here takes about 6
PAIR = ("--standalone", "--nproc-per-node", "2")  # torchrun's options for 2 local processes

# lr 0.01 and 2 steps an epoch: at lr 0.1 this tiny network's training amplifies float
# rounding differences (even 1 process with and without channels-last) to 1e-2 within 4 steps,
# so no two differently summed runs could be compared at float tolerance.
SETTINGS = {**TINY, "lr": 0.01, "eval_batch_size": 64}
# NCHW, as before channels-last became the CPU's default: oneDNN's channels-last weight
# gradients sum half a batch in another order than the whole (5e-5 apart after 4 steps here),
# which the float-tolerance comparisons below would see. Layout under DDP has its own test.
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()] + ["--no-channels-last"]


def launch(
    *argv: str, cwd: Path, script: Path | None = None,
    launcher: tuple[str, ...] = PAIR,
) -> subprocess.Popen[str]:
    """`torchrun LAUNCHER (-m resnets | SCRIPT) ARGV`, started (not waited for)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    target = [str(script)] if script else ["-m", "resnets"]
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *launcher, *target, *argv],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Wait for a launch (killing it after TIMEOUT seconds) and collect its output."""
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT} s:\n{out}{err}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def torchrun(
    *argv: str, cwd: Path, script: Path | None = None, launcher: tuple[str, ...] = PAIR
) -> subprocess.CompletedProcess[str]:
    """`torchrun LAUNCHER (-m resnets | SCRIPT) ARGV`, run to its end."""
    return finish(launch(*argv, cwd=cwd, script=script, launcher=launcher))


def wrapper(path: Path, patch: str) -> Path:
    """A script that runs `patch` (Python, in the scope of resnets.training.loop as `loop`)
    and then `resnets ARGV`: how a test injects a failure into real processes."""
    path.write_text(
        "import os, signal, sys, time, pathlib\n"
        "import resnets.training.loop as loop\n"
        f"{patch}\n"
        "from resnets.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return path


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
    state = load_checkpoint(run / "checkpoints" / "last.pt")
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


def test_without_sync_bn_each_process_normalises_its_own_share(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --sync-bn each process's BatchNorm uses the statistics of its own 25 images,
    so the run is not one process on batches of 50. It is one process taking each batch in
    micro-batches of 25 (BN per micro-batch, gradients summed): the parameters must match that
    to float rounding. The running statistics are not compared: DDP keeps the first process's,
    updated once per step, where micro-batches update them twice."""
    two = tmp_path / "two"
    done = torchrun(*train_flags(data_dir, two), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    code, _, err = run_cli(capsys, *train_flags(data_dir, tmp_path / "one", "--quiet"))
    assert code == 0, err
    code, _, err = run_cli(
        capsys, *train_flags(data_dir, tmp_path / "micro", "--quiet", "--micro-batch=25")
    )
    assert code == 0, err
    double, micro = weights(two), weights(tmp_path / "micro")
    parameters = [k for k in double if not k.endswith(("running_mean", "running_var", "tracked"))]
    for name in parameters:
        torch.testing.assert_close(double[name], micro[name], atol=1e-5, rtol=1e-4, msg=name)
    whole = weights(tmp_path / "one")
    assert any(not torch.allclose(double[k], whole[k], atol=1e-4) for k in parameters)


@pytest.mark.parametrize("layout", ["--no-channels-last", "--channels-last"])
def test_gradients_match_ddps_buckets_with_every_augmentation(
    data_dir: Path, tmp_path: Path, layout: str
) -> None:
    """`crop` built its batches in channels-last strides (a permute) for an NCHW model, so the
    convolutions' weight gradients came out channels-last, unlike the buckets DDP laid out
    from the parameters, and both ranks warned "Grad strides do not match bucket view
    strides" (DDP then copies each such gradient). Batches now take the model's layout."""
    # a network with 1x1 convolutions (the shortcuts): their gradients' strides showed it
    network = ["--model=resnet18", "--small-input", "--width=0.25"]
    done = torchrun(*train_flags(data_dir, tmp_path / "run", *network, layout,
                                 "--augment=crop+flip", "--epochs=1", "--quiet"),
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Grad strides do not match" not in done.stderr, done.stderr


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
    with an error, not wait for the process group's timeout, and rank 0 says in one line that
    it stopped because of another process."""
    script = wrapper(
        tmp_path / "fail_on_rank_1.py",
        "real = loop.train_step\n"
        "def failing(parts, x, y, total=None):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    return real(parts, x, y, total)\n"
        "loop.train_step = failing",
    )
    start = time.monotonic()
    done = torchrun(*train_flags(data_dir, tmp_path / "run"), cwd=tmp_path, script=script)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stdout + done.stderr
    assert time.monotonic() - start < timeout(60)  # not the process group's 5-minute timeout
    lines = [line for line in done.stderr.splitlines() if line.startswith("resnets: ")]
    assert len(lines) == 1 and lines[0].startswith("resnets: error: rank 0: stopped because "
                                                   "another process of this job failed")


def test_a_killed_worker_is_restarted_and_ends_with_the_same_weights(
    two_process_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Under `--max-restarts 1`, rank 1 is killed (SIGKILL) as it starts the last step, in the
    middle of epoch 2; torchrun restarts both processes, which continue from the checkpoint
    written after step 3 (--checkpoint-every 1) and end bitwise where the run that never
    failed ended. (The training loss in metrics.csv may differ in its last digits: its sum is
    taken in another order across the restart.)"""
    script = wrapper(
        tmp_path / "kill_rank_1.py",
        "real, calls = loop.train_step, []\n"
        "def killing(parts, x, y, total=None):\n"
        "    calls.append(1)\n"
        "    first = os.environ['TORCHELASTIC_RESTART_COUNT'] == '0'\n"
        "    if first and os.environ['RANK'] == '1' and len(calls) == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(parts, x, y, total)\n"
        "loop.train_step = killing",
    )
    run = tmp_path / "run"
    done = torchrun(
        *train_flags(data_dir, run, "--sync-bn", "--checkpoint-every=1"), cwd=tmp_path,
        script=script, launcher=(*PAIR, "--max-restarts", "1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exitcode: -9" in done.stderr  # the kill did happen
    assert "restart 1 of 1: continuing" in done.stdout + done.stderr
    assert "(epoch 2, after batch 1)" in done.stdout + done.stderr
    expected, restarted = weights(two_process_run), weights(run)
    assert list(expected) == list(restarted)  # the same names in the same order
    assert_same_weights(expected, restarted)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_acc"] == json.loads(
        (two_process_run / "summary.json").read_text()
    )["final_test_acc"]


def test_two_nodes_train_together(two_process_run: Path, data_dir: Path, tmp_path: Path) -> None:
    """Two launches of one process each (`--nnodes 2`, node ranks 0 and 1) meet at a c10d
    rendezvous on 127.0.0.1 and train as the 2-process run on one machine did."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = tmp_path / "run"
    nodes = [
        launch(
            *train_flags(data_dir, run, "--sync-bn"), cwd=tmp_path,
            launcher=("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                      "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                      "--rdzv-id", "two-nodes"),
        )
        for rank in (0, 1)
    ]  # fmt: skip
    results = [finish(node) for node in nodes]
    for done in results:
        assert done.returncode == 0, done.stdout + done.stderr
    assert sum(done.stdout.count("done: 2 epochs") for done in results) == 1
    expected, together = weights(two_process_run), weights(run)
    for name, tensor in expected.items():
        torch.testing.assert_close(together[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_sigterm_to_torchrun_saves_once_and_resumes(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torchrun passes a SIGTERM on to its processes: they agree to stop after the same step,
    the first saves last.pt and says so once, and the run resumes in one process."""
    mark = tmp_path / "stepped"
    script = wrapper(
        tmp_path / "slow.py",
        "real = loop.train_step\n"
        "def slow(parts, x, y, total=None):\n"
        "    out = real(parts, x, y, total)\n"
        f"    pathlib.Path({str(mark)!r}).touch()\n"
        "    time.sleep(0.3)\n"
        "    return out\n"
        "loop.train_step = slow",
    )
    run = tmp_path / "run"
    job = launch(*train_flags(data_dir, run, "--epochs=50"), cwd=tmp_path, script=script)
    deadline = time.monotonic() + TIMEOUT
    while not mark.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)
    done = finish(job)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if "interrupted by SIGTERM" in line]
    assert len(said) == 1 and said[0].startswith("resnets: rank 0: "), done.stderr
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    stopped = state["position"]["epoch"] * 2 + state["position"]["batch"]
    assert 1 <= stopped < 100
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "2", "--quiet")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_the_first_process_of_a_machine_reads_the_data_before_the_others(
    data_dir: Path, tmp_path: Path
) -> None:
    """Local rank 0 finds and checks the data set while the others wait, so a download or a
    folder's cache is made once per machine; the others read it without checking again."""
    log = tmp_path / "loads.log"
    script = wrapper(
        tmp_path / "log_loads.py",
        "import resnets.training.factory as factory\n"
        "real = factory.load_data\n"
        "def logged(config, quiet=False):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(f\"start {os.environ['LOCAL_RANK']} {config.verify}\\n\")\n"
        "    time.sleep(1)\n"
        "    data = real(config, quiet)\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(f\"end {os.environ['LOCAL_RANK']}\\n\")\n"
        "    return data\n"
        "factory.load_data = logged",
    )
    done = torchrun(
        *train_flags(data_dir, tmp_path / "run", "--epochs=1"), cwd=tmp_path, script=script
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert log.read_text().split("\n")[:4] == ["start 0 False", "end 0", "start 1 False", "end 1"]


def test_bench_under_torchrun_reports_for_all_processes(tmp_path: Path) -> None:
    done = torchrun(
        "bench", "--model", "cifar_resnet20", "--dataset", "cifar10", "--image-size", "16",
        "--batch-size", "16", "--steps", "2", "--warmup", "1", "--device", "cpu", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["processes"] == 2
    assert result["train_images_per_sec"] > 0 and result["eval_images_per_sec"] > 0


def test_restartable_runs_need_a_folder_name_that_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With torchrun's --max-restarts the run folder must be found again by the restarted
    processes: --out, or a name made from the rendezvous id; a restarted process continues
    the run from its last checkpoint instead of refusing the folder."""
    monkeypatch.chdir(tmp_path)
    config = make_config(overrides={**SETTINGS, "epochs": 1})
    data = synthetic_dataset(n_train=100, n_test=20)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(UsageError, match="--max-restarts, give --out"):
        start_trainer(config, data=data, quiet=True)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    first = start_trainer(config, data=data, quiet=True)
    assert first.run_dir == Path("runs") / f"{SETTINGS['model']}-job7"
    first.fit()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    again = start_trainer(dataclasses.replace(config, epochs=2), data=data, quiet=True)
    assert again.run_dir == first.run_dir and again.position.epoch == 1  # continued
