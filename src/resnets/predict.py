"""Predictions of a trained network for images: files or Pillow images in, top-k classes out.

    clf = resnets.Classifier.from_checkpoint("runs/x")   # a run folder, .pt or .safetensors
    print(clf.predict(["a.png"])[0])                     # a.png: cat 0.912, dog 0.051, ...

An image goes the way a training image went. Pillow decodes it as the image-folder cache does
(`resnets.data.folder.decode_image`: upright by its EXIF orientation, "L" or "RGB" as the
network's channels, alpha dropped, the centred square resized bicubically to the data set's
size), then `resnets.data.batches.network_input` normalises and resizes it exactly as
evaluation batches are (no augmentation, no test-time mirroring). A Pillow image is taken
as it is decoded; given by its path, a JPEG file at least twice the data's size is decoded at
reduced scale, as training did, so the two can differ a little. A NumPy array is taken as a
Pillow image would be (see ARRAYS for the shapes and ranges it may have).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from resnets.data.batches import network_input
from resnets.data.folder import EXTENSIONS, UNREADABLE, decode_image, truncated_images_refused
from resnets.data.spec import DataSpec
from resnets.errors import DataError, UsageError, one_line
from resnets.explain import grad_cam, heat_overlay, overlay, png_bytes
from resnets.models.fold import fold_batchnorm
from resnets.ood import energy
from resnets.weights import TrainedNetwork, load_network

# What `predict` takes for one image: a file's path, a Pillow image, or a NumPy array.
ImageSource = str | os.PathLike[str] | Image.Image | np.ndarray
ARRAYS = (
    "uint8 (H, W) grey or (H, W, 3) RGB as Pillow and OpenCV-in-RGB give them, or float "
    "(C, H, W) with C 1 or 3 and values in [0, 1] as torchvision's ToTensor gives them"
)
ACCEPTED = f"a file path, a Pillow image or a NumPy array ({ARRAYS})"


class ImageError(DataError):
    """An image that cannot be read: a missing or empty file, not an image, or a damaged one.
    The message names it."""


@dataclass(frozen=True)
class Prediction:
    """The most probable classes of one image, most probable first.

    `source` is the file's path as given, or for a Pillow image its `filename` (when it was
    opened from a file) or `<image N>`, N its position in the call.
    """

    source: str
    top: tuple[tuple[str, float], ...]  # (class name, probability)
    # the image's energy score (resnets.ood: lower is more like the training data), and
    # whether it is above the network's threshold; never flagged without a threshold
    energy: float | None = None
    unlike_training: bool = False

    @property
    def label(self) -> str:
        """The most probable class."""
        return self.top[0][0]

    @property
    def probability(self) -> float:
        """The most probable class's probability."""
        return self.top[0][1]

    def to_dict(self) -> dict[str, Any]:
        """`{"file": ..., "predictions": [{"class": ..., "probability": ...}, ...],
        "unlike_training_data": bool, "energy": float}`."""
        return {
            "file": self.source,
            "predictions": [{"class": name, "probability": p} for name, p in self.top],
            "unlike_training_data": self.unlike_training,
            "energy": self.energy,
        }

    def __str__(self) -> str:
        flag = f" ({UNLIKE})" if self.unlike_training else ""
        return f"{self.source}: " + ", ".join(f"{name} {p:.3f}" for name, p in self.top) + flag


# What prediction says beside the top class of an image flagged by the energy threshold.
UNLIKE = "unlike the training data"


@dataclass(frozen=True)
class Explanation:
    """An image's prediction and where the network found the evidence for its top class."""

    prediction: Prediction
    pixels: torch.Tensor  # uint8 (C, S, S): the image as the network's data set stores it
    heatmap: torch.Tensor  # float (S, S) in [0, 1]: Grad-CAM of the top class, peak 1

    def overlay(self) -> Image.Image:
        """The image beside itself with the heat map laid over it (an RGB Pillow image)."""
        return overlay(self.pixels.numpy(), self.heatmap.numpy())

    def png(self) -> bytes:
        """`overlay()` as PNG file contents."""
        return png_bytes(self.overlay())

    def heat_png(self) -> bytes:
        """The image with the heat map laid over it (the right panel of `overlay()` alone), as
        PNG file contents: what the server's page lays over its preview."""
        return png_bytes(heat_overlay(self.pixels.numpy(), self.heatmap.numpy()))


