"""Every data set by name: where its files come from, how they are read, and its DataSpec.

`load_dataset("cifar10", DataOptions(data_dir=...))` returns a `Dataset`: the spec and uint8
splits (N, C, H, W). Format readers live in their own modules (`idx`, `cifar`, `folder`);
this module only knows which reader serves which name, as timm's `create_dataset` does.
Subsets (`train_samples`), the validation hold-out and a test split for a folder with only one
split are made here, the same way for every data set.
"""

from __future__ import annotations

import dataclasses
import http.client
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import resnets.data.cifar as cifar
import resnets.data.folder as folder
import resnets.data.mnist as mnist
from resnets.data.download import cache_root, fetch
from resnets.data.facts import DatasetFacts, class_order, read_facts
from resnets.data.mnist import DataNotFoundError
from resnets.data.spec import DataSpec
from resnets.errors import DataError, UsageError

# The share of a one-folder image set held out as its test split (fixed seed, stratified).
FOLDER_TEST_FRACTION = 0.2
FOLDER_TEST_SEED = 0
# Said when a folder declares nothing about mirroring: what is assumed, and how to change it.
FOLDER_MIRROR_WHY = (
    "a mirror image is taken to keep its label, as no dataset.toml says otherwise (digits "
    "and text do not: put mirror = false in ROOT/dataset.toml, or pass --no-mirror)"
)


@dataclass
class Split:
    """uint8 images (N, C, H, W) and int64 labels (N,) of one split.

    `rows` selects the rows of `images` this split uses, without copying them: a memory-mapped
    cache stays on disk until a batch reads it. None means all rows.
    """

    images: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: torch.Tensor) -> Split:
        """The rows `index` (positions in this split) as a new split, sharing the images."""
        rows = index if self.rows is None else self.rows[index]
        return Split(self.images, self.labels[index], rows)

    def first(self, n: int | None) -> Split:
        return self if n is None or n >= len(self) else self.select(torch.arange(n))

    def pixels(self) -> torch.Tensor:
        """The split's images as one tensor (read into memory if they are memory-mapped)."""
        return self.images if self.rows is None else self.images[self.rows]

    def nbytes(self) -> int:
        return len(self) * self.images[0].numel() if len(self) else 0


@dataclass
class Dataset:
    """A data set ready to batch: its spec, and train, test and (optionally) validation splits."""

    spec: DataSpec
    train: Split
    test: Split
    val: Split | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @classmethod
    def from_tensors(
        cls,
        spec: DataSpec,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
    ) -> Dataset:
        """From (N, H, W) or (N, C, H, W) uint8 images and integer labels."""

        def split(images: torch.Tensor, labels: torch.Tensor) -> Split:
            return Split(images.unsqueeze(1) if images.dim() == 3 else images, labels.long())

        return cls(spec, split(train_images, train_labels), split(test_images, test_labels))


@dataclass(frozen=True)
class DataOptions:
    """How to find and read a data set; each reader uses the fields that concern it."""

    data_dir: str | None = None
    verify: bool = True
    download: bool = True
    progress: bool = True
    labels: str = "fine"  # CIFAR-100: fine (100 classes) or coarse (20 superclasses)
    color: str = "auto"  # folder: auto, gray or rgb
    cache_size: int = 64  # folder: side of the decoded, cached images
    warn: Callable[[str], None] = print


@dataclass(frozen=True)
class DatasetEntry:
    """One registered data set: a loader, where it is looked for, and a description.

    `places` lists where the loader looks without downloading; `find` says where it found it.
    """

    name: str
    summary: str
    obtained: str
    load: Callable[[DataOptions], Dataset]
    find: Callable[[DataOptions], Path | None]
    places: Callable[[DataOptions], list[Path]]
    spec: DataSpec | None  # None where the data decide it (a folder of images)
    train_images: int | None = None  # the training split's size, where it is fixed


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str,
    *,
    summary: str,
    obtained: str,
    find: Callable[[DataOptions], Path | None],
    places: Callable[[DataOptions], list[Path]],
    spec: DataSpec | None = None,
    train_images: int | None = None,
) -> Callable[[Callable[[DataOptions], Dataset]], Callable[[DataOptions], Dataset]]:
    """Add the decorated loader to DATASETS under `name`."""

    def register(load: Callable[[DataOptions], Dataset]) -> Callable[[DataOptions], Dataset]:
        DATASETS[name] = DatasetEntry(
            name, summary, obtained, load, find, places, spec, train_images
        )
        return load

    return register


def list_datasets() -> list[str]:
    return list(DATASETS)


def get_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise UsageError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


# ---- the MNIST family --------------------------------------------------------------------------


