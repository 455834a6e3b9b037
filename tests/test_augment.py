"""Tests for resnets.data.augment: random resized crop, mixup, CutMix and soft targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnets.data.augment import (
    cutmix,
    mixup,
    one_hot,
    random_resized_crop,
    resize_boxes,
    sample_crop_boxes,
    soft_accuracy_count,
)
from resnets.errors import UsageError

K = 10  # classes


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 8, c: int = 1, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=gen(seed))


def labelled(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels where each differs from the one before (the roll partner's), and their one-hot."""
    labels = torch.arange(n) % K
    return labels, one_hot(labels, K)


# --- random resized crop ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [14, 28, 40])
def test_whole_image_crop_is_a_bilinear_resize(size: int) -> None:
    x = batch(4, c=3)
    out = random_resized_crop(x, size, gen(1), scale=(1, 1), ratio=(1, 1))
    expected = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_crop_matches_cropping_then_resizing_each_image() -> None:
    x = batch(16, c=2, h=24, w=32)
    out = random_resized_crop(x, 20, gen(3))
    boxes = sample_crop_boxes(16, 24, 32, gen(3), device="cpu").long()
    for image, crop, (top, left, h, w) in zip(x, out, boxes.tolist(), strict=True):
        piece = image[None, :, top : top + h, left : left + w]
        expected = F.interpolate(piece, size=(20, 20), mode="bilinear", align_corners=False)
        torch.testing.assert_close(crop, expected[0], atol=1e-5, rtol=1e-5)


def test_tiny_crops_land_in_one_half() -> None:
    x = torch.zeros(200, 1, 64, 64)
    x[..., 32:] = 1
    out = random_resized_crop(x, 8, gen(0), scale=(0.001, 0.001), ratio=(1, 1))
    flat = out.flatten(1)
    all_black, all_white = (flat == 0).all(1), (flat == 1).all(1)
    assert (all_black | all_white).float().mean() > 0.9
    assert all_black.sum() > 50 and all_white.sum() > 50


@pytest.mark.parametrize("size", [1, 17, 56])
def test_crop_shape_and_dtype(size: int) -> None:
    x = batch(5, c=3, h=20, w=30).double()
    out = random_resized_crop(x, size, gen(0))
    assert out.shape == (5, 3, size, size) and out.dtype == torch.float64


def test_crop_is_determined_by_the_generator_seed() -> None:
    x = batch()
    same = random_resized_crop(x, 28, gen(7)), random_resized_crop(x, 28, gen(7))
    assert torch.equal(*same)
    assert not torch.equal(same[0], random_resized_crop(x, 28, gen(8)))


def test_crop_draws_once_from_the_generator() -> None:
    a, b = gen(5), gen(5)
    random_resized_crop(batch(), 28, a)
    torch.rand(4, 8, generator=b)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


@pytest.mark.parametrize(
    ("scale", "ratio"), [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (0.1, 10.0))]
)
def test_crop_never_leaves_the_image(
    scale: tuple[float, float], ratio: tuple[float, float]
) -> None:
    x = batch(64, h=20, w=36)
    boxes = sample_crop_boxes(64, 20, 36, gen(2), device="cpu", scale=scale, ratio=ratio)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= 20).all() and (left + w <= 36).all()
    assert torch.equal(boxes, boxes.round())
    out = resize_boxes(x, boxes, 24)
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6


def test_unclamped_crop_areas_follow_scale() -> None:
    boxes = sample_crop_boxes(500, 100, 100, gen(0), device="cpu", scale=(0.2, 0.3), ratio=(1, 1))
    area = boxes[:, 2] * boxes[:, 3] / 100**2
    assert area.min() > 0.18 and area.max() < 0.32
    assert torch.equal(boxes[:, 2], boxes[:, 3])


def test_bad_crop_ranges_are_refused() -> None:
    with pytest.raises(UsageError):
        random_resized_crop(batch(), 28, gen(0), scale=(1.0, 0.5))
    with pytest.raises(UsageError):
        random_resized_crop(batch(), 28, gen(0), ratio=(0, 1))


