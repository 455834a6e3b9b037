"""Never dies, never loses: full and read-only disks, `--out` that is not ours, leftover
temporary files, evaluation without best.pt, and progress bars that stay out of quiet output."""

from __future__ import annotations

import errno
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _pytest.capture import CaptureIO
from test_cli_train import data_dir, flags, run  # noqa: F401 (data_dir is a fixture)

from resnets import files
from resnets.errors import DiskError, UsageError
from resnets.training import RunFolder, build_trainer, evaluate, load_checkpoint, make_config
from resnets.training.loop import Trainer
from resnets.training.recorder import is_our_config

from helpers import TINY, synthetic_dataset

# Small runs: two epochs of 100 images take a few seconds.
SMALL = {**TINY, "train_samples": 100, "test_samples": 100}

Mount = Callable[[str], Path]


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """`mount_tmpfs("size=1m")` mounts a fresh tmpfs with those options and returns its folder;
    each is unmounted at the end. Skips the test where mounting is not allowed (not root)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in reversed(mounted):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path) -> Path:
    """Write a ballast file in `folder` until its file system has no space left."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    with open(ballast, "ab", buffering=0) as file:  # the last few bytes
        try:
            while True:
                file.write(b"\0" * 512)
        except OSError:
            pass
    return ballast


def temporary_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


def assert_one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def assert_epoch_one_kept(out_dir: Path) -> None:
    state = load_checkpoint(out_dir / "checkpoints" / "last.pt")
    assert state["position"] == {**state["position"], "epoch": 1, "batch": 0}
    assert [row["epoch"] for row in state["history"]] == [1]


# ---- a full disk -----------------------------------------------------------------------------


