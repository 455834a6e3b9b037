"""Every bad input gets one line on stderr naming the setting and what it takes, exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from resnets.cli import main
from resnets.errors import UsageError
from resnets.training import make_config


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


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
