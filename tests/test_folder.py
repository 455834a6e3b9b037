"""Tests for resnets.data.folder: the user's image folders, decoded once into a uint8 cache."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, features

from resnets.data import folder
from resnets.data.folder import cache_bytes, load_image_folder
from resnets.errors import DataError, UsageError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
WEBP = features.check("webp")


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def solid(path: Path, color=RED, size=(20, 30), mode="RGB") -> Path:
    return save(path, Image.new(mode, size, color))


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def noise(size=(20, 30), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def load(root: Path, size: int = 8, **options) -> folder.FolderData:
    options.setdefault("progress", False)
    options.setdefault("warn", _no_warning)
    return load_image_folder(root, size=size, **options)


def _no_warning(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


def flat_set(root: Path, counts: dict[str, int]) -> Path:
    """root/<class>/<i>.png: solid images, distinct per file."""
    for name, count in counts.items():
        for i in range(count):
            solid(root / name / f"{i}.png", color=(10 * i, 20, 30))
    return root


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files decoded from now on, in order."""
    calls: list[Path] = []
    real = folder._decode

    def counting(path: Path, size: int, channels: int):
        calls.append(path)
        return real(path, size, channels)

    monkeypatch.setattr(folder, "_decode", counting)
    return calls


def split_caches(cache: Path, split: str = "train") -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(f"{split}-"))


# -- layout, classes, labels, shapes ---------------------------------------------------------


def test_classes_sorted_and_labels_follow_folders(tmp_path: Path) -> None:
    root = flat_set(tmp_path / "set", {"dog": 2, "ant": 1, "eel": 3})
    data = load(root)
    assert data.classes == ("ant", "dog", "eel")
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == [0, 1, 1, 2, 2, 2]
    assert data.test_images is None and data.test_labels is None


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_train_and_test_splits(tmp_path: Path, test_name: str) -> None:
    root = tmp_path / "set"
    flat_set(root / "train", {"a": 2, "b": 1})
    solid(root / test_name / "a" / "x.png", color=GREEN)
    solid(root / test_name / "b" / "y.png", color=BLUE)
    solid(root / test_name / "b" / "z.png", color=BLUE)
    data = load(root)
    assert data.train_labels.tolist() == [0, 0, 1]
    assert data.test_labels.tolist() == [0, 1, 1]
    assert data.test_images.shape == (3, 3, 8, 8)
    assert data.test_images[0, 1].eq(255).all() and data.test_images[2, 2].eq(255).all()


def test_test_preferred_over_val_and_said_once(tmp_path: Path) -> None:
    root = tmp_path / "set"
    flat_set(root / "train", {"a": 1})
    solid(root / "test" / "a" / "t.png", color=GREEN)
    solid(root / "val" / "a" / "v1.png", color=BLUE)
    solid(root / "val" / "a" / "v2.png", color=BLUE)
    warnings: list[str] = []
    data = load(root, warn=warnings.append)
    assert len(data.test_images) == 1 and data.test_images[0, 1].eq(255).all()
    assert len(warnings) == 1 and "ignoring val/" in warnings[0]
    load(root)  # a cache hit says nothing


def test_train_only_has_no_test_split(tmp_path: Path) -> None:
    flat_set(tmp_path / "set" / "train", {"a": 1, "b": 1})
    data = load(tmp_path / "set")
    assert data.classes == ("a", "b") and data.test_images is None


def test_hidden_files_folders_and_other_extensions_ignored(tmp_path: Path) -> None:
    root = flat_set(tmp_path / "set", {"a": 1, "b": 1})
    solid(root / ".hidden" / "x.png")
    solid(root / "a" / ".x.png")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "nested").mkdir()
    solid(root / "a" / "nested" / "deep.png")
    (root / "README.md").write_text("hello")
    data = load(root)
    assert data.classes == ("a", "b")
    assert data.train_labels.tolist() == [0, 1] and data.skipped == []


@pytest.mark.parametrize(
    ("name", "kind"),
    [("x.PNG", "PNG"), ("x.JpG", "JPEG"), ("x.jpeg", "JPEG"), ("x.bmp", "BMP"), ("x.webp", "WEBP")],
)
def test_extensions_any_case(tmp_path: Path, name: str, kind: str) -> None:
    if kind == "WEBP" and not WEBP:
        pytest.skip("Pillow without WebP")
    save(tmp_path / "set" / "a" / name, Image.new("RGB", (9, 9), BLUE), format=kind)
    assert len(load(tmp_path / "set").train_images) == 1


