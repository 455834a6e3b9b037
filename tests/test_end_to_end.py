"""`resnets train` then `resnets eval` on each data format, written by the test: MNIST IDX
files, a CIFAR-10 python folder, and an image folder (in memory and streamed from its cache)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from test_cifar import CIFAR10_META_NAMES, write_cifar10

from resnets.cli import main
from resnets.data import FASHION_MNIST, MNIST
from resnets.training import factory, load_checkpoint

from helpers import TINY, synthetic_dataset, write_dataset

# TINY with batches small enough for the few images of the CIFAR and folder sets.
SMALL: dict[str, Any] = {**TINY, "epochs": 2, "batch_size": 8}


def flags(settings: dict[str, Any]) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]


def _offline(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("no network in tests")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No system copy, no cache, no network: only the files each test writes."""
    for idx_set in (FASHION_MNIST, MNIST):
        monkeypatch.setattr(idx_set, "system_dir", tmp_path / "no-system-copy")
    monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def train_and_eval(
    capsys: pytest.CaptureFixture[str], out_dir: Path, *argv: str
) -> tuple[str, dict[str, Any]]:
    """Train with `argv`, then evaluate the run; the training output and the eval JSON."""
    out, _ = run(capsys, "train", *argv, "--out", str(out_dir))
    assert out.strip().splitlines()[-1].startswith("done: 2 epochs")
    eval_out, _ = run(capsys, "eval", str(out_dir), "--json")
    result = json.loads(eval_out)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert result["test_acc"] == summary["best_test_acc"]
    return out, result


def test_mnist_idx_files_drop_the_flip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The files are IDX as MNIST's; their digests are not MNIST's, hence --no-verify.
    data_dir = write_dataset(tmp_path / "mnist", synthetic_dataset(), monkeypatch)
    out, result = train_and_eval(
        capsys, tmp_path / "run", *flags(TINY), "--dataset", "mnist", "--data-dir",
        str(data_dir), "--no-verify", "--augment", "crop+flip", "--tta",
    )  # fmt: skip
    assert (
        "note: mirroring off (flip and flip TTA dropped): mnist: a mirrored digit is another "
        "digit or none"
    ) in out
    assert "training cifar_resnet20 on mnist" in out
    config = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]
    assert (config["augment"], config["tta"]) == ("crop", False)
    assert result["dataset"] == "mnist" and result["images"] == 200
    assert list(result["per_class"]) == list(MNIST.spec.classes)
    assert result["test_acc"] > 0.3  # the squares are learnable; chance is 0.1


def test_cifar10_python_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_cifar10(tmp_path / "cifar", archive=False)
    out, result = train_and_eval(
        capsys, tmp_path / "run", *flags(SMALL), "--dataset", "cifar10", "--data-dir",
        str(folder.parent), "--no-verify", "--augment", "crop+flip",
    )  # fmt: skip
    assert "training cifar_resnet20 on cifar10" in out and "no flip" not in out
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["model_kwargs"]["in_channels"] == 3 and state["data_spec"]["channels"] == 3
    assert state["model"]["conv1.weight"].shape[1] == 3
    assert result["dataset"] == "cifar10" and result["images"] == 4
    assert list(result["per_class"]) == list(CIFAR10_META_NAMES)  # the names in batches.meta


CLASSES = ("circle", "square", "triangle")
SIZES = ((20, 30), (40, 24), (16, 16), (33, 33))


def image_folder(root: Path) -> Path:
    """ROOT/<class>/*: PNG and JPEG files of several sizes and modes, and one broken file."""
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(12):
            color = (80 * c + 40, 200 - 60 * c, (37 * i) % 256)
            image = Image.new("RGB", SIZES[i % len(SIZES)], color)
            image.paste((255, 255, 255), (0, 0, 4 + 3 * c, 4 + 3 * c))
            if i % 2:
                image.save(root / name / f"{i}.jpg", quality=90)
            else:
                image.save(root / name / f"{i}.png")
    (root / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = image_folder(tmp_path / "shapes")
    out, result = train_and_eval(
        capsys, tmp_path / "run", *flags(SMALL), "--dataset", "folder", "--data-dir", str(root),
    )  # fmt: skip
    assert "broken.png" in out  # the unreadable file is named, and skipped
    assert "held out as the test set" in out
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert tuple(state["data_spec"]["classes"]) == CLASSES
    assert state["data_spec"]["channels"] == 3 and state["data_spec"]["size"] == 16
    assert list(result["per_class"]) == list(CLASSES)
    assert result["images"] == 3 * 2  # 20% of each class's 12 readable images, rounded


def test_image_folder_streamed_from_its_cache_trains_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = image_folder(tmp_path / "shapes")
    argv = [*flags(SMALL), "--dataset", "folder", "--data-dir", str(root), "--augment", "crop+flip"]
    memory, _ = train_and_eval(capsys, tmp_path / "memory", *argv)
    assert "read from disk" not in memory
    # A few kilobytes of images never outgrow a budget that still lets a step run, so the
    # share of the budget that data may take is set to nothing instead.
    monkeypatch.setattr(factory, "DATA_SHARE", 0.0)
    streamed, _ = train_and_eval(capsys, tmp_path / "streamed", *argv)
    assert "more than half the memory left" in streamed
    assert "batches are read from disk as they are needed" in streamed
    a = load_checkpoint(tmp_path / "memory" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "streamed" / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
