"""The tests whose outcome depends on the CPU's kernels, rerun on the AVX2 kernels.

Most laptops and many cloud machines have AVX2 but no AVX-512 and no native bf16; there
`--precision auto` trains in fp32 and oneDNN takes other code paths. Setting
ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2 run those
paths on any x86 machine, so a machine with AVX-512 covers them too. The variables must be
set before torch loads, hence a fresh pytest process.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from resnets.training import make_config
from resnets.training.config import RECIPES_FP32, recipe_note
from resnets.training.runtime import AVX2_KERNELS, cpu_has_native_bf16, resolve_precision

from helpers import ROOT, timeout

AVX2 = AVX2_KERNELS

# Numerics, precision and layout choices, the training step and its memory plan, export.
CPU_DEPENDENT = [
    "tests/test_runtime.py",
    "tests/test_avx2.py::test_the_capped_kernels_are_the_ones_running",
    "tests/test_fold.py::test_folded_equals_unfolded",
    "tests/test_models.py::test_checkpoint_loads_strictly_and_gives_same_outputs",
    "tests/test_models.py::test_small_map_conv_matches_nn_conv2d",
    "tests/test_export.py::test_onnx_agrees_with_pytorch_on_any_batch",
    "tests/test_bench.py::test_bench_json",
    "tests/test_training.py::test_training_learns_and_writes_the_run_folder",
    "tests/test_training.py::test_micro_batches_take_the_same_optimizer_step",
]


def capped() -> bool:
    return os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2"


def test_the_capped_kernels_are_the_ones_running() -> None:
    """Under the caps ATen reports AVX2, auto picks fp32, and the recipes take their fp32
    settings; otherwise nothing to do."""
    if not capped():
        pytest.skip("runs inside the AVX2 pass (ATEN_CPU_CAPABILITY=avx2)")
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert not cpu_has_native_bf16()
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    for recipe in RECIPES_FP32:
        config = make_config(recipe, overrides={"device": "cpu"})
        note = recipe_note(recipe, config) or ""
        assert config.stem_stride == 2 and note.startswith(f"recipe {recipe}: its fp32 settings")


@pytest.mark.slow
def test_cpu_dependent_tests_pass_on_the_avx2_kernels() -> None:
    if capped():
        pytest.skip("already inside the AVX2 pass")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"AVX2 is an x86 instruction set; this is {platform.machine()}")
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
               "--no-cov", *CPU_DEPENDENT]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **AVX2}, capture_output=True, text=True,
        timeout=timeout(900),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
