"""Tests for resnets.data: IDX files, finding and checking Fashion-MNIST, and device batches."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import urllib.request
from pathlib import Path

import pytest
import torch

from resnets.data import (
    FASHION_MNIST,
    ChecksumError,
    DataNotFoundError,
    DataOptions,
    Dataset,
    DeviceBatches,
    IdxError,
    load_dataset,
    parse_augment,
    read_idx,
    write_idx,
)
from resnets.data import mnist as fm
from resnets.data.idx import idx_payload_sha256
from resnets.errors import UsageError

from helpers import no_warning

STEMS = fm.STEMS
SPEC = FASHION_MNIST.spec
MEAN, STD = SPEC.mean[0], SPEC.std[0]
# Read before any fixture points these elsewhere: where the real data may be.
REAL_DIRS = [Path(d) for d in (os.environ.get("RESNETS_DATA"), str(FASHION_MNIST.system_dir)) if d]


def make_dataset(
    directory: Path, *, seed: int = 0, n_train: int = 300, n_test: int = 100, gz: bool = True
) -> dict[str, torch.Tensor]:
    """Write four tiny random Fashion-MNIST-shaped files into `directory`; return their tensors."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "train-images-idx3-ubyte": torch.randint(256, (n_train, 28, 28), generator=g),
        "train-labels-idx1-ubyte": torch.randint(10, (n_train,), generator=g),
        "t10k-images-idx3-ubyte": torch.randint(256, (n_test, 28, 28), generator=g),
        "t10k-labels-idx1-ubyte": torch.randint(10, (n_test,), generator=g),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, tensor in tensors.items():
        tensors[stem] = tensor.to(torch.uint8)
        write_idx(directory / (f"{stem}.gz" if gz else stem), tensors[stem])
    return tensors


