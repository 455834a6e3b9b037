"""The user's own images: a folder of class sub-folders, decoded once into a uint8 cache.

Layouts (hidden files and folders, those whose name starts with ".", are ignored):

- `root/train/<class>/*` with `root/test/<class>/*` or `root/val/<class>/*` (test preferred
  when both exist), or `root/train/` alone;
- `root/<class>/*`: one split, which the caller divides into train and validation.

Only the files directly in a class folder count, chosen by extension (.png .jpg .jpeg .bmp
.webp, any case); other files and deeper folders are ignored. Each image is read with Pillow,
turned upright by its EXIF orientation, converted to "L" or "RGB" (alpha is dropped, 16-bit
grey scaled to 8 bits), and resized so its shorter side is `size` while centre-cropped to
`size` x `size`: one bicubic resize of the centred square (`reducing_gap=3`, and JPEG's
built-in downscaling for large JPEGs), the same as resizing the shorter side and cropping.

Each split is written once to `<cache_dir>/<split>-<size>px-<color>-<fingerprint[:16]>.u8`, a
raw (N, C, size, size) uint8 array, with a JSON sidecar of the same stem holding its shape,
labels, classes, statistics and skipped files. The fingerprint covers every image file's
relative path, byte size and mtime_ns plus the settings, so adding, removing or touching a file
rebuilds the cache and an unchanged folder is read back without decoding anything. The array
is memory-mapped, never read into RAM whole, so a folder may be larger than memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from tqdm import tqdm

from resnets.data.spec import channel_stats
from resnets.errors import DataError, UsageError
from resnets.files import atomic_file, write_atomic

FORMAT_VERSION = 1
EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
COLORS = ("auto", "gray", "rgb")
CACHE_DIRNAME = ".resnets-cache"
# Modes that hold no colour; anything else (RGB, RGBA, P, CMYK, YCbCr...) counts as colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# What Pillow raises for a file that is not an image, is truncated, or is corrupt.
UNREADABLE: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError,
)
SHOWN_SKIPPED = 3  # paths named in the one-line warning about unreadable files


@dataclass
class FolderData:
    """A folder's images as uint8 (N, C, S, S) tensors memory-mapped from the cache files.

    `test_images`/`test_labels` are None for a root without a test or val split. `mean` and
    `std` are per channel over the training split on the [0, 1] scale. `skipped` lists the
    unreadable image files of both splits; `cache_files` the data files and sidecars in use.
    `colors` counts the training files by kind (see `ColorCount`) where `color` was "auto".
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    classes: tuple[str, ...]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[Path]
    cache_files: list[Path]
    colors: ColorCount | None = None


@dataclass(frozen=True)
class ColorCount:
    """How many image files of a split are grey and how many colour (by their mode, read from
    each header), with the first colour one (relative to the root): what "auto" decided on."""

    gray: int
    color: int
    example: str | None = None

    @property
    def channels(self) -> int:
        """What --color auto makes of them: RGB (3) as soon as one file has colour."""
        return 3 if self.color else 1

    def describe(self) -> str:
        """One phrase for a run's note and `resnets datasets`."""
        if not self.color:
            return f"{self.gray} grey image files: grey, 1 channel"
        if not self.gray:
            return f"{self.color} colour image files: RGB, 3 channels"
        return (
            f"{self.gray} grey and {self.color} colour image files (e.g. {self.example}): RGB, "
            "3 channels, as one colour file makes the whole set RGB; --color gray trains on "
            "grey (1 channel)"
        )


@dataclass
class _Split:
    """One split as listed: its cache name, folder, classes and (file, label) pairs."""

    name: str
    folder: Path
    classes: tuple[str, ...]
    files: list[tuple[Path, int]]
    stats: list[tuple[str, int, int]]  # (path relative to root, bytes, mtime_ns) per file


def cache_bytes(data: FolderData) -> int:
    """Bytes of the uint8 image arrays of both splits: what holding them in memory would take."""
    arrays = [data.train_images, data.test_images]
    return sum(a.numel() * a.element_size() for a in arrays if a is not None)


def default_cache_dir(root: str | Path) -> Path:
    """`root/.resnets-cache/` if root is writable, else ~/.cache/resnets/folders/<root hash>/."""
    root = Path(root).expanduser().resolve()
    inside = root / CACHE_DIRNAME
    if _is_writable(inside if inside.is_dir() else root):
        return inside
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "resnets" / "folders" / digest


