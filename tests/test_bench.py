"""`resnets bench` and the side-by-side comparison: right keys, positive numbers (no timings)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from resnets.cli import main
from resnets.training.config import TrainConfig, recipe_settings
from resnets.training.runtime import cpu_has_native_bf16

from helpers import ROOT, timeout

TINY_BENCH = ["bench", "--model", "cifar_resnet20", "--width", "0.25", "--image-size", "16",
              "--batch-size", "8"]  # fmt: skip


def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY_BENCH, "--steps", "2", "--warmup", "1", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = {"train_images_per_sec", "eval_images_per_sec", "peak_memory_bytes",
                "macs_per_image", "train_gflops_per_sec", "precision", "channels_last",
                "data", "eval_folded_images_per_sec", "eval_onnx_images_per_sec",
                "onnx"}  # fmt: skip
    assert expected <= set(result)
    for key in ("train_images_per_sec", "eval_images_per_sec", "peak_memory_bytes",
                "eval_folded_images_per_sec"):  # fmt: skip
        assert result[key] > 0, key
    assert result["device"] == "cpu" and result["steps"] == 2
    # what the figures depend on: instruction set, precision, layout
    assert result["instruction_set"] == torch.backends.cpu.get_cpu_capability()
    assert result["native_bf16"] in (True, False)
    assert result["layout"] == ("channels-last" if result["channels_last"] else "NCHW")
    assert result["precision"] in ("fp32", "bf16")
    if importlib.util.find_spec("onnxruntime"):  # the export extra is installed: ONNX is timed
        assert result["eval_onnx_images_per_sec"] > 0
        assert result["onnx"].startswith("onnxruntime ")
    else:
        assert result["eval_onnx_images_per_sec"] is None and "not installed" in result["onnx"]


def test_bench_without_onnx(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY_BENCH, "--steps", "1", "--warmup", "0", "--no-onnx", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["eval_onnx_images_per_sec"] is None and result["onnx"] == "not asked for"
    assert result["eval_folded_images_per_sec"] > 0


def test_bench_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY_BENCH, "--steps", "1", "--precision", "fp32", "--no-onnx"]) == 0
    out = capsys.readouterr().out
    assert f"cpu ({torch.backends.cpu.get_cpu_capability()} kernels, " in out.splitlines()[0]
    assert "bf16) fp32 channels-last" in out and "images/s" in out and "GFLOP/s achieved" in out
    assert "BatchNorm as trained" in out and "BatchNorm folded" in out and "eval onnx" in out


@pytest.mark.slow
def test_side_by_side_script(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "compare.py"),
        "--steps",
        "1",
        "--warmup",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--workers",
        "0",
        "--peak-seconds",
        "0.2",
        "--json",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout(300))
    assert result.returncode == 0, result.stderr
    assert "| train images/s" in result.stdout and "| eval images/s" in result.stdout
    assert "| d2l_resnet18 at 32px" in result.stdout
    assert "| fast recipe's net at 28px" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["fast_recipe_net"]["model"] == "resnet18"
    assert figures["fast_recipe_net"]["train_images_per_sec"] > 0
    for side in ("reference", "resnets"):
        assert figures[side]["train_images_per_sec"] > 0
        assert figures[side]["eval_images_per_sec"] > 0
        assert figures[side]["peak_memory_bytes"] > 0
    # bf16 is probed only where it is native: emulated, one probe takes minutes.
    native = cpu_has_native_bf16()
    assert set(figures["peak_probes_gflops"]) == ({"fp32", "bf16"} if native else {"fp32"})
    assert ("native bf16" if native else "no native bf16") in figures["cpu_kernels"]
    for dtype in figures["peak_probes_gflops"]:
        probes = figures["peak_probes_gflops"][dtype]
        assert set(probes) == {"matmul 2048", "matmul 4096", "conv3x3 64ch 24px"}
        assert figures["peak_gflops"][dtype] == max(probes.values()) > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_side_by_side_times_the_fast_recipes_own_network(
    precision: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every setting that shapes the `fast` recipe's network reaches `resnets bench` (the
    pooled stem of its fp32 settings was once left out, timing the strided one instead)."""
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    recipe = recipe_settings("fast", precision, "cpu")
    args = argparse.Namespace(batch_size=8, steps=1, warmup=0, data_dir=None)
    assert main(["bench", *compare.fast_net_options(args, recipe), "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    defaults = TrainConfig()
    for key in ("model", "width", "image_size", "small_input", "stem_stride", "stem_pool"):
        assert resolved[key] == recipe.get(key, getattr(defaults, key)), key
