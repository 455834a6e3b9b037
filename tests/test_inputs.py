"""Every bad input gets one line on stderr naming the setting and what it takes, exit code 2."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from resnets.errors import UsageError
from resnets.models import create_model
from resnets.training import (
    CheckpointError,
    build_trainer,
    load_checkpoint,
    make_config,
    resume_trainer,
)

from helpers import TINY, synthetic_dataset
from helpers import run_cli as run

DATA = synthetic_dataset()



def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert err.strip().splitlines() == [f"resnets: error: {message}"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--momentum", "-5"], "momentum must be a finite number in [0, 1), not -5.0"),
        (["--momentum", "nan"], "momentum must be a finite number in [0, 1), not nan"),
        (["--momentum", "1"], "momentum must be a finite number in [0, 1), not 1.0"),
        (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0, not -1.0"),
        (["--weight-decay", "nan"], "weight_decay must be a finite number >= 0, not nan"),
        (
            ["--warmup-epochs", "-3", "--schedule", "cosine"],
            "warmup_epochs must be a finite number >= 0, not -3.0",
        ),
        (
            ["--warmup-epochs", "nan", "--schedule", "cosine"],
            "warmup_epochs must be a finite number >= 0, not nan",
        ),
        (["--lr", "inf"], "lr must be a finite number > 0, not inf"),
        (["--lr=-inf"], "lr must be a finite number > 0, not -inf"),
        (
            ["--label-smoothing", "nan"],
            "label_smoothing must be a finite number in [0, 1), not nan",
        ),
        (["--ema", "inf"], "ema must be a finite number in [0, 1), not inf"),
        (["--width", "0"], "width must be a finite number > 0, not 0.0"),
        (["--width", "-1"], "width must be a finite number > 0, not -1.0"),
        (["--width", "inf"], "width must be a finite number > 0, not inf"),
        (["--val-fraction", "nan"], "val_fraction must be a finite number in [0, 1), not nan"),
        (["--milestones", "3", "inf"], "milestones must be finite positive epochs, not 3.0 inf"),
        (["--milestones", "nan"], "milestones must be finite positive epochs, not nan"),
        (
            ["--seed", "99999999999999999999999"],
            "seed must be a whole number from 0 to 2**32 - 1, not 99999999999999999999999",
        ),
        (["--seed", "-1"], "seed must be a whole number from 0 to 2**32 - 1, not -1"),
        (["--seed", str(2**32)], f"seed must be a whole number from 0 to 2**32 - 1, not {2**32}"),
        (
            ["--model", "x" * 500],
            "unknown model '" + "x" * 56 + "...;",
        ),
    ],
)
def test_bad_settings_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "train", "--data-dir", "/nonexistent", *argv)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"resnets: error: {message}")


def test_the_largest_seed_is_accepted() -> None:
    assert make_config(overrides={"seed": 2**32 - 1}).seed == 2**32 - 1


def test_several_milestones_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from resnets.cli import build_parser

    args = build_parser().parse_args(["train", "--milestones", "3", "6.5"])
    assert args.milestones == [3.0, 6.5]
    config = make_config(overrides={"schedule": "step", "milestones": args.milestones})
    assert config.milestones == (3.0, 6.5)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--warmup", "-1"], "warmup must be 0 or more batches, not -1"),
        (["--width", "0"], "width must be a finite number > 0, not 0.0"),
        (["--width", "nan"], "width must be a finite number > 0, not nan"),
    ],
)
def test_bench_names_the_bad_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "bench", "--device", "cpu", *argv)
    assert_one_line_error(code, err, message)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--width", "0"], "width must be a finite positive number, not 0.0"),
        (["--width", "nan"], "width must be a finite positive number, not nan"),
        (["--width", "inf"], "width must be a finite positive number, not inf"),
        (["--depth", "0"], "depth must be 1 (layers), 2 (also each block) or more, not 0"),
        (
            ["--width", "1e300"],
            "cifar_resnet20 at width 1e+300 has 6.4e+301 channels in its widest stage, too many "
            "to build; use a width near 1",
        ),
        (
            ["--width", "1e15"],
            "cifar_resnet20 at width 1e+15 has 6.4e+16 channels in its widest stage, too many "
            "to build; use a width near 1",
        ),
    ],
)
def test_summary_names_the_bad_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "summary", "cifar_resnet20", *argv)
    assert_one_line_error(code, err, message)


# ---- config files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("lr: 1e-2\n", {"lr": 0.01}),  # YAML 1.1 reads this as the string '1e-2'
        ("lr: '0.5'\nweight_decay: 5e-4\n", {"lr": 0.5, "weight_decay": 5e-4}),
        ("epochs: '3'\nseed: ' 7 '\n", {"epochs": 3, "seed": 7}),
        ("milestones: [1e1, '2e1']\nschedule: step\n", {"milestones": (10.0, 20.0)}),
        ("momentum: 9e-1\n", {"momentum": 0.9}),
    ],
)
def test_numbers_written_as_text_are_numbers(tmp_path: Path, text: str, expected: dict) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    config = make_config(config_file=path)
    for name, value in expected.items():
        assert getattr(config, name) == value
        assert type(getattr(config, name)) is type(value)


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("a.yaml", "momentum: abc\n", "momentum must be a number, not 'abc'"),
        ("a.yaml", "epochs: '2.5'\n", "epochs must be a whole number, not '2.5'"),
        ("a.toml", 'lr = "fast"\n', "lr must be a number, not 'fast'"),
        ("a.yaml", "- 1\n- 2\n", "must hold a table of settings"),
        ("a.yaml", "3\n", "must hold a table of settings"),
        ("a.yaml", "just words\n", "must hold a table of settings"),
        ("a.toml", "3\n", "is not valid TOML/YAML"),
    ],
)
def test_config_file_errors_name_the_file(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match="^config file .*" + re.escape(message)) as caught:
        make_config(config_file=path)
    assert str(path) in str(caught.value) and len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize(
    "content",
    [
        bytes(range(256)) * 4,  # random-looking bytes
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01",  # a picture
        b"lr: 0.1\n\x00\x00\x00",  # text with NULs
    ],
    ids=["bytes", "png", "nul"],
)
def test_binary_config_files_are_not_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_bytes(content)
    code, _, err = run(capsys, "train", "--config", str(path))
    assert_one_line_error(code, err, f"config file {path}: not a text file (UTF-8 TOML or YAML)")


def test_config_file_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--config", str(tmp_path))
    assert_one_line_error(code, err, f"cannot read config file {tmp_path}: Is a directory")


# ---- checkpoints that look like ours but are not whole -----------------------------------------


class Stranger:
    """An object a weights-only load refuses."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch TINY run for the checkpoint tests (each copies what it edits)."""
    path = tmp_path_factory.mktemp("run") / "run"
    config = make_config(overrides={**TINY, "epochs": 1})
    build_trainer(config, data=DATA, run_dir=path, quiet=True, log=lambda _: None).fit()
    return path