# --- mixup -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixup_is_a_convex_combination_with_the_rolled_batch(alpha: float, seed: int) -> None:
    x = batch(8, c=3)
    labels, targets = labelled(8)
    mixed, mixed_targets = mixup(x, targets, alpha, np.random.default_rng(seed))
    lam = mixed_targets[torch.arange(8), labels]
    assert torch.allclose(lam, lam[0].expand(8)) and 0 < lam[0] < 1
    expected = lam[0] * x + (1 - lam[0]) * x.roll(1, 0)
    torch.testing.assert_close(mixed, expected)
    partner = mixed_targets[torch.arange(8), labels.roll(1, 0)]
    torch.testing.assert_close(partner, 1 - lam)
    torch.testing.assert_close(mixed_targets.sum(1), torch.ones(8))


def test_mixup_keeps_dtype_and_is_reproducible() -> None:
    x = batch().double()
    _, targets = labelled(8)
    a = mixup(x, targets.double(), 0.4, np.random.default_rng(3))
    b = mixup(x, targets.double(), 0.4, np.random.default_rng(3))
    c = mixup(x, targets.double(), 0.4, np.random.default_rng(4))
    assert a[0].dtype == a[1].dtype == torch.float64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_mixing_refuses_a_non_positive_alpha() -> None:
    _, targets = labelled(8)
    with pytest.raises(UsageError):
        mixup(batch(), targets, 0.0, np.random.default_rng(0))
    with pytest.raises(UsageError):
        cutmix(batch(), targets, -1.0, np.random.default_rng(0), gen(0))


# --- CutMix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cutmix_targets_weigh_the_pixels_actually_pasted(alpha: float, seed: int) -> None:
    n, h, w = 32, 20, 28
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, h, w).clone()
    labels, targets = labelled(n)
    mixed, mixed_targets = cutmix(x, targets, alpha, np.random.default_rng(seed), gen(seed))
    kept = mixed_targets[torch.arange(n), labels]
    from_partner = (mixed == x.roll(1, 0)).all(1).flatten(1).sum(1).float()
    own = (mixed == x).all(1).flatten(1).sum(1).float()
    torch.testing.assert_close(from_partner, (1 - kept) * h * w)
    torch.testing.assert_close(own, kept * h * w)
    torch.testing.assert_close(mixed_targets[torch.arange(n), labels.roll(1, 0)], 1 - kept)
    torch.testing.assert_close(mixed_targets.sum(1), torch.ones(n))


def test_cutmix_pastes_one_rectangle_and_clips_at_the_edges() -> None:
    n, h, w = 64, 16, 16
    x = torch.zeros(n, 1, h, w)
    x[1::2] = 1  # each image's partner is the other colour
    _, targets = labelled(n)
    rng = np.random.default_rng(0)
    mixed, mixed_targets = cutmix(x, targets, 1.0, rng, gen(0))
    pasted = mixed[:, 0] != x[:, 0]
    areas = pasted.flatten(1).sum(1)
    for box in pasted:
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        if len(rows):  # the box is the bounding rectangle of the pasted pixels
            height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert box.sum() == height * width
    assert len(set(areas.tolist())) > 1  # some boxes were clipped by the border


def test_cutmix_keeps_dtype_and_is_reproducible() -> None:
    x = batch().double()
    _, targets = labelled(8)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return cutmix(x, targets.double(), 1.0, np.random.default_rng(seed), gen(seed))

    a, b, c = run(5), run(5), run(6)
    assert a[0].dtype == a[1].dtype == torch.float64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# --- soft targets ----------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_takes_one_hot_targets(smoothing: float) -> None:
    logits = torch.randn(16, K, generator=gen(0))
    labels = torch.randint(K, (16,), generator=gen(1))
    hard = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    soft = F.cross_entropy(logits, one_hot(labels, K), label_smoothing=smoothing)
    torch.testing.assert_close(soft, hard)


def test_one_hot_rows() -> None:
    targets = one_hot(torch.tensor([2, 0, 9]), K, dtype=torch.float64)
    assert targets.dtype == torch.float64 and targets.shape == (3, K)
    assert torch.equal(targets.argmax(1), torch.tensor([2, 0, 9]))
    assert torch.equal(targets.sum(1), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("soft", [False, True])
def test_soft_accuracy_count(soft: bool) -> None:
    logits = torch.zeros(4, K)
    logits[torch.arange(4), torch.tensor([1, 2, 3, 4])] = 1.0
    labels = torch.tensor([1, 2, 0, 4])  # three right
    if soft:
        labels = 0.6 * one_hot(labels, K) + 0.4 * one_hot(torch.tensor([3, 3, 3, 3]), K)
    count = soft_accuracy_count(logits, labels)
    assert count.dtype == torch.int64 and count.dim() == 0 and int(count) == 3
