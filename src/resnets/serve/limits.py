"""What one server accepts, and the refusal every limit raises: the `resnets serve` flags of
the same names."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from PIL import Image

from resnets.errors import UsageError

NAME_LIMIT = 200  # characters of a client's file name echoed back


@dataclass(frozen=True)
class Limits:
    """What one server accepts and how it batches; `resnets serve` flags of the same names."""

    max_batch: int = 32  # images per forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for more images once it has one
    max_images: int = 64  # images per request
    max_bytes: int = 16 * 2**20  # request body
    max_pixels: int = 40_000_000  # width x height of one image, checked on its header
    queue_limit: int = 256  # images in the server at once; more are answered 503
    top_k: int = 5  # classes per image unless the request asks (?top_k=K)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0:
                raise UsageError(f"{name} must be a finite number >= 0, not {value!r}")
            if name != "max_wait_ms" and (not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be a positive whole number, not {value!r}")
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            raise UsageError(
                f"max_pixels ({self.max_pixels:,}) is over Pillow's own limit "
                f"({Image.MAX_IMAGE_PIXELS:,}), which refuses such images anyway"
            )
        if self.queue_limit < self.max_images:
            raise UsageError(
                f"queue_limit ({self.queue_limit}) must be at least max_images "
                f"({self.max_images}), or a full request could never be admitted"
            )


class ClientError(Exception):
    """A request the server refuses: the HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