def edited(run_dir: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the run folder whose checkpoints went through `edit`."""
    copy = tmp_path / "edited"
    shutil.copytree(run_dir, copy)
    for name in ("best.pt", "last.pt"):
        state = torch.load(copy / "checkpoints" / name, weights_only=True)
        edit(state)
        torch.save(state, copy / "checkpoints" / name)
    return copy


def weights_of(name: str, **kwargs: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        state["model"] = create_model(name, **kwargs).state_dict()

    return edit


def without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda state: state.pop(key)


TINY_KWARGS = {"width": 0.25, "in_channels": 1}
# cifar_resnet20 at width 0.25 has 16 features before its 10-way classifier.
WRONG_WEIGHTS = [
    (without("model"), "it lacks model (it was not written by resnets"),
    (without("config"), "it lacks config (it was not written by resnets"),
    (lambda state: state.update(config=[1, 2]), "its config is a list, not a table"),
    (
        weights_of("cifar_resnet20", num_classes=5, **TINY_KWARGS),
        "fc.weight is (5, 16) in the file but (10, 16) in the model",
    ),
    (
        weights_of("cifar_resnet20", width=0.5, in_channels=1),
        "conv1.weight is (8, 1, 3, 3) in the file but (4, 1, 3, 3) in the model",
    ),
    (
        weights_of("resnet18"),
        "missing layer1.2.conv1.weight, layer1.2.bn1.weight, layer1.2.bn1.bias ...",
    ),
    (
        lambda state: state["model"].update(extra=torch.zeros(1)),
        "unexpected extra (1 in all)",
    ),
]
# Evaluation builds the network the checkpoint names; resuming builds it from the settings.
BAD_MODEL_NAME = (
    lambda state: state.update(model_name="resnet19"),
    "its model 'resnet19' does not build",
)


@pytest.mark.parametrize("edit,message", [*WRONG_WEIGHTS, BAD_MODEL_NAME])
def test_eval_names_what_is_wrong_with_a_checkpoint(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, message: str
) -> None:
    copy = edited(run_dir, tmp_path, edit)
    for dry_run in ([], ["--dry-run"]):
        code, _, err = run(capsys, "eval", str(copy), *dry_run)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"resnets: error: {copy / 'checkpoints' / 'best.pt'}: ")
        assert message in err


@pytest.mark.parametrize("edit,message", WRONG_WEIGHTS)
def test_resume_names_what_is_wrong_with_a_checkpoint(
    run_dir: Path, tmp_path: Path, edit: Any, message: str
) -> None:
    copy = edited(run_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as caught:
        resume_trainer(copy, {"epochs": 2}, data=DATA, quiet=True, log=lambda _: None)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_resume_needs_the_training_state(run_dir: Path, tmp_path: Path) -> None:
    copy = edited(run_dir, tmp_path, without("optimizer"))
    with pytest.raises(CheckpointError, match="it lacks optimizer"):
        resume_trainer(copy, {"epochs": 2}, data=DATA, quiet=True)


def test_a_checkpoint_holding_other_objects_is_refused_briefly(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save({"format": "resnets-checkpoint", "version": 2, "thing": Stranger()}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == (
        f"{path}: not a resnets checkpoint: it holds objects other than tensors and plain data, "
        "which resnets never loads"
    )


# ---- --dry-run and summary --image-size --------------------------------------------------------


def test_train_dry_run_prints_the_settings_and_does_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("lr: 1e-2\nschedule: step\n")
    out_dir = tmp_path / "run"
    argv = ["--config", str(settings), "--milestones", "2", "4", "--out", str(out_dir)]
    code, out, err = run(capsys, "train", "--dry-run", "--data-dir", "/nowhere", *argv)
    assert code == 0, err
    printed = yaml.safe_load(out)
    expected = make_config(None, settings, {"milestones": (2.0, 4.0), "data_dir": "/nowhere",
                                            "out": str(out_dir)})  # fmt: skip
    assert printed == {**expected.to_dict(), "milestones": [2.0, 4.0]}
    assert out.startswith("# resnets train: these settings are valid")
    assert not out_dir.exists()


def test_dry_run_of_a_folder_without_data_dir_fails_as_the_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run said "these settings are valid" where the run then stopped at once."""
    argv = ["train", "--dataset", "folder", "--epochs", "1", "--out", str(tmp_path / "run")]
    code, out, err = run(capsys, *argv, "--dry-run")
    real_code, real_out, real_err = run(capsys, *argv)
    assert (code, out, err) == (real_code, real_out, real_err)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("resnets: error: --dataset folder needs --data-dir ROOT")
    assert not (tmp_path / "run").exists()


def test_eval_and_resume_dry_runs(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "eval", str(run_dir), "--dry-run", "--batch-size", "7")
    assert code == 0, err
    assert yaml.safe_load(out)["eval_batch_size"] == 7 and not (run_dir / "confusion.png").exists()
    code, out, err = run(capsys, "train", "--resume", str(run_dir), "--dry-run", "--epochs", "9")
    assert code == 0, err
    assert yaml.safe_load(out)["epochs"] == 9
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]["epoch"] == 1


