"""MNIST and Fashion-MNIST: IDX files found in a given folder, a Debian package, the cache, or
downloaded, and checked against their published digests.

The two sets share one layout (four IDX files) and one lookup order; an `IdxSet` holds what
differs: file digests, where Debian installs them, the mirror, the classes and the statistics.
"""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from resnets.data.download import cache_root, fetch
from resnets.data.idx import IdxError, idx_payload_sha256, read_idx
from resnets.data.spec import DataSpec
from resnets.errors import DataError, UsageError

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataNotFoundError(DataError):
    """A data set is in none of the places looked at and could not be downloaded."""


class ChecksumError(DataError):
    """A data file whose contents are not the published file. `fact` is the message without
    its advice, for the warning of a run that goes on anyway (--no-verify)."""

    def __init__(self, fact: str, advice: str) -> None:
        super().__init__(f"{fact}: {advice}")
        self.fact = fact


@dataclass
class IdxSet:
    """One of the MNIST family: what is needed to find, check and describe its four files.

    `sha256` is of each file's decompressed contents (so .gz and plain copies check the same
    way); `md5` is of the published .gz files. A file is verified by whichever applies.
    """

    spec: DataSpec
    sha256: dict[str, str]
    md5: dict[str, str]
    system_dir: Path
    debian_package: str | None
    mirror: str

    @property
    def name(self) -> str:
        return self.spec.name

    def cache_dir(self) -> Path:
        """Where downloads go and are looked for: `$RESNETS_DATA`, else ~/.cache/resnets/NAME.

        `$RESNETS_DATA` names the folder of the default data set, Fashion-MNIST, itself (as it
        always has); other sets live in a sub-folder of it named after the set.
        """
        if os.environ.get("RESNETS_DATA") and self is FASHION_MNIST:
            return cache_root()
        return cache_root() / self.name


# SHA-256 of the decompressed contents of the four files of Zalando's release.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