def _load_idx_set(idx_set: mnist.IdxSet, options: DataOptions) -> Dataset:
    directory = mnist.locate(
        idx_set, options.data_dir, download=options.download, verify=options.verify,
        progress=options.progress, warn=options.warn,
    )  # fmt: skip
    classes = idx_set.spec.num_classes
    train = mnist.read_idx_split(directory, "train", classes)
    test = mnist.read_idx_split(directory, "t10k", classes)
    return Dataset(idx_set.spec, Split(*train), Split(*test))


def _idx_finder(idx_set: mnist.IdxSet) -> Callable[[DataOptions], Path | None]:
    return lambda options: mnist.where(idx_set, options.data_dir)


def _idx_places(idx_set: mnist.IdxSet) -> Callable[[DataOptions], list[Path]]:
    def places(options: DataOptions) -> list[Path]:
        if options.data_dir is not None:
            return [Path(options.data_dir).expanduser()]
        return [idx_set.system_dir, idx_set.cache_dir()]

    return places


@register_dataset(
    "fashion-mnist",
    summary="Zalando's clothing: 60,000 + 10,000 grayscale 28x28 images, 10 classes",
    obtained=f"Debian's {mnist.FASHION_MNIST.debian_package}, --data-dir, the cache, or download",
    find=_idx_finder(mnist.FASHION_MNIST),
    places=_idx_places(mnist.FASHION_MNIST),
    spec=mnist.FASHION_MNIST.spec,
    train_images=60_000,
)
def load_fashion_mnist_set(options: DataOptions) -> Dataset:
    return _load_idx_set(mnist.FASHION_MNIST, options)


@register_dataset(
    "mnist",
    summary="handwritten digits: 60,000 + 10,000 grayscale 28x28 images, 10 classes",
    obtained="--data-dir, the cache, or download (MD5 of the four .gz files checked)",
    find=_idx_finder(mnist.MNIST),
    places=_idx_places(mnist.MNIST),
    spec=mnist.MNIST.spec,
    train_images=60_000,
)
def load_mnist_set(options: DataOptions) -> Dataset:
    return _load_idx_set(mnist.MNIST, options)


# ---- CIFAR -------------------------------------------------------------------------------------

