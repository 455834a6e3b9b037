"""The plain way, as the chapter does it, for comparison with `resnets bench`.

A DataLoader with worker processes resizes each image on the host with PIL and converts it to a
float tensor (what torchvision's Resize + ToTensor do, written out because torchvision does not
install beside the CPU wheel here); the model runs in float32, NCHW, with plain SGD. Prints one
JSON object with the same keys as `resnets bench --json`.

    python benchmarks/reference.py --steps 20
    python benchmarks/reference.py --model cifar_resnet20 --dataset cifar10 --image-size 32

Any model of the registry and data set can be run this way (benchmarks/sweep.py does); the
data set is the one `resnets bench` would use (random images of its shape when it is not on
disk).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from resnets import create_model
from resnets.bench import bench_data
from resnets.models.conv import plain_convs
from resnets.training import make_config


class PILImages(TorchDataset):
    """One image at a time: uint8 array, PIL image, bilinear resize, float tensor in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int) -> None:
        # (N, C, H, W) -> (N, H, W, C): the layout PIL takes
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels, self.size = labels.numpy(), size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        array = self.images[index]
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        image = image.resize((self.size, self.size), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(pixels)), int(self.labels[index])


def timed(batches, run_one, warmup: int, steps: int) -> float:  # noqa: ANN001
    iterator = iter(batches)
    for _ in range(warmup):
        run_one(*next(iterator))
    start = time.perf_counter()
    for _ in range(steps):
        run_one(*next(iterator))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="d2l_resnet18")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (the book: 4)")
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    images = args.batch_size * (args.warmup + args.steps)
    config = make_config(overrides={"data_dir": args.data_dir, "dataset": args.dataset})
    data, source = bench_data(config, images)
    torch.manual_seed(0)
    spec = data.spec
    model = create_model(args.model, in_channels=spec.channels, num_classes=spec.num_classes)
    plain_convs(model)  # the chapter's plain nn.Conv2d, without our small-map path
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def loader(images: torch.Tensor, labels: torch.Tensor, shuffle: bool) -> DataLoader:
        dataset = PILImages(images, labels, args.image_size)
        return DataLoader(dataset, args.batch_size, shuffle=shuffle, num_workers=args.workers)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the chapter's loop reads the loss every step

    @torch.no_grad()
    def eval_step(x: torch.Tensor, y: torch.Tensor) -> None:
        (model(x).argmax(1) == y).sum().item()

    model.train()
    train = loader(data.train.images, data.train.labels, True)
    train_seconds = timed(train, train_step, args.warmup, args.steps)
    model.eval()
    test = loader(data.test.images, data.test.labels, False)
    eval_seconds = timed(test, eval_step, args.warmup, args.steps)
    timed_images = args.steps * args.batch_size
    print(
        json.dumps(
            {
                "implementation": "reference",
                "model": args.model,
                "dataset": args.dataset,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "precision": "fp32",
                "workers": args.workers,
                "data": source,
                "train_images_per_sec": timed_images / train_seconds,
                "eval_images_per_sec": timed_images / eval_seconds,
                "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "peak_worker_memory_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                * 1024,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
