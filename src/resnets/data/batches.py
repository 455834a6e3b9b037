"""Training batches built on the device from a data set kept there whole, as uint8."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from resnets.errors import UsageError

# Fashion-MNIST training-set pixel mean and standard deviation on the [0, 1] scale.
MEAN, STD = 0.2860, 0.3530

AUGMENTATIONS = ("none", "flip", "crop", "crop+flip", "erase", "crop+flip+erase")

# Random erasing (Zhong et al. 2017, arXiv:1708.04896): probability, area fraction, aspect ratio.
ERASE_P, ERASE_AREA, ERASE_ASPECT = 0.5, (0.02, 0.4), (0.3, 1 / 0.3)


class DeviceBatches:
    """Shuffled, augmented, resized and normalised batches of images held on `device`.

    There is no DataLoader and no worker process: per-image host work dominated the chapter's
    run, while batched tensor ops on the device are measurably faster. The uint8 images
    (47 MB for Fashion-MNIST) go to the device once; each batch becomes float there.
    An epoch's batches depend only on (seed, epoch), so they can be reproduced bit for bit.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        image_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: str = "none",
        seed: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise UsageError(f"unknown augmentation {augment!r}; use one of {AUGMENTATIONS}")
        if batch_size < 1 or image_size < 1:
            raise UsageError(
                f"batch size and image size must be at least 1: {batch_size}, {image_size}"
            )
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
            raise UsageError(
                f"images must be uint8 (N, H, W) or (N, 1, H, W), got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        if len(labels) != len(images):
            raise UsageError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.long)
        self.batch_size, self.image_size = batch_size, image_size
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.channels_last, self.drop_last, self.dtype = channels_last, drop_last, dtype
        self.pad = max(1, round(images.shape[2] / 14))  # 2 px at 28 x 28

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.images), self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels) batches for `epoch`, the same ones each time it is asked for."""
        cpu = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        aug_seed = int(torch.randint(2**62, (1,), generator=cpu))
        generator = torch.Generator(self.device).manual_seed(aug_seed)
        order = None
        if self.shuffle:
            order = torch.randperm(len(self.images), generator=cpu).to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            span = slice(start, start + self.batch_size)
            index = span if order is None else order[span]
            yield self._prepare(self.images[index], generator), self.labels[index]

    def _prepare(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment at native size (cheaper), then make float, normalise and resize."""
        if "crop" in self.augment:
            batch = self._crop(batch, generator)
        if "flip" in self.augment:
            batch = self._flip(batch, generator)
        if "erase" in self.augment:
            batch = self._erase(batch, generator)
        x = batch.to(self.dtype).sub_(255 * MEAN).mul_(1 / (255 * STD))
        size = x.shape[-1]
        if (x.shape[-2], size) != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=self.image_size < size,
            )
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _crop(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Shift each image by up to `pad` pixels each way, filling with background zeros."""
        n, _, h, w = batch.shape
        pad = self.pad
        padded = F.pad(batch, (pad, pad, pad, pad))
        dy, dx = torch.randint(2 * pad + 1, (2, n, 1, 1), generator=generator, device=self.device)
        rows = torch.arange(h, device=self.device).view(1, h, 1) + dy
        cols = torch.arange(w, device=self.device).view(1, 1, w) + dx
        which = torch.arange(n, device=self.device).view(n, 1, 1)
        return padded[which, 0, rows, cols].unsqueeze(1)

    def _flip(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mirror each image left to right with probability one half."""
        flip = torch.rand(len(batch), generator=generator, device=self.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)

    def _erase(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Fill one random rectangle of each image with noise, with probability ERASE_P.

        Batched, so a rectangle too tall or wide for the image is clipped to it rather than
        drawn again as in the paper.
        """
        n, _, h, w = batch.shape
        # Rows: area, aspect, top, left, whether; the sixth is unused but kept, so the
        # recorded runs (docs/best-run/) draw the same numbers.
        uniform = torch.rand(6, n, generator=generator, device=self.device)
        low, high = ERASE_AREA
        area = (low + (high - low) * uniform[0]) * h * w
        log_low, log_high = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        aspect = torch.exp(log_low + (log_high - log_low) * uniform[1])
        eh = (area * aspect).sqrt().round().clamp(1, h)
        ew = (area / aspect).sqrt().round().clamp(1, w)
        top = (uniform[2] * (h - eh + 1)).floor()
        left = (uniform[3] * (w - ew + 1)).floor()
        rows = torch.arange(h, device=self.device).view(1, h, 1)
        cols = torch.arange(w, device=self.device).view(1, 1, w)

        def inside(start: torch.Tensor, size: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
            start, size = start.view(n, 1, 1), size.view(n, 1, 1)
            return (at >= start) & (at < start + size)

        mask = inside(top, eh, rows) & inside(left, ew, cols)
        mask &= (uniform[4] < ERASE_P).view(n, 1, 1)
        noise = torch.randint(
            256, batch.shape, generator=generator, device=self.device, dtype=torch.uint8
        )
        return torch.where(mask.unsqueeze(1), noise, batch)