FASHION_MNIST = IdxSet(
    spec=DataSpec(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
        channels=1, size=28, mean=(0.2860,), std=(0.3530,), mirror_ok=True, pad=2,
        mirror_why="a mirrored garment is the same garment",
    ),  # fmt: skip
    sha256=FASHION_MNIST_SHA256,
    md5={},
    system_dir=Path("/usr/share/datasets/fashion-mnist"),
    debian_package="dataset-fashion-mnist",
    mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

# LeCun et al.'s digits. The MD5s are the published ones of the four .gz files; the statistics
# are the usual training-set mean and standard deviation (0.1307, 0.3081). A mirrored digit is
# another digit or none, so mirroring is not label-preserving.
MNIST = IdxSet(
    spec=DataSpec(
        name="mnist", classes=tuple(str(d) for d in range(10)), channels=1, size=28,
        mean=(0.1307,), std=(0.3081,), mirror_ok=False, pad=2,
        mirror_why="a mirrored digit is another digit or none",
    ),  # fmt: skip
    sha256={},
    md5={
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    system_dir=Path("/usr/share/datasets/mnist"),
    debian_package=None,
    mirror="https://ossci-datasets.s3.amazonaws.com/mnist/",
)

# (resolved path, mtime, size, expected digest) of files already checked in this process.
_verified: set[tuple[Path, int, int, str]] = set()


def find_file(directory: str | Path, stem: str) -> Path | None:
    """The file `stem` in `directory`, as `<stem>.gz` or plain `<stem>`, or None."""
    for name in (f"{stem}.gz", stem):
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def _missing(directory: Path) -> list[str]:
    return [stem for stem in STEMS if find_file(directory, stem) is None]


def where(idx_set: IdxSet, data_dir: str | Path | None = None) -> Path | None:
    """The folder the set would be read from without downloading, or None."""
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        return directory if not _missing(directory) else None
    return next((d for d in (idx_set.system_dir, idx_set.cache_dir()) if not _missing(d)), None)


def locate(
    idx_set: IdxSet,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    progress: bool = True,
    warn: Callable[[str], None] = print,
) -> Path:
    """The folder holding all four files: `data_dir`, else the system dir, cache, or a download."""
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if missing := _missing(directory):
            raise DataNotFoundError(
                f"{directory}: missing {', '.join(missing)} (as .gz or plain); put all four "
                f"{idx_set.name} files there, or leave out --data-dir"
            )
        return _checked(idx_set, directory, verify, warn)
    found = where(idx_set)
    if found is not None:
        return _checked(idx_set, found, verify, warn)
    if not download:
        raise DataNotFoundError(_how_to_get_it(idx_set, "downloading is turned off"))
    try:
        directory = _download(idx_set, progress)
    except (OSError, http.client.HTTPException) as err:
        raise DataNotFoundError(_how_to_get_it(idx_set, f"the download failed: {err}")) from err
    return _checked(idx_set, directory, verify, warn)


def _how_to_get_it(idx_set: IdxSet, reason: str) -> str:
    files = ", ".join(f"{stem}.gz" for stem in STEMS)
    env = "$RESNETS_DATA" if idx_set is FASHION_MNIST else f"$RESNETS_DATA/{idx_set.name}"
    ways = [f"  - --data-dir DIR (or {env}) with the four files: {files}"]
    if idx_set.debian_package:
        ways.insert(
            0,
            f"  - apt-get install {idx_set.debian_package}  (Debian/Ubuntu; installs to "
            f"{idx_set.system_dir})",
        )
    ways.append(f"  - allow the download from {idx_set.mirror} (network access needed)")
    return (
        f"{idx_set.name} is not in {idx_set.system_dir} or {idx_set.cache_dir()}, and {reason}.\n"
        f"Get it one of {len(ways)} ways:\n" + "\n".join(ways)
    )


def _download(idx_set: IdxSet, progress: bool) -> Path:
    """Download the files missing from the cache folder from the mirror."""
    directory = idx_set.cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for stem in _missing(directory):
        fetch(f"{idx_set.mirror}{stem}.gz", directory / f"{stem}.gz", progress)
    return directory


def _checked(idx_set: IdxSet, directory: Path, verify: bool, warn: Callable[[str], None]) -> Path:
    """Return `directory`, after checking each file's digest (a warning only, without verify)."""
    unverifiable = []
    for stem in STEMS:
        path = find_file(directory, stem)
        assert path is not None  # callers only pass complete folders
        digest = _published_digest(idx_set, path, stem)
        if digest is None:
            unverifiable.append(path.name)
            continue
        try:
            _verify(idx_set, path, digest)
        except ChecksumError as error:
            if verify:
                raise
            warn(f"warning: {error.fact} (going on: --no-verify)")
    if unverifiable:
        warn(
            f"{directory}: no published digest for {', '.join(unverifiable)} (only the .gz "
            f"files' are published), so {'it is' if len(unverifiable) == 1 else 'they are'} "
            "not verified"
        )
    return directory


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


Digest = tuple[str, str, Callable[[Path], str]]  # kind, expected hex digest, how to compute


def _published_digest(idx_set: IdxSet, path: Path, stem: str) -> Digest | None:
    """How `path` is checked: a .gz by the MD5 of its bytes where that is published, else (and
    plain files) by the SHA-256 of the decompressed contents where that is known; None when
    neither is."""
    if path.name.endswith(".gz") and stem in idx_set.md5:
        return "md5", idx_set.md5[stem], file_md5
    if stem in idx_set.sha256:
        return "sha256", idx_set.sha256[stem], idx_payload_sha256
    return None


def _verify(idx_set: IdxSet, path: Path, digest: Digest) -> None:
    """Raise ChecksumError unless `path` has its published `digest` (checked once per process)."""
    kind, expected, compute = digest
    stat = path.stat()
    key = (path.resolve(), stat.st_mtime_ns, stat.st_size, expected)
    if key in _verified:
        return
    actual = compute(path)
    if actual != expected:
        in_cache = path.parent.resolve() == idx_set.cache_dir().resolve()
        fix = (
            "delete it (it is downloaded again on the next run)"
            if in_cache
            else "replace it with a good copy"
        )
        raise ChecksumError(
            f"{path}: checksum mismatch: expected {kind} {expected}, got {actual}; the file is "
            f"corrupt or not {idx_set.name}",
            f"{fix}, or pass --no-verify for a modified copy",
        )
    _verified.add(key)


def read_idx_split(
    directory: Path, prefix: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one split's images (N, 1, H, W) and labels (N,), checking that they agree."""
    image_path = find_file(directory, f"{prefix}-images-idx3-ubyte")
    label_path = find_file(directory, f"{prefix}-labels-idx1-ubyte")
    if image_path is None or label_path is None:
        raise DataError(f"{directory}: missing the {prefix} images or labels")
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
    if len(labels) and int(labels.max()) >= num_classes:
        raise IdxError(
            f"{label_path}: label {int(labels.max())} is not a class (0 to {num_classes - 1})"
        )
    return images.unsqueeze(1), labels.long()


def check_samples(train_samples: int | None, test_samples: int | None) -> None:
    for name, samples in (("train_samples", train_samples), ("test_samples", test_samples)):
        if samples is not None and samples < 1:
            raise UsageError(f"{name} must be at least 1, got {samples}")
