"""The batching worker: decoded images wait in a queue; one worker gathers them into batches
and runs each on an inference thread, so the event loop keeps answering."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from resnets.predict import Classifier
from resnets.serve.decoding import decode_upload
from resnets.serve.limits import ClientError, Limits


@dataclass
class _Waiting:
    """One decoded image waiting for a batch, and where its probabilities go."""

    pixels: torch.Tensor
    result: asyncio.Future[torch.Tensor]


@dataclass
class _Counts:
    """What /health reports; changed only on the event loop."""

    admitted: int = 0  # images of requests in the server
    batches: int = 0
    images: int = 0
    refused_busy: int = 0
    running: int = 0  # images in the batch on the inference thread now
    started: float = field(default_factory=time.monotonic)


class Batcher:
    """The bounded admission, the queue of decoded images and the one worker that batches
    them: one batch on the inference thread at a time, the next gathered meanwhile."""

    def __init__(self, classifier: Classifier, limits: Limits) -> None:
        self.classifier = classifier
        self.limits = limits
        self.counts = _Counts()
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        # One thread each: Pillow's truncated-image flag and warning filters are process-wide,
        # and a single decoder also holds at most one full-size image in memory at a time.
        self.decoder = ThreadPoolExecutor(1, "resnets-decode")
        self.runner = ThreadPoolExecutor(1, "resnets-infer")
        self.worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        # A batch still running finishes on its thread; nobody waits for its answer.
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self.runner.shutdown(wait=False, cancel_futures=True)

    def admit(self, images: int) -> None:
        """Count `images` more in the server, or refuse them with 503 when that would pass
        the queue limit."""
        if self.counts.admitted + images > self.limits.queue_limit:
            self.counts.refused_busy += 1
            raise ClientError(
                503,
                f"busy: {self.counts.admitted} images in the server, the limit is "
                f"{self.limits.queue_limit}; try again shortly",
                {"Retry-After": "1"},
            )
        self.counts.admitted += images

    def release(self, images: int) -> None:
        self.counts.admitted -= images

    async def decode(self, uploads: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decoder, self._decode_all, uploads)

    def _decode_all(self, uploads: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        return [decode_upload(self.classifier, data, name, self.limits.max_pixels)
                for name, data in uploads]  # fmt: skip

    async def probabilities(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each image's class probabilities, computed in whatever batches the worker makes."""
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(p, loop.create_future()) for p in pixels]
        for item in waiting:
            self.queue.put_nowait(item)  # bounded by admit(), not by the queue
        return list(await asyncio.gather(*(item.result for item in waiting)))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while len(batch) < self.limits.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in batch if not item.result.done()]
            if not batch:
                continue
            pixels = torch.stack([item.pixels for item in batch])
            self.counts.running = len(batch)
            try:
                probabilities = await loop.run_in_executor(self.runner, self._infer, pixels)
            except Exception as error:  # the model failed: each waiting request answers 500
                for item in batch:
                    if not item.result.done():
                        item.result.set_exception(error)
                continue
            finally:
                self.counts.running = 0
            self.counts.batches += 1
            self.counts.images += len(batch)
            for item, row in zip(batch, probabilities, strict=True):
                if not item.result.done():
                    item.result.set_result(row)

    @torch.inference_mode()
    def _infer(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier.logits(pixels).softmax(1).cpu()