def test_a_disk_that_fills_after_the_first_epoch(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    mount_tmpfs: Mount,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real run on a real 1 MiB file system that something else fills after epoch 1: exit 1
    with one line, epoch 1's checkpoint whole, no temporary file; eval says the same; once
    there is space again, --resume carries on."""
    disk = mount_tmpfs("size=1m")
    out_dir = disk / "run"
    write_epoch = Trainer._write_epoch
    filled: list[Path] = []

    def fill_before_epoch_two(self: Trainer, row: dict[str, Any]) -> None:
        if row["epoch"] == 2 and not filled:
            filled.append(fill(disk))
        write_epoch(self, row)

    monkeypatch.setattr(Trainer, "_write_epoch", fill_before_epoch_two)
    argv = ["train", *flags(SMALL), "--data-dir", str(data_dir), "--out", str(out_dir)]
    code, out, err = run(capsys, *argv)
    assert code == 1 and "epoch 1, loss" in out and "epoch 2, loss" not in out
    line = assert_one_line(err)
    assert line.startswith(
        f"resnets: error: cannot write last.pt in {out_dir / 'checkpoints'}: no space left on "
        "device (needs about "
    )
    assert " bytes free there); the last good checkpoint is " in line
    assert f"{out_dir / 'checkpoints' / 'last.pt'} (epoch 1); free some space there or choose " \
        "another --out" in line  # fmt: skip
    assert_epoch_one_kept(out_dir)
    assert temporary_files(disk) == []

    code, _, err = run(capsys, "eval", str(out_dir), "--data-dir", str(data_dir), "--json")
    assert code == 1 and "cannot write confusion.png in" in assert_one_line(err)
    assert "copy the run folder somewhere writable" in err and temporary_files(disk) == []

    (disk / "ballast").unlink()
    code, out, err = run(capsys, "train", "--resume", str(out_dir), "--quiet")
    assert code == 0, err
    assert out.startswith("done: 2 epochs")


def test_torch_save_on_a_full_disk_is_called_a_full_disk(mount_tmpfs: Mount) -> None:
    """torch.save reports a failed write as a RuntimeError ("unexpected pos"); the OSError
    underneath is what the DiskError is made from."""
    disk = mount_tmpfs("size=1m")
    folder = RunFolder(disk / "run")
    folder.save("last", {"position": {"epoch": 1, "batch": 0}, "w": torch.ones(1000)})
    with pytest.raises(DiskError) as caught:
        folder.save("last", {"position": {"epoch": 2, "batch": 0}, "w": torch.zeros(1_000_000)})
    assert str(caught.value).startswith(
        f"cannot write last.pt in {disk / 'run' / 'checkpoints'}: no space left on device (needs "
        "about 4,000,192 bytes, "
    )
    assert str(caught.value).endswith(
        f"the last good checkpoint is {folder.last} (epoch 1); free some space there or choose "
        "another --out"
    )
    assert torch.equal(load_checkpoint(folder.last)["w"], torch.ones(1000))
    assert temporary_files(disk) == []


def test_injected_enospc_from_torch_save(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """torch.save writes part of epoch 2's last.pt, then the disk is full."""
    out_dir = tmp_path / "run"
    save = torch.save
    calls: list[int] = []

    def full_on_the_third_save(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 3:  # epoch 1 wrote last.pt and best.pt
            file.write(b"PK\x03\x04" + bytes(100_000))
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_on_the_third_save)
    argv = ["train", *flags(SMALL), "--data-dir", str(data_dir), "--out", str(out_dir)]
    code, _, err = run(capsys, *argv, "--quiet")
    line = assert_one_line(err)
    assert code == 1 and line.startswith(
        f"resnets: error: cannot write last.pt in {out_dir / 'checkpoints'}: no space left on "
        "device (needs about "
    )
    assert f"the last good checkpoint is {out_dir / 'checkpoints' / 'last.pt'} (epoch 1)" in line
    assert_epoch_one_kept(out_dir)
    assert temporary_files(out_dir) == []


def test_injected_enospc_from_the_metrics_write(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The kernel refuses the bytes of metrics.csv (written after epoch 1's checkpoints)."""
    out_dir = tmp_path / "run"
    write = files._RecordingFile.write

    def no_room_for_metrics(self: files._RecordingFile, data: bytes) -> int:
        if Path(str(self.name)).name.startswith(".metrics.csv."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(files._RecordingFile, "write", no_room_for_metrics)
    argv = ["train", *flags(SMALL), "--data-dir", str(data_dir), "--out", str(out_dir)]
    code, _, err = run(capsys, *argv, "--quiet")
    line = assert_one_line(err)
    assert code == 1 and line.startswith(
        f"resnets: error: cannot write metrics.csv in {out_dir}: no space left on device "
        "(needs about "
    )
    needed = int(line.split("needs about ")[1].split(" bytes")[0].replace(",", ""))
    assert 100 < needed < 1000  # the header and one row
    assert f"the last good checkpoint is {out_dir / 'checkpoints' / 'last.pt'} (epoch 1)" in line
    assert_epoch_one_kept(out_dir)
    assert not (out_dir / "metrics.csv").exists() and temporary_files(out_dir) == []


def test_other_write_errors_are_not_called_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: files._RecordingFile, data: bytes) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files._RecordingFile, "write", broken)
    with pytest.raises(OSError) as caught:
        RunFolder(tmp_path).write_summary({"epochs": 1})
    assert not isinstance(caught.value, DiskError) and caught.value.errno == errno.EIO
    assert temporary_files(tmp_path) == []


def test_a_read_only_out_folder(
    data_dir: Path,  # noqa: F811
    mount_tmpfs: Mount,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = mount_tmpfs("size=1m,ro")
    out_dir = disk / "run"
    argv = ["train", *flags(SMALL), "--data-dir", str(data_dir), "--out", str(out_dir)]
    code, out, err = run(capsys, *argv)
    assert code == 1 and "epoch 1" not in out
    line = assert_one_line(err)
    assert re.fullmatch(
        rf"resnets: error: cannot write config.yaml in {re.escape(str(out_dir))}: read-only "
        r"file system \(needs about [1-9][\d,]+ bytes, [\d,]+ bytes free there\); no checkpoint "
        rf"yet; make {re.escape(str(out_dir))} writable or choose another --out",
        line,
    ), line
    assert list(disk.iterdir()) == []


# ---- --out that is not ours, and leftovers of a killed run -----------------------------------

SETTINGS = {"model": "cifar_resnet20", "epochs": 1, "data_spec": {"name": "fashion-mnist"}}


def test_out_naming_a_file_is_refused(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    argv = ["train", *flags(SMALL), "--data-dir", str(data_dir), "--out", str(mine)]
    code, out, err = run(capsys, *argv)
    assert code == 2 and "epoch 1" not in out
    assert assert_one_line(err) == (
        f"resnets: error: --out {mine} is a file, not a folder; choose another --out"
    )
    assert mine.read_text() == "my notes\n"


def test_out_inside_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="a part of the path is a file; choose another --out"):
        RunFolder(tmp_path / "file" / "run").start(SETTINGS, fresh=True)


def test_a_folder_of_someone_elses_files_is_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "metrics.csv").write_text("step,reward\n1,0.5\n")
    (folder / "config.yaml").write_text("learning_rate: 3\n")
    with pytest.raises(UsageError) as caught:
        RunFolder(folder).start(SETTINGS, fresh=True)
    assert str(caught.value) == (
        f"--out {folder} is a folder that is not empty and holds no resnets run; choose a new "
        "or empty --out (nothing there was changed)"
    )
    assert (folder / "metrics.csv").read_text() == "step,reward\n1,0.5\n"
    assert (folder / "config.yaml").read_text() == "learning_rate: 3\n"

    (folder / "config.yaml").unlink()  # any other file is someone else's too
    with pytest.raises(UsageError, match="not empty and holds no resnets run"):
        RunFolder(folder).start(SETTINGS, fresh=True)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.csv"]


def test_an_empty_folder_is_fine(tmp_path: Path) -> None:
    assert RunFolder(tmp_path).start(SETTINGS, fresh=True) == []
    assert is_our_config(tmp_path / "config.yaml")


def test_a_run_that_died_before_its_first_checkpoint_is_reused(tmp_path: Path) -> None:
    RunFolder(tmp_path).start(SETTINGS, fresh=True)
    (tmp_path / "checkpoints").mkdir()
    leftovers = [tmp_path / ".config.yaml.x1y2.tmp", tmp_path / "checkpoints/.last.pt.ab12.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")
    notes = RunFolder(tmp_path).start({**SETTINGS, "epochs": 2}, fresh=True)
    assert notes == [
        f"{tmp_path} holds only the settings of a run that stopped before its first "
        "checkpoint; starting a new run in it",
        f"removed 2 temporary files left in {tmp_path} by a process that was stopped while "
        "writing",
    ]
    assert temporary_files(tmp_path) == []
    assert "epochs: 2" in (tmp_path / "config.yaml").read_text()


def test_part_of_a_run_without_last_pt_is_refused(tmp_path: Path) -> None:
    RunFolder(tmp_path).start(SETTINGS, fresh=True)
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,test_acc\n1,0.5,0.9\n")
    with pytest.raises(UsageError, match="holds part of a run but no checkpoints/last.pt"):
        RunFolder(tmp_path).start(SETTINGS, fresh=True)


def test_a_folder_with_a_run_is_refused_for_a_new_run(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    with pytest.raises(UsageError, match="already holds a run; continue it with --resume"):
        RunFolder(tmp_path).start(SETTINGS, fresh=True)


def test_resuming_removes_leftovers_but_not_someone_elses_files(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.start(SETTINGS, fresh=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    leftover = tmp_path / "checkpoints" / ".best.pt.k9.tmp"
    leftover.write_bytes(b"half a file")
    notes = RunFolder(tmp_path).start(SETTINGS, fresh=False, position={"epoch": 3, "batch": 0})
    assert notes == [
        f"removed 1 temporary file left in {tmp_path} by a process that was stopped while "
        "writing"
    ]
    assert not leftover.exists() and (tmp_path / "checkpoints" / "last.pt").exists()

    # A checkpoint resumed where it lies, in a folder that is not a run: the user's files stay.
    (tmp_path / "config.yaml").write_text("learning_rate: 3\n")
    (tmp_path / "metrics.csv").write_text("step,reward\n")
    with pytest.raises(UsageError, match="were not written by resnets and would be overwritten"):
        RunFolder(tmp_path).start(SETTINGS, fresh=False)
    assert (tmp_path / "config.yaml").read_text() == "learning_rate: 3\n"


def test_kept_names_the_epoch_of_the_last_checkpoint(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    assert folder.kept() == "no checkpoint yet"
    folder.save("last", {"position": {"epoch": 2, "batch": 0}, "w": torch.zeros(3)})
    assert folder.kept() == f"the last good checkpoint is {folder.last} (epoch 2)"
    folder.save("last", {"position": {"epoch": 2, "batch": 7}, "w": torch.zeros(3)})
    assert folder.kept() == f"the last good checkpoint is {folder.last} (epoch 3, batch 7)"


# ---- evaluation ------------------------------------------------------------------------------


def test_eval_falls_back_to_last_pt_and_says_so(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = tmp_path / "run"
    argv = ["train", *flags({**SMALL, "epochs": 1}), "--data-dir", str(data_dir)]
    code, _, err = run(capsys, *argv, "--out", str(out_dir), "--quiet")
    assert code == 0, err
    checkpoints = out_dir / "checkpoints"
    code, out, _ = run(capsys, "eval", str(out_dir), "--data-dir", str(data_dir))
    assert code == 0 and out.startswith(f"{checkpoints / 'best.pt'} (after epoch 1")

    (checkpoints / "best.pt").unlink()
    code, out, err = run(capsys, "eval", str(out_dir), "--data-dir", str(data_dir))
    assert code == 0, err
    assert out.splitlines()[:2] == [
        f"note: {out_dir} has no checkpoints/best.pt (it stopped before an epoch was "
        f"evaluated); evaluating {checkpoints / 'last.pt'} instead",
        f"{checkpoints / 'last.pt'} (after epoch 1, model weights), 100 fashion-mnist test "
        "images",
    ]
    code, out, _ = run(capsys, "eval", str(out_dir), "--data-dir", str(data_dir), "--json")
    assert code == 0 and json.loads(out)["checkpoint"] == str(checkpoints / "last.pt")

    (checkpoints / "last.pt").unlink()
    code, _, err = run(capsys, "eval", str(out_dir), "--data-dir", str(data_dir))
    assert code == 2 and assert_one_line(err) == (
        f"resnets: error: {out_dir}: no checkpoints/best.pt or checkpoints/last.pt in this run "
        "folder"
    )


# ---- progress bars ---------------------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Captured stderr that says it is a terminal, so progress bars show where they may."""
    # pytest swaps its capture file between a fixture's setup and the test: patch the class.
    monkeypatch.setattr(CaptureIO, "isatty", lambda self: True)


def test_a_progress_bar_leaves_evaluation_unchanged(
    tmp_path: Path, terminal: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run_ = build_trainer(
        make_config(overrides={**SMALL, "epochs": 1}), data=synthetic_dataset(),
        run_dir=tmp_path / "run", quiet=True, log=lambda _: None,
    )  # fmt: skip
    batches = run_.batches.test
    kwargs = {"device": run_.device, "num_classes": 10}
    plain = evaluate(run_.model, batches.epoch(0), **kwargs)
    assert capsys.readouterr().err == ""
    shown = evaluate(run_.model, batches.epoch(0), progress=True, total=len(batches), **kwargs)
    assert "eval" in capsys.readouterr().err  # the bar ran
    assert shown == plain


def test_progress_shows_in_training_and_eval_but_not_when_quiet_or_json(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    terminal: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["train", *flags({**SMALL, "epochs": 1}), "--data-dir", str(data_dir)]
    code, out, err = run(capsys, *argv, "--out", str(tmp_path / "loud"))
    assert code == 0 and "epoch 1/1" in err and "eval test" in err

    quiet = tmp_path / "quiet"
    code, out, err = run(capsys, *argv, "--out", str(quiet), "--quiet")
    assert code == 0 and err == "" and out.startswith("done: 1 epochs")

    code, out, err = run(capsys, "eval", str(quiet), "--data-dir", str(data_dir))
    assert code == 0 and "eval test" in err and "eval test" not in out
    code, out, err = run(capsys, "eval", str(quiet), "--data-dir", str(data_dir), "--json")
    assert code == 0 and err == "" and json.loads(out)["images"] == 100
