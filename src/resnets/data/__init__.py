"""Data sets as data: specs, a registry of sources and readers, and batches built on the device."""

from resnets.data.batches import AUGMENTATIONS, DeviceBatches, parse_augment
from resnets.data.datasets import (
    DATASETS,
    DataOptions,
    Dataset,
    Split,
    describe,
    list_datasets,
    load_dataset,
    register_dataset,
    stratified_split,
)
from resnets.data.idx import IdxError, read_idx, write_idx
from resnets.data.mnist import FASHION_MNIST, MNIST, ChecksumError, DataNotFoundError
from resnets.data.spec import DataSpec, channel_stats

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "FASHION_MNIST",
    "MNIST",
    "ChecksumError",
    "DataNotFoundError",
    "DataOptions",
    "DataSpec",
    "Dataset",
    "DeviceBatches",
    "IdxError",
    "Split",
    "channel_stats",
    "describe",
    "list_datasets",
    "load_dataset",
    "parse_augment",
    "read_idx",
    "register_dataset",
    "stratified_split",
    "write_idx",
]