def _is_writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def load_image_folder(
    root: str | Path,
    *,
    size: int,
    color: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    warn: Callable[[str], None] = print,
) -> FolderData:
    """The images under `root` at `size` x `size`, from the cache or decoded into it once.

    `color`: "gray" (1 channel), "rgb" (3), or "auto": RGB if any training image's mode holds
    colour (a palette image counts as colour), else grey. Unreadable or truncated files are
    skipped and reported once, as one line through `warn`, by the call that decodes them.
    Raises DataError for a missing root, no class folders, a class folder without a readable
    image, an all-unreadable split, or test classes that differ from the training classes.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"image size must be a positive whole number of pixels, not {size!r}")
    if color not in COLORS:
        raise UsageError(f"color must be one of {', '.join(COLORS)}, not {color!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        raise DataError(
            f"{root}: {what}; point at a folder of class sub-folders (root/<class>/*.png) "
            "or of train/ and test/ folders holding them"
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(root)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"{cache}: cannot create the image cache folder ({err.strerror or err}); "
            "pass a writable cache_dir"
        ) from err

    train, test = _list_splits(root, cache)
    skipped: list[str] = []
    train_meta, train_images, _ = _cached_or_built(
        train, root, cache, size=size, color=color, channels=None, progress=progress,
        skipped=skipped,
    )  # fmt: skip
    channels = int(train_meta["channels"])
    test_meta = test_images = None
    notes: list[str] = []
    if test is not None:
        test_meta, test_images, built = _cached_or_built(
            test, root, cache, size=size, color=color, channels=channels, progress=progress,
            skipped=skipped,
        )  # fmt: skip
        if built and test.name == "test" and (root / "val").is_dir():
            notes.append(f"{root}: using test/ as the test split and ignoring val/")
    if skipped:
        more = ", ..." if len(skipped) > SHOWN_SKIPPED else ""
        notes.append(
            f"{root}: skipped {len(skipped)} unreadable image file(s) "
            f"({', '.join(skipped[:SHOWN_SKIPPED])}{more}); replace or delete them"
        )
    for note in notes:
        warn(note)

    metas = [m for m in (train_meta, test_meta) if m is not None]
    return FolderData(
        train_images=train_images,
        train_labels=torch.tensor(train_meta["labels"], dtype=torch.int64),
        test_images=test_images,
        test_labels=(
            torch.tensor(test_meta["labels"], dtype=torch.int64) if test_meta is not None else None
        ),
        classes=train.classes,
        channels=channels,
        mean=tuple(train_meta["mean"]),
        std=tuple(train_meta["std"]),
        skipped=[root / rel for m in metas for rel in m["skipped"]],
        cache_files=[cache / m[key] for m in metas for key in ("data", "sidecar")],
        colors=ColorCount(*train_meta["colors"]) if train_meta.get("colors") else None,
    )


# -- listing ---------------------------------------------------------------------------------


def count_files(root: str | Path) -> tuple[list[int], bool]:
    """Image files per class of the training split (class folders in sorted order), and
    whether the folder has its own test or val split: a listing, nothing decoded."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    train, test = _list_splits(root, default_cache_dir(root))
    counts = np.bincount([label for _, label in train.files], minlength=len(train.classes))
    return [int(n) for n in counts], test is not None


def _visible_dirs(folder: Path, exclude: Path) -> dict[str, Path]:
    """Non-hidden sub-folders of `folder` by name, sorted, leaving out the cache folder."""
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = Path(entry.path)
            if path.resolve() != exclude:
                found[entry.name] = path
    return dict(sorted(found.items()))


def _list_splits(root: Path, cache: Path) -> tuple[_Split, _Split | None]:
    exclude = cache.resolve()
    top = _visible_dirs(root, exclude)
    test_name = "test" if "test" in top else "val" if "val" in top else None
    if "train" not in top:
        if test_name is not None:
            raise DataError(
                f"{root}: has a {test_name}/ folder but no train/; add {root / 'train'}/<class>/ "
                f"folders, or put the class folders directly in {root}"
            )
        return _list_split("train", root, root, exclude), None
    train = _list_split("train", top["train"], root, exclude)
    if test_name is None:
        return train, None
    test = _list_split(test_name, top[test_name], root, exclude)
    if test.classes != train.classes:
        missing = sorted(set(train.classes) - set(test.classes))
        extra = sorted(set(test.classes) - set(train.classes))
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"extra {', '.join(extra)}"] if extra else []
        raise DataError(
            f"{test.folder}: its classes differ from those of {train.folder} "
            f"({'; '.join(parts)}); give both the same class sub-folders"
        )
    return train, test


