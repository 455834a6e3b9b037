"""Tests for data sets through the registry, and DeviceBatches on any of them.

Bitwise regression of Fashion-MNIST batches against digests recorded before the data refactor,
colour batches, streaming from a memory-mapped file, mixing, and MNIST, CIFAR and folders
loaded by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cifar import write_cifar10

from resnets.cli import main
from resnets.data import (
    FASHION_MNIST,
    MNIST,
    ChecksumError,
    DataOptions,
    DataSpec,
    DeviceBatches,
    Split,
    cifar,
    list_datasets,
    load_dataset,
    write_idx,
)
from resnets.data.mnist import STEMS
from resnets.errors import UsageError
from resnets.training.config import make_config
from resnets.training.factory import fit_to_data

from helpers import no_warning, separable, synthetic_dataset, write_dataset

pytestmark = pytest.mark.usefixtures("offline_data")

# --- Fashion-MNIST batches: the same random numbers as before the refactor ------------------

# First 16 hex digits of sha256 over every batch's x then y bytes, epochs 0 and 2, recorded with
# the code before the data refactor (separable(300, seed=5), batch 64, seed 3, shuffled).
REFERENCE = {
    "none/28": "cb65ed3d6b34d7b1", "none/16": "9c762f210d9b2800", "none/40": "233835e968babc21",
    "flip/28": "732e64f40e615abe", "flip/16": "e5c7e4bf2923fee4", "flip/40": "3a6b83bca452b17e",
    "crop/28": "821c4059010f3858", "crop/16": "a1af2589f78ae11a", "crop/40": "d591a6d082cb5b71",
    "crop+flip/28": "2ba0045fc78b9c1c", "crop+flip/16": "be35400efe6c933b",
    "crop+flip/40": "fa8048c3009f5d14",
    "erase/28": "2e1ad5fc7ea7095f", "erase/16": "ba9a736ab7b378e1", "erase/40": "b97d2ba85a4aeed2",
    "crop+flip+erase/28": "8434c789ab8617f0", "crop+flip+erase/16": "488a2ae0fed9c658",
    "crop+flip+erase/40": "cace24c3021250c4",
}  # fmt: skip
REFERENCE_IMAGES = separable(300, seed=5)


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_fashion_mnist_batches_are_bitwise_those_recorded(case: str) -> None:
    augment, size = case.split("/")
    images, labels = REFERENCE_IMAGES
    data = DeviceBatches(
        images, labels, batch_size=64, image_size=int(size), shuffle=True, augment=augment,
        seed=3, spec=FASHION_MNIST.spec,
    )  # fmt: skip
    digest = hashlib.sha256()
    for epoch in (0, 2):
        for x, y in data.epoch(epoch):
            digest.update(x.numpy().tobytes())
            digest.update(y.numpy().tobytes())
    assert digest.hexdigest()[:16] == REFERENCE[case]


# --- any number of channels ---------------------------------------------------------------

CLASSES = tuple(f"c{i}" for i in range(10))
GRAY = DataSpec("gray", CLASSES, channels=1, size=20, mean=(0.3,), std=(0.35,), pad=2)
RGB = DataSpec("rgb", CLASSES, channels=3, size=20, mean=(0.49, 0.48, 0.45),
               std=(0.25, 0.24, 0.26), pad=4)  # fmt: skip


def random_images(n: int, spec: DataSpec, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, spec.channels, spec.size, spec.size)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def to_pixels(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Undo the per-channel normalisation, back to uint8."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (x.double() * (255 * std) + 255 * mean).round().to(torch.uint8)


def test_per_channel_normalisation_of_constant_colours() -> None:
    colours = torch.tensor([[255, 0, 128], [0, 255, 7], [12, 34, 56], [200, 200, 200]])
    images = colours.view(4, 3, 1, 1).expand(4, 3, 20, 20).to(torch.uint8).contiguous()
    data = DeviceBatches(images, torch.arange(4), batch_size=4, image_size=20, spec=RGB)
    x, _ = next(data.epoch(0))
    assert x.shape == (4, 3, 20, 20) and x.dtype == torch.float32
    mean, std = (
        torch.tensor(RGB.mean, dtype=torch.float64),
        torch.tensor(RGB.std, dtype=torch.float64),
    )
    expected = (colours.double() / 255 - mean) / std  # (4, 3)
    assert torch.allclose(x.double(), expected.view(4, 3, 1, 1).expand_as(x), rtol=0, atol=2e-6)


@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["1-channel", "3-channel"])
def test_crop_shifts_all_channels_together_within_the_padding(spec: DataSpec) -> None:
    n, size, pad = 64, spec.size, spec.pad
    data = DeviceBatches(random_images(n, spec, seed=1), torch.arange(n), batch_size=n,
                         image_size=size, shuffle=True, augment="crop", spec=spec)  # fmt: skip
    x, y = next(data.epoch(0))
    got, originals = to_pixels(x, spec), data.images[y]
    padded = torch.nn.functional.pad(originals, (pad, pad, pad, pad))
    reach = 2 * pad + 1
    shifts = torch.stack(
        [padded[..., i : i + size, j : j + size] for i in range(reach) for j in range(reach)], 1
    )  # (N, reach^2, C, H, W); the middle one is the identity
    matches = (shifts == got.unsqueeze(1)).flatten(2).all(-1)
    assert matches.any(1).all(), "every output is its own image shifted, all channels alike"
    shift = matches.int().argmax(1)
    assert (shift != reach * reach // 2).sum() > 40, "most images moved"
    assert len(shift.unique()) > 10, "by random offsets, not one"
    offsets = torch.stack([shift // reach, shift % reach]) - pad  # (2, N): rows, columns
    assert offsets.abs().amax(1).tolist() == [pad, pad], "by up to spec.pad pixels each way"


@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["1-channel", "3-channel"])
def test_flip_mirrors_all_channels(spec: DataSpec) -> None:
    data = DeviceBatches(random_images(64, spec, seed=2), torch.arange(64), batch_size=64,
                         image_size=spec.size, augment="flip", spec=spec)  # fmt: skip
    x, y = next(data.epoch(0))
    got, originals = to_pixels(x, spec), data.images[y]
    same = (got == originals).flatten(1).all(1)
    flipped = (got == originals.flip(-1)).flatten(1).all(1)
    assert (same ^ flipped).all() and same.any() and flipped.any()


@pytest.mark.parametrize("augment", ["flip", "crop+flip", "flip+mixup", "altflip"])
def test_flip_refused_where_a_mirror_changes_the_label(augment: str) -> None:
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    with pytest.raises(UsageError, match="mnist: a mirror image changes the label"):
        DeviceBatches(images, torch.zeros(4), batch_size=2, image_size=28, augment=augment,
                      spec=MNIST.spec)  # fmt: skip
    DeviceBatches(images, torch.zeros(4), batch_size=2, image_size=28, augment="crop+erase",
                  spec=MNIST.spec)  # fmt: skip


@pytest.mark.parametrize(("augment", "kept"), [("crop+flip", "crop"), ("altflip+erase", "erase"),
                                               ("altflip", "none")])  # fmt: skip
def test_mirrors_dropped_from_the_settings_where_they_change_the_label(
    augment: str, kept: str
) -> None:
    config = make_config("fast", overrides={"augment": augment, "dataset": "mnist"})
    fitted = fit_to_data(config, MNIST.spec, quiet=True)
    assert (fitted.augment, fitted.tta) == (kept, False)
    assert fit_to_data(config, FASHION_MNIST.spec, quiet=True) is config


# --- soft targets -------------------------------------------------------------------------


@pytest.mark.parametrize("augment", ["mixup", "cutmix", "mixup+cutmix", "crop+flip+mixup"])
def test_mixing_gives_soft_targets_from_an_image_and_its_partner(augment: str) -> None:
    n = 30
    labels = torch.arange(n) % 7
    data = DeviceBatches(random_images(n, RGB), labels, batch_size=8, image_size=16,
                         augment=augment, seed=1, spec=RGB)  # fmt: skip
    for start, (x, y) in zip(range(0, n, 8), data.epoch(0), strict=True):
        own = labels[start : start + 8]
        assert x.shape == (len(own), 3, 16, 16)
        assert y.dtype == torch.float32 and y.shape == (len(own), RGB.num_classes)
        assert torch.allclose(y.sum(1), torch.ones(len(own)), atol=1e-6)
        assert (y >= 0).all()
        allowed = torch.zeros_like(y, dtype=torch.bool)
        allowed[torch.arange(len(own)), own] = True
        allowed[torch.arange(len(own)), own.roll(1)] = True
        assert not y[~allowed].any(), "only the image's and its partner's classes"


@pytest.mark.parametrize("augment", ["none", "crop+flip+erase", "rrc", "rrc+flip"])
def test_label_only_augmentations_give_int_labels(augment: str) -> None:
    data = DeviceBatches(random_images(10, RGB), torch.arange(10), batch_size=4, image_size=16,
                         augment=augment, spec=RGB)  # fmt: skip
    for x, y in data.epoch(0):
        assert y.dtype == torch.int64 and y.dim() == 1 and x.shape[1:] == (3, 16, 16)


# --- streaming from a memory-mapped file --------------------------------------------------


@pytest.fixture
def mapped_split(tmp_path: Path) -> Split:
    """60 RGB images in a memory-mapped file; the split uses 45 of them, out of order."""
    array = random_images(60, RGB, seed=4).numpy()
    path = tmp_path / "images.u8"
    array.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r+", shape=array.shape)
    rows = torch.randperm(60, generator=torch.Generator().manual_seed(5))[:45]
    labels = torch.arange(60)[rows] % 10
    return Split(torch.from_numpy(mapped), labels, rows)


@pytest.mark.parametrize(
    ("augment", "size", "shuffle"),
    [
        ("none", 20, False),
        ("crop+flip+erase", 20, True),
        ("crop+flip+erase", 24, True),
        ("rrc", 16, True),
        ("flip+mixup", 20, True),
        ("cutmix", 20, True),
        ("rrc+erase+mixup+cutmix", 16, True),
    ],
)
def test_streamed_batches_are_bitwise_the_loaded_ones(
    mapped_split: Split, augment: str, size: int, shuffle: bool
) -> None:
    def make(stream: bool) -> DeviceBatches:
        return DeviceBatches(mapped_split, batch_size=8, image_size=size, shuffle=shuffle,
                             augment=augment, seed=11, spec=RGB, stream=stream)  # fmt: skip

    streamed, loaded = make(True), make(False)
    assert streamed.images is None, "the streamed images stay in the file"
    assert torch.equal(loaded.images, mapped_split.images[mapped_split.rows])
    for epoch in (0, 1, 4):
        got, want = list(streamed.epoch(epoch)), list(loaded.epoch(epoch))
        assert len(got) == len(want) == 6
        for (x, y), (x2, y2) in zip(got, want, strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)


def test_streamed_batches_read_the_selected_rows(mapped_split: Split) -> None:
    data = DeviceBatches(mapped_split, batch_size=16, image_size=20, spec=RGB, stream=True)
    xs, ys = zip(*data.epoch(0), strict=True)
    assert torch.equal(torch.cat(ys), mapped_split.labels)
    assert torch.equal(to_pixels(torch.cat(xs), RGB), mapped_split.pixels())


# --- MNIST ----------------------------------------------------------------------------------


def write_mnist(directory: Path) -> dict[str, str]:
    """The four MNIST .gz files (random digits); returns their real MD5s by stem."""
    g = torch.Generator().manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "train-images-idx3-ubyte": torch.randint(256, (50, 28, 28), generator=g),
        "train-labels-idx1-ubyte": torch.arange(50) % 10,
        "t10k-images-idx3-ubyte": torch.randint(256, (20, 28, 28), generator=g),
        "t10k-labels-idx1-ubyte": torch.arange(20) % 10,
    }
    md5 = {}
    for stem, tensor in tensors.items():
        path = directory / f"{stem}.gz"
        write_idx(path, tensor.to(torch.uint8))
        md5[stem] = hashlib.md5(path.read_bytes()).hexdigest()
    return md5


def test_mnist_loads_when_its_md5s_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MNIST, "md5", write_mnist(tmp_path / "mnist"))
    options = DataOptions(data_dir=str(tmp_path / "mnist"), warn=no_warning)
    data = load_dataset("mnist", options)
    assert data.spec.name == "mnist" and data.spec.mirror_ok is False
    assert data.spec.classes == tuple("0123456789") and data.spec.channels == 1
    assert data.train.images.shape == (50, 1, 28, 28) and len(data.test) == 20
    assert torch.equal(data.train.labels, torch.arange(50) % 10)


def test_mnist_with_other_files_fails_its_published_md5s(tmp_path: Path) -> None:
    md5 = write_mnist(tmp_path / "mnist")
    with pytest.raises(ChecksumError) as err:
        load_dataset("mnist", DataOptions(data_dir=str(tmp_path / "mnist"), warn=no_warning))
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message
    assert md5["train-images-idx3-ubyte"] in message
    assert "download" not in message, "a file under --data-dir is not downloaded again"


def test_mnist_without_verify_warns_once_per_file(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist")
    warnings: list[str] = []
    options = DataOptions(data_dir=str(tmp_path / "mnist"), verify=False, warn=warnings.append)
    data = load_dataset("mnist", options)
    assert len(data.train) == 50
    assert len(warnings) == len(STEMS)
    for stem, warning in zip(STEMS, warnings, strict=True):
        assert f"{stem}.gz" in warning and "--no-verify" in warning


# --- CIFAR ----------------------------------------------------------------------------------


def test_cifar10_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_cifar10(tmp_path, archive=True)
    monkeypatch.setitem(
        cifar.ARCHIVE_MD5, archive.name, hashlib.md5(archive.read_bytes()).hexdigest()
    )
    data = load_dataset("cifar10", DataOptions(data_dir=str(tmp_path), warn=no_warning))
    spec = data.spec
    assert (spec.name, spec.channels, spec.size, spec.pad, spec.num_classes) == (
        "cifar10", 3, 32, 4, 10,
    )  # fmt: skip
    assert spec.mirror_ok and len(spec.mean) == len(spec.std) == 3
    assert data.train.images.shape == (15, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (4, 3, 32, 32) and data.test.labels.dtype == torch.int64


def write_cifar100(root: Path) -> None:
    """An extracted cifar-100-python/ with 6 training and 4 test images."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": [(7 * i) % 100 for i in range(n)],
            b"coarse_labels": [(3 * i) % 20 for i in range(n)],
            b"filenames": [b"x.png"] * n,
            b"batch_label": split.encode(),
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.mark.parametrize(("labels", "classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse_by_name(tmp_path: Path, labels: str, classes: int) -> None:
    write_cifar100(tmp_path)
    options = DataOptions(data_dir=str(tmp_path), labels=labels, warn=no_warning)
    data = load_dataset("cifar100", options)
    assert data.spec.num_classes == classes and data.spec.classes[1] == f"{labels}1"
    assert data.spec.extra == {"labels": labels}
    assert (data.spec.channels, data.spec.size, data.spec.pad) == (3, 32, 4)
    assert int(data.train.labels.max()) < classes


def test_unknown_data_set_lists_the_names() -> None:
    with pytest.raises(UsageError) as err:
        load_dataset("imagenet")
    message = str(err.value)
    assert "'imagenet'" in message
    for name in ("fashion-mnist", "mnist", "cifar10", "cifar100", "folder"):
        assert name in message


# --- folders of images -----------------------------------------------------------------------


def write_png(path: Path, value: int, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, (12, 10), colour).save(path)


def folder_options(root: Path) -> DataOptions:
    return DataOptions(data_dir=str(root), cache_size=8, progress=False, warn=no_warning)


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_folder_with_train_and_val(tmp_path: Path, mode: str, channels: int) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for name in ("zebra", "ant", "moth"):
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png", 40 * i, mode)
    data = load_dataset("folder", folder_options(tmp_path))
    assert data.spec.classes == ("ant", "moth", "zebra")
    assert data.spec.channels == channels and data.spec.size == 8
    assert data.train.images.shape == (9, channels, 8, 8) and len(data.test) == 6
    assert sorted(data.train.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.notes == []


def test_flat_folder_holds_out_a_fixed_test_split(tmp_path: Path) -> None:
    counts = {"a": 10, "b": 5, "c": 7}
    for name, count in counts.items():
        for i in range(count):
            write_png(tmp_path / name / f"{i}.png", 10 * i, "RGB")
    first = load_dataset("folder", folder_options(tmp_path))
    again = load_dataset("folder", folder_options(tmp_path))
    assert len(first.train) + len(first.test) == sum(counts.values())
    held = torch.bincount(first.test.labels, minlength=3).tolist()
    assert held == [round(0.2 * n) for n in counts.values()] == [2, 1, 1]
    assert set(first.train.rows.tolist()).isdisjoint(first.test.rows.tolist())
    assert torch.equal(first.test.rows, again.test.rows)
    assert torch.equal(first.train.rows, again.train.rows)
    assert len(first.notes) == 1 and "held out" in first.notes[0] and "4 images" in first.notes[0]


@pytest.mark.parametrize(("color", "channels"), [("auto", 3), ("gray", 1), ("rgb", 3)])
def test_one_colour_file_among_grey_ones_is_said(
    tmp_path: Path, color: str, channels: int
) -> None:
    """4,000 grey PNGs and 10 colour JPEGs made an RGB set and nothing said so."""
    for name in ("a", "b"):
        for i in range(4):
            write_png(tmp_path / "train" / name / f"{i}.png", 20 * i, "L")
            write_png(tmp_path / "test" / name / f"{i}.png", 20 * i, "L")
    write_png(tmp_path / "train" / "b" / "photo.png", 99, "RGB")
    options = dataclasses.replace(folder_options(tmp_path), color=color)
    for _ in range(2):  # decoded, then read back from the cache: said both times
        data = load_dataset("folder", options)
        assert data.spec.channels == channels
        if color != "auto":
            assert data.notes == []  # chosen by the user: nothing to explain
            continue
        assert data.notes == [
            f"{tmp_path}: 8 grey and 1 colour image files (e.g. train/b/photo.png): RGB, 3 "
            "channels, as one colour file makes the whole set RGB; --color gray trains on grey "
            "(1 channel)"
        ]


def test_datasets_command_shows_a_folders_classes_and_colours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        write_png(tmp_path / "cat" / f"{i}.png", 10 * i, "L")
        write_png(tmp_path / "dog" / f"{i}.png", 10 * i, "L")
    write_png(tmp_path / "dog" / "colour.png", 10, "RGB")
    assert main(["datasets", "--json", "--data-dir", str(tmp_path)]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "folder")
    assert (row["classes"], row["channels"], row["files"]) == (2, 3, 7)
    assert (row["gray_files"], row["color_files"]) == (6, 1)
    assert not (tmp_path / ".resnets-cache").exists()  # listed, not decoded
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "folder         2 classes, 7 image files at --image-size; 6 grey and 1 colour " in text
    assert "--color gray" in text
    assert "fashion-mnist  10 classes, 1x28x28 grey\n" in text


def test_folder_needs_a_data_dir() -> None:
    with pytest.raises(UsageError, match="--dataset folder needs --data-dir"):
        load_dataset("folder")


# --- validation hold-out ------------------------------------------------------------------


@pytest.fixture
def fashion_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return write_dataset(tmp_path / "fashion", synthetic_dataset(600, 50), monkeypatch)


def held_out(directory: Path, seed: int, fraction: float = 0.2):
    options = DataOptions(data_dir=str(directory), warn=no_warning)
    return load_dataset("fashion-mnist", options, train_samples=250, val_fraction=fraction,
                        seed=seed)  # fmt: skip


def test_val_fraction_is_stratified_and_disjoint(fashion_dir: Path) -> None:
    data = held_out(fashion_dir, seed=0)
    assert data.val is not None
    train_rows, val_rows = set(data.train.rows.tolist()), set(data.val.rows.tolist())
    assert train_rows.isdisjoint(val_rows)
    assert train_rows | val_rows == set(range(250)), "train_samples first, then the hold-out"
    all_labels = torch.cat([data.train.labels, data.val.labels])
    per_class = torch.bincount(all_labels, minlength=10)
    held = torch.bincount(data.val.labels, minlength=10)
    assert ((held - 0.2 * per_class).abs() <= 1).all()
    assert len(data.val) == round(0.2 * 250)
    read = held_out(fashion_dir, seed=0, fraction=0.0)
    assert data.val is not None and read.val is None
    assert torch.equal(data.val.labels, read.train.labels[data.val.rows])
    assert torch.equal(data.train.labels, read.train.labels[data.train.rows])


def test_val_fraction_reproducible_per_seed(fashion_dir: Path) -> None:
    one, same, other = (held_out(fashion_dir, seed) for seed in (1, 1, 2))
    assert torch.equal(one.val.rows, same.val.rows)
    assert not torch.equal(one.val.rows, other.val.rows)


# --- resnets datasets ---------------------------------------------------------------------


def test_datasets_command_finds_mnist_in_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(MNIST, "md5", write_mnist(tmp_path / "mnist"))
    assert main(["datasets", "--json", "--data-dir", str(tmp_path / "mnist")]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == list_datasets()
    assert set(rows) == {"fashion-mnist", "mnist", "cifar10", "cifar100", "folder"}
    mnist = rows["mnist"]
    assert mnist["found"] and mnist["verified"] is True
    assert mnist["path"] == str(tmp_path / "mnist")
    assert (mnist["classes"], mnist["channels"], mnist["size"], mnist["mirror_ok"]) == (
        10, 1, 28, False,
    )  # fmt: skip
    fashion = rows["fashion-mnist"]  # same file names, other contents: found, but not verified
    assert fashion["verified"] is False and "checksum mismatch" in fashion["problem"]
    assert mnist["looked_in"] == [str(tmp_path / "mnist")]
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        assert not rows[name]["found"] and rows[name]["verified"] is None
        assert (rows[name]["classes"], rows[name]["channels"]) == (classes, 3)


def test_datasets_command_with_a_missing_data_dir_finds_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["datasets", "--json", "--data-dir", str(missing)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["found"] for row in rows] == [False] * len(list_datasets())
    assert all(row["looked_in"] == [str(missing)] for row in rows)
