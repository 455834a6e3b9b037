"""TensorBoard event files of a run (`resnets train --tensorboard`), in RUN/tensorboard/.

Written with PyTorch's own `torch.utils.tensorboard.SummaryWriter`, which needs the
`tensorboard` package (the optional extra: pip install 'resnets[tensorboard]'). Per epoch, with
the epoch as the step: the training, validation and test loss and accuracy, the learning
rate, images per second and the test split's calibration error; each evaluated epoch also a
picture of a few test images titled with their predicted classes (as eval's predictions.png).
`tensorboard --logdir runs` then shows the runs side by side.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from resnets.errors import UsageError
from resnets.training.plots import plot_predictions

MISSING = (
    "--tensorboard needs the tensorboard package: pip install 'resnets[tensorboard]' "
    "(or drop --tensorboard)"
)
SHOWN = 16  # test images in each epoch's picture

# metrics.csv's column -> the scalar's tag (grouped so that TensorBoard draws splits together)
TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/validation", "test_loss": "loss/test",
    "train_acc": "accuracy/train", "val_acc": "accuracy/validation", "test_acc": "accuracy/test",
    "test_ece": "calibration_error/test", "lr": "learning_rate", "images_per_sec": "images_per_sec",
}  # fmt: skip


def require_tensorboard() -> None:
    """Raise UsageError, one line, when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401, PLC0415 (optional extra)
    except ImportError:
        raise UsageError(MISSING) from None


class TensorBoardLog:
    """The event files of one run; `close()` when done (each epoch's events are flushed)."""

    def __init__(self, path: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (optional extra)
        except ImportError:
            raise UsageError(MISSING) from None
        self.path = Path(path)
        self.writer = SummaryWriter(str(self.path))

    def epoch(self, row: dict[str, Any]) -> None:
        """The scalars of one row of metrics.csv (those that are None are left out)."""
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), row["epoch"])
        self.writer.flush()

    def predictions(
        self,
        epoch: int,
        pixels: torch.Tensor,
        true: Sequence[int],
        logits: torch.Tensor,
        classes: Sequence[str],
    ) -> None:
        """A grid of test images (uint8, N x C x H x W) titled with their predicted class and
        its probability, mistakes in red."""
        probabilities = logits.float().softmax(1)
        picture = io.BytesIO()
        plot_predictions(
            pixels.cpu().numpy(), list(true), probabilities.argmax(1).tolist(),
            probabilities.amax(1).tolist(), classes, picture,
            f"test images, epoch {epoch}",
        )  # fmt: skip
        with Image.open(picture) as image:
            array = np.asarray(image.convert("RGB"))
        self.writer.add_image("test/predictions", array, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def display_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Network inputs (normalised floats, N x C x H x W) back as uint8 images to show."""
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, device=x.device).view(shape)
    s = torch.tensor(std, device=x.device).view(shape)
    return ((x.float() * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