def _list_split(name: str, folder: Path, root: Path, exclude: Path) -> _Split:
    class_dirs = _visible_dirs(folder, exclude)
    if not class_dirs:
        raise DataError(
            f"{folder}: no class sub-folders; put each class's images in a sub-folder named "
            f"after it, e.g. {folder / 'cat'}/1.png"
        )
    files: list[tuple[Path, int]] = []
    stats: list[tuple[str, int, int]] = []
    for label, class_dir in enumerate(class_dirs.values()):
        found = []
        with os.scandir(class_dir) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.lower().endswith(EXTENSIONS):
                    continue
                if entry.is_file():
                    st = entry.stat()
                    found.append((entry.name, Path(entry.path), st.st_size, st.st_mtime_ns))
        if not found:
            raise DataError(
                f"{class_dir}: no image files ({' '.join(EXTENSIONS)}); add images to this "
                "class folder or remove it"
            )
        for _, path, nbytes, mtime in sorted(found):
            files.append((path, label))
            stats.append((path.relative_to(root).as_posix(), nbytes, mtime))
    return _Split(name, folder, tuple(class_dirs), files, stats)


def _fingerprint(split: _Split, **settings: Any) -> str:
    digest = hashlib.sha256()
    head = {"version": FORMAT_VERSION, "split": split.name, "classes": split.classes, **settings}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for rel, nbytes, mtime in split.stats:
        digest.update(f"\n{rel}\0{nbytes}\0{mtime}".encode())
    return digest.hexdigest()


# -- the cache -------------------------------------------------------------------------------


def _cached_or_built(
    split: _Split,
    root: Path,
    cache: Path,
    *,
    size: int,
    color: str,
    channels: int | None,
    progress: bool,
    skipped: list[str],
) -> tuple[dict[str, Any], torch.Tensor, bool]:
    """The split's sidecar, memory-mapped images, and whether they were decoded now.

    A valid cache is used as it is; otherwise the split is decoded, its unreadable files are
    added to `skipped`, and older caches of the same split, size and colour are removed.

    `channels` is None for the training split (decided by `color`; for "auto" the files'
    colours are counted and kept in the sidecar) and the training split's count for the test
    split, which is then part of its fingerprint.
    """
    fingerprint = _fingerprint(split, size=size, color=color, channels=channels)
    prefix = f"{split.name}-{size}px-{color}"
    stem = f"{prefix}-{fingerprint[:16]}"
    meta = _read_sidecar(cache / f"{stem}.json", fingerprint, split)
    built = False
    if meta is None:
        with _building(cache, prefix):  # one process builds; the others then read its cache
            meta = _read_sidecar(cache / f"{stem}.json", fingerprint, split)
            if meta is None:
                built = True
                colors = None
                if channels is None:
                    colors = count_colors(split, root) if color == "auto" else None
                    channels = colors.channels if colors else 1 if color == "gray" else 3
                meta = _build(
                    split, root, cache, stem, fingerprint, size, channels, progress, colors
                )
                skipped.extend(meta["skipped"])
                _remove_stale(cache, prefix, keep={meta["data"], meta["sidecar"]})
    return meta, _map(cache / meta["data"], tuple(meta["shape"])), built


