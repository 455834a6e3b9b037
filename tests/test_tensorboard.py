"""`resnets train --tensorboard`: event files that TensorBoard's own reader reads back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from resnets.errors import UsageError
from resnets.training import build_trainer, make_config

from helpers import TINY, synthetic_dataset

DATA = synthetic_dataset(n_train=200, n_test=100)


def train(run: Path, **settings: object) -> None:
    config = make_config(overrides={**TINY, "tensorboard": True, **settings})
    build_trainer(config, data=DATA, run_dir=run, quiet=True, log=lambda _: None).fit()


def test_the_event_files_hold_the_scalars_and_the_test_images(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    train(tmp_path / "run", eval_every=2, epochs=3)
    reader = event_accumulator.EventAccumulator(
        str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0}
    )
    reader.Reload()
    tags = reader.Tags()
    for tag in ("loss/train", "accuracy/train", "learning_rate", "images_per_sec"):
        assert [e.step for e in reader.Scalars(tag)] == [1, 2, 3], tag
    for tag in ("loss/test", "accuracy/test", "calibration_error/test"):
        assert [e.step for e in reader.Scalars(tag)] == [2, 3], tag  # the evaluated epochs
    assert all(0 <= e.value <= 1 for e in reader.Scalars("accuracy/test"))
    assert "loss/validation" not in tags["scalars"]  # no validation split held out
    assert tags["images"] == ["test/predictions"]
    pictures = reader.Images("test/predictions")
    assert [p.step for p in pictures] == [2, 3]
    assert pictures[0].width > 200 and pictures[0].encoded_image_string[:4] == b"\x89PNG"


def test_without_the_package_one_line_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(UsageError, match=r"pip install 'resnets\[tensorboard\]'") as error:
        train(tmp_path / "run", epochs=1)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # said before any training


def test_a_validation_split_gets_scalars_of_its_own(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    from resnets.training.tensorboard import TensorBoardLog

    board = TensorBoardLog(tmp_path / "tb")
    board.epoch({"epoch": 1, "train_loss": 1.0, "val_loss": 0.5, "val_acc": 0.75,
                 "test_loss": None, "test_acc": None})  # fmt: skip
    board.close()
    reader = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    reader.Reload()
    assert [e.value for e in reader.Scalars("accuracy/validation")] == [0.75]
    assert sorted(reader.Tags()["scalars"]) == ["accuracy/validation", "loss/train",
                                                "loss/validation"]  # fmt: skip
