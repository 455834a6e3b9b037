"""Admission: what the server holds for its clients, counted as it is really received.

A request costs nothing until its bytes arrive. Body bytes are counted as each chunk comes in
(against `max_bytes_in_flight`) and images as each one is complete (against `queue_limit`),
so a client that promises a large body and stalls holds only what it sent; the read timeout
(uploads.py) ends it. Either limit full: 503 with Retry-After for the request that would pass
it, and everything it held is given back. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from resnets.serve.limits import ClientError, Limits, busy


@dataclass
class Counts:
    """What /health reports."""

    admitted: int = 0  # images of requests in the server (received, decoding, waiting, running)
    bytes_in_flight: int = 0  # body bytes received and not yet decoded
    reading: int = 0  # requests whose body is being read
    decoding: int = 0  # requests with an image on a decoding thread now
    batches: int = 0
    images: int = 0
    refused_busy: int = 0
    timed_out: int = 0
    running: int = 0  # images in the batch on the inference thread now
    started: float = field(default_factory=time.monotonic)


class Admission:
    """The server-wide counts of bytes and images, and the deadlines of the bodies being read
    (ended at once when the server stops, so a stalled body cannot hold up a shutdown)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.counts = Counts()
        self.stopping = False
        self._deadlines: set[asyncio.Timeout] = set()

    def take_bytes(self, count: int) -> None:
        """Hold `count` more body bytes, or 503 when all requests together would pass the
        limit (the caller gives back what it held)."""
        if self.counts.bytes_in_flight + count > self.limits.max_bytes_in_flight:
            self.counts.refused_busy += 1
            raise busy(
                f"{self.counts.bytes_in_flight:,} bytes of bodies in the server, the limit is "
                f"{self.limits.max_bytes_in_flight:,}"
            )
        self.counts.bytes_in_flight += count

    def give_bytes(self, count: int) -> None:
        self.counts.bytes_in_flight -= count

    def take_images(self, count: int) -> None:
        """Count `count` more images in the server, or 503 past the queue limit."""
        if self.counts.admitted + count > self.limits.queue_limit:
            self.counts.refused_busy += 1
            raise busy(
                f"{self.counts.admitted} images in the server, the limit is "
                f"{self.limits.queue_limit}"
            )
        self.counts.admitted += count

    def give_images(self, count: int) -> None:
        self.counts.admitted -= count

    def reading(self, deadline: asyncio.Timeout) -> Reading:
        """A context for reading one body under `deadline`, which `stop` brings forward."""
        return Reading(self, deadline)

    def stop(self) -> None:
        """The server is stopping: every body still being read ends now (503)."""
        self.stopping = True
        now = asyncio.get_running_loop().time()
        for deadline in self._deadlines:
            deadline.reschedule(now)


class Reading:
    """Registers a body's deadline with the admission while it is read; the refusal when it
    passes says whether the client was too slow (408) or the server is stopping (503)."""

    def __init__(self, admission: Admission, deadline: asyncio.Timeout) -> None:
        self.admission = admission
        self.deadline = deadline

    def __enter__(self) -> Reading:
        self.admission._deadlines.add(self.deadline)
        self.admission.counts.reading += 1
        if self.admission.stopping:
            self.deadline.reschedule(asyncio.get_running_loop().time())
        return self

    def __exit__(self, *_: object) -> None:
        self.admission._deadlines.discard(self.deadline)
        self.admission.counts.reading -= 1

    def refusal(self) -> ClientError:
        close = {"Connection": "close"}  # the rest of the body is never read
        if self.admission.stopping:
            return ClientError(503, "the server is stopping; try again shortly", close)
        self.admission.counts.timed_out += 1
        return ClientError(
            408, f"the body did not arrive within this server's read timeout of "
            f"{self.admission.limits.read_timeout:g} s", close,
        )  # fmt: skip
