"""`POST /predict?explain=true`: a Grad-CAM heat map (resnets.explain) per image, as PNG in
base64.

Grad-CAM needs gradients, so it never runs on the batching worker's inference-mode path. It
runs on a thread of its own, one image at a time, after the request's prediction, while the
request still holds its place in the admission. A request may ask it for EXPLAIN_LIMIT
images at most (400 beyond): each map is a forward and a backward pass of its own.
"""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from resnets.predict import Classifier
from resnets.serve.limits import ClientError

EXPLAIN_LIMIT = 8  # images per request that asks for heat maps


def explain_flag(values: list[str]) -> bool:
    """The `explain` query parameter: absent, true or false (also 1 or 0); 400 otherwise."""
    if not values:
        return False
    if len(values) == 1 and values[0].lower() in {"true", "1", "false", "0"}:
        return values[0].lower() in {"true", "1"}
    raise ClientError(400, f"explain {values[-1][:20]!r}: give true or false")


def check_count(images: int) -> None:
    """400 when a request asking for heat maps has more than EXPLAIN_LIMIT images."""
    if images > EXPLAIN_LIMIT:
        raise ClientError(
            400, f"explain=true takes at most {EXPLAIN_LIMIT} images per request, this one has "
            f"{images}: send fewer, or leave out explain",
        )  # fmt: skip


class Explainer:
    """The heat maps' thread: one image on it at a time, all requests taking turns."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self.thread = ThreadPoolExecutor(1, "resnets-explain")

    def shutdown(self) -> None:
        self.thread.shutdown(wait=False, cancel_futures=True)

    async def heatmaps(self, pixels: list[torch.Tensor]) -> list[str]:
        """Each image's heat map over it (Explanation.heat_png), base64-encoded PNG."""
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(self.thread, self._one, image) for image in pixels]

    def _one(self, pixels: torch.Tensor) -> str:
        # As a Pillow image of the data set's size, which Classifier.decode takes unchanged.
        array = pixels.permute(1, 2, 0).numpy()
        picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        (explained,) = self.classifier.explain([picture], top_k=1)
        return base64.b64encode(explained.heat_png()).decode("ascii")