@pytest.mark.parametrize(
    ("size", "color", "channels"), [(8, "auto", 3), (17, "gray", 1), (1, "rgb", 3)]
)
def test_shapes_and_dtype(tmp_path: Path, size: int, color: str, channels: int) -> None:
    root = tmp_path / "set"
    solid(root / "a" / "wide.png", size=(50, 40))
    solid(root / "a" / "tall.png", size=(20, 30))
    solid(root / "b" / "tiny.png", size=(8, 8))
    data = load(root, size=size, color=color)
    assert data.train_images.dtype == torch.uint8
    assert data.train_images.shape == (3, channels, size, size)
    assert data.channels == channels and len(data.mean) == len(data.std) == channels


# -- pixels: colour kept, resize and centre crop ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "image", "options", "expected", "tolerance"),
    [
        ("rgb.png", Image.new("RGB", (20, 30), RED), {}, RED, 0),
        ("wide.bmp", Image.new("RGB", (50, 40), GREEN), {}, GREEN, 0),
        ("tiny.png", Image.new("RGB", (8, 8), BLUE), {}, BLUE, 0),  # enlarged
        ("rgba.png", Image.new("RGBA", (30, 20), (*RED, 255)), {}, RED, 0),
        ("clear.png", Image.new("RGBA", (30, 20), (*BLUE, 0)), {}, BLUE, 0),  # alpha dropped
        ("pal.png", Image.new("RGB", (20, 30), GREEN).quantize(4), {}, GREEN, 0),
        ("pal-clear.png", Image.new("RGB", (9, 9), RED).quantize(4), {"transparency": 0}, RED, 0),
        ("la.png", Image.new("LA", (9, 9), (200, 0)), {}, (200, 200, 200), 0),
        ("cmyk.jpg", Image.new("CMYK", (24, 24), (0, 255, 255, 0)), {"quality": 95}, RED, 3),
        ("photo.jpg", Image.new("RGB", (400, 300), RED), {"quality": 95}, RED, 3),  # draft
        ("lossless.webp", Image.new("RGB", (20, 30), RED), {"lossless": True}, RED, 0),
    ],
)
def test_solid_colour_survives(tmp_path, name, image, options, expected, tolerance) -> None:
    if name.endswith("webp") and not WEBP:
        pytest.skip("Pillow without WebP")
    save(tmp_path / "set" / "a" / name, image, **options)
    out = load(tmp_path / "set", size=8, color="rgb").train_images[0].int()
    for channel, value in enumerate(expected):
        assert (out[channel] - value).abs().max() <= tolerance, (channel, out[channel])


@pytest.mark.parametrize(("name", "tolerance"), [("halves.png", 0), ("halves.jpg", 4)])
def test_left_and_right_halves_kept(tmp_path: Path, name: str, tolerance: int) -> None:
    pixels = np.zeros((40, 50, 3), np.uint8)  # 50 wide, 40 high: 5 columns cropped each side
    pixels[:, :25] = RED
    pixels[:, 25:] = BLUE
    image = Image.fromarray(pixels)
    if name.endswith("jpg"):  # large enough for JPEG's reduced decoding
        image = image.resize((400, 320), Image.Resampling.NEAREST)
    save(tmp_path / "set" / "a" / name, image, quality=95)
    out = load(tmp_path / "set", size=16).train_images[0].int()
    left, right = out[:, :, :7], out[:, :, 9:]  # away from the blurred middle columns
    assert (left[0] - 255).abs().max() <= tolerance and left[2].max() <= tolerance
    assert (right[2] - 255).abs().max() <= tolerance and right[0].max() <= tolerance


@pytest.mark.parametrize("tall", [True, False])
def test_centre_crop_drops_the_ends_of_the_long_side(tmp_path: Path, tall: bool) -> None:
    bands = np.zeros((60, 20, 3), np.uint8)  # red, green, blue thirds along the long side
    bands[:20], bands[20:40], bands[40:] = RED, GREEN, BLUE
    save(
        tmp_path / "set" / "a" / "bands.png",
        Image.fromarray(bands if tall else bands.swapaxes(0, 1)),
    )
    out = load(tmp_path / "set", size=16).train_images[0]
    inner = out[:, 1:-1, :] if tall else out[:, :, 1:-1]  # the edge rows see their neighbours
    assert inner[1].eq(255).all() and inner[0].eq(0).all() and inner[2].eq(0).all()
    assert out[1].float().mean() > 240


