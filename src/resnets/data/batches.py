"""Training batches built on the device from uint8 images: shuffled, augmented, normalised.

A data set that fits in the memory budget goes to the device once, whole. One that does not
stays in its memory-mapped cache, and each batch's rows are gathered from it on a background
thread; both paths yield the same batches, bit for bit, since the order and the augmentation
draws depend only on (seed, epoch).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from resnets.data.augment import cutmix, mixup, one_hot, random_resized_crop
from resnets.data.datasets import Split
from resnets.data.spec import DataSpec
from resnets.errors import UsageError

# The parts an --augment value joins with "+", in the order they are applied. crop, flip
# (altflip) and erase work on the uint8 images at their stored size (cheaper); rrc replaces the
# resize; mixup and cutmix mix the float batch and its labels (soft targets) last.
AUGMENTATIONS = ("crop", "flip", "altflip", "erase", "rrc", "mixup", "cutmix")
MIX = ("mixup", "cutmix")
MIRRORS = ("flip", "altflip")

# Random erasing (Zhong et al. 2017, arXiv:1708.04896): probability, area fraction, aspect ratio.
ERASE_P, ERASE_AREA, ERASE_ASPECT = 0.5, (0.02, 0.4), (0.3, 1 / 0.3)
# Beta(alpha, alpha) of mixup (Zhang et al. 2018 use 0.2 on ImageNet) and CutMix (Yun et al.
# 2019 use 1.0).
MIXUP_ALPHA, CUTMIX_ALPHA = 0.2, 1.0
# altflip's per-image coins come from their own numpy stream of the seed, apart from epochs'.
ALTFLIP_STREAM = 0xA1F

Batch = tuple[torch.Tensor, torch.Tensor]


def parse_augment(text: str) -> tuple[str, ...]:
    """`"crop+flip"` -> ("crop", "flip"); "none" or "" -> (). Unknown or clashing parts raise."""
    if text in ("", "none"):
        return ()
    parts = tuple(text.split("+"))
    unknown = [p for p in parts if p not in AUGMENTATIONS]
    if unknown:
        raise UsageError(
            f"unknown augmentation {unknown[0]!r} in {text!r}; join any of "
            f"{', '.join(AUGMENTATIONS)} with '+', or use none"
        )
    if len(set(parts)) != len(parts):
        raise UsageError(f"augmentation {text!r} names a part twice")
    if "crop" in parts and "rrc" in parts:
        raise UsageError(f"augmentation {text!r}: use crop (shift) or rrc (resized crop), not both")
    if all(m in parts for m in MIRRORS):
        raise UsageError(f"augmentation {text!r}: use flip (random) or altflip, not both")
    return tuple(p for p in AUGMENTATIONS if p in parts)


def network_input(
    pixels: torch.Tensor, spec: DataSpec, image_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 images (N, C, H, W) as the network sees them when nothing is augmented: normalised
    per channel, then resized to `image_size`. Evaluation batches are exactly this, and
    prediction (resnets.predict) calls it, so a trained network is fed as it was trained."""
    return resize(normalise(pixels, spec, dtype), image_size)