def trust(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make the files in `directory` the ones whose hashes FASHION_MNIST expects."""
    hashes = {stem: idx_payload_sha256(fm.find_file(directory, stem)) for stem in STEMS}
    monkeypatch.setattr(FASHION_MNIST, "sha256", hashes)


def locate(data_dir: Path | None = None, **options: object) -> Path:
    """Where Fashion-MNIST is found (or downloaded to); warnings are not expected."""
    options.setdefault("warn", no_warning)
    return fm.locate(FASHION_MNIST, data_dir, **options)


def load(data_dir: Path, *, verify: bool = True, **shaping: object) -> Dataset:
    """Fashion-MNIST through the registry; with verify=False the checksum warnings are dropped."""
    options = DataOptions(data_dir=str(data_dir), verify=verify, progress=False,
                          warn=no_warning if verify else lambda _: None)  # fmt: skip
    return load_dataset("fashion-mnist", options, **shaping)



pytestmark = pytest.mark.usefixtures("offline_data")

# --- IDX files ---


@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_idx_round_trip(tmp_path: Path, name: str) -> None:
    images = torch.randint(256, (7, 28, 28), dtype=torch.uint8)
    write_idx(tmp_path / name, images)
    assert (tmp_path / name).read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(tmp_path / name)
    assert back.dtype == torch.uint8 and torch.equal(back, images)
    back[0, 0, 0] = 1  # writable: no warning, no error


def test_idx_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    labels = torch.arange(10, dtype=torch.uint8)
    write_idx(tmp_path / "gzipped", labels, compress=True)
    write_idx(tmp_path / "plain.gz", labels, compress=False)
    assert (tmp_path / "gzipped").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "plain.gz").read_bytes()[:3] == b"\0\0\x08"
    assert torch.equal(read_idx(tmp_path / "gzipped"), labels)
    assert torch.equal(read_idx(tmp_path / "plain.gz"), labels)


def idx_bytes(dims: tuple[int, ...], data: bytes, type_code: int = 0x08) -> bytes:
    return bytes((0, 0, type_code, len(dims))) + struct.pack(f">{len(dims)}I", *dims) + data


GOOD = idx_bytes((4, 5), bytes(20))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x00" + GOOD[2:], "bad magic number"),
        (b"\0\0", "bad magic number"),
        (idx_bytes((4, 5), bytes(80), type_code=0x0D), "unsupported IDX type code 0x0d"),
        (GOOD[:6], "truncated header"),
        (GOOD[:-7], "truncated: expected 20 bytes of data, found 13"),
        (GOOD + b"\0\0\0", "extra bytes: expected 20 bytes of data, found 23"),
        # mtime=0: gzip stamps the time into its header, and a test's id must be the same in
        # every process that collects it (pytest-xdist's workers)
        (gzip.compress(GOOD, mtime=0)[:-12], "corrupt gzip stream"),
        (gzip.compress(GOOD, mtime=0)[:12] + b"\xff" * 30, "corrupt gzip stream"),
    ],
    ids=["magic", "two-bytes", "type-code", "short-header", "short-data", "extra-data",
         "gzip-cut", "gzip-garbled"],  # fmt: skip
)
def test_idx_errors_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(IdxError, match="broken-idx1-ubyte.gz") as err:
        read_idx(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IdxError, match="nothere.*no such file"):
        read_idx(tmp_path / "nothere")


def test_payload_hash_is_over_decompressed_bytes(tmp_path: Path) -> None:
    images = torch.randint(256, (3, 28, 28), dtype=torch.uint8)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "a", images)
    expected = hashlib.sha256((tmp_path / "a").read_bytes()).hexdigest()
    assert idx_payload_sha256(tmp_path / "a.gz") == idx_payload_sha256(tmp_path / "a") == expected


# --- loading ---


def test_load_shapes_dtypes_and_truncation(tmp_path: Path) -> None:
    tensors = make_dataset(tmp_path / "d", gz=False)
    data = load(tmp_path / "d", verify=False)
    assert data.spec == SPEC
    assert data.train.images.shape == (300, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.test.labels.shape == (100,) and data.test.labels.dtype == torch.int64
    assert torch.equal(data.train.images[:, 0], tensors["train-images-idx3-ubyte"])
    assert torch.equal(data.train.labels, tensors["train-labels-idx1-ubyte"].long())
    assert len(data.classes) == 10 and data.classes[9] == "Ankle boot"
    small = load(tmp_path / "d", verify=False, train_samples=20, test_samples=500)
    assert torch.equal(small.train.pixels(), data.train.images[:20])
    assert len(small.train) == 20 and len(small.test) == 100
    assert torch.equal(small.train.labels, data.train.labels[:20])


@pytest.mark.parametrize("samples", [{"train_samples": 0}, {"test_samples": -1}])
def test_sample_counts_below_one_refused(tmp_path: Path, samples: dict[str, int]) -> None:
    make_dataset(tmp_path / "d")
    with pytest.raises(UsageError, match=next(iter(samples))):
        load(tmp_path / "d", verify=False, **samples)


def test_image_label_count_mismatch_names_both_files(tmp_path: Path) -> None:
    make_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", torch.zeros(99, dtype=torch.uint8))
    with pytest.raises(IdxError) as err:
        load(tmp_path / "d", verify=False)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz has 100 images" in message
    assert "t10k-labels-idx1-ubyte.gz has 99 labels" in message
    assert err.value.exit_code == 2


def test_label_out_of_range(tmp_path: Path) -> None:
    make_dataset(tmp_path / "d")
    write_idx(
        tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", torch.full((100,), 10, dtype=torch.uint8)
    )
    with pytest.raises(IdxError, match="t10k-labels-idx1-ubyte.gz: label 10"):
        load(tmp_path / "d", verify=False)


# --- where the data comes from ---


def test_data_dir_wins_over_system_and_cache(tmp_path: Path) -> None:
    make_dataset(tmp_path / "no-system-fashion", seed=1)
    make_dataset(tmp_path / "cache", seed=2)
    mine = make_dataset(tmp_path / "mine", seed=3)
    assert locate(tmp_path / "mine", verify=False, warn=lambda _: None) == tmp_path / "mine"
    data = load(tmp_path / "mine", verify=False)
    assert torch.equal(data.test.images[:, 0], mine["t10k-images-idx3-ubyte"])


def test_system_dir_wins_over_cache(tmp_path: Path) -> None:
    make_dataset(tmp_path / "no-system-fashion", seed=1)
    make_dataset(tmp_path / "cache", seed=2)
    assert locate(verify=False, warn=lambda _: None) == tmp_path / "no-system-fashion"
    assert fm.where(FASHION_MNIST) == tmp_path / "no-system-fashion"


def test_cache_used_when_system_missing_or_incomplete(tmp_path: Path) -> None:
    make_dataset(tmp_path / "cache", gz=False)
    assert locate(verify=False, warn=lambda _: None) == tmp_path / "cache"
    make_dataset(tmp_path / "no-system-fashion")
    (tmp_path / "no-system-fashion" / "train-labels-idx1-ubyte.gz").unlink()
    assert locate(verify=False, warn=lambda _: None) == tmp_path / "cache"


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "elsewhere"))
    assert FASHION_MNIST.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("RESNETS_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert FASHION_MNIST.cache_dir() == tmp_path / "home" / ".cache" / "resnets" / "fashion-mnist"


def test_incomplete_data_dir_names_missing_files(tmp_path: Path) -> None:
    make_dataset(tmp_path / "no-system-fashion")
    make_dataset(tmp_path / "mine")
    (tmp_path / "mine" / "train-images-idx3-ubyte.gz").unlink()
    (tmp_path / "mine" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as err:
        locate(tmp_path / "mine", verify=False)
    message = str(err.value)
    assert str(tmp_path / "mine") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-labels" not in message


# --- checksums ---


def tamper(path: Path) -> None:
    """Flip one bit of the first image in the IDX file at `path`."""
    images = read_idx(path)
    images[0, 0, 0] ^= 1
    write_idx(path, images)


@pytest.mark.parametrize(
    ("folder", "data_dir", "fix"),
    [
        ("bad", True, "replace it with a good copy"),
        ("cache", False, "delete it (it is downloaded again on the next run)"),
    ],
    ids=["data-dir", "cache"],
)
def test_checksums_verify_and_tampering_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str, data_dir: bool, fix: str
) -> None:
    make_dataset(tmp_path / "good")
    trust(monkeypatch, tmp_path / "good")
    assert locate(tmp_path / "good") == tmp_path / "good"
    make_dataset(tmp_path / folder)
    bad = tmp_path / folder / "t10k-images-idx3-ubyte.gz"
    tamper(bad)
    where = tmp_path / folder if data_dir else None
    with pytest.raises(ChecksumError) as err:
        locate(where)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert str(bad) in message and fix in message and "--no-verify" in message
    assert FASHION_MNIST.sha256["t10k-images-idx3-ubyte"] in message
    assert idx_payload_sha256(bad) in message


def test_without_verify_a_bad_file_is_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "d")
    trust(monkeypatch, tmp_path / "d")
    tamper(tmp_path / "d" / "train-images-idx3-ubyte.gz")
    with pytest.raises(ChecksumError):
        load(tmp_path / "d")
    warnings: list[str] = []
    options = DataOptions(data_dir=str(tmp_path / "d"), verify=False, warn=warnings.append)
    data = load_dataset("fashion-mnist", options)
    assert len(data.train) == 300
    assert len(warnings) == 1
    assert "train-images-idx3-ubyte.gz" in warnings[0]
    # it says the run goes on because of --no-verify, without advising the flag already given
    assert warnings[0].endswith("(going on: --no-verify)")
    assert warnings[0].count("--no-verify") == 1 and "pass" not in warnings[0]


def test_gzip_and_plain_copies_verify_with_the_same_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "gz", gz=True)
    make_dataset(tmp_path / "plain", gz=False)
    trust(monkeypatch, tmp_path / "gz")
    assert locate(tmp_path / "plain") == tmp_path / "plain"


def test_verification_is_cached_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "d")
    trust(monkeypatch, tmp_path / "d")
    locate(tmp_path / "d")

    def no_rehash(path: object) -> str:
        raise AssertionError(f"{path} hashed twice")

    monkeypatch.setattr(fm, "idx_payload_sha256", no_rehash)
    locate(tmp_path / "d")


# --- download ---


class FakeResponse(io.BytesIO):
    """What urlopen returns, enough for the downloader; breaks after `fail_after` bytes if set."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self.fail_after = fail_after

    def read(self, size: int | None = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        limit = self.fail_after if self.fail_after is not None else size
        return super().read(limit)


def serve(monkeypatch: pytest.MonkeyPatch, source: Path, broken: str | None = None) -> list[str]:
    """Serve `source` as the mirror, files starting with `broken` failing; return the URLs asked."""
    asked: list[str] = []

    def urlopen(url: str, timeout: float) -> FakeResponse:
        asked.append(url)
        name = url.removeprefix(FASHION_MNIST.mirror)
        fail_after = 100 if broken and name.startswith(broken) else None
        return FakeResponse((source / name).read_bytes(), fail_after)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_download_into_cache_and_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dataset(tmp_path / "mirror")
    trust(monkeypatch, tmp_path / "mirror")
    asked = serve(monkeypatch, tmp_path / "mirror")
    assert locate(progress=False) == tmp_path / "cache"
    assert sorted(asked) == sorted(f"{FASHION_MNIST.mirror}{stem}.gz" for stem in STEMS)
    for stem in STEMS:
        got = (tmp_path / "cache" / f"{stem}.gz").read_bytes()
        assert got == (tmp_path / "mirror" / f"{stem}.gz").read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        f"{stem}.gz" for stem in STEMS
    )


def test_download_fetches_only_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "mirror")
    make_dataset(tmp_path / "cache")
    (tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz").unlink()
    asked = serve(monkeypatch, tmp_path / "mirror")
    locate(progress=False, verify=False, warn=lambda _: None)
    assert asked == [f"{FASHION_MNIST.mirror}t10k-labels-idx1-ubyte.gz"]


def test_failed_download_explains_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "mirror")
    serve(monkeypatch, tmp_path / "mirror", broken="t10k-images")
    with pytest.raises(DataNotFoundError) as err:
        locate(progress=False)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "$RESNETS_DATA" in message
    assert FASHION_MNIST.mirror in message and "connection reset" in message
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert "t10k-images-idx3-ubyte.gz" not in left
    assert not [name for name in left if name.endswith(".part")]


