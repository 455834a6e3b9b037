"""The README's examples, run: its ONNX snippet on grey and colour networks, and the facts its
tables state about the code."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import SPECS, tiny_network

from resnets.data import mnist
from resnets.data.batches import network_input
from resnets.export import export_network
from resnets.predict import Classifier
from resnets.weights import save_safetensors

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(containing: str) -> str:
    """The README's ```python block that holds `containing`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"{len(found)} python blocks hold {containing!r}"
    return found[0]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_the_onnx_snippet_feeds_grey_and_colour_networks(
    tmp_path: Path, channels: int, mode: str
) -> None:
    """It hard-coded .convert("L") and mean[0], and failed on an RGB network with onnxruntime's
    `INVALID_ARGUMENT ... Got: 1 Expected: 3`. Now it reads channels, side, mean and std from
    the file, and gives the network what `Classifier` gives it."""
    side = SPECS[channels].size  # the network sees images at the size they are stored
    network = tiny_network(channels, image_size=side)
    source = save_safetensors(network, tmp_path / "net.safetensors")
    model = export_network(source, "onnx", tmp_path / "model.onnx").path
    rng = np.random.default_rng(channels)
    picture = tmp_path / "picture.png"
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).convert(mode).save(
        picture
    )
    code = python_block("ort.InferenceSession")
    code = code.replace("runs/quick/export/model.onnx", str(model))
    code = code.replace("test0.png", str(picture))
    namespace: dict[str, object] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)

    classifier = Classifier(network)
    pixels = classifier.decode(picture)[None]
    expected = network_input(pixels, classifier.spec, classifier.image_size)
    x = namespace["x"]
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(x), expected, rtol=0, atol=1e-5)
    assert printed.getvalue() == classifier.predict([picture])[0].label + "\n"


def test_the_mnist_row_names_the_four_files_it_expects() -> None:
    row = next(line for line in README.read_text().splitlines() if line.startswith("| `mnist`"))
    for stem in mnist.STEMS:
        assert f"`{stem}.gz`" in row
