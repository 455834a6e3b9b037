"""Grad-CAM: where the network found the evidence for its top class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from resnets.predict import Classifier

from helpers import run_cli as cli
from helpers import separable


@pytest.mark.slow
def test_the_map_peaks_where_the_class_is_decided(squares_run: Path) -> None:
    """The class of helpers.separable's images is where a bright square sits, nothing else:
    the heat map's peak falls in that square, grown by half a cell of the last stage's 4x4
    map (the map's own resolution)."""
    classifier = Classifier.from_checkpoint(squares_run)
    images, labels = separable(40, seed=9)
    explanations = classifier.explain([Image.fromarray(i.numpy(), "L") for i in images])
    margin = 28 // 4 // 2
    inside = 0
    for explanation, label in zip(explanations, labels.tolist(), strict=True):
        assert explanation.heatmap.shape == (28, 28) and float(explanation.heatmap.max()) == 1
        row, col = divmod(label, 4)
        top, left = 2 + 8 * row, 1 + 7 * col  # the square's corner (see helpers.separable)
        r, c = divmod(int(explanation.heatmap.argmax()), 28)
        inside += top - margin <= r < top + 7 + margin and left - margin <= c < left + 7 + margin
    assert inside >= 0.9 * len(explanations)


def test_predict_explain_writes_an_overlay_per_image(
    shapes_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, colour in (("a.png", "red"), ("b.jpg", "blue")):
        Image.new("RGB", (30, 20), colour).save(tmp_path / name)
    out_dir = tmp_path / "cams"
    code, out, err = cli(
        capsys, "predict", str(shapes_run), str(tmp_path / "a.png"), str(tmp_path / "b.jpg"),
        "--explain", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.png", "b.png"]
    with Image.open(out_dir / "a.png") as picture:
        assert picture.mode == "RGB" and picture.width > 2 * picture.height - 10
        assert picture.height >= 224


def test_explain_returns_maps_and_the_same_predictions(shapes_classifier: Classifier) -> None:
    image = Image.new("RGB", (24, 24), "green")
    (explanation,) = shapes_classifier.explain([image])
    (prediction,) = shapes_classifier.predict([image])
    assert explanation.prediction.label == prediction.label
    assert explanation.prediction.probability == pytest.approx(prediction.probability, abs=1e-5)
    size = shapes_classifier.spec.size
    assert explanation.heatmap.shape == (size, size)
    assert float(explanation.heatmap.min()) >= 0 and float(explanation.heatmap.max()) <= 1
    assert explanation.pixels.dtype == torch.uint8
    assert explanation.png()[:8] == b"\x89PNG\r\n\x1a\n"