def test_no_download_when_turned_off(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="downloading is turned off"):
        locate(download=False)
    assert not (tmp_path / "cache").exists()


# --- device batches ---


def batches(n: int = 10, **kwargs: object) -> DeviceBatches:
    """Batches over `n` distinct random images whose labels are their indices."""
    images = torch.randint(1, 256, (n, 28, 28), generator=torch.Generator().manual_seed(n))
    options = {"batch_size": 4, "image_size": 28, "spec": SPEC} | kwargs
    return DeviceBatches(images.to(torch.uint8), torch.arange(n), **options)


@pytest.mark.parametrize("augment", ["none", "crop+flip+erase"])
def test_a_last_batch_too_small_to_train_is_joined_to_the_one_before(augment: str) -> None:
    """9 images in batches of 4 leave a last batch of one: where a training pass needs two
    (BatchNorm over a 1x1 map) it joins the one before. The order is that of the epoch
    without the join (and, unaugmented, the images), `rows_in` says so, and the joined
    batch's augmentation draws are its own but the same each time the epoch is built."""
    options = {"shuffle": True, "augment": augment, "seed": 3}
    plain, joined = batches(9, **options), batches(9, least=2, **options)
    assert len(plain) == 3 and len(joined) == 2
    assert [joined.rows_in(i) for i in range(2)] == [4, 5] and joined.largest_batch() == 5
    got, want = list(joined.epoch(1)), list(plain.epoch(1))
    assert [len(y) for _, y in got] == [4, 5]
    assert torch.equal(torch.cat([y for _, y in got]), torch.cat([y for _, y in want]))
    if augment == "none":
        assert torch.equal(torch.cat([x for x, _ in got]), torch.cat([x for x, _ in want]))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, joined.epoch(1), strict=True))
    assert len(batches(10, least=2)) == 3  # a last batch of 2 stays as it is
    assert len(batches(9, least=2, drop_last=True)) == 2  # dropped, not joined
    assert len(batches(1, least=2)) == 1  # nothing to join to: the Trainer refuses it