def normalise(pixels: torch.Tensor, spec: DataSpec, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (N, C, H, W) -> `dtype`, minus 255 * mean, times 1 / (255 * std), per channel."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"normalise takes uint8 images, not {pixels.dtype}")
    shift, scale = _normalisation(spec.mean, spec.std, dtype, pixels.device)
    x = pixels.to(dtype).sub_(shift.view(1, -1, 1, 1))
    return x.mul_(scale.view(1, -1, 1, 1))


def resize(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Float images (N, C, H, W) resized bilinearly to `image_size` squared (antialiased when
    shrinking); returned as they are when they already have that size."""
    if x.shape[-2:] == (image_size, image_size):
        return x
    return F.interpolate(
        x,
        size=(image_size, image_size),
        mode="bilinear",
        align_corners=False,
        antialias=image_size < x.shape[-1],
    )


@lru_cache(maxsize=32)
def _normalisation(
    mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(255 * mean, 1 / (255 * std)) as tensors, made once per spec, dtype and device.

    Python floats -> `dtype` exactly as a scalar operand would be, so 1-channel batches are
    bitwise those of the scalar normalisation this replaced.
    """
    shift = torch.tensor([255 * m for m in mean], dtype=dtype, device=device)
    scale = torch.tensor([1 / (255 * s) for s in std], dtype=dtype, device=device)
    return shift, scale


def in_layout(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """`x` with exactly the strides of `layout`, the model's: whatever the augmentations left.

    crop's permute leaves NHWC strides, and for one channel `.contiguous()` keeps them (strides
    of size-1 dimensions do not count there), yet convolutions read them as channels-last and
    give the 1x1 convolutions' weight gradients in channels-last strides. Under torchrun those
    differ from DDP's buckets, laid out from the parameters: every rank warned "Grad strides
    do not match bucket view strides", and DDP copied each such gradient.
    """
    wanted = torch.empty(x.shape, device="meta", memory_format=layout).stride()
    return x if x.stride() == wanted else x.clone(memory_format=layout)


class DeviceBatches:
    """Shuffled, augmented, resized and normalised batches of a split, built on `device`.

    There is no DataLoader and no worker process: per-image host work dominated the chapter's
    run, while batched tensor ops on the device are measurably faster. With `stream=False` the
    uint8 images (47 MB for Fashion-MNIST) go to the device once; with `stream=True` they stay
    where they are (a memory-mapped cache) and each batch is gathered on a background thread.
    Labels are int64, or soft targets (N, classes) when mixup or CutMix is on.

    A last batch of fewer than `least` images is joined to the one before it (unless
    `drop_last`): a training pass needs 2 images where the network's last map is 1x1
    (BatchNorm needs more than one value per channel), and under torchrun every process needs
    that many of every batch. The epoch then has one batch fewer, and its last is larger than
    `batch_size`; the order is that of the same epoch without the join (the joined batch's
    augmentation draws are its own, and the same every time the epoch is asked for).
    """

    def __init__(
        self,
        images: torch.Tensor | Split,
        labels: torch.Tensor | None = None,
        *,
        spec: DataSpec,
        batch_size: int,
        image_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: str = "none",
        seed: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        stream: bool = False,
        prefetch: int = 2,
        shard: tuple[int, int] = (0, 1),
        least: int = 1,
    ) -> None:
        split = images if isinstance(images, Split) else Split(images, labels)  # type: ignore[arg-type]
        self.augment = parse_augment(augment)
        if batch_size < 1 or image_size < 1:
            raise UsageError(
                f"batch size and image size must be at least 1: {batch_size}, {image_size}"
            )
        if any(m in self.augment for m in MIRRORS) and not spec.mirror_ok:
            raise UsageError(f"{spec.name}: a mirror image changes the label; drop flip")
        source = split.images.unsqueeze(1) if split.images.dim() == 3 else split.images
        if source.dtype != torch.uint8 or source.dim() != 4 or source.shape[1] != spec.channels:
            raise UsageError(
                f"{spec.name}: images must be uint8 (N, {spec.channels}, H, W), got "
                f"{source.dtype} {tuple(source.shape)}"
            )
        count = len(source) if split.rows is None else len(split.rows)
        if len(split.labels) != count:
            raise UsageError(f"{count} images but {len(split.labels)} labels")
        self.spec, self.device = spec, torch.device(device)
        self.stream = stream
        self.source: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        if stream:
            self.source, self.rows = source, split.rows
        else:
            pixels = source if split.rows is None else source[split.rows]
            self.images = pixels.to(self.device).contiguous()
        self.count = len(split.labels)
        self.labels = split.labels.to(self.device, torch.long)
        self.batch_size, self.image_size = batch_size, image_size
        self.shuffle, self.seed, self.prefetch = shuffle, seed, prefetch
        self.channels_last, self.drop_last, self.dtype = channels_last, drop_last, dtype
        self.pad = spec.pad
        self.rank, self.world = shard
        self.least = least
        # altflip: whether each image is mirrored in even epochs (odd epochs mirror the rest)
        self.first_flips = torch.from_numpy(
            np.random.default_rng((seed, ALTFLIP_STREAM)).random(self.count) < 0.5
        ).to(self.device)

    def rows_in(self, index: int) -> int:
        """Images in batch `index` of an epoch, all shards together: `batch_size`, except a
        last batch that is short or holds a short one joined to it."""
        start = index * self.batch_size
        last = index == len(self) - 1 and not self.drop_last
        return (self.count if last else min(start + self.batch_size, self.count)) - start

    def largest_batch(self) -> int:
        """Images in the largest batch of an epoch, all shards together (0 with no images)."""
        return max(self.rows_in(0), self.rows_in(len(self) - 1)) if len(self) else 0

    def _spans(self) -> list[slice]:
        """Each batch's positions in the epoch's order: `batch_size` at a time, the last one
        joined to the one before when it holds fewer than `least` images (or dropped)."""
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        return [slice(start, start + self.rows_in(i)) for i, start in enumerate(starts)]

    def _joins_last(self) -> bool:
        """Whether the last, short batch is joined to the one before it."""
        full, rest = divmod(self.count, self.batch_size)
        return not self.drop_last and full > 0 and 0 < rest < self.least

    def _shard(self, batch: Batch) -> Batch:
        """This process's contiguous block of a batch built whole (`shard`: rank, world).

        Every process builds the same whole batch, with the same order and augmentation draws,
        and keeps its block: mixup and CutMix pair images across the batch, and the draws do
        not depend on the world size, so training matches one process on the whole batch. The
        cost is that each process gathers and augments the whole batch, not its part.
        """
        if self.world == 1:
            return batch
        x, y = batch
        start, stop = (len(y) * r // self.world for r in (self.rank, self.rank + 1))
        return x[start:stop], y[start:stop]

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.count, self.batch_size)
        return full + (rest > 0 and not self.drop_last and not self._joins_last())

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield (images, labels) batches for `epoch`, the same ones each time it is asked for."""
        cpu = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        aug_seed = int(torch.randint(2**62, (1,), generator=cpu))
        generator = torch.Generator(self.device).manual_seed(aug_seed)
        mix_rng = np.random.default_rng(aug_seed)
        order = torch.randperm(self.count, generator=cpu) if self.shuffle else None
        spans = self._spans()
        if self.stream:
            pixels = self._gathered(spans, order)
        else:
            device_order = None if order is None else order.to(self.device)
            images = self.images
            assert images is not None
            pixels = (images[s if device_order is None else device_order[s]] for s in spans)
        for span, batch in zip(spans, pixels, strict=True):
            index = span if order is None else order[span].to(self.device)
            yield self._shard(self._prepare(batch, index, epoch, generator, mix_rng))

    def _gathered(self, spans: list[slice], order: torch.Tensor | None) -> Iterator[torch.Tensor]:
        """Each span's images read from the source on a background thread, `prefetch` ahead."""

        def gather(span: slice) -> torch.Tensor:
            index = torch.arange(self.count)[span] if order is None else order[span]
            rows = index if self.rows is None else self.rows[index]
            assert self.source is not None
            return self.source[rows].to(self.device)

        with ThreadPoolExecutor(1, thread_name_prefix="resnets-gather") as pool:
            pending: deque[Future[torch.Tensor]] = deque()
            upcoming = iter(spans)
            for span in upcoming:
                pending.append(pool.submit(gather, span))
                if len(pending) > self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append(pool.submit(gather, following))
                yield batch

    def _prepare(
        self,
        batch: torch.Tensor,
        index: torch.Tensor | slice,
        epoch: int,
        generator: torch.Generator,
        mix_rng: np.random.Generator,
    ) -> Batch:
        """Augment at stored size (cheaper), make float, normalise, resize, then mix.

        `index`: the batch's images' positions in the split (for labels and altflip)."""
        labels = self.labels[index]
        if "crop" in self.augment:
            batch = self._crop(batch, generator)
        if "flip" in self.augment:
            batch = self._flip(batch, generator)
        if "altflip" in self.augment:
            batch = _mirror(batch, self.first_flips[index] ^ bool(epoch % 2))
        if "erase" in self.augment:
            batch = self._erase(batch, generator)
        x = normalise(batch, self.spec, self.dtype)
        if "rrc" in self.augment:
            x = random_resized_crop(x, self.image_size, generator)
        else:
            x = resize(x, self.image_size)
        targets: torch.Tensor = labels
        mixes = [m for m in MIX if m in self.augment]
        if mixes:
            # With both, each batch is one or the other, as timm's switch probability of 0.5.
            which = mixes[0] if len(mixes) == 1 else mixes[int(mix_rng.random() < 0.5)]
            soft = one_hot(labels, self.spec.num_classes, dtype=x.dtype)
            if which == "mixup":
                x, targets = mixup(x, soft, MIXUP_ALPHA, mix_rng)
            else:
                x, targets = cutmix(x, soft, CUTMIX_ALPHA, mix_rng, generator)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return in_layout(x, layout), targets

    def _crop(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Shift each image by up to `pad` pixels each way, filling with zeros (black)."""
        n, _, h, w = batch.shape
        pad = self.pad
        padded = F.pad(batch, (pad, pad, pad, pad))
        dy, dx = torch.randint(2 * pad + 1, (2, n, 1, 1), generator=generator, device=self.device)
        rows = torch.arange(h, device=self.device).view(1, h, 1) + dy
        cols = torch.arange(w, device=self.device).view(1, 1, w) + dx
        which = torch.arange(n, device=self.device).view(n, 1, 1)
        return padded[which, :, rows, cols].permute(0, 3, 1, 2)

    def _flip(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mirror each image left to right with probability one half."""
        return _mirror(batch, torch.rand(len(batch), generator=generator, device=self.device) < 0.5)

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


def _mirror(batch: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """The (N, C, H, W) batch with the images where `which` (N bools) is true mirrored."""
    return torch.where(which.view(-1, 1, 1, 1), batch.flip(-1), batch)
