"""Batched augmentations as pure functions: random resized crop, mixup and CutMix.

Each works on a whole float (N, C, H, W) batch at once on its device, with no per-image Python
loop, so DeviceBatches can call them after normalising. Randomness comes only from the
arguments (a torch.Generator on the batch's device, and a numpy Generator for the one Beta
draw per batch, which torch cannot take from a generator), in a fixed number of draws per
call, so a batch is reproducible from the generators' states.

Mixup and CutMix mix targets too, so they take and return soft targets, float (N, K) rows of
class probabilities: make them from labels with `one_hot`. `F.cross_entropy` accepts such
targets (with `label_smoothing` as well), and `soft_accuracy_count` scores them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from resnets.errors import UsageError

# Inception-style crop (Szegedy et al. 2015, "Going deeper with convolutions"): area fraction
# and width / height aspect ratio ranges, the values torchvision uses as its defaults.
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    """Reject a (low, high) range that is reversed or not positive."""
    low, high = bounds
    if not 0 < low <= high:
        raise UsageError(f"{name} must be (low, high) with 0 < low <= high, got {bounds}")


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    device: torch.device | str,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> torch.Tensor:
    """Draw `n` integer crop boxes (top, left, box height, box width) as an (n, 4) float tensor.

    Area fraction ~ U(scale) and log aspect (width / height) ~ U(log ratio); box width is
    sqrt(area * aspect) and height sqrt(area / aspect), rounded to whole pixels. Batched, so
    there is no retry loop: a side longer than the image is clamped to it (which changes that
    box's area and aspect) instead of drawing again up to ten times and then falling back to a
    centre crop, as the per-image Inception recipe does. The position is uniform over the
    valid ones. Exactly one draw from `generator`: torch.rand(4, n).
    """
    _check_range("scale", scale)
    _check_range("ratio", ratio)
    uniform = torch.rand(4, n, generator=generator, device=device)
    area = (scale[0] + (scale[1] - scale[0]) * uniform[0]) * (height * width)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * uniform[1])
    box_w = (area * aspect).sqrt().round().clamp(1, width)
    box_h = (area / aspect).sqrt().round().clamp(1, height)
    # uniform < 1, but the product can round up to the bound in float32: clamp to stay valid.
    top = torch.minimum((uniform[2] * (height - box_h + 1)).floor(), height - box_h)
    left = torch.minimum((uniform[3] * (width - box_w + 1)).floor(), width - box_w)
    return torch.stack([top, left, box_h, box_w], dim=1)


def resize_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut box i of `boxes` (top, left, height, width in pixels) from image i, resized bilinearly.

    One grid_sample for the batch, on a grid that samples each box as cropping and then
    `F.interpolate(mode="bilinear", align_corners=False)` would: output pixel centres map into
    the box, and sample points are clamped to the box's outer pixel centres, so no pixel
    outside the box (and none outside the image) is read. No antialiasing: a box much larger
    than `size` is shrunk with some aliasing. Half-precision input is sampled in float32.
    """
    n, _, h, w = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    top, left, box_h, box_w = (b.view(n, 1) for b in boxes.to(work.dtype).unbind(1))
    centres = torch.arange(size, dtype=work.dtype, device=x.device) + 0.5

    def axis(start: torch.Tensor, length: torch.Tensor, extent: int) -> torch.Tensor:
        """Sample positions along one axis, in grid_sample's [-1, 1] (align_corners=False)."""
        pixel = start + centres * (length / size) - 0.5
        pixel = torch.minimum(torch.maximum(pixel, start), start + length - 1)
        return (2 * pixel + 1) / extent - 1

    gx, gy = axis(left, box_w, w), axis(top, box_h, h)
    grid = torch.stack(
        [gx.view(n, 1, size).expand(n, size, size), gy.view(n, size, 1).expand(n, size, size)],
        dim=-1,
    )
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(x.dtype)


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> torch.Tensor:
    """Crop a random box from each image of float (N, C, H, W) `x` and resize it to size x size.

    The Inception recipe (Szegedy et al. 2015), batched: see `sample_crop_boxes` for the boxes
    (clamped, not redrawn, when too large) and `resize_boxes` for the resampling.
    """
    if size < 1:
        raise UsageError(f"crop size must be at least 1, got {size}")
    n, _, h, w = x.shape
    boxes = sample_crop_boxes(n, h, w, generator, device=x.device, scale=scale, ratio=ratio)
    return resize_boxes(x, boxes, size)


def one_hot(
    labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Integer labels (N,) as (N, num_classes) rows of probabilities: the targets mixing needs."""
    return F.one_hot(labels.long(), num_classes).to(dtype)


def _beta(alpha: float, rng: np.random.Generator) -> float:
    """One mixing weight lam ~ Beta(alpha, alpha), from the numpy generator."""
    if not alpha > 0:
        raise UsageError(f"mixing alpha must be positive, got {alpha}")
    return float(rng.beta(alpha, alpha))


def mixup(
    x: torch.Tensor, targets: torch.Tensor, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018, arXiv:1710.09412): blend each image and target with a partner.

    One lam ~ Beta(alpha, alpha) per batch (one `rng.beta` call); the partner of image i is
    image i - 1 (the batch rolled by one, so no permutation is drawn), and
    x' = lam * x + (1 - lam) * partner, targets likewise. Dtype and device are kept.
    """
    lam = _beta(alpha, rng)
    mixed = x * lam + x.roll(1, 0) * (1 - lam)
    return mixed, targets * lam + targets.roll(1, 0) * (1 - lam)


def cutmix(
    x: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019, arXiv:1905.04899): paste a box of a partner image into each image.

    One lam ~ Beta(alpha, alpha) per batch from `rng` sets one box size for the batch, sides
    round(H * sqrt(1 - lam)) and round(W * sqrt(1 - lam)), so area fraction about 1 - lam. Each
    image gets its own box centre, uniform over the pixels, from one `generator` draw on the
    device (torch.rand(2, N)), and its box is clipped to the image. The partner is the batch
    rolled by one, as in `mixup`. Each target mixes by the area actually pasted:
    lam_i = 1 - box_area_i / (H * W), so clipped boxes are weighted right.
    """
    lam = _beta(alpha, rng)
    n, _, h, w = x.shape
    cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    uniform = torch.rand(2, n, generator=generator, device=x.device)
    centre_y, centre_x = (uniform[0] * h).floor(), (uniform[1] * w).floor()
    top = (centre_y - cut_h // 2).clamp(0, h)
    bottom = (centre_y - cut_h // 2 + cut_h).clamp(0, h)
    left = (centre_x - cut_w // 2).clamp(0, w)
    right = (centre_x - cut_w // 2 + cut_w).clamp(0, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < bottom.view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < right.view(n, 1, 1))
    )
    mixed = torch.where(inside.unsqueeze(1), x.roll(1, 0), x)
    kept = (1 - (bottom - top) * (right - left) / (h * w)).to(targets.dtype).view(n, 1)
    return mixed, targets * kept + targets.roll(1, 0) * (1 - kept)


def soft_accuracy_count(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many rows of `logits` pick the target class, as a 0-dim int64 tensor (no sync).

    `targets` are either int labels (N,) or float probabilities (N, K); for the latter the
    class is the argmax, the largest share of a mixed image (the first on a tie).
    """
    labels = targets.argmax(1) if targets.is_floating_point() else targets
    return (logits.argmax(1) == labels).sum()