def test_a_joined_last_batch_leaves_each_process_enough() -> None:
    """Under torchrun the factory asks for 2 per process (least = 2 x world): 9 images in
    batches of 4 over 2 processes join 4 + 1 into 5, shared 2 and 3."""
    shares = [list(batches(9, least=4, shard=(rank, 2)).epoch(0)) for rank in (0, 1)]
    assert [[len(y) for _, y in share] for share in shares] == [[2, 2], [2, 3]]


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation, back to uint8 pixel values."""
    return (x.float() * (255 * STD) + 255 * MEAN).round().to(torch.uint8)


def test_batch_shapes_counts_and_order() -> None:
    data = batches(10)
    got = list(data.epoch(0))
    assert len(data) == 3 and [len(y) for _, y in got] == [4, 4, 2]
    x, y = got[0]
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(10))
    assert torch.equal(to_pixels(x), data.images[:4])
    dropped = batches(10, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped.epoch(0)] == [4, 4]
    assert len(batches(8, drop_last=True)) == len(batches(8)) == 2


def test_normalisation_of_constant_images() -> None:
    images = torch.stack([torch.full((28, 28), 255), torch.zeros(28, 28)]).to(torch.uint8)
    data = DeviceBatches(images, torch.zeros(2), batch_size=2, image_size=28, spec=SPEC)
    x, _ = next(data.epoch(0))
    assert torch.allclose(x[0], torch.full_like(x[0], (1 - MEAN) / STD))
    assert torch.allclose(x[1], torch.full_like(x[1], -MEAN / STD))


@pytest.mark.parametrize("size", [96, 14])
def test_resize(size: int) -> None:
    x, _ = next(batches(image_size=size).epoch(0))
    assert x.shape == (4, 1, size, size)
    flat = torch.full((1, 28, 28), 200, dtype=torch.uint8)
    data = DeviceBatches(flat, torch.zeros(1), batch_size=1, image_size=size, spec=SPEC)
    x, _ = next(data.epoch(0))
    assert torch.allclose(x, torch.full_like(x, (200 / 255 - MEAN) / STD), atol=1e-5)


def test_channels_last_and_dtype() -> None:
    x, _ = next(batches(image_size=32, channels_last=True, dtype=torch.bfloat16).epoch(0))
    assert x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)


AUGMENTS = ["none", "crop", "flip", "altflip", "erase", "rrc", "mixup", "cutmix", "crop+flip",
            "crop+flip+erase"]  # fmt: skip


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("augment", AUGMENTS)
def test_every_augmentation_gives_the_models_exact_strides(
    augment: str, channels_last: bool
) -> None:
    """crop left a one-channel batch in NHWC strides, which `.contiguous()` keeps (a size-1
    dimension's stride does not count there) but convolutions read as channels-last: under
    torchrun every rank then warned "Grad strides do not match bucket view strides"."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for image_size in (28, 32):  # as stored, and resized
        data = batches(augment=augment, channels_last=channels_last, image_size=image_size)
        x, _ = next(data.epoch(0))
        assert x.stride() == torch.empty(x.shape, memory_format=layout).stride(), image_size


def test_shuffle_sees_every_sample_once_and_is_reproducible() -> None:
    data = batches(50, batch_size=8, shuffle=True, augment="crop+flip", seed=7)
    first = list(data.epoch(3))
    order = torch.cat([y for _, y in first])
    assert torch.equal(order.sort().values, torch.arange(50))
    assert not torch.equal(order, torch.arange(50))
    again = list(batches(50, batch_size=8, shuffle=True, augment="crop+flip", seed=7).epoch(3))
    assert all(
        torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, again, strict=True)
    )
    assert not torch.equal(torch.cat([y for _, y in data.epoch(4)]), order)
    other_seed = batches(50, batch_size=8, shuffle=True, seed=8)
    assert not torch.equal(torch.cat([y for _, y in other_seed.epoch(3)]), order)