class Classifier:
    """A trained network with its preprocessing and class names, ready to classify images.

    Build it with `Classifier.from_checkpoint(path)`, or from a `TrainedNetwork`
    (resnets.weights). The network is in eval mode with plain convolutions, in float32, and
    each BatchNorm folded into the convolution before it (`resnets.models.fold`): the same
    predictions up to rounding, sooner.
    """

    def __init__(self, network: TrainedNetwork, device: str | torch.device = "cpu") -> None:
        self.network = network
        self.device = torch.device(device)
        self.model = fold_batchnorm(network.build()).to(self.device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Classifier:
        """From a run folder (its best.pt, else last.pt), a training checkpoint (.pt), or a
        safetensors file written by `resnets export --format safetensors`."""
        return cls(load_network(path), device)

    @property
    def spec(self) -> DataSpec:
        """The data set the network was trained on: classes, channels, size, mean and std."""
        return self.network.spec

    @property
    def classes(self) -> tuple[str, ...]:
        return self.network.spec.classes

    @property
    def image_size(self) -> int:
        """The side of the network's input (images are first made `spec.size` square)."""
        return self.network.image_size

    def to(self, device: str | torch.device) -> Classifier:
        """Move the network to `device` (e.g. "cuda"); returns the classifier itself."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def __repr__(self) -> str:
        return (
            f"Classifier({self.network.model_name}, {self.spec.name}: "
            f"{len(self.classes)} classes, from {self.network.source}, on {self.device})"
        )

    def decode(self, image: ImageSource) -> torch.Tensor:
        """One image as the uint8 (C, S, S) tensor training stored (S: `spec.size`).

        Raises ImageError, one line naming the file, for a file that is missing, empty, not an
        image, truncated or damaged.
        """
        source: str | os.PathLike[str] | Image.Image
        if isinstance(image, np.ndarray):
            source = image_of_array(image)
        elif isinstance(image, (str, os.PathLike, Image.Image)):
            source = image
        else:
            raise UsageError(f"an image is {ACCEPTED}, not {type(image).__name__}")
        try:
            with truncated_images_refused():
                array = decode_image(source, self.spec.size, self.spec.channels)
        except UNREADABLE as error:
            raise ImageError(_why_unreadable(source, error)) from error
        return torch.from_numpy(array.copy())  # Pillow's array is read-only

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float32 logits (N, classes), on the classifier's device, of uint8 images
        (N, C, H, W) as training stored them (H = W = `spec.size`)."""
        channels = self.spec.channels
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != channels:
            raise UsageError(
                f"expected uint8 images (N, {channels}, H, W), got {pixels.dtype} "
                f"{tuple(pixels.shape)}"
            )
        x = network_input(pixels.to(self.device), self.spec, self.image_size)
        return self.model(x).float()

    @torch.inference_mode()
    def predict(
        self,
        images: ImageSource | Iterable[ImageSource],
        top_k: int = 5,
        batch_size: int = 64,
        on_error: Callable[[ImageError], None] | None = None,
    ) -> list[Prediction]:
        """The `top_k` most probable classes of each image (files, Pillow images and/or NumPy
        arrays as ARRAYS says), in the order given, `batch_size` images through the network
        at a time.

        An image that cannot be read raises ImageError, unless `on_error` is given: it is then
        called with the error and the image is left out of the results (each result names its
        `source`). Each result also holds the image's energy score and whether it is unlike
        the training data (above the threshold saved with the network; see resnets.ood).
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UsageError(f"top_k must be a positive whole number, not {top_k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive whole number, not {batch_size!r}")
        k = min(top_k, len(self.classes))
        results: list[Prediction] = []
        for names, pixels in self._decoded(images, batch_size, on_error):
            results.extend(self._predictions(names, self.logits(pixels), k))
        return results

    def _decoded(
        self,
        images: ImageSource | Iterable[ImageSource],
        batch_size: int,
        on_error: Callable[[ImageError], None] | None,
    ) -> Iterator[tuple[list[str], torch.Tensor]]:
        """(names, uint8 pixels) of up to `batch_size` readable images at a time; an image
        that cannot be read raises, or goes to `on_error` and is left out."""
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]  # one array is one image, not a sequence of rows
        for batch in _chunks(enumerate(images), batch_size):
            names, pixels = [], []
            for position, image in batch:
                try:
                    pixels.append(self.decode(image))
                except ImageError as error:
                    if on_error is None:
                        raise
                    on_error(error)
                    continue
                names.append(_name_of(image, position))
            if pixels:
                yield names, torch.stack(pixels)

    def unlike_training(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's energy score (resnets.ood) from its logits (N, classes), and whether it
        is above the threshold saved with the network (all False without one)."""
        energies = energy(logits)
        ood = self.network.ood
        flags = ood.unlike(energies) if ood else torch.zeros_like(energies, dtype=torch.bool)
        return energies, flags

    def _predictions(self, names: list[str], logits: torch.Tensor, k: int) -> list[Prediction]:
        """The top `k` classes of each row of logits, with its energy and flag."""
        values, indices = logits.softmax(1).topk(k, dim=1)
        energies, flags = self.unlike_training(logits)
        results = []
        for name, ps, ids, score, flag in zip(
            names, values.tolist(), indices.tolist(), energies.tolist(), flags.tolist(),
            strict=True,
        ):  # fmt: skip
            top = tuple((self.classes[i], p) for i, p in zip(ids, ps, strict=True))
            results.append(Prediction(name, top, score, bool(flag)))
        return results

    def explain(
        self,
        images: ImageSource | Iterable[ImageSource],
        top_k: int = 5,
        batch_size: int = 16,
        on_error: Callable[[ImageError], None] | None = None,
    ) -> list[Explanation]:
        """Each image's prediction (as `predict` gives it) with a Grad-CAM heat map of the
        evidence for its top class, on the last stage of the network (resnets.explain).

        The maps are of the network this classifier predicts with, BatchNorm folded: the same
        function as the trained one, so the same gradients up to rounding, without building a
        second copy. Images that cannot be read are handled as by `predict`.
        """
        k = min(top_k, len(self.classes))
        results: list[Explanation] = []
        for names, stacked in self._decoded(images, batch_size, on_error):
            x = network_input(stacked.to(self.device), self.spec, self.image_size)
            maps, logits = grad_cam(self.model, x, size=(stacked.shape[-2], stacked.shape[-1]))
            predictions = self._predictions(names, logits, k)
            results.extend(
                Explanation(p, image, heat.cpu())
                for p, image, heat in zip(predictions, stacked, maps, strict=True)
            )
        return results


def image_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The files to predict for command-line arguments, and one line per argument that gives
    none. A folder stands for its image files (by extension, any case; sorted by name; hidden
    files and sub-folders left out); any other argument is taken as a file, to be read (and
    refused if it cannot be) as it is, whatever its name."""
    files: list[Path] = []
    problems: list[str] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(
            (child for child in path.iterdir() if _is_image_name(child.name) and child.is_file()),
            key=lambda child: child.name,
        )
        if not found:
            problems.append(
                f"{path}: a folder without image files ({' '.join(EXTENSIONS)}); "
                "point at image files or a folder holding them"
            )
        files.extend(found)
    return files, problems


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def image_of_array(array: np.ndarray) -> Image.Image:
    """A NumPy array as the Pillow image it stands for (see ARRAYS); UsageError, one line
    saying what is accepted, for any other shape, type or range."""
    shape, kind = array.shape, array.dtype
    refused = UsageError(f"an array image of {kind} {shape} is not one of: {ARRAYS}")
    if kind == np.uint8:
        if array.ndim == 2 or (array.ndim == 3 and shape[2] == 1):
            return Image.fromarray(np.ascontiguousarray(array.reshape(shape[:2])), "L")
        if array.ndim == 3 and shape[2] == 3:
            return Image.fromarray(np.ascontiguousarray(array), "RGB")
        raise refused
    if np.issubdtype(kind, np.floating) and array.ndim == 3 and shape[0] in (1, 3):
        finite = bool(np.all(np.isfinite(array)))
        if not finite or array.min() < 0 or array.max() > 1:
            held = f"{array.min():.3g} to {array.max():.3g}" if finite else "NaN or infinity"
            raise UsageError(
                f"a float array image must hold values in [0, 1] (as ToTensor gives), not "
                f"{held}; scale it, or pass uint8 pixels"
            )
        pixels = np.rint(array.transpose(1, 2, 0) * 255).astype(np.uint8)
        return image_of_array(pixels)
    raise refused


def _name_of(image: ImageSource, position: int) -> str:
    if isinstance(image, np.ndarray):
        return f"<image {position}>"
    if isinstance(image, Image.Image):
        return str(getattr(image, "filename", "") or f"<image {position}>")
    return os.fspath(image)


def _why_unreadable(image: str | os.PathLike[str] | Image.Image, error: BaseException) -> str:
    """One line: the image's name and why it cannot be read."""
    if isinstance(image, Image.Image):
        name = str(getattr(image, "filename", "") or "a Pillow image")
        return f"{name}: cannot be converted for the network ({one_line(error)})"
    path = Path(image)
    if isinstance(error, FileNotFoundError) or not path.exists():
        return f"{path}: no such file"
    if path.is_dir():
        return f"{path}: a folder, not an image file"
    if isinstance(error, PermissionError):
        return f"{path}: not allowed to read it"
    if path.stat().st_size == 0:
        return f"{path}: an empty file, not an image"
    if isinstance(error, Image.UnidentifiedImageError):
        return f"{path}: not an image file that Pillow can read (PNG, JPEG, BMP, WebP, ...)"
    return f"{path}: a damaged or truncated image ({one_line(error)})"
