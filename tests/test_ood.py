"""Knowing when it does not know: the energy score, its threshold saved with the weights, and
prediction's flag for images unlike the training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.ood import KEEP, EnergyThreshold, energy
from resnets.predict import UNLIKE, Classifier
from resnets.training import load_checkpoint

from helpers import run_cli as cli
from helpers import synthetic_dataset


def rings(n: int, seed: int) -> torch.Tensor:
    """Another data set: 28x28 bright rings at random places on the same noisy background as
    helpers.separable's squares (uint8, N x 28 x 28)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for image in images:
        cy, cx = torch.randint(6, 22, (2,), generator=g).tolist()
        image[((yy - cy) ** 2 + (xx - cx) ** 2 - 25).abs() < 6] = 230
    return images


def pillow(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(image.numpy(), "L") for image in images]


def test_energy_is_minus_logsumexp() -> None:
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    expected = torch.tensor([-np.log(2.0), -10 - np.log1p(np.exp(-20.0))], dtype=torch.float32)
    torch.testing.assert_close(energy(logits), expected)


def test_the_threshold_keeps_95_percent_of_in_distribution_images() -> None:
    energies = torch.linspace(-10, -1, 200)
    threshold = EnergyThreshold.measure(energies, "val")
    kept = float((~threshold.unlike(energies)).float().mean())
    assert KEEP <= kept <= KEEP + 1 / 200
    assert EnergyThreshold.from_dict(threshold.to_dict()) == threshold
    assert EnergyThreshold.from_dict(None) is None
    assert EnergyThreshold.from_dict({"score": "energy", "threshold": "x"}) is None


def test_an_older_checkpoint_without_a_threshold_loads_and_flags_nothing(
    shapes_run: Path, tmp_path: Path
) -> None:
    state = load_checkpoint(shapes_run / "checkpoints" / "best.pt")
    assert state["ood"]["score"] == "energy" and state["ood"]["split"] == "test"
    del state["ood"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    classifier = Classifier.from_checkpoint(old)
    assert classifier.network.ood is None
    noise = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    images = [Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB") for image in noise]
    results = classifier.predict(images)
    assert not any(r.unlike_training for r in results)
    assert all(isinstance(r.energy, float) for r in results)


def test_predict_says_unlike_the_training_data(
    shapes_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a threshold below every energy, every image is flagged, in text and JSON."""
    state = load_checkpoint(shapes_run / "checkpoints" / "best.pt")
    state["ood"]["threshold"] = -1e9
    strict = tmp_path / "strict.pt"
    torch.save(state, strict)
    Image.new("RGB", (20, 20), "white").save(tmp_path / "white.png")
    code, out, err = cli(capsys, "predict", str(strict), str(tmp_path / "white.png"), "--json")
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["unlike_training_data"] is True and result["energy"] > -1e9
    code, out, err = cli(capsys, "predict", str(strict), str(tmp_path / "white.png"))
    assert code == 0, err
    assert f"({UNLIKE}: energy" in out.splitlines()[1]


@pytest.mark.slow
def test_images_of_another_data_set_are_flagged(squares_run: Path) -> None:
    """Trained on squares: at least 80% of rings flagged, at most 5% of its own test images."""
    classifier = Classifier.from_checkpoint(squares_run)
    assert classifier.network.ood is not None and classifier.network.ood.split == "test"
    own = classifier.predict(pillow(synthetic_dataset().test.images.squeeze(1)), top_k=1)
    others = classifier.predict(pillow(rings(200, seed=3)), top_k=1)
    own_rate = np.mean([r.unlike_training for r in own])
    other_rate = np.mean([r.unlike_training for r in others])
    assert own_rate <= 0.05 and other_rate >= 0.8, (own_rate, other_rate)


def test_the_threshold_travels_in_a_safetensors_file(shapes_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from resnets.weights import load_network, save_safetensors

    network = load_network(shapes_run)
    assert network.ood is not None
    copy = load_network(save_safetensors(network, tmp_path / "model.safetensors"))
    assert copy.ood == network.ood