CIFAR_MEAN_STD = {  # training-set statistics per channel (R, G, B), computed from the archives
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar_root(name: str, options: DataOptions) -> Path:
    """--data-dir, else $RESNETS_DATA/NAME, else ~/.cache/resnets/NAME."""
    if options.data_dir is not None:
        return Path(options.data_dir).expanduser()
    return cache_root() / name


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def cifar_spec(name: str, labels: str = "fine") -> DataSpec:
    """CIFAR-10 or CIFAR-100 (fine or coarse labels): RGB 32x32, mirror-symmetric, pad 4."""
    if name == "cifar10":
        classes = cifar.CIFAR10_CLASSES
    else:
        classes = cifar.CIFAR100_COARSE_CLASSES if labels == "coarse" else cifar.CIFAR100_CLASSES
    mean, std = CIFAR_MEAN_STD[name]
    return DataSpec(
        name=name, classes=classes, channels=3, size=32, mean=mean, std=std, mirror_ok=True,
        pad=4, mirror_why="a mirrored photograph shows the same thing",
        extra={"labels": labels} if name == "cifar100" else {},
    )  # fmt: skip


def _load_cifar(name: str, options: DataOptions) -> Dataset:
    root = _cifar_root(name, options)
    if cifar.find_cifar(root, name) is None:
        if options.data_dir is None and options.download:
            root.mkdir(parents=True, exist_ok=True)
            archive = CIFAR_ARCHIVES[name]
            try:
                fetch(CIFAR_URL + archive, root / archive, options.progress)
            except (OSError, http.client.HTTPException) as error:
                raise DataNotFoundError(
                    f"{name} is not in {root} and the download from {CIFAR_URL} failed "
                    f"({error}); put {archive} there, or pass --data-dir DIR"
                ) from error
        else:
            raise DataError(
                f"{root}: no {name} archive or extracted folder; put {CIFAR_ARCHIVES[name]} "
                "(or the folder it extracts to) there"
            )
    data = cifar.read_cifar(root, name, labels=options.labels, verify=options.verify,
                            warn=options.warn)  # fmt: skip
    spec = dataclasses.replace(cifar_spec(name, options.labels), classes=data.classes)
    return Dataset(
        spec, Split(data.train_images, data.train_labels), Split(data.test_images, data.test_labels)
    )


def _cifar_finder(name: str) -> Callable[[DataOptions], Path | None]:
    def find(options: DataOptions) -> Path | None:
        return cifar.find_cifar(_cifar_root(name, options), name)

    return find


@register_dataset(
    "cifar10",
    summary="Krizhevsky's CIFAR-10: 50,000 + 10,000 colour 32x32 images, 10 classes",
    obtained="--data-dir with cifar-10-python.tar.gz, cifar-10-binary.tar.gz or either's folder",
    find=_cifar_finder("cifar10"),
    places=lambda options: [_cifar_root("cifar10", options)],
    spec=cifar_spec("cifar10"),
    train_images=50_000,
)
def load_cifar10(options: DataOptions) -> Dataset:
    return _load_cifar("cifar10", options)


@register_dataset(
    "cifar100",
    summary="CIFAR-100: 50,000 + 10,000 colour 32x32 images, 100 classes (or 20 coarse)",
    obtained="--data-dir with cifar-100-python.tar.gz or cifar-100-python/",
    find=_cifar_finder("cifar100"),
    places=lambda options: [_cifar_root("cifar100", options)],
    spec=cifar_spec("cifar100"),
    train_images=50_000,
)
def load_cifar100(options: DataOptions) -> Dataset:
    return _load_cifar("cifar100", options)


# ---- the user's own images ---------------------------------------------------------------------


def check_data_dir(name: str, data_dir: str | None) -> None:
    """Raise the UsageError a run would raise when reading data set `name` without a
    --data-dir it cannot do without (a folder of one's own images), so that checking the
    settings (`--dry-run`) says what the run would."""
    if name == "folder" and data_dir is None:
        raise UsageError(
            "--dataset folder needs --data-dir ROOT (ROOT/train/<class>/*, ROOT/val/<class>/* "
            "or ROOT/test/<class>/*, or ROOT/<class>/*)"
        )


def _folder_root(options: DataOptions) -> Path:
    check_data_dir("folder", options.data_dir)
    assert options.data_dir is not None
    return Path(options.data_dir).expanduser()


def _folder_places(options: DataOptions) -> list[Path]:
    return [] if options.data_dir is None else [_folder_root(options)]


@register_dataset(
    "folder",
    summary="your images: ROOT/train/<class>/* and ROOT/val|test/<class>/*, or ROOT/<class>/*",
    obtained="--data-dir ROOT; decoded once into a uint8 cache (PNG, JPEG, BMP, WebP)",
    find=lambda options: next((p for p in _folder_places(options) if p.is_dir()), None),
    places=lambda options: _folder_places(options),
)
def load_folder(options: DataOptions) -> Dataset:
    root = _folder_root(options)
    facts = read_facts(root) if root.is_dir() else None
    data = folder.load_image_folder(
        root, size=options.cache_size, color=_folder_color(options.color, facts),
        progress=options.progress, warn=options.warn,
    )  # fmt: skip
    classes, train_labels, test_labels = data.classes, data.train_labels, data.test_labels
    if facts is not None and facts.classes is not None:
        order = torch.tensor(class_order(facts, data.classes))
        classes, train_labels = facts.classes, order[train_labels]
        test_labels = None if test_labels is None else order[test_labels]
    mean, std = data.mean, data.std
    if facts is not None and facts.mean is not None and facts.std is not None:
        mean, std = facts.mean, facts.std
    if len(mean) != data.channels:
        raise DataError(
            f"{facts.path if facts else root}: mean and std have {len(mean)} value(s) but the "
            f"images have {data.channels} channel(s); give one per channel"
        )
    spec = DataSpec(
        name="folder", classes=classes, channels=data.channels, size=options.cache_size,
        mean=mean, std=std, mirror_ok=True, pad=max(1, round(options.cache_size / 8)),
        mirror_why=FOLDER_MIRROR_WHY,
        extra={"root": str(root.resolve())},
    )  # fmt: skip
    if facts is not None and facts.mirror is not None:
        said = f"{facts.path} says mirror = {str(facts.mirror).lower()}"
        spec = replace(spec, mirror_ok=facts.mirror, mirror_why=said)
    train = Split(data.train_images, train_labels)
    # said on every run of a mixed folder: one colour file made the whole set RGB
    colors = data.colors
    notes = [f"{root}: {colors.describe()}"] if colors and colors.gray and colors.color else []
    if data.test_images is None or test_labels is None:
        keep, held = stratified_split(train.labels, FOLDER_TEST_FRACTION, FOLDER_TEST_SEED)
        notes.append(
            f"{root} has no val/ or test/ split: {len(held)} images "
            f"({FOLDER_TEST_FRACTION:.0%} of each class, fixed seed) are held out as the test set"
        )
        return Dataset(spec, train.select(keep), train.select(held), notes=notes)
    return Dataset(spec, train, Split(data.test_images, test_labels), notes=notes)


def _folder_color(color: str, facts: DatasetFacts | None) -> str:
    """--color, or what dataset.toml's `channels` says; the two must not disagree."""
    if facts is None or facts.channels is None:
        return color
    declared = "gray" if facts.channels == 1 else "rgb"
    if color not in ("auto", declared):
        raise UsageError(
            f"--color {color} but {facts.path} says channels = {facts.channels}; drop one"
        )
    return declared


def declared_mirror(name: str, options: DataOptions) -> tuple[bool, str] | None:
    """Whether a mirror image keeps its label in data set `name`, and who says so, found
    without reading an image (a folder's dataset.toml at most, refused in one line if it is
    bad); None for a folder not found."""
    entry = get_entry(name)
    if entry.spec is not None:
        return entry.spec.mirror_ok, entry.spec.mirror_why
    try:
        root = _folder_root(options)
    except UsageError:  # no --data-dir: said when the data are read
        return None
    facts = read_facts(root) if root.is_dir() else None  # a bad dataset.toml is said now
    if facts is None or facts.mirror is None:
        return (True, FOLDER_MIRROR_WHY) if root.is_dir() else None
    return facts.mirror, f"{facts.path} says mirror = {str(facts.mirror).lower()}"


def count_train_images(
    name: str, options: DataOptions, train_samples: int | None = None, val_fraction: float = 0.0
) -> int | None:
    """How many images the training split of `name` will have, found without decoding any:
    its fixed size, or a folder's image files counted (unreadable ones, which the real run
    skips, included); None for a folder not found. The validation hold-out is rounded as a
    whole rather than class by class, so it can differ from the real run by a few images."""
    entry = get_entry(name)
    if entry.train_images is not None:
        count = entry.train_images
    else:
        try:
            per_class, has_test = folder.count_files(_folder_root(options))
        except (UsageError, DataError, OSError):
            return None
        held = [0 if has_test else max(0, min(n - 1, round(FOLDER_TEST_FRACTION * n)))
                for n in per_class]  # fmt: skip
        count = sum(per_class) - sum(held)
    if train_samples is not None:
        count = min(count, train_samples)
    return count - round(val_fraction * count)


# ---- subsets and hold-outs ---------------------------------------------------------------------


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (kept, held out): `fraction` of each class, drawn with `seed`, both sorted."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in torch.unique(labels).tolist():
        where = (labels == label).nonzero().flatten()
        count = min(len(where) - 1, round(fraction * len(where)))
        held.append(where[torch.randperm(len(where), generator=generator)[: max(0, count)]])
    held_out = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().flatten(), held_out


def load_dataset(
    name: str,
    options: DataOptions | None = None,
    *,
    train_samples: int | None = None,
    test_samples: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Read data set `name` and shape its splits.

    `train_samples`/`test_samples` keep the first N images of a split; `val_fraction` then
    holds out that share of each training class (drawn with `seed`) as a validation split.
    """
    mnist.check_samples(train_samples, test_samples)
    if not 0 <= val_fraction < 1:
        raise UsageError(f"val_fraction must be in [0, 1), not {val_fraction}")
    data = get_entry(name).load(options or DataOptions())
    data.train = data.train.first(train_samples)
    data.test = data.test.first(test_samples)
    if val_fraction > 0:
        keep, held = stratified_split(data.train.labels, val_fraction, seed)
        if len(held) == 0:
            raise UsageError(
                f"val_fraction {val_fraction} holds out no image of {len(data.train)}; raise it"
            )
        data.train, data.val = data.train.select(keep), data.train.select(held)
    return data


def _describe_folder(row: dict[str, Any], root: Path, check: bool) -> None:
    """A found folder's classes, file count and colours (headers read, nothing decoded); with
    `check`, whether it can be listed at all."""
    if not check:
        return
    try:
        classes, files, colors = folder.survey(root)
    except DataError as error:
        row.update(verified=False, problem=str(error).splitlines()[0])
        return
    row.update(
        classes=len(classes), channels=colors.channels, size=None, files=files,
        gray_files=colors.gray, color_files=colors.color, colors=colors.describe(),
    )  # fmt: skip


def describe(name: str, options: DataOptions, check: bool = True) -> dict[str, Any]:
    """What `resnets datasets` prints for one set: its facts, where it is, whether it checks."""
    entry = get_entry(name)
    row: dict[str, Any] = {"name": name, "summary": entry.summary, "obtained": entry.obtained}
    if entry.spec is not None:
        row.update(classes=entry.spec.num_classes, channels=entry.spec.channels,
                   size=entry.spec.size, mirror_ok=entry.spec.mirror_ok)  # fmt: skip
    try:
        found = entry.find(options)
    except UsageError:
        found = None
    row["looked_in"] = [str(p) for p in entry.places(options)]
    row["path"] = None if found is None else str(found)
    row["found"] = found is not None
    row["verified"] = None
    if found is not None and name == "folder":
        _describe_folder(row, found, check)
    if found is not None and check and name != "folder":
        quiet = replace(options, download=False, progress=False, warn=lambda _: None)
        try:
            get_entry(name).load(replace(quiet, verify=True))
            row["verified"] = True
        except DataError as error:
            row["verified"] = False
            row["problem"] = str(error).splitlines()[0]
    return row
