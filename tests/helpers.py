"""A small, learnable stand-in for Fashion-MNIST, settings that train on it in seconds, and
what several test files share: the repository's folders, comparing weights, running the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from resnets.data import FASHION_MNIST, Dataset, write_idx
from resnets.data.idx import idx_payload_sha256

ROOT = Path(__file__).resolve().parent.parent  # the repository
SRC = ROOT / "src"

# One factor for every time limit in the suite, for slow or busy machines (CI under load,
# emulated instructions): RESNETS_TEST_TIMEOUT_SCALE=3 triples them all.
TIMEOUT_SCALE_VARIABLE = "RESNETS_TEST_TIMEOUT_SCALE"


def timeout(seconds: float) -> float:
    """A limit that guards against a hang, scaled by $RESNETS_TEST_TIMEOUT_SCALE (default 1).

    Limits in this suite are never speed claims: each is several times what the work takes
    on a quiet 2-core machine, and the factor stretches them all at once where that is not
    enough."""
    scale = float(os.environ.get(TIMEOUT_SCALE_VARIABLE) or 1)
    if scale <= 0:
        raise ValueError(f"{TIMEOUT_SCALE_VARIABLE} must be a positive number, not {scale}")
    return seconds * scale

# A tiny network and small images: every training test runs in seconds on 2 cores.
TINY: dict[str, Any] = {
    "model": "cifar_resnet20", "width": 0.25, "image_size": 16, "batch_size": 50,
    "eval_batch_size": 100, "epochs": 2, "lr": 0.1, "optimizer": "nesterov",
    "precision": "fp32", "device": "cpu",
}  # fmt: skip


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`resnets ARGV` in this process: (exit code, stdout, stderr); argparse's exits count."""
    from resnets.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exit_:  # --help, or argparse refusing an argument
        code = exit_.code if isinstance(exit_.code, int) else 0
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same tensor names, and bit for bit the same tensors under each."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def no_warning(message: str) -> None:
    """A `warn` callback for calls that must not warn."""
    raise AssertionError(f"unexpected warning: {message}")


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 images whose class is where a bright 7x7 square sits, on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 4)
        images[i, 2 + 8 * row : 9 + 8 * row, 1 + 7 * col : 8 + 7 * col] = 230
    return images, labels


def synthetic_dataset(n_train: int = 600, n_test: int = 200) -> Dataset:
    train_images, train_labels = separable(n_train, seed=1)
    test_images, test_labels = separable(n_test, seed=2)
    return Dataset.from_tensors(
        FASHION_MNIST.spec, train_images, train_labels, test_images, test_labels
    )


def write_dataset(directory: Path, data: Dataset, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write `data` as the four IDX files and make them the ones whose hashes are expected."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "train-images-idx3-ubyte": data.train.images.squeeze(1),
        "train-labels-idx1-ubyte": data.train.labels.to(torch.uint8),
        "t10k-images-idx3-ubyte": data.test.images.squeeze(1),
        "t10k-labels-idx1-ubyte": data.test.labels.to(torch.uint8),
    }
    for stem, tensor in tensors.items():
        write_idx(directory / f"{stem}.gz", tensor)
    hashes = {stem: idx_payload_sha256(directory / f"{stem}.gz") for stem in tensors}
    monkeypatch.setattr(FASHION_MNIST, "sha256", hashes)
    return directory