def test_bench_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "bench", "--dry-run", "--model", "cifar_resnet20", "--steps", "4")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert (printed["model"], printed["steps"], printed["warmup"]) == ("cifar_resnet20", 4, 3)


def test_summary_image_size(capsys: pytest.CaptureFixture[str]) -> None:
    code, by_side, _ = run(capsys, "summary", "cifar_resnet20", "--image-size", "8", "--json")
    assert code == 0
    code, by_shape, _ = run(capsys, "summary", "cifar_resnet20", "--input-size", "3", "8", "8",
                            "--json")  # fmt: skip
    assert by_side == by_shape and json.loads(by_side)["layers"][0]["output_shape"][-1] == 8
    code, _, err = run(capsys, "summary", "cifar_resnet20", "--image-size", "8", "--input-size",
                       "3", "8", "8")  # fmt: skip
    assert_one_line_error(code, err, "give --image-size N or --input-size C H W, not both")


@pytest.mark.parametrize(
    "argv", [["train", "--lr"], ["train", "--epochs", "two"], ["bench", "--steps", "0"]]
)
def test_argument_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"resnets {argv[0]}: error: argument {argv[1]}")
    assert err.strip().endswith(f"(see resnets {argv[0]} --help)")


class _Payload:
    """Unpickled without care, this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize(
    "command", [["eval", "FILE"], ["predict", "FILE", "image.png"],
                ["export", "FILE", "--format", "pt2"], ["train", "--resume", "FILE"]],  # fmt: skip
    ids=["eval", "predict", "export", "resume"],
)
def test_a_crafted_pickle_as_a_checkpoint_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    marker = tmp_path / "ran"
    file = tmp_path / "model.pt"
    torch.save({"format": "resnets-checkpoint", "version": 2, "model": _Payload(marker)}, file)
    code, _, err = run(capsys, *(str(file) if word == "FILE" else word for word in command))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(file) in err and not marker.exists()