# -- colour modes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modes", "channels"),
    [
        (["L"], 1),
        (["L", "LA", "1"], 1),
        (["I;16", "L"], 1),
        (["L", "RGB"], 3),
        (["L", "P"], 3),  # a palette counts as colour
        (["LA", "RGBA"], 3),
    ],
)
def test_auto_colour_from_training_modes(tmp_path: Path, modes: list[str], channels: int) -> None:
    for i, mode in enumerate(modes):
        save(tmp_path / "set" / "a" / f"{i}.png", Image.new(mode, (12, 10)))
    data = load(tmp_path / "set")
    assert data.channels == channels and data.train_images.shape[1] == channels


def test_auto_colour_follows_train_not_test(tmp_path: Path) -> None:
    root = tmp_path / "set"
    solid(root / "train" / "a" / "g.png", color=200, mode="L")
    solid(root / "test" / "a" / "c.png", color=RED)
    data = load(root)
    assert data.channels == 1 and data.test_images.shape == (1, 1, 8, 8)
    assert data.test_images.eq(76).all()  # red in grey: 0.299 * 255


@pytest.mark.parametrize(("color", "channels", "expected"), [("gray", 1, [76]), ("rgb", 3, RED)])
def test_forced_colour(tmp_path: Path, color: str, channels: int, expected) -> None:
    solid(tmp_path / "set" / "a" / "red.png", color=RED)
    save(tmp_path / "set" / "a" / "grey.png", Image.new("L", (10, 10), 76))
    data = load(tmp_path / "set", color=color)
    assert data.channels == channels
    grey, red = data.train_images  # sorted by file name
    for channel, value in enumerate(expected):
        assert red[channel].eq(value).all() and grey[channel].eq(76).all()


def test_sixteen_bit_grey_scaled_to_eight(tmp_path: Path) -> None:
    pixels = np.full((10, 10), 65535, np.uint16)
    pixels[:, 5:] = 257 * 100
    save(tmp_path / "set" / "a" / "deep.png", Image.fromarray(pixels))
    out = load(tmp_path / "set", size=10).train_images[0, 0]
    assert out[:, :4].eq(255).all() and out[:, 6:].eq(100).all()


# -- unreadable files ------------------------------------------------------------------------


def broken_set(root: Path) -> list[str]:
    """Two classes of good images plus three unreadable files; their paths relative to root."""
    flat_set(root, {"a": 2, "b": 1})
    whole = png_bytes(noise())
    (root / "a" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "b" / "text.jpg").write_text("this is not a JPEG")
    jpeg = io.BytesIO()
    noise((64, 64)).save(jpeg, "JPEG")
    (root / "b" / "cut.jpg").write_bytes(jpeg.getvalue()[:-400])
    (root / "b" / "notes.txt").write_text("ignored, not reported")
    return ["a/cut.png", "b/cut.jpg", "b/text.jpg"]


def test_broken_files_skipped_and_warned_once(tmp_path: Path) -> None:
    root = tmp_path / "set"
    broken = broken_set(root)
    warnings: list[str] = []
    data = load(root, warn=warnings.append)
    assert data.train_labels.tolist() == [0, 0, 1]
    assert sorted(p.relative_to(root).as_posix() for p in data.skipped) == broken
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "3 unreadable" in warnings[0] and all(rel in warnings[0] for rel in broken)
    again = load(root)  # the cache hit warns nothing but still lists them
    assert again.skipped == data.skipped


def test_truncated_files_refused_whatever_pillow_was_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    root = tmp_path / "set"
    broken_set(root)
    warnings: list[str] = []
    assert len(load(root, warn=warnings.append).skipped) == 3
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # put back as it was


# -- the cache -------------------------------------------------------------------------------


def test_two_loaders_at_once_decode_the_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second process (here a thread, which takes the file lock the same way) waits for
    the first one's cache instead of decoding the folder again beside it."""
    root = flat_set(tmp_path / "set", {"a": 3, "b": 3})
    calls: list[Path] = []
    real = folder._decode
    started = threading.Event()

    def slow(path: Path, size: int, channels: int):
        calls.append(path)
        started.set()
        time.sleep(0.05)
        return real(path, size, channels)

    monkeypatch.setattr(folder, "_decode", slow)
    results: list[folder.FolderData] = []
    first = threading.Thread(target=lambda: results.append(load(root)))
    first.start()
    started.wait(5)
    second = load(root)  # starts while the first is decoding
    first.join(10)
    assert len(calls) == 6  # each file decoded once, by the first loader
    assert torch.equal(results[0].train_images, second.train_images)
    assert len(split_caches(root / ".resnets-cache")) == 2  # one data file, one sidecar


