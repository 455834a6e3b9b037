"""Read CIFAR-10 and CIFAR-100 from local files: the python pickles or CIFAR-10's binary batches.

Archives (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`, `cifar-10-binary.tar.gz`) are read
in place, one pass over the gzip stream, keeping only the members needed; extracted folders are
read file by file. Nothing is downloaded here.

The pickles are loaded by an unpickler that only resolves the few numpy globals a CIFAR batch
holds, so a tampered file cannot run code. Every problem is a `DataError` naming the file.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnets.errors import DataError, UsageError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

CIFAR100_COARSE_CLASSES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip

# MD5 of the archives as published on the CIFAR page; extracted folders have none.
ARCHIVE_MD5: dict[str, str] = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
}

PIXELS = 3 * 32 * 32  # one image's bytes: the R, G and B planes of 32x32, row-major
_RECORD = 1 + PIXELS  # one record of the binary batches: a label byte, then the pixels
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Layout:
    """One way a CIFAR set is stored: its folder and archive names and its member files."""

    folder: str
    archive: str
    train: tuple[str, ...]
    test: str
    meta: str
    binary: bool = False


_CIFAR10_PY = _Layout(
    "cifar-10-batches-py",
    "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)
_CIFAR100_PY = _Layout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "meta")
_CIFAR10_BIN = _Layout(
    "cifar-10-batches-bin",
    "cifar-10-binary.tar.gz",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test_batch.bin",
    "batches.meta.txt",
    binary=True,
)
_LAYOUTS: dict[str, tuple[_Layout, ...]] = {
    "cifar10": (_CIFAR10_PY, _CIFAR10_BIN),
    "cifar100": (_CIFAR100_PY,),
}

_FIX_ARCHIVE = "delete the archive and put the canonical one there"


@dataclass
class CifarData:
    """Both splits of a CIFAR set in memory: uint8 images (N, 3, 32, 32), RGB; int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: Path


# --- the restricted unpickler ---------------------------------------------------------------

_SAMPLE = np.zeros(1, dtype=np.uint8)
_RECONSTRUCT = _SAMPLE.__reduce__()[0]  # numpy's array rebuilder, wherever this numpy keeps it
_FROMBUFFER = _SAMPLE.__reduce_ex__(5)[0]  # what protocol 5 uses instead (numpy >= 1.16)

# The globals a pickled uint8 array references: protocol 2 (and Python 2's cPickle, which wrote
# the real files) uses _reconstruct, ndarray and dtype, plus _codecs.encode for bytes written by
# Python 3; protocol 5 uses _frombuffer and dtype. numpy 2 renamed numpy.core to numpy._core.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Loads dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._where}: refused to unpickle the global {module}.{name} (a CIFAR batch "
                "holds only numpy arrays and lists, so this file is not one)"
            ) from None


def _one_line(err: BaseException) -> str:
    """An exception as `Type: message` on one line, however its message is spread."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def _unpickle(data: bytes, where: str) -> dict[Any, Any]:
    """A CIFAR pickle's dict, loaded with the restricted unpickler."""
    try:
        obj = _CifarUnpickler(data, where).load()
    except DataError:
        raise
    except Exception as err:  # a corrupt pickle can raise almost anything; report it the same way
        raise DataError(f"{where}: not a readable pickle ({_one_line(err)})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{where}: holds a {type(obj).__name__}, not the dict of a CIFAR batch")
    return obj


def _field(batch: dict[Any, Any], key: str, where: str) -> Any:
    """`batch[key]`, whether the key was pickled as bytes (Python 2) or as str."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{where}: no {key!r} entry")


def _names(value: Any, count: int, where: str) -> tuple[str, ...]:
    """Class names from a meta entry: a list of bytes or str, exactly `count` of them."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (bytes, str)) for v in value):
        raise DataError(f"{where}: class names are not a list of strings")
    names = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value)
    if len(names) != count:
        raise DataError(f"{where}: {len(names)} class names where {count} were expected")
    return names


# --- parsing one member ---------------------------------------------------------------------