@contextlib.contextmanager
def _building(cache: Path, prefix: str) -> Iterator[None]:
    """Hold an exclusive lock on the cache of one split, size and colour while it is built, so
    two processes started on the same folder do not decode it twice or remove each other's
    temporary files (a no-op where fcntl is missing)."""
    try:
        import fcntl  # noqa: PLC0415 (POSIX only)
    except ImportError:
        yield
        return
    with open(cache / f".{prefix}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_sidecar(path: Path, fingerprint: str, split: _Split) -> dict[str, Any] | None:
    """The sidecar's contents if it describes a complete cache of exactly this split, else None."""
    try:
        meta = json.loads(path.read_text())
        shape = tuple(int(n) for n in meta["shape"])
        data = path.parent / meta["data"]
        ok = (
            meta.get("version") == FORMAT_VERSION
            and meta.get("fingerprint") == fingerprint
            and meta.get("sidecar") == path.name
            and tuple(meta["classes"]) == split.classes
            and len(shape) == 4
            and len(meta["labels"]) == shape[0]
            and data.is_file()
            and data.stat().st_size == int(np.prod(shape))
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta if ok else None


def _map(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The cache file as a uint8 tensor, memory-mapped copy-on-write: pages load when read."""
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=shape))


def _build(
    split: _Split,
    root: Path,
    cache: Path,
    stem: str,
    fingerprint: str,
    size: int,
    channels: int,
    progress: bool,
    colors: ColorCount | None = None,
) -> dict[str, Any]:
    """Decode every file of the split into a new cache file and write its sidecar last (with
    `colors`, what "auto" counted, to be said again whenever the cache is read)."""
    shape = (len(split.files), channels, size, size)
    labels: list[int] = []
    skipped: list[str] = []
    data = f"{stem}.u8"
    with atomic_file(cache / data, hidden=False) as out:
        tmp = Path(out.name)
        out.truncate(int(np.prod(shape)))
        array = np.memmap(out, dtype=np.uint8, mode="r+", shape=shape)
        bar = tqdm(split.files, f"decoding {split.folder}", unit="img", disable=not progress)
        with bar, truncated_images_refused():
            for path, label in bar:
                image = _decode(path, size, channels)
                if image is None:
                    skipped.append(path.relative_to(root).as_posix())
                    continue
                array[len(labels)] = image
                labels.append(label)
        array.flush()
        del array
        _check_readable(split, labels, skipped)
        out.truncate(len(labels) * channels * size * size)
        out.flush()
        shape = (len(labels), channels, size, size)
        mean, std = channel_stats(_map(tmp, shape))
    meta = {
        "version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "split": split.name,
        "folder": str(split.folder),
        "data": data,
        "sidecar": f"{stem}.json",
        "shape": list(shape),
        "channels": channels,
        "classes": list(split.classes),
        "mean": list(mean),
        "std": list(std),
        "skipped": skipped,
        "colors": None if colors is None else [colors.gray, colors.color, colors.example],
        "labels": labels,
    }
    write_atomic(cache / str(meta["sidecar"]), json.dumps(meta), hidden=False)
    return meta


def _check_readable(split: _Split, labels: list[int], skipped: list[str]) -> None:
    if not labels:
        raise DataError(
            f"{split.folder}: none of its {len(skipped)} image files could be read "
            f"(e.g. {', '.join(skipped[:SHOWN_SKIPPED])}); check that they are images"
        )
    counts = np.bincount(labels, minlength=len(split.classes))
    for label, name in enumerate(split.classes):
        if counts[label] == 0:
            raise DataError(
                f"{split.folder / name}: none of its image files could be read; replace them "
                "with readable images or remove the class folder"
            )


def _remove_stale(cache: Path, prefix: str, keep: set[str]) -> None:
    """Delete older caches, and temp files of crashed runs, of the same split, size and colour."""
    for path in cache.glob(f"{prefix}-*"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


# -- decoding --------------------------------------------------------------------------------


@contextlib.contextmanager
def truncated_images_refused() -> Iterator[None]:
    """Make Pillow raise on truncated files for the duration, whatever someone else set."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def count_colors(split: _Split, root: Path) -> ColorCount:
    """The split's grey and colour files, from each file's header (nothing is decoded)."""
    gray = color = 0
    example = None
    for path, _ in split.files:
        try:
            with Image.open(path) as image:  # reads the header only
                grey = image.mode in GRAY_MODES
        except UNREADABLE:
            continue  # reported when the file is decoded
        gray, color = gray + grey, color + (not grey)
        if not grey and example is None:
            example = path.relative_to(root).as_posix()
    return ColorCount(gray, color, example)


def survey(root: str | Path) -> tuple[tuple[str, ...], int, ColorCount]:
    """A folder's classes, its number of image files, and its training files' colours, as
    `resnets datasets` shows them: listed and headers read, nothing decoded or cached."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    train, test = _list_splits(root, default_cache_dir(root))
    files = len(train.files) + (len(test.files) if test is not None else 0)
    return train.classes, files, count_colors(train, root)


def decode_image(
    source: str | os.PathLike[str] | Image.Image, size: int, channels: int
) -> np.ndarray:
    """One image as a (channels, size, size) uint8 array, exactly as the cache holds it.

    `source` is a file (read as the folder's files are: large JPEGs decoded at reduced scale)
    or a Pillow image (taken as it is; it is not changed). Then: turned upright by its EXIF
    orientation, converted to "L" or "RGB", and one bicubic resize of the centred square to
    `size` x `size`. Raises one of UNREADABLE for a file that is not a readable image; call it
    inside `truncated_images_refused()` to have truncated files refused too.
    """
    image: Image.Image
    if isinstance(source, Image.Image):
        image = _convert(ImageOps.exif_transpose(source), channels)
    else:
        with Image.open(source) as opened:
            image = opened
            image.draft(None, (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 when large enough
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _convert(image, channels)
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _decode(path: Path, size: int, channels: int) -> np.ndarray | None:
    """One file as a (channels, size, size) uint8 array, or None if it cannot be read."""
    try:
        return decode_image(path, size, channels)
    except UNREADABLE:
        return None


def _convert(image: Image.Image, channels: int) -> Image.Image:
    """`image` in mode "L" or "RGB": alpha dropped, palettes looked up, 16 bits scaled to 8
    (round(v / 257) in integers: 4 bytes a pixel at most, where float64 took 24)."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        levels = np.asarray(image)
        if image.mode == "I":  # 32-bit: clip into the 16-bit range first
            levels = np.clip(levels, 0, 65535)
        wide = levels.astype(np.uint32)
        wide += 128
        wide //= 257
        image = Image.fromarray(wide.astype(np.uint8))
    return image.convert("L" if channels == 1 else "RGB")
