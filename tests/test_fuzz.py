"""Fuzzing every option of train, eval, bench and summary, and config files, with Hypothesis.

Whatever the values (negative, zero, huge, NaN, infinite, empty, unicode, text where a number
goes, very long), each command either succeeds or writes exactly one line to stderr and exits
with 1 or 2; never a traceback. argparse's own errors are one line too (resnets.cli._Parser).
Valid settings go through --dry-run (train, eval, bench), so nothing trains; a train dry run
checks the network, image size and batch as a real run does (BatchNorm's fewest images) and
sizes the memory plan's lower bound on the meta device. summary runs one forward pass, so its
numbers are kept small when they are valid.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnets.cli import main
from resnets.models import list_models
from resnets.training import TrainConfig, build_trainer, make_config

from helpers import TINY, synthetic_dataset

NASTY_TEXT = [
    "", " ", "nan", "NaN", "inf", "-inf", "1e309", "-0", "0", "-1", "1e-2", "0x10", "1_000",
    "True", "none", "null", "abc", "é", "日本", "\u202e", "\x00", "a\nb", "--", "-", "x" * 5000,
    "9" * 30, "-" + "9" * 30, "3 4", "[1, 2]", "{}", "/", "/nonexistent/path", "cuda:99", "cpu",
]  # fmt: skip
values = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_TEXT),
    st.text(max_size=12),
)
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def as_text(value: Any) -> str:
    return (
        value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    )


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: --help or a bad argument
        code = exit_.code if isinstance(exit_.code, int) else 0
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code: int, err: str, argv: list[str]) -> None:
    """Success, or one line on stderr and exit code 1 or 2: never a traceback."""
    assert "Traceback" not in err, (argv, err)
    if code == 0:
        return
    lines = err.strip().splitlines()
    assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("resnets"), (argv, code, err)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FIELDS), values), min_size=1, max_size=3))
def test_train_options(capsys: pytest.CaptureFixture[str], options: list[tuple[str, Any]]) -> None:
    argv = ["train", "--dry-run", "--data-dir", "/nonexistent"]
    for name, value in options:
        argv.append(f"{flag(name)}={as_text(value)}")
    code, out, err = run(capsys, argv)
    assert_clean(code, err, argv)
    if code == 0:
        yaml.safe_load(out)  # what a dry run prints is YAML


# Valid combinations of network, image size and batch reach the memory plan's first step on
# the meta device (its lower bound, as a real run computes it before any data are read); the
# image sizes run from 1 px to beyond what can be sized at all.
sizes = st.one_of(st.integers(1, 300), st.sampled_from([2**20, 10**9, 2**62, 10**25]))
PLAN = settings(
    max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip


@pytest.mark.slow  # a meta-device pass of a 1000-layer network takes seconds
@PLAN
@given(
    st.sampled_from(list_models()), sizes, st.integers(1, 5),
    st.one_of(st.none(), st.integers(1, 3)), st.booleans(), st.booleans(),
    st.sampled_from(["fp32", "bf16"]),
)  # fmt: skip
def test_train_dry_runs_reach_the_plan(
    capsys: pytest.CaptureFixture[str], model: str, size: int, batch: int, micro: int | None,
    small_input: bool, frozen: bool, precision: str,
) -> None:  # fmt: skip
    argv = ["train", "--dry-run", "--data-dir", "/nonexistent", "--model", model,
            "--image-size", str(size), "--batch-size", str(batch), "--precision", precision,
            "--width", "0.25"]  # fmt: skip
    argv += ["--micro-batch", str(micro)] if micro is not None else []
    argv += ["--small-input"] * small_input + ["--freeze-backbone"] * frozen
    code, out, err = run(capsys, argv)
    assert_clean(code, err, argv)
    if code == 0:
        assert "# memory: one image needs at least" in out, argv


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "run"
    config = make_config(overrides={**TINY, "epochs": 1})
    build_trainer(config, data=synthetic_dataset(), run_dir=path, quiet=True, log=print).fit()
    return path


EVAL_FLAGS = ["--data-dir", "--device", "--batch-size", "--test-samples"]


@FUZZ
@given(st.booleans(), st.lists(st.tuples(st.sampled_from(EVAL_FLAGS), values), max_size=3))
def test_eval_options(
    capsys: pytest.CaptureFixture[str], run_dir: Path, real: bool, options: list[tuple[str, Any]]
) -> None:
    target = str(run_dir) if real else "/nonexistent/run"
    argv = ["eval", target, "--dry-run"] + [f"{f}={as_text(v)}" for f, v in options]
    code, _, err = run(capsys, argv)
    assert_clean(code, err, argv)
    if not real:
        assert code != 0


BENCH_FLAGS = ["--model", "--image-size", "--batch-size", "--precision", "--device", "--steps",
               "--warmup", "--width", "--dataset", "--data-dir", "--memory-budget"]  # fmt: skip


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(BENCH_FLAGS), values), min_size=1, max_size=3))
def test_bench_options(capsys: pytest.CaptureFixture[str], options: list[tuple[str, Any]]) -> None:
    argv = ["bench", "--dry-run"] + [f"{f}={as_text(v)}" for f, v in options]
    code, _, err = run(capsys, argv)
    assert_clean(code, err, argv)


# Valid summary values stay small (it runs a forward pass); invalid ones are anything.
small_or_bad = st.one_of(
    st.integers(min_value=-3, max_value=40),
    st.floats(min_value=0.05, max_value=1.0),
    st.sampled_from([0, -1.5, math.nan, math.inf, -math.inf, 1e300, 10**40]),
    st.sampled_from(NASTY_TEXT),
)
SUMMARY_FLAGS = ["--width", "--depth", "--image-size", "--num-classes", "--in-channels"]


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(SUMMARY_FLAGS), small_or_bad), max_size=3),
    st.one_of(st.none(), st.lists(small_or_bad, min_size=3, max_size=3)),
)
def test_summary_options(
    capsys: pytest.CaptureFixture[str], options: list[tuple[str, Any]], input_size: Any
) -> None:
    argv = ["summary", "cifar_resnet20", "--json"] + [f"{f}={as_text(v)}" for f, v in options]
    if input_size is not None:
        argv += ["--input-size", *(as_text(v) for v in input_size)]
    code, out, err = run(capsys, argv)
    assert_clean(code, err, argv)
    if code == 0:
        assert json.loads(out)["params"] > 0


@FUZZ
@given(
    st.sampled_from([".yaml", ".toml"]),
    st.dictionaries(
        st.sampled_from(FIELDS),
        st.one_of(values, st.booleans(), st.lists(values, max_size=2)),
        max_size=4,
    ),
)
def test_config_files(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory, suffix: str,
    table: dict[str, Any],
) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("config") / f"settings{suffix}"
    if suffix == ".yaml":
        path.write_text(yaml.safe_dump(table, allow_unicode=True))
    else:
        integers_fit = {
            k: v for k, v in table.items() if not (isinstance(v, int) and abs(v) >= 2**63)
        }
        path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in integers_fit.items()))
    argv = ["train", "--dry-run", "--config", str(path), "--data-dir", "/nonexistent"]
    code, _, err = run(capsys, argv)
    assert_clean(code, err, argv + [path.read_text(errors="replace")[:300]])


@FUZZ
@given(st.binary(max_size=200))
def test_config_files_of_any_bytes(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.mktemp("config") / "settings.yaml"
    path.write_bytes(content)
    code, _, err = run(capsys, ["train", "--dry-run", "--config", str(path)])
    assert_clean(code, err, [repr(content)])
