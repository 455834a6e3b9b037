"""One uploaded image, from its bytes alone, to the uint8 tensor the classifier takes: the
formats a client may send, the pixel limit checked on the header before any decoding."""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image

from resnets.data.folder import UNREADABLE, truncated_images_refused
from resnets.errors import one_line
from resnets.predict import Classifier, ImageError
from resnets.serve.limits import ClientError

# The formats a client may send: those the image-folder reader takes. Restricting Pillow's
# choice also keeps out formats whose plugins run programs (EPS runs Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")


def decode_upload(classifier: Classifier, data: bytes, name: str, max_pixels: int) -> torch.Tensor:
    """One uploaded image as the uint8 (C, S, S) tensor the classifier takes, decoded from
    `data` the way `Classifier.predict` decodes a file (JPEGs drafted at reduced scale too).

    Raises ClientError: 400 empty, truncated or damaged; 415 not an image in FORMATS; 413 more
    pixels than `max_pixels`. Pillow's own decompression-bomb warning is made an error here,
    so it can never pass as a log line while the image is decoded anyway.
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
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ClientError(
                413, f"{name}: {width}x{height} is {width * height:,} pixels, over this "
                f"server's limit of {max_pixels:,}",
            )  # fmt: skip
        try:
            with truncated_images_refused():
                image.draft(None, (classifier.spec.size, classifier.spec.size))
                image.load()
        except UNREADABLE as error:
            raise ClientError(
                400, f"{name}: a damaged or truncated image ({one_line(error)})"
            ) from None
        try:
            return classifier.decode(image)
        except ImageError as error:
            raise ClientError(400, f"{name}: {error}") from None
