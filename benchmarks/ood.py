"""How often a trained network's energy threshold flags images unlike its training data.

    python benchmarks/ood.py RUN [--data-dir DIR] [--digits]

Flag rates, at the threshold saved in RUN's checkpoint, of the network's own test split and of
images it never saw: uniform noise, bright rings on a dark background, and with --digits the
8x8 digits bundled with scikit-learn (installed for this measurement only), enlarged to the
data set's size. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from resnets.data import DataOptions, load_dataset
from resnets.ood import energy
from resnets.predict import Classifier


def rings(n: int, size: int, seed: int) -> torch.Tensor:
    """Bright rings at random places on faint noise (uint8, N x 1 x size x size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.randint(0, 40, (n, size, size), generator=g, dtype=torch.uint8)
    for image in images:
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=g).tolist()
        radius = int(torch.randint(size // 8, size // 3, (1,), generator=g))
        image[((yy - cy) ** 2 + (xx - cx) ** 2 - radius**2).abs() < 2 * radius] = 230
    return images[:, None]


def digits(size: int) -> torch.Tensor:
    """scikit-learn's 1797 8x8 digits (0..16), white on black, enlarged bilinearly."""
    from sklearn.datasets import load_digits

    small = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    big = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return (big * 255).round().clamp(0, 255).to(torch.uint8)


def flagged(classifier: Classifier, pixels: torch.Tensor) -> dict[str, float]:
    scores = torch.cat([energy(classifier.logits(part)) for part in pixels.split(500)])
    assert classifier.network.ood is not None, "this checkpoint holds no energy threshold"
    rate = float(classifier.network.ood.unlike(scores).float().mean())
    return {"images": len(pixels), "flagged": rate, "median_energy": float(scores.median())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--data-dir")
    parser.add_argument("--digits", action="store_true")
    args = parser.parse_args()
    classifier = Classifier.from_checkpoint(args.run)
    spec = classifier.spec
    data = load_dataset(spec.name, DataOptions(data_dir=args.data_dir, progress=False))
    own = data.test.pixels()
    own = own[:, None] if own.dim() == 3 else own
    size = spec.size
    g = torch.Generator().manual_seed(0)
    sets = {
        f"{spec.name} test": own,
        "uniform noise": torch.randint(0, 256, (1000, spec.channels, size, size), generator=g,
                                       dtype=torch.uint8),
        "rings": rings(1000, size, seed=1),
    }
    if args.digits:
        sets["sklearn digits"] = digits(size)
    threshold = classifier.network.ood
    result = {"run": args.run, "threshold": threshold.to_dict() if threshold else None}
    with torch.inference_mode():
        result.update({name: flagged(classifier, pixels) for name, pixels in sets.items()})
    print(json.dumps(result, indent=2, default=lambda v: np.asarray(v).tolist()))


if __name__ == "__main__":
    main()
