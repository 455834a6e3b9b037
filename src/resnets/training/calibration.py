"""How far to trust a network's probabilities: the expected calibration error (ECE) of Guo et
al. 2017 ("On Calibration of Modern Neural Networks").

Images are binned by their top probability into `BINS` equal-width bins, (m-1)/M < p <= m/M;
the ECE is the image-weighted mean gap between each bin's accuracy and its mean top
probability. Kept as per-bin sums (count, confidence, correct) so that batches and processes
simply add up. (Flagging images unlike the training data is resnets.ood.)
"""

from __future__ import annotations

from typing import Any

import torch

BINS = 15  # equal-width confidence bins for the ECE and the reliability diagram


def calibration_sums(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS
) -> torch.Tensor:
    """Per-bin sums (3, bins), float32 on the inputs' device (MPS has no float64; counts stay
    exact to 2**24 images): images, their top probabilities, and how many were right. Bin m
    (from 1) holds (m-1)/bins < confidence <= m/bins."""
    confidence = confidence.float()
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    sums = torch.zeros(3, bins, device=confidence.device)
    sums[0].index_add_(0, index, torch.ones_like(confidence))
    sums[1].index_add_(0, index, confidence)
    sums[2].index_add_(0, index, correct.float())
    return sums


def ece_of(sums: torch.Tensor | list[list[float]]) -> float:
    """The expected calibration error of per-bin sums from `calibration_sums` (or as lists)."""
    sums = torch.as_tensor(sums).detach().cpu().double()
    total = float(sums[0].sum())
    if total == 0:
        raise ValueError("no images to measure calibration on")
    return float((sums[2] - sums[1]).abs().sum()) / total


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS
) -> float:
    """The ECE of top probabilities `confidence` (N,) and whether each prediction was right."""
    return ece_of(calibration_sums(confidence, correct, bins))


def reliability(sums: torch.Tensor | list[list[float]]) -> list[dict[str, Any]]:
    """One row per bin: its bounds, images, mean confidence and accuracy (None when empty)."""
    sums = torch.as_tensor(sums).detach().cpu().double()
    bins = sums.shape[1]
    rows = []
    for m in range(bins):
        count = float(sums[0, m])
        rows.append({
            "low": m / bins, "high": (m + 1) / bins, "images": int(count),
            "confidence": float(sums[1, m]) / count if count else None,
            "accuracy": float(sums[2, m]) / count if count else None,
        })  # fmt: skip
    return rows
