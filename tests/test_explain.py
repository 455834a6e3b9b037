"""Grad-CAM: where the network found the evidence for its top class."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnets.explain import grad_cam
from resnets.predict import Classifier

from helpers import run_cli as cli
from helpers import separable


@pytest.mark.slow
def test_the_map_peaks_where_the_class_is_decided(squares_run: Path) -> None:
    """The class of helpers.separable's images is where a bright square sits, nothing else:
    the heat map is hotter over that square (grown by half a cell of the last stage's 4x4
    map, the map's own resolution) than elsewhere, for nearly every image, and its peak falls
    there for most. The peak alone is coarse: with 4x4 cells it can land on the neighbouring
    cell the square straddles, and which one depends on the kernels' rounding in training
    (36 of 40 images on AVX-512, 26 on the AVX2 kernels, with every image classified right
    and hotter over its square on both)."""
    classifier = Classifier.from_checkpoint(squares_run)
    images, labels = separable(40, seed=9)
    explanations = classifier.explain([Image.fromarray(i.numpy(), "L") for i in images])
    margin = 28 // 4 // 2
    peaks = hotter = 0
    for explanation, label in zip(explanations, labels.tolist(), strict=True):
        heat = explanation.heatmap
        assert heat.shape == (28, 28) and float(heat.max()) == 1
        row, col = divmod(label, 4)
        top, left = 2 + 8 * row, 1 + 7 * col  # the square's corner (see helpers.separable)
        region = torch.zeros(28, 28, dtype=torch.bool)
        rows = slice(max(0, top - margin), top + 7 + margin)
        region[rows, max(0, left - margin) : left + 7 + margin] = True
        r, c = divmod(int(heat.argmax()), 28)
        peaks += bool(region[r, c])
        hotter += float(heat[region].mean()) > float(heat[~region].mean())
    assert hotter >= 0.9 * len(explanations)
    assert peaks >= 0.5 * len(explanations)


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


class _Busy(nn.Module):
    """A network whose every forward pass first waits for another thread's inference-mode
    pass through the same network, as a server's batch may run beside a heat map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stage_names = model.stage_names
        setattr(self, model.stage_names[-1], getattr(model, model.stage_names[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def other() -> None:
            with torch.inference_mode():
                self.model(x.detach())

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        return self.model(x)


def test_another_threads_forward_pass_is_not_captured(shapes_classifier: Classifier) -> None:
    """grad_cam hooks the shared network's last stage: a pass on another thread while the hook
    is on must not be taken for its own (it would fail, or weigh the wrong features)."""
    x = torch.rand(2, 3, 32, 32)
    alone, logits = grad_cam(shapes_classifier.model, x)
    beside, same_logits = grad_cam(_Busy(shapes_classifier.model), x)
    assert torch.allclose(beside, alone, atol=1e-5) and torch.equal(logits, same_logits)
    for maps in (alone, beside):
        assert maps.shape == (2, 32, 32)


def test_heat_png_is_the_right_half_of_the_overlay(shapes_classifier: Classifier) -> None:
    (explanation,) = shapes_classifier.explain([Image.new("RGB", (24, 24), "green")])
    with Image.open(io.BytesIO(explanation.png())) as both, Image.open(
        io.BytesIO(explanation.heat_png())
    ) as heat:
        assert heat.format == "PNG" and heat.width == heat.height == both.height >= 224
        right = both.convert("RGB").crop((both.width - heat.width, 0, both.width, both.height))
        assert right.tobytes() == heat.convert("RGB").tobytes()


def test_one_array_is_one_image_for_explain_as_for_predict(shapes_classifier: Classifier) -> None:
    """A single HxWx3 array is one image (not a sequence of rows), in explain as in predict."""
    array = np.zeros((24, 24, 3), dtype=np.uint8)
    array[4:12, 4:12] = 255
    (explanation,) = shapes_classifier.explain(array)
    (prediction,) = shapes_classifier.predict(array)
    assert explanation.prediction.top == prediction.top
