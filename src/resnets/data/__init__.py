"""Fashion-MNIST: IDX files, where to find them, and batches built on the training device."""

from resnets.data.batches import AUGMENTATIONS, MEAN, STD, DeviceBatches
from resnets.data.fashion_mnist import (
    CLASSES,
    ChecksumError,
    DataNotFoundError,
    Dataset,
    load_fashion_mnist,
    locate,
)
from resnets.data.idx import IdxError, read_idx, write_idx

__all__ = [
    "AUGMENTATIONS",
    "CLASSES",
    "MEAN",
    "STD",
    "ChecksumError",
    "DataNotFoundError",
    "Dataset",
    "DeviceBatches",
    "IdxError",
    "load_fashion_mnist",
    "locate",
    "read_idx",
    "write_idx",
]
