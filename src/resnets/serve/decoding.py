"""Uploaded images, from their bytes alone, to the uint8 tensors the classifier takes: bounded
per image and per request, and fair between requests.

Each image's header is read first (no pixels decoded): more than `max_pixels` is 413, and so
is a request whose images together would take more than `max_decoded_bytes` once decoded
(width x height x the bytes a pixel takes in memory). Then the pixels, one image of a request
at a time, on one of two threads: small images (LIGHT_BYTES decoded at most) on one, large
ones on the other. A request therefore waits behind at most one image of each other request
in its lane, and never behind a large image when its own are small.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from resnets.data.folder import UNREADABLE, truncated_images_refused
from resnets.errors import one_line
from resnets.predict import Classifier, ImageError
from resnets.serve.admission import Counts
from resnets.serve.limits import ClientError, Limits

# The formats a client may send: those the image-folder reader takes. Restricting Pillow's
# choice also keeps out formats whose plugins run programs (EPS runs Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
LIGHT_BYTES = 4 * 2**20  # decoded size up to which an image goes to the small images' thread
# Bytes a pixel takes in Pillow's memory: 1 for these modes, 2 for 16-bit gray, 4 otherwise
# (RGB is stored in 4 bytes too).
_ONE_BYTE = frozenset({"1", "L", "P"})
_TWO_BYTES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "LA", "La", "PA"})


def pixel_bytes(image: Image.Image) -> int:
    """Bytes `image` takes once decoded, from its header (after any JPEG draft)."""
    width, height = image.size
    per_pixel = 1 if image.mode in _ONE_BYTE else 2 if image.mode in _TWO_BYTES else 4
    return width * height * per_pixel


def open_upload(data: bytes, name: str, max_pixels: int, size: int) -> Image.Image:
    """The image in `data`, its header read and checked, no pixels decoded yet (JPEGs drafted
    to decode at reduced scale, as `Classifier.predict` reads files).

    Raises ClientError: 400 empty or damaged; 415 not an image in FORMATS; 413 more pixels than
    `max_pixels`. Pillow's decompression-bomb warning is made an error, so it can never pass as
    a log line while the image is decoded anyway (call it from one thread only: the warning
    filters are process-wide).
    """
    if not data:
        raise ClientError(400, f"{name}: empty, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ClientError(413, f"{name}: too many pixels ({error})") from None
    except Image.UnidentifiedImageError:
        raise ClientError(
            415, f"{name}: not an image this server reads ({', '.join(FORMATS)})"
        ) from None
    except UNREADABLE as error:
        raise ClientError(400, f"{name}: a damaged image ({one_line(error)})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ClientError(
            413, f"{name}: {width}x{height} is {width * height:,} pixels, over this server's "
            f"limit of {max_pixels:,}",
        )  # fmt: skip
    try:
        image.draft(None, (size, size))
    except UNREADABLE as error:
        image.close()
        raise ClientError(400, f"{name}: a damaged image ({one_line(error)})") from None
    return image


def decode_opened(classifier: Classifier, image: Image.Image, name: str) -> torch.Tensor:
    """The pixels of an image from `open_upload`, as the uint8 (C, S, S) tensor training
    stored (converted and resized exactly as `Classifier.decode` does); closes the image.

    Raises ClientError 400 for a truncated or damaged image."""
    try:
        try:
            with truncated_images_refused():
                image.load()
        except UNREADABLE as error:
            raise ClientError(
                400, f"{name}: a damaged or truncated image ({one_line(error)})"
            ) from None
        try:
            return classifier.decode(image)
        except ImageError as error:
            raise ClientError(400, f"{name}: {error}") from None
    finally:
        image.close()  # frees the pixels now (leaving a `with` block only closes the file)


def decode_upload(classifier: Classifier, data: bytes, name: str, max_pixels: int) -> torch.Tensor:
    """One uploaded image as the uint8 (C, S, S) tensor the classifier takes, in this thread."""
    image = open_upload(data, name, max_pixels, classifier.spec.size)
    return decode_opened(classifier, image, name)


class Decoder:
    """The two decoding threads (small images, large images) and the per-request budget."""

    def __init__(self, classifier: Classifier, limits: Limits, counts: Counts) -> None:
        self.classifier = classifier
        self.limits = limits
        self.counts = counts
        # The small images' thread also reads every header (see open_upload's warning filter).
        self.light = ThreadPoolExecutor(1, "resnets-decode")
        self.heavy = ThreadPoolExecutor(1, "resnets-decode-large")

    def shutdown(self) -> None:
        self.light.shutdown(wait=False, cancel_futures=True)
        self.heavy.shutdown(wait=False, cancel_futures=True)

    async def decode(self, uploads: Sequence[tuple[str, bytes]]) -> list[torch.Tensor]:
        """Each upload's tensor, or the ClientError of the first that cannot be decoded."""
        loop = asyncio.get_running_loop()
        size, limit = self.classifier.spec.size, self.limits.max_decoded_bytes
        opened: list[tuple[str, Image.Image, int]] = []
        try:
            total = 0
            for name, data in uploads:
                image = await loop.run_in_executor(
                    self.light, open_upload, data, name, self.limits.max_pixels, size
                )
                cost = pixel_bytes(image)
                opened.append((name, image, cost))
                total += cost
                if total > limit:
                    raise ClientError(
                        413, f"decoding the images of this request takes more than {total:,} "
                        f"bytes, over this server's limit of {limit:,} per request",
                    )  # fmt: skip
            pixels = []
            for name, image, cost in opened:  # one at a time, so requests take turns
                lane = self.light if cost <= LIGHT_BYTES else self.heavy
                self.counts.decoding += 1
                try:
                    pixels.append(await loop.run_in_executor(
                        lane, decode_opened, self.classifier, image, name
                    ))  # fmt: skip
                finally:
                    self.counts.decoding -= 1
            return pixels
        finally:
            for _, image, _ in opened:
                image.close()