def test_crop_shifts_each_image_within_the_padding() -> None:
    data = batches(64, batch_size=64, shuffle=True, augment="crop")
    x, y = next(data.epoch(0))
    got, originals = to_pixels(x), data.images[y]
    padded = torch.nn.functional.pad(originals, (2, 2, 2, 2))
    shifts = torch.stack(
        [padded[..., i : i + 28, j : j + 28] for i in range(5) for j in range(5)], dim=1
    )  # (N, 25, 1, 28, 28), shift 12 is the identity
    matches = (shifts == got.unsqueeze(1)).flatten(2).all(-1)
    assert matches.any(1).all(), "every output is a shift of its own image"
    shift = matches.int().argmax(1)
    assert (shift != 12).sum() > 40, "most images moved"
    assert len(shift.unique()) > 10, "by random offsets, not one"


def test_flip_mirrors_some_images() -> None:
    data = batches(64, batch_size=64, augment="flip")
    x, y = next(data.epoch(0))
    got, originals = to_pixels(x), data.images[y]
    same = (got == originals).flatten(1).all(1)
    flipped = (got == torch.flip(originals, [-1])).flatten(1).all(1)
    assert (same ^ flipped).all() and same.any() and flipped.any()


@pytest.mark.parametrize("shuffle", [False, True])
def test_altflip_mirrors_each_image_in_every_other_epoch(shuffle: bool) -> None:
    data = batches(64, batch_size=16, augment="altflip", shuffle=shuffle, seed=3)

    def mirrored(epoch: int) -> torch.Tensor:
        """Whether image i came mirrored in `epoch`, by its index."""
        out = torch.zeros(64, dtype=torch.bool)
        for x, y in data.epoch(epoch):
            got, originals = to_pixels(x), data.images[y]
            same = (got == originals).flatten(1).all(1)
            flipped = (got == torch.flip(originals, [-1])).flatten(1).all(1)
            assert (same ^ flipped).all()
            out[y] = flipped
        return out

    first = mirrored(0)
    assert 10 < int(first.sum()) < 54, "a random half in the first epoch"
    assert torch.equal(mirrored(1), ~first), "the other images in the next"
    assert torch.equal(mirrored(2), first) and torch.equal(mirrored(5), ~first)
    other_seed = batches(64, batch_size=16, augment="altflip", seed=4)
    assert not torch.equal(other_seed.first_flips, data.first_flips), "drawn from the seed"


