"""benchmarks/time_to_accuracy.py, benchmarks/sweep.py and benchmarks/regions.py: they run,
write what they say, and refuse what they cannot use (no timings are checked)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from resnets.training.recorder import METRICS

from helpers import ROOT, timeout


def script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A benchmarks/ script imported as a module (its main is called in this process), in
    sys.modules until the test ends."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fake_run(folder: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Path:
    folder.mkdir()
    with open(folder / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def epoch(n: int, acc: float | None, seconds: float, elapsed: float) -> dict[str, Any]:
    return {"epoch": n, "train_loss": 0.5, "train_acc": 0.8, "val_loss": "", "val_acc": "",
            "test_loss": 0.4 if acc else "", "test_acc": acc if acc else "",
            "images_per_sec": 100.0, "seconds": seconds, "lr": 0.1,
            "elapsed": elapsed}  # fmt: skip


def test_time_to_accuracy_draws_runs_old_and_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    new = fake_run(tmp_path / "new", [epoch(1, None, 10, 14), epoch(2, 0.91, 10, 25),
                                      epoch(3, 0.935, 10, 36)], METRICS)  # fmt: skip
    old_columns = METRICS[: METRICS.index("lr") + 1]  # written before the elapsed column
    old_rows = [{k: v for k, v in epoch(n, acc, 20, 0).items() if k in old_columns}
                for n, acc in ((1, 0.9), (2, 0.92))]  # fmt: skip
    old = fake_run(tmp_path / "old", old_rows, old_columns)
    out = tmp_path / "docs" / "tta.png"
    tta = script("time_to_accuracy", monkeypatch)
    code = tta.main([f"fast={new}", str(old), "--out", str(out), "--target", "0.93"])
    assert code == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "fast: final 93.50% at 36 s, best 93.50%, 93% at 36 s" in printed
    assert "old: final 92.00% at 40 s, best 92.00%, 93% at never (epoch time only)" in printed
    curve = tta.read_curve(new, "fast")
    assert curve.seconds == [25.0, 36.0] and curve.accuracy == [0.91, 0.935]  # epoch 1 untested


def test_time_to_accuracy_refuses_a_folder_without_metrics(tmp_path: Path) -> None:
    good = fake_run(tmp_path / "good", [epoch(1, 0.9, 5, 6)], METRICS)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "tta.png"
    command = [sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), str(good),
               str(empty), "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout(120))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"time_to_accuracy.py: error: {empty}: no metrics.csv (not a resnets run folder, or "
        "stopped before its first epoch)"
    ]
    assert not out.exists()


def test_sweep_quick(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = {kind: tmp_path / f"sweep.{ext}" for kind, ext in
           (("csv", "csv"), ("json", "json"), ("plot", "png"))}  # fmt: skip
    sweep = script("sweep", monkeypatch)
    assert sweep.main(["--quick", *(f"--{k}={v}" for k, v in out.items())]) == 0
    rows = json.loads(out["json"].read_text())["rows"]
    assert [r["implementation"] for r in rows] == ["reference", "resnets"]
    with open(out["csv"], newline="") as file:
        assert list(csv.DictReader(file))[1]["model"] == "cifar_resnet20"
    for row in rows:
        assert set(row) == set(sweep.COLUMNS)
        assert row["model"] == "cifar_resnet20" and row["image_size"] == 32
        assert 0.07 < row["gflop_per_image"] < 0.09  # 41 M multiply-adds, He et al. 2015
        for key in ("train_images_per_sec", "eval_images_per_sec", "train_gflops_per_sec",
                    "eval_gflops_per_sec", "peak_memory_bytes"):  # fmt: skip
            assert row[key] > 0, (row["implementation"], key)
    assert rows[0]["precision"] == "fp32" and rows[0]["eval_folded_images_per_sec"] is None
    assert rows[1]["eval_folded_images_per_sec"] > 0
    assert out["plot"].read_bytes()[:4] == b"\x89PNG"
    assert "| cifar_resnet20 | 32 |" in capsys.readouterr().out


def test_sweep_refuses_an_unknown_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit, match="unknown --only resnet50@32; choose from"):
        sweep = script("sweep", monkeypatch)
        sweep.main(["--only", "resnet50@32", "--plot", str(tmp_path / "x.png")])


@pytest.mark.slow
def test_regions_script(tmp_path: Path) -> None:
    """benchmarks/regions.py compiles BN+ReLU and times it beside eager; gradients agree."""
    out = tmp_path / "regions.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "regions.py"), "--shapes", "4x8x6x6",
               "--steps", "1", "--json", str(out)]  # fmt: skip
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout(300), env=env)
    assert result.returncode == 0, result.stderr
    assert "| 4x8x6x6 |" in result.stdout
    (row,) = json.loads(out.read_text())["rows"]
    for key in ("eager_forward_ms", "eager_backward_ms", "compiled_forward_ms",
                "compiled_backward_ms", "compiled_over_eager"):  # fmt: skip
        assert row[key] > 0
    assert row["grads_differing"] <= 1  # of 1152: at most one rounded across the ReLU


def test_plan_peaks_tabulates_planned_against_measured(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    peaks = script("plan_peaks", monkeypatch)
    code = peaks.main(["--case", "cifar_resnet20:16:fp32", "--repeat", "2", "--batch-size", "8",
                       "--train-samples", "16", "--test-samples", "8", "--limit", "none",
                       "--extra", "--width 0.25"])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| model | px | precision | ISA | runs | plan | planned |")
    cells = [cell.strip() for cell in table[-1].strip("|").split("|")]
    assert cells[:5] == ["cifar_resnet20", "16", "fp32", "native", "2"]
    assert cells[5] == "the whole batch of 8 fits" and cells[-1] == "0"  # none killed
    assert "MiB" in cells[6] and "MiB" in cells[7]  # planned, and measured in both runs
    assert 0.1 < float(cells[8]) < 2


def test_small_map_times_each_way_and_leaves_the_path_as_it_was(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    small_map = script("small_map", monkeypatch)
    in_bf16 = small_map.conv._in_bf16
    name = "quick and fp32 fast net, 28px"
    monkeypatch.setattr(sys, "argv", ["small_map.py", "--steps", "1", "--networks", name])
    small_map.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {name}")]
    assert [row.split("|")[2].strip() for row in rows] == (
        ["fp32", "bf16"] if small_map.cpu_has_native_bf16() else ["fp32"]
    )
    assert all(row.count("x, ") == 1 for row in rows)  # the ratios, train and eval
    assert small_map.conv._in_bf16 is in_bf16  # the fp32 override is undone
