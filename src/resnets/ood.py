"""Images unlike the training data, flagged from the logits alone.

The score is the energy of Liu et al. 2020 ("Energy-based Out-of-distribution Detection"):
E(x) = -T logsumexp(f(x)/T), T = 1. Images like the training data have low energy. At the end
of each evaluated epoch training measures the energy of held-out in-distribution images (the
validation split when one is held out, else the test split) and keeps as threshold the energy
at or below which `KEEP` of them fall; an image above it is flagged. The threshold is a fact of
the weights it was measured with, so it is saved beside them, in the checkpoint under "ood"
(and in a safetensors file's metadata): `EnergyThreshold.to_dict()`. A checkpoint without one
flags nothing.

This module needs only torch: training writes the threshold, prediction and serving read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

KEEP = 0.95  # share of held-out in-distribution images the threshold keeps (not flagged)
TEMPERATURE = 1.0


def energy(logits: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The energy score of each row of logits (N, classes): -T logsumexp(logits / T). Lower is
    more like the training data."""
    return -temperature * torch.logsumexp(logits.float() / temperature, dim=1)


@dataclass(frozen=True)
class EnergyThreshold:
    """Above `threshold`, an image's energy marks it as unlike the training data. Measured on
    `images` held-out images of split `split`, `kept` of which fall at or below it."""

    threshold: float
    split: str
    images: int
    kept: float = KEEP
    temperature: float = TEMPERATURE
    score: str = "energy"

    @classmethod
    def measure(cls, energies: torch.Tensor, split: str, keep: float = KEEP) -> EnergyThreshold:
        """The threshold that keeps `keep` of `energies` (in-distribution images)."""
        if energies.numel() == 0:
            raise ValueError("no images to calibrate the energy threshold on")
        value = torch.quantile(energies.double().cpu(), keep, interpolation="higher")
        return cls(float(value), split, int(energies.numel()), keep)

    def unlike(self, energies: torch.Tensor) -> torch.Tensor:
        """Whether each energy is above the threshold (booleans, same shape)."""
        return energies > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> EnergyThreshold | None:
        """The threshold a checkpoint holds; None when it holds none or one that does not
        read (a checkpoint from before thresholds, or edited): no image is flagged then."""
        if not isinstance(data, dict) or data.get("score") != "energy":
            return None
        try:
            return cls(
                threshold=float(data["threshold"]), split=str(data["split"]),
                images=int(data["images"]), kept=float(data["kept"]),
                temperature=float(data["temperature"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None