def test_erase_fills_one_rectangle_in_about_half_the_images() -> None:
    data = batches(256, batch_size=256, augment="erase")
    x, y = next(data.epoch(0))
    got, originals = to_pixels(x)[:, 0], data.images[y][:, 0]
    changed = got != originals
    touched = changed.flatten(1).any(1)
    assert 0.3 < touched.float().mean() < 0.7
    for diff in changed[touched]:
        rows, cols = diff.any(1).nonzero(), diff.any(0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert height * width <= 0.45 * 28 * 28, "at most 40% of the area, plus rounding"
        outside = torch.ones_like(diff)
        outside[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = False
        assert not diff[outside].any(), "one rectangle"
    again, _ = next(batches(256, batch_size=256, augment="erase").epoch(0))
    assert torch.equal(x, again)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"augment": "rotate"}, "unknown augmentation 'rotate'"),
        ({"batch_size": 0}, "at least 1"),
        ({"image_size": 0}, "at least 1"),
    ],
)
def test_batches_validate_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        batches(**options)


def test_batches_refuse_images_of_the_wrong_shape_or_count() -> None:
    rgb = torch.zeros(4, 3, 28, 28, dtype=torch.uint8)
    with pytest.raises(UsageError, match=r"uint8 \(N, 1, H, W\)"):
        DeviceBatches(rgb, torch.zeros(4), batch_size=2, image_size=28, spec=SPEC)
    with pytest.raises(UsageError, match="4 images but 3 labels"):
        DeviceBatches(rgb[:, :1], torch.zeros(3), batch_size=2, image_size=28, spec=SPEC)


