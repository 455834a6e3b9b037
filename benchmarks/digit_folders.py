"""Write small image folders for trying recipes on data that is not Fashion-MNIST's 60,000.

    python benchmarks/digit_folders.py OUT [--sets sklearn-digits fashion-4000 rendered-digits]

- `sklearn-digits`: the 1,797 real handwritten digits scikit-learn ships (8x8, 17 grey levels),
  scaled to 20x20 and centred in 28x28 as MNIST's are; 80% of each class in train/, the rest
  in test/ (seed 0). Needs scikit-learn (not a dependency of resnets).
- `fashion-4000`: the first 4,000 training and 1,000 test images of Fashion-MNIST as PNGs
  (from /usr/share/datasets/fashion-mnist or --fashion-dir).
- `rendered-digits`: 4,000 + 1,000 digits drawn with the system's TrueType fonts under a
  random affine jitter (rotation, scale, shear, shift) and blur.

The digit sets carry a `dataset.toml` saying `mirror = false`; the Fashion-MNIST slice
declares nothing (a mirrored garment is the same garment).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from resnets.data import DataOptions, load_dataset

SETS = ("sklearn-digits", "fashion-4000", "rendered-digits")
DIGITS_TOML = "# a mirrored digit is another digit or none\nmirror = false\n"


def write_split(root: Path, split: str, images: np.ndarray, labels: list[str]) -> None:
    for number, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{number:05d}.png")


def sklearn_digits(root: Path) -> None:
    from sklearn.datasets import load_digits  # noqa: PLC0415 (only this set needs it)

    digits = load_digits()
    pixels = (digits.images * 255 / 16).round().astype(np.uint8)
    scaled = [np.asarray(Image.fromarray(p).resize((20, 20), Image.Resampling.BICUBIC))
              for p in pixels]  # fmt: skip
    images = np.zeros((len(scaled), 28, 28), dtype=np.uint8)
    images[:, 4:24, 4:24] = np.stack(scaled)
    rng = np.random.default_rng(0)
    test = np.zeros(len(images), dtype=bool)
    for label in range(10):
        where = np.flatnonzero(digits.target == label)
        test[rng.choice(where, round(0.2 * len(where)), replace=False)] = True
    names = [str(t) for t in digits.target]
    for split, rows in (("train", ~test), ("test", test)):
        write_split(root, split, images[rows], [n for n, r in zip(names, rows, strict=True) if r])
    (root / "dataset.toml").write_text(DIGITS_TOML)


def fashion_slice(root: Path, fashion_dir: str | None) -> None:
    data = load_dataset("fashion-mnist", DataOptions(data_dir=fashion_dir, download=False),
                        train_samples=4000, test_samples=1000)  # fmt: skip
    classes = [c.replace("/", "-") for c in data.spec.classes]
    for split, part in (("train", data.train), ("test", data.test)):
        labels = [classes[i] for i in part.labels.tolist()]
        write_split(root, split, part.pixels()[:, 0].numpy(), labels)


def rendered_digits(root: Path, train: int = 4000, test: int = 1000, seed: int = 0) -> None:
    fonts = sorted(Path("/usr/share/fonts/truetype").rglob("*.ttf"))
    if not fonts:
        raise SystemExit("no TrueType fonts under /usr/share/fonts/truetype")
    rng = random.Random(seed)
    for split, count in (("train", train), ("test", test)):
        images, labels = [], []
        for number in range(count):
            digit = number % 10
            font = ImageFont.truetype(str(rng.choice(fonts)), rng.randint(30, 44))
            canvas = Image.new("L", (64, 64))
            ImageDraw.Draw(canvas).text((32, 32), str(digit), fill=255, font=font, anchor="mm")
            angle, scale = rng.uniform(-15, 15), rng.uniform(0.8, 1.15)
            shear, dx, dy = rng.uniform(-0.3, 0.3), rng.uniform(-4, 4), rng.uniform(-4, 4)
            canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR)
            canvas = canvas.transform(
                (64, 64), Image.Transform.AFFINE,
                (1 / scale, shear, 32 - 32 / scale - 32 * shear + dx, 0, 1 / scale,
                 32 - 32 / scale + dy), resample=Image.Resampling.BILINEAR,
            )  # fmt: skip
            canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
            images.append(np.asarray(canvas.resize((28, 28), Image.Resampling.BICUBIC)))
            labels.append(str(digit))
        write_split(root, split, np.stack(images), labels)
    (root / "dataset.toml").write_text(DIGITS_TOML)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the sets into")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--fashion-dir", help="where Fashion-MNIST's four .gz files are")
    args = parser.parse_args()
    for name in args.sets:
        root = args.out / name
        if root.exists():
            print(f"{root} exists; left as it is")
            continue
        if name == "sklearn-digits":
            sklearn_digits(root)
        elif name == "fashion-4000":
            fashion_slice(root, args.fashion_dir)
        else:
            rendered_digits(root)
        print(f"wrote {root}")


if __name__ == "__main__":
    main()
