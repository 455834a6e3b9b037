"""What one server accepts, and the refusal every limit raises: the `resnets serve` flags of
the same names."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from PIL import Image

from resnets.errors import UsageError

NAME_LIMIT = 200  # characters of a client's file name echoed back
FRACTIONAL = frozenset({"max_wait_ms", "read_timeout", "keep_alive"})  # the others count things


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
    read_timeout: float = 30.0  # seconds for a request's headers, and again for its whole body
    max_bytes_in_flight: int = 256 * 2**20  # body bytes received and held, all requests together
    max_decoded_bytes: int = 256 * 2**20  # pixels x bytes per pixel of one request's images
    max_connections: int = 512  # open connections; more are answered 503 and closed
    keep_alive: float = 5.0  # seconds an idle connection is kept open between requests

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0:
                raise UsageError(f"{name} must be a finite number >= 0, not {value!r}")
            if name in FRACTIONAL and value <= 0 and name != "max_wait_ms":
                raise UsageError(f"{name} must be more than 0 seconds, not {value!r}")
            if name not in FRACTIONAL and (not isinstance(value, int) or value < 1):
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
        if self.max_bytes_in_flight < self.max_bytes:
            raise UsageError(
                f"max_bytes_in_flight ({self.max_bytes_in_flight:,}) must be at least max_bytes "
                f"({self.max_bytes:,}), or a full request could never be admitted"
            )


class ClientError(Exception):
    """A request the server refuses: the HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def busy(what: str) -> ClientError:
    """The 503 every full limit answers: say which, and when to come back."""
    headers = {"Retry-After": "1", "Connection": "close"}  # the body may be unread
    return ClientError(503, f"busy: {what}; try again shortly", headers)