def _check_labels(labels: np.ndarray, count: int, num_classes: int, where: str) -> np.ndarray:
    """Labels as int64, checked against the image count and the class range."""
    if labels.ndim != 1 or len(labels) != count:
        raise DataError(f"{where}: {labels.size} labels for {count} images")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise DataError(f"{where}: label {bad} is outside 0..{num_classes - 1}")
    return labels.astype(np.int64)


def _pickled_batch(
    data: bytes, where: str, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3072) and labels (N,) from a pickled batch."""
    batch = _unpickle(data, where)
    images = _field(batch, "data", where)
    if not (
        isinstance(images, np.ndarray)
        and images.dtype == np.uint8
        and images.ndim == 2
        and images.shape[1] == PIXELS
    ):
        what = (
            f"{images.dtype} {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise DataError(f"{where}: 'data' is {what}, not uint8 (N, {PIXELS})")
    raw_labels = _field(batch, label_key, where)
    try:
        labels = np.asarray(raw_labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(labels.dtype)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {label_key!r} is not a list of integers") from None
    return images, _check_labels(labels, len(images), num_classes, where)


def _binary_batch(data: bytes, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3072) and labels (N,) from a binary batch of 3073-byte records."""
    if not data or len(data) % _RECORD:
        raise DataError(
            f"{where}: {len(data)} bytes is not a whole number of {_RECORD}-byte records"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    labels = _check_labels(records[:, 0], len(records), num_classes, where)
    return records[:, 1:], labels


def _meta_names(data: bytes, where: str, layout: _Layout, key: str, count: int) -> tuple[str, ...]:
    """Class names from batches.meta / meta (a pickle) or batches.meta.txt (one per line)."""
    if layout.binary:
        lines = data.decode("utf-8", "replace").splitlines()
        return _names([line.strip() for line in lines if line.strip()], count, where)
    return _names(_field(_unpickle(data, where), key, where), count, where)


# --- finding and opening --------------------------------------------------------------------


def _layouts(name: str) -> tuple[_Layout, ...]:
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise UsageError(
            f"unknown CIFAR set {name!r}: choose one of {', '.join(sorted(_LAYOUTS))}"
        ) from None


def _is_folder_of(path: Path, layout: _Layout) -> bool:
    """Whether `path` is a folder holding `layout`'s batches (under any folder name)."""
    return (path / layout.test).is_file() and (path / layout.train[0]).is_file()


def _locate(root: Path, name: str) -> tuple[Path, _Layout] | None:
    for layout in _layouts(name):
        if _is_folder_of(root, layout):
            return root, layout
        if (root / layout.folder).is_dir():
            return root / layout.folder, layout
        if (root / layout.archive).is_file():
            return root / layout.archive, layout
    return None


def find_cifar(root: str | Path, name: str) -> Path | None:
    """Where `name` ("cifar10" or "cifar100") would be read from under `root`, or None.

    In order: `root` itself if it is an extracted folder, the extracted folder in `root`
    (cifar-10-batches-py/ or cifar-100-python/), the archive (cifar-10-python.tar.gz or
    cifar-100-python.tar.gz); then, for cifar10 only, the same for the binary layout
    (cifar-10-batches-bin/, cifar-10-binary.tar.gz).
    """
    found = _locate(Path(root), name)
    return found[0] if found else None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_archive(path: Path, verify: bool, warn: Callable[[str], None]) -> None:
    """Compare the archive's MD5 with the published one: an error if `verify`, else a warning."""
    expected = ARCHIVE_MD5.get(path.name)
    if expected is None:
        return
    actual = _md5(path)
    if actual == expected:
        return
    if verify:
        raise DataError(
            f"{path}: MD5 {actual} differs from the published {expected}; {_FIX_ARCHIVE}, "
            "or pass --no-verify to read a modified copy"
        )
    warn(f"warning: {path}: MD5 {actual} differs from the published {expected}; reading it anyway")


def _members(
    source: Path, layout: _Layout, wanted: tuple[str, ...]
) -> Iterator[tuple[str, str, bytes]]:
    """(file name, where, contents) of each wanted file found; missing ones are left out.

    An archive is read in one streaming pass, in its own member order.
    """
    if source.is_dir():
        for file in wanted:
            path = source / file
            if path.is_file():
                yield file, str(path), path.read_bytes()
        return
    names = {f"{layout.folder}/{file}": file for file in wanted} | {file: file for file in wanted}
    left = set(wanted)
    try:
        with tarfile.open(source, "r|*") as tar:
            for member in tar:
                found = names.get(member.name.removeprefix("./"))
                if found is None or found not in left or not member.isfile():
                    continue
                file = found
                stream = tar.extractfile(member)
                data = stream.read() if stream else b""
                left.discard(file)
                yield file, f"{source}:{member.name}", data
                if not left:
                    return
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(
            f"{source}: truncated or corrupt archive ({_one_line(err)}); {_FIX_ARCHIVE}"
        ) from err


def _missing(source: Path, layout: _Layout, file: str) -> DataError:
    if source.is_dir():
        return DataError(f"{source / file}: missing; put the complete {layout.folder}/ there")
    return DataError(f"{source}: no member {layout.folder}/{file}; {_FIX_ARCHIVE}")


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Batches (N, 3072) joined into one contiguous uint8 tensor (N, 3, 32, 32)."""
    joined = np.concatenate(images) if images else np.zeros((0, PIXELS), np.uint8)
    return torch.from_numpy(joined.reshape(-1, 3, 32, 32))


# --- reading --------------------------------------------------------------------------------


def read_cifar(
    root: str | Path,
    name: str,
    *,
    labels: str = "fine",
    verify: bool = True,
    warn: Callable[[str], None] = print,
) -> CifarData:
    """Read both splits of `name` ("cifar10" or "cifar100") from what `find_cifar` finds in `root`.

    `labels` is "fine" or, for cifar100 only, "coarse" (its 20 superclasses). An archive whose
    MD5 differs from the published one is an error if `verify`, else `warn` is called with one
    line and it is read anyway. Class names come from the set's meta file when present, else
    the canonical names.
    """
    root = Path(root)
    layouts = _layouts(name)
    if labels != "fine" and (name != "cifar100" or labels != "coarse"):
        allowed = "'fine' or 'coarse'" if name == "cifar100" else "'fine' (it has no others)"
        raise DataError(f"{name}: no {labels!r} labels; use {allowed}")
    found = _locate(root, name)
    if found is None:
        options = " or ".join(f"{lay.folder}/ or {lay.archive}" for lay in layouts)
        raise DataError(f"{root}: no {name} found; put {options} there (nothing is downloaded)")
    source, layout = found
    if source.is_file():
        _check_archive(source, verify, warn)

    if name == "cifar10":
        canonical, label_key, meta_key = CIFAR10_CLASSES, "labels", "label_names"
    elif labels == "coarse":
        canonical, label_key, meta_key = (
            CIFAR100_COARSE_CLASSES, "coarse_labels", "coarse_label_names",
        )  # fmt: skip
    else:
        canonical, label_key, meta_key = CIFAR100_CLASSES, "fine_labels", "fine_label_names"
    num_classes = len(canonical)

    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    classes = canonical
    wanted = (*layout.train, layout.test, layout.meta)
    # Problems inside a file are found by the parsers below; the fix depends on where it lives.
    fix = _FIX_ARCHIVE if source.is_file() else "replace it with the canonical file"
    for file, where, data in _members(source, layout, wanted):
        try:
            if file == layout.meta:
                classes = _meta_names(data, where, layout, meta_key, num_classes)
            elif layout.binary:
                batches[file] = _binary_batch(data, where, num_classes)
            else:
                batches[file] = _pickled_batch(data, where, label_key, num_classes)
        except DataError as err:
            raise DataError(f"{err}; {fix}") from err
    for file in (*layout.train, layout.test):
        if file not in batches:
            raise _missing(source, layout, file)

    train = [batches[file] for file in layout.train]
    test_images, test_labels = batches[layout.test]
    return CifarData(
        train_images=_tensor([images for images, _ in train]),
        train_labels=torch.from_numpy(np.concatenate([lab for _, lab in train])),
        test_images=_tensor([test_images]),
        test_labels=torch.from_numpy(test_labels),
        classes=classes,
        source=source,
    )