def test_unchanged_folder_reuses_cache_without_decoding(tmp_path: Path, decodes) -> None:
    root = flat_set(tmp_path / "set", {"a": 2, "b": 2})
    first = load(root)
    assert len(decodes) == 4
    inodes = {p: p.stat().st_ino for p in first.cache_files}
    second = load(root)
    assert len(decodes) == 4
    assert {p: p.stat().st_ino for p in second.cache_files} == inodes
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.train_labels, second.train_labels)
    assert (first.mean, first.std, first.classes) == (second.mean, second.std, second.classes)


def test_cache_also_reused_for_test_split(tmp_path: Path, decodes) -> None:
    root = tmp_path / "set"
    flat_set(root / "train", {"a": 1})
    flat_set(root / "val", {"a": 1})
    load(root)
    assert len(decodes) == 2
    load(root)
    assert len(decodes) == 2


def _add(root: Path) -> None:
    solid(root / "b" / "new.png", color=GREEN)


def _touch(root: Path) -> None:
    path = root / "a" / "0.png"
    mtime = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(mtime, mtime))


def _remove(root: Path) -> None:
    (root / "a" / "1.png").unlink()


def _rename(root: Path) -> None:
    (root / "a" / "1.png").rename(root / "b" / "1.png")


@pytest.mark.parametrize(
    ("change", "labels"),
    [(_add, [0, 0, 1, 1]), (_touch, [0, 0, 1]), (_remove, [0, 1]), (_rename, [0, 1, 1])],
)
def test_changed_folder_rebuilds(tmp_path: Path, decodes, change, labels: list[int]) -> None:
    root = flat_set(tmp_path / "set", {"a": 2, "b": 1})
    first = load(root)
    change(root)
    decodes.clear()
    second = load(root)
    assert len(decodes) == len(labels)
    assert second.train_labels.tolist() == labels
    assert second.cache_files != first.cache_files
    cache = root / ".resnets-cache"
    assert split_caches(cache) == sorted(p.name for p in second.cache_files)  # old one gone


def test_other_settings_get_their_own_cache(tmp_path: Path, decodes) -> None:
    root = flat_set(tmp_path / "set", {"a": 1})
    load(root, size=8)
    load(root, size=9)
    load(root, size=8, color="gray")
    assert len(decodes) == 3
    load(root, size=8)
    assert len(decodes) == 3
    assert len(split_caches(root / ".resnets-cache")) == 6


def _drop_sidecar(data: folder.FolderData) -> None:
    """A crash between the data file and its sidecar, with the data file garbage."""
    data.cache_files[1].unlink()
    data.cache_files[0].write_bytes(bytes(data.cache_files[0].stat().st_size))


def _cut_data(data: folder.FolderData) -> None:
    path = data.cache_files[0]
    path.write_bytes(path.read_bytes()[:-10])


def _garble_sidecar(data: folder.FolderData) -> None:
    data.cache_files[1].write_text("{not json")


def _wrong_fingerprint(data: folder.FolderData) -> None:
    meta = json.loads(data.cache_files[1].read_text())
    meta["fingerprint"] = "0" * 64
    data.cache_files[1].write_text(json.dumps(meta))


def _only_temp_file(data: folder.FolderData) -> None:
    """A crash during decoding: a partial temp file, no data file, no sidecar."""
    for path in data.cache_files:
        path.unlink()
    (data.cache_files[0].parent / f"{data.cache_files[0].name}.k2j3.tmp").write_bytes(b"\1" * 50)


@pytest.mark.parametrize(
    "crash", [_drop_sidecar, _cut_data, _garble_sidecar, _wrong_fingerprint, _only_temp_file]
)
def test_incomplete_cache_not_trusted(tmp_path: Path, decodes, crash) -> None:
    root = flat_set(tmp_path / "set", {"a": 2, "b": 1})
    good = load(root)
    expected = good.train_images.clone()
    crash(good)
    decodes.clear()
    data = load(root)
    assert len(decodes) == 3
    assert torch.equal(data.train_images, expected)
    assert split_caches(root / ".resnets-cache") == sorted(p.name for p in data.cache_files)


