"""Find, check and load Fashion-MNIST: a given folder, the Debian package, the cache or the web."""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from resnets.data.idx import IdxError, idx_payload_sha256, read_idx
from resnets.errors import ResnetsError, UsageError

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# SHA-256 of each file's decompressed contents, so .gz and plain copies check the same way.
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DOWNLOAD_TIMEOUT_S = 60.0

# (resolved path, mtime, size, expected hash) of files already hashed in this process.
_verified: set[tuple[Path, int, int, str]] = set()


class DataNotFoundError(ResnetsError):
    """Fashion-MNIST is in none of the places looked at and could not be downloaded."""


class ChecksumError(ResnetsError):
    """A data file whose contents are not the published Fashion-MNIST file."""


@dataclass
class Dataset:
    """Fashion-MNIST in memory: uint8 images (N, 28, 28) and int64 labels (N,) per split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = CLASSES


def cache_dir() -> Path:
    """Where downloads go and are looked for: `$RESNETS_DATA`, else ~/.cache/resnets/."""
    env = os.environ.get("RESNETS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnets" / "fashion-mnist"


def find_file(directory: str | Path, stem: str) -> Path | None:
    """The file `stem` in `directory`, as `<stem>.gz` or plain `<stem>`, or None."""
    for name in (f"{stem}.gz", stem):
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def _missing(directory: Path) -> list[str]:
    return [stem for stem in FILES if find_file(directory, stem) is None]


def locate(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """The folder holding all four files: `data_dir`, else the system dir, cache, or a download."""
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if missing := _missing(directory):
            raise DataNotFoundError(
                f"{directory}: missing {', '.join(missing)} (as .gz or plain); "
                "put all four Fashion-MNIST files there, or leave out --data-dir"
            )
        return _checked(directory, verify)
    for directory in (SYSTEM_DIR, cache_dir()):
        if not _missing(directory):
            return _checked(directory, verify)
    if not download:
        raise DataNotFoundError(_how_to_get_it("downloading is turned off"))
    try:
        directory = _download(cache_dir(), progress)
    except (OSError, http.client.HTTPException) as err:
        raise DataNotFoundError(_how_to_get_it(f"the download failed: {err}")) from err
    return _checked(directory, verify)


def _how_to_get_it(reason: str) -> str:
    files = ", ".join(f"{stem}.gz" for stem in FILES)
    return (
        f"Fashion-MNIST is not in {SYSTEM_DIR} or {cache_dir()}, and {reason}.\n"
        "Get it one of three ways:\n"
        f"  - apt-get install dataset-fashion-mnist  (Debian/Ubuntu; installs to {SYSTEM_DIR})\n"
        f"  - --data-dir DIR (or $RESNETS_DATA=DIR) with the four files: {files}\n"
        f"  - allow the download from {MIRROR} (network access needed)"
    )


def _download(directory: Path, progress: bool) -> Path:
    """Download the files missing from `directory` from the mirror."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem in _missing(directory):
        _fetch(f"{MIRROR}{stem}.gz", directory / f"{stem}.gz", progress)
    return directory


def _fetch(url: str, dest: Path, progress: bool) -> None:
    """Download `url` to a temporary file beside `dest`, renamed only once complete."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _checked(directory: Path, verify: bool) -> Path:
    """Return `directory`, after checking each file's hash when `verify`."""
    if verify:
        for stem, expected in FILES.items():
            path = find_file(directory, stem)
            assert path is not None  # callers only pass complete folders
            _verify(path, expected)
    return directory


def _verify(path: Path, expected: str) -> None:
    """Raise ChecksumError unless `path` decompresses to the published bytes (once per process)."""
    stat = path.stat()
    key = (path.resolve(), stat.st_mtime_ns, stat.st_size, expected)
    if key in _verified:
        return
    actual = idx_payload_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: checksum mismatch: expected sha256 {expected}, got {actual}\n"
            "The file is corrupt or not Fashion-MNIST: delete it (a cache copy is downloaded "
            "again on the next run) or replace it with a good copy."
        )
    _verified.add(key)


def load_fashion_mnist(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    progress: bool = True,
    train_samples: int | None = None,
    test_samples: int | None = None,
) -> Dataset:
    """Locate and read Fashion-MNIST, keeping only the first `*_samples` of a split if given."""
    for name, samples in (("train_samples", train_samples), ("test_samples", test_samples)):
        if samples is not None and samples < 1:
            raise UsageError(f"{name} must be at least 1, got {samples}")
    directory = locate(data_dir, download=download, verify=verify, progress=progress)
    train = _read_split(directory, "train", train_samples)
    test = _read_split(directory, "t10k", test_samples)
    return Dataset(*train, *test)


def _read_split(
    directory: Path, prefix: str, samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one split's images and labels, check they agree, and keep the first `samples`."""
    image_path = find_file(directory, f"{prefix}-images-idx3-ubyte")
    label_path = find_file(directory, f"{prefix}-labels-idx1-ubyte")
    assert image_path is not None and label_path is not None  # locate found all four
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dim() != 3 or labels.dim() != 1:
        raise IdxError(
            f"{image_path} / {label_path}: expected (N, H, W) images and (N,) labels, "
            f"got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if len(images) != len(labels):
        raise IdxError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
            "one of them is from another data set or version"
        )
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise IdxError(f"{label_path}: label {int(labels.max())} is not a class (0 to 9)")
    if samples is not None and samples < len(images):
        images = images[:samples].clone()  # clone: let the full split be freed
        labels = labels[:samples]
    return images, labels.long()