# --- parsing --augment ---


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("none", ()),
        ("", ()),
        ("crop", ("crop",)),
        ("flip+crop", ("crop", "flip")),
        ("erase+flip+crop", ("crop", "flip", "erase")),
        ("cutmix+rrc+flip", ("flip", "rrc", "cutmix")),
        ("erase+altflip+crop", ("crop", "altflip", "erase")),
        ("cutmix+mixup", ("mixup", "cutmix")),
        ("mixup+erase+crop+flip+cutmix", ("crop", "flip", "erase", "mixup", "cutmix")),
    ],
)
def test_parse_augment_canonical_order(text: str, parts: tuple[str, ...]) -> None:
    assert parse_augment(text) == parts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rotate", "unknown augmentation 'rotate'"),
        ("crop+Flip", "unknown augmentation 'Flip'"),
        ("crop+", "unknown augmentation ''"),
        ("crop+none", "unknown augmentation 'none'"),
        ("flip+flip", "names a part twice"),
        ("crop+flip+crop", "names a part twice"),
        ("crop+rrc", "crop .* or rrc"),
        ("rrc+flip+crop", "crop .* or rrc"),
        ("altflip+flip", "flip .* or altflip"),
    ],
)
def test_parse_augment_rejects(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        parse_augment(text)
    assert repr(text) in str(err.value)


# --- the real data ---


def real_dir() -> Path | None:
    return next((d for d in REAL_DIRS if all(fm.find_file(d, s) for s in STEMS)), None)


@pytest.mark.slow
@pytest.mark.skipif(
    real_dir() is None,
    reason="real Fashion-MNIST not found in $RESNETS_DATA or /usr/share/datasets/fashion-mnist "
    "(apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    directory = real_dir()
    assert locate(directory, download=False, verify=True) == directory
    data = load_dataset(
        "fashion-mnist", DataOptions(data_dir=str(directory), download=False, warn=no_warning)
    )
    assert data.train.images.shape == (60000, 1, 28, 28)
    assert data.test.images.shape == (10000, 1, 28, 28)
    assert len(data.train.labels) == 60000 and len(data.test.labels) == 10000
    for labels in (data.train.labels, data.test.labels):
        assert labels.min() == 0 and labels.max() == 9
    counts = torch.bincount(data.train.images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt()
    assert round(mean.item(), 3) == round(MEAN, 3) and round(std.item(), 3) == round(STD, 3)


@pytest.mark.slow
@pytest.mark.skipif(real_dir() is None, reason="real Fashion-MNIST not found (see above)")
def test_a_short_run_on_the_real_data_learns(tmp_path: Path) -> None:
    from resnets.training import build_trainer, make_config

    config = make_config(
        overrides={
            "model": "cifar_resnet20", "width": 0.5, "image_size": 28, "epochs": 1,
            "batch_size": 64, "lr": 0.1, "optimizer": "nesterov", "schedule": "onecycle",
            "train_samples": 3000, "test_samples": 1000, "device": "cpu",
            "data_dir": str(real_dir()),
        }
    )  # fmt: skip
    trainer = build_trainer(config, run_dir=tmp_path / "run", quiet=True, log=lambda _: None)
    summary = trainer.fit()
    assert summary["final_test_acc"] > 0.5  # chance is 0.1
