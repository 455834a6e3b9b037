"""The batching worker: decoded images wait in a queue; one worker gathers them into batches
of up to `max_batch` (waiting at most `max_wait_ms` for more once it has one) and runs each
on an inference thread, so the event loop keeps answering.

The loop is guarded: whatever fails with one batch (stacking, the model, its outputs) is the
answer of that batch's requests alone (500), and the worker goes on with the next. Should the
worker end anyway, `alive` says so and /health answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from resnets.errors import one_line
from resnets.predict import Classifier
from resnets.serve.admission import Counts
from resnets.serve.limits import Limits

log = logging.getLogger("resnets.serve")


@dataclass
class _Waiting:
    """One decoded image waiting for a batch, and where its logits go."""

    pixels: torch.Tensor
    result: asyncio.Future[torch.Tensor]


class Batcher:
    """The queue of decoded images and the one worker that batches them: one batch on the
    inference thread at a time, the next gathered meanwhile."""

    def __init__(self, classifier: Classifier, limits: Limits, counts: Counts) -> None:
        self.classifier = classifier
        self.limits = limits
        self.counts = counts
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self.runner = ThreadPoolExecutor(1, "resnets-infer")
        self.worker: asyncio.Task[None] | None = None
        self._batch: list[_Waiting] = []  # the batch being run, failed too if the worker ends

    @property
    def alive(self) -> bool:
        return self.worker is not None and not self.worker.done()

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work(), name="resnets-batcher")

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        # A batch still running finishes on its thread; nobody waits for its answer.
        self.runner.shutdown(wait=False, cancel_futures=True)

    async def logits(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each image's logits (float32, on the CPU), computed in whatever batches the worker
        makes; a failed batch raises its error here. The caller takes the probabilities and
        the energy score (Classifier.unlike_training) from them."""
        if not self.alive:
            raise RuntimeError("the batching worker has stopped")
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(p, loop.create_future()) for p in pixels]
        for item in waiting:
            self.queue.put_nowait(item)  # bounded by the admission, not by the queue
        return list(await asyncio.gather(*(item.result for item in waiting)))

    async def _gather(self) -> list[_Waiting]:
        loop = asyncio.get_running_loop()
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
            except TimeoutError:
                break
        return [item for item in batch if not item.result.done()]

    async def _work(self) -> None:
        try:
            await self._batches()
        except BaseException as error:  # cancelled (the server stops), or a bug: nobody waits
            if not isinstance(error, asyncio.CancelledError):
                log.error("the batching worker stopped: %s", one_line(error))
            stopped = RuntimeError("the batching worker has stopped")
            for item in [*self._batch, *self._drain()]:
                if not item.result.done():
                    item.result.set_exception(stopped)
            raise

    def _drain(self) -> list[_Waiting]:
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._batch = []
            batch = self._batch = await self._gather()
            if not batch:
                continue
            try:
                pixels = torch.stack([item.pixels for item in batch])
                self.counts.running = len(batch)
                try:
                    rows = await loop.run_in_executor(self.runner, self._infer, pixels)
                finally:
                    self.counts.running = 0
            except Exception as error:  # this batch's requests answer 500; the worker goes on
                log.error("a batch of %d failed: %s", len(batch), one_line(error))
                for item in batch:
                    if not item.result.done():
                        item.result.set_exception(error)
                continue
            self.counts.batches += 1
            self.counts.images += len(batch)
            for item, row in zip(batch, rows, strict=True):
                if not item.result.done():
                    item.result.set_result(row)

    @torch.inference_mode()
    def _infer(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier.logits(pixels).cpu()