def test_failed_build_leaves_no_files(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    (root / "a" / "bad.png").write_text("not a png")
    with pytest.raises(DataError):
        load(root)
    left = [p.name for p in (root / ".resnets-cache").iterdir()]
    assert left == [".train-8px-auto.lock"]  # the empty lock file stays: no data, no temporary


def test_images_are_memory_mapped_from_the_cache_file(tmp_path: Path) -> None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps here")
    root = tmp_path / "set"
    flat_set(root / "train", {"a": 2})
    flat_set(root / "test", {"a": 1})
    data = load(root)
    for images, path in (
        (data.train_images, data.cache_files[0]),
        (data.test_images, data.cache_files[2]),
    ):
        assert path.suffix == ".u8" and path.stat().st_size == images.numel()
        assert str(path) in maps.read_text()
    assert cache_bytes(data) == 3 * 3 * 8 * 8


def test_mean_and_std_match_the_images(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for i in range(3):
        save(root / "train" / "a" / f"{i}.png", noise(seed=i))
    solid(root / "train" / "b" / "red.png")
    save(root / "test" / "a" / "x.png", noise(seed=9))
    save(root / "test" / "b" / "y.png", noise(seed=8))
    for data in (load(root), load(root)):  # built, then from the cache
        pixels = data.train_images.double() / 255
        mean = pixels.mean((0, 2, 3))
        std = pixels.std((0, 2, 3), correction=0)
        assert data.mean == pytest.approx(mean.tolist(), abs=1e-9)
        assert data.std == pytest.approx(std.tolist(), abs=1e-9)


def test_default_cache_dir_inside_a_writable_root(tmp_path: Path) -> None:
    root = flat_set(tmp_path / "set", {"a": 1})
    data = load(root)
    assert all(p.parent == (root / ".resnets-cache").resolve() for p in data.cache_files)


def test_default_cache_dir_in_home_for_a_read_only_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folder, "_is_writable", lambda path: False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = flat_set(tmp_path / "set", {"a": 1})
    data = load(root)
    base = tmp_path / "home" / ".cache" / "resnets" / "folders"
    assert [p.parent.parent for p in data.cache_files] == [base, base]
    assert not (root / ".resnets-cache").exists()
    other = flat_set(tmp_path / "other", {"a": 1})
    assert load(other).cache_files[0].parent != data.cache_files[0].parent


def test_cache_dir_inside_root_is_not_a_class(tmp_path: Path) -> None:
    root = flat_set(tmp_path / "set", {"a": 1, "b": 1})
    load(root, cache_dir=root / "cache")
    data = load(root, cache_dir=root / "cache")
    assert data.classes == ("a", "b")
    assert all(p.parent == root / "cache" for p in data.cache_files)


def test_progress_bar_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = flat_set(tmp_path / "set", {"a": 1})
    load(root, progress=True)
    assert "decoding" in capsys.readouterr().err
    load(root, size=9, progress=False)
    assert capsys.readouterr().err == ""


# -- errors ----------------------------------------------------------------------------------


def _missing_root(root: Path) -> str:
    return str(root)


def _file_root(root: Path) -> str:
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("a file")
    return str(root)


def _no_classes(root: Path) -> str:
    (root / ".hidden").mkdir(parents=True)
    solid(root / "loose.png")
    return str(root)


def _empty_class(root: Path) -> str:
    flat_set(root, {"a": 1})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images here")
    return str(root / "b")


def _unreadable_class(root: Path) -> str:
    flat_set(root, {"a": 1})
    (root / "b").mkdir()
    (root / "b" / "x.png").write_text("not a png")
    return str(root / "b")


def _all_unreadable(root: Path) -> str:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "x.jpg").write_text("not a jpeg")
    return f"{root}: none of its 2 image files could be read"


def _test_lacks_class(root: Path) -> str:
    flat_set(root / "train", {"a": 1, "b": 1, "c": 1})
    flat_set(root / "test", {"a": 1, "d": 1})
    return "missing b, c; extra d"


def _test_without_train(root: Path) -> str:
    flat_set(root / "val", {"a": 1})
    return f"{root}: has a val/ folder but no train/"


def _empty_test_class(root: Path) -> str:
    flat_set(root / "train", {"a": 1, "b": 1})
    flat_set(root / "test", {"a": 1})
    (root / "test" / "b").mkdir()
    return str(root / "test" / "b")


@pytest.mark.parametrize(
    "make",
    [
        _missing_root,
        _file_root,
        _no_classes,
        _empty_class,
        _unreadable_class,
        _all_unreadable,
        _test_lacks_class,
        _test_without_train,
        _empty_test_class,
    ],
)
def test_bad_folders_raise_one_line_data_errors(tmp_path: Path, make) -> None:
    root = tmp_path / "set"
    expected = make(root)
    with pytest.raises(DataError) as caught:
        load(root)
    message = str(caught.value)
    assert "\n" not in message and expected in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(("option", "value"), [("size", 0), ("size", 8.0), ("color", "grey")])
def test_bad_options_are_usage_errors(tmp_path: Path, option: str, value) -> None:
    root = flat_set(tmp_path / "set", {"a": 1})
    options = {"size": 8, option: value}
    with pytest.raises(UsageError, match=option):
        load_image_folder(root, progress=False, **options)
