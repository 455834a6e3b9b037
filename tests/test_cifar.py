"""Tests for resnets.data.cifar: tiny CIFAR-10/100 files written here in the real layouts."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from resnets.data import cifar
from resnets.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CifarData,
    find_cifar,
    read_cifar,
)
from resnets.errors import DataError, UsageError

from helpers import no_warning

PER_BATCH, N_TEST = 3, 4
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
# A marked pixel: flat index channel * 1024 + row * 32 + col in the (N, 3072) rows of the file.
MARK_BATCH, MARK_IMAGE, MARK_C, MARK_ROW, MARK_COL, MARK_VALUE = 2, 1, 2, 5, 7, 201
CIFAR10_META_NAMES = tuple(name.upper() for name in CIFAR10_CLASSES)


# --- writers for the real formats -----------------------------------------------------------


def py2_pickle(obj: object) -> bytes:
    """Protocol-2 opcodes as Python 2's cPickle wrote the real files: str as BINSTRING.

    Handles dicts, lists, ints, str/bytes (both become Python 2 str) and uint8 arrays, which
    are written as numpy 1.x did: numpy.core.multiarray._reconstruct, then __setstate__.
    """
    out: list[bytes] = [b"\x80\x02"]

    def put(o: object) -> None:
        if isinstance(o, dict):
            out.append(b"}(")
            for key, value in o.items():
                put(key)
                put(value)
            out.append(b"u")
        elif isinstance(o, list):
            out.append(b"](")
            for item in o:
                put(item)
            out.append(b"e")
        elif isinstance(o, int):
            out.append(b"J" + struct.pack("<i", o))
        elif isinstance(o, str):
            put(o.encode())
        elif isinstance(o, bytes):
            short = len(o) < 256
            out.append(b"U" + bytes([len(o)]) if short else b"T" + struct.pack("<I", len(o)))
            out.append(o)
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            put(0)
            out.append(b"\x85")  # TUPLE1
            put(b"b")
            out.append(b"\x87R(")  # TUPLE3, REDUCE, MARK (the state tuple)
            put(1)
            out.append(b"(")
            for dim in o.shape:
                put(dim)
            out.append(b"tcnumpy\ndtype\n")
            put(b"u1")
            put(0)
            put(1)
            out.append(b"\x87R(")
            put(3)
            put(b"|")
            out.append(b"NNN")
            for field in (-1, -1, 0):
                put(field)
            out.append(b"tb\x89")  # dtype state, BUILD, NEWFALSE (not Fortran order)
            put(o.tobytes())
            out.append(b"tb")
        else:
            raise TypeError(type(o))

    put(obj)
    out.append(b".")
    return b"".join(out)


def _str_keys(batch: dict) -> bytes:
    """Latest protocol, str keys and str names: a copy re-pickled by Python 3."""
    decoded = {
        key: [s.decode() if isinstance(s, bytes) else s for s in value]
        if isinstance(value, list)
        else value
        for key, value in batch.items()
    }
    return pickle.dumps(decoded, protocol=pickle.HIGHEST_PROTOCOL)


# How each variant turns a batch dict (str keys, bytes strings) into file contents.
PICKLERS: dict[str, Callable[[dict], bytes]] = {
    # Python 3, protocol 2, bytes keys: what the real files look like after encoding="bytes".
    "p2-bytes-keys": lambda d: pickle.dumps({k.encode(): v for k, v in d.items()}, protocol=2),
    "latest-str-keys": _str_keys,
    "py2-opcodes": py2_pickle,  # the opcodes of the files the CIFAR page serves
}


def flat_images(n: int, seed: int) -> np.ndarray:
    """Random uint8 rows (n, 3072), as stored in the files."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def cifar10_batches(with_meta: bool = True) -> tuple[dict[str, dict], np.ndarray, np.ndarray]:
    """Batch dicts by file name, plus the expected train rows (N, 3072) and labels."""
    files: dict[str, dict] = {}
    rows, labels = [], []
    for b, file in enumerate(TRAIN_FILES):
        data = flat_images(PER_BATCH, seed=b)
        if b == MARK_BATCH:
            data[MARK_IMAGE, MARK_C * 1024 + MARK_ROW * 32 + MARK_COL] = MARK_VALUE
        lab = [(b + i) % 10 for i in range(PER_BATCH)]
        files[file] = {
            "batch_label": f"training batch {b + 1} of 5".encode(),
            "labels": lab,
            "data": data,
            "filenames": [f"img_{b}_{i}.png".encode() for i in range(PER_BATCH)],
        }
        rows.append(data)
        labels += lab
    files["test_batch"] = {
        "batch_label": b"testing batch 1 of 1",
        "labels": [9, 0, 5, 3],
        "data": flat_images(N_TEST, seed=99),
        "filenames": [f"test_{i}.png".encode() for i in range(N_TEST)],
    }
    if with_meta:
        files["batches.meta"] = {
            "num_cases_per_batch": PER_BATCH,
            "label_names": [n.encode() for n in CIFAR10_META_NAMES],
            "num_vis": 3072,
        }
    return files, np.concatenate(rows), np.array(labels)


def write_tree(root: Path, folder: str, contents: dict[str, bytes], *, archive: str | None) -> Path:
    """Write `contents` as root/folder/ files, or as root/archive with members folder/name."""
    if archive is None:
        (root / folder).mkdir(parents=True)
        for name, data in contents.items():
            (root / folder / name).write_bytes(data)
        return root / folder
    path = root / archive
    with tarfile.open(path, "w:gz") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# The member order of the real cifar-10-python.tar.gz, readme included: not sorted.
REAL_ORDER = ("data_batch_4", "readme.html", "test_batch", "data_batch_3", "batches.meta",
              "data_batch_2", "data_batch_5", "data_batch_1")  # fmt: skip


def write_cifar10(
    root: Path,
    *,
    archive: bool,
    variant: str = "p2-bytes-keys",
    edit: Callable[[dict[str, dict]], None] | None = None,
    drop: str | None = None,
) -> Path:
    """A CIFAR-10 python set under root; `edit` may change the dicts, `drop` leaves a file out."""
    files, _, _ = cifar10_batches()
    if edit:
        edit(files)
    contents = {name: PICKLERS[variant](batch) for name, batch in files.items()}
    contents["readme.html"] = b"<html></html>"
    ordered = {name: contents[name] for name in REAL_ORDER if name != drop}
    return write_tree(
        root, "cifar-10-batches-py", ordered, archive="cifar-10-python.tar.gz" if archive else None
    )


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def bless(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Path]:
    """Make an archive's MD5 the published one, for the duration of a test."""

    def _bless(path: Path) -> Path:
        monkeypatch.setitem(cifar.ARCHIVE_MD5, path.name, md5(path))
        return path

    return _bless



def one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert excinfo.value.exit_code == 2
    return message


# --- reading the python layout --------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(PICKLERS))
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
def test_cifar10_pixels_labels_and_names(
    tmp_path: Path, bless: Callable[[Path], Path], archive: bool, variant: str
) -> None:
    source = write_cifar10(tmp_path, archive=archive, variant=variant)
    if archive:
        bless(source)
    data = read_cifar(tmp_path, "cifar10", warn=no_warning)
    _, rows, labels = cifar10_batches()

    assert isinstance(data, CifarData) and data.source == source
    assert data.train_images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.train_images.is_contiguous()
    assert data.test_images.shape == (N_TEST, 3, 32, 32) and data.test_images.is_contiguous()
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    # The marked byte lands at (channel, row, col): planes R, G, B of 32 rows of 32.
    index = MARK_BATCH * PER_BATCH + MARK_IMAGE
    assert data.train_images[index, MARK_C, MARK_ROW, MARK_COL] == MARK_VALUE
    assert torch.equal(data.train_images.flatten(1), torch.from_numpy(rows))
    assert data.train_labels.tolist() == labels.tolist()  # batches 1..5 in order
    assert data.test_labels.tolist() == [9, 0, 5, 3]
    assert torch.equal(data.test_images.flatten(1), torch.from_numpy(flat_images(N_TEST, 99)))
    assert data.classes == CIFAR10_META_NAMES  # from batches.meta, not the built-in names


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
def test_missing_meta_gives_canonical_names(
    tmp_path: Path, bless: Callable[[Path], Path], archive: bool
) -> None:
    source = write_cifar10(tmp_path, archive=archive, drop="batches.meta")
    if archive:
        bless(source)
    assert read_cifar(tmp_path, "cifar10", warn=no_warning).classes == CIFAR10_CLASSES


def test_root_may_be_the_extracted_folder(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, archive=False)
    renamed = folder.rename(tmp_path / "my-cifar")
    data = read_cifar(renamed, "cifar10", warn=no_warning)
    assert data.source == renamed and len(data.train_labels) == 5 * PER_BATCH


@pytest.mark.parametrize("labels", ["fine", "coarse"])
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
def test_cifar100_fine_and_coarse(
    tmp_path: Path, bless: Callable[[Path], Path], archive: bool, labels: str
) -> None:
    fine = {"train": list(range(90, 96)), "test": [99, 0, 42, 7]}
    coarse = {"train": [19, 0, 1, 2, 3, 4], "test": [18, 17, 16, 15]}
    contents = {
        split: pickle.dumps(
            {
                b"filenames": [b"x.png"] * len(fine[split]),
                b"batch_label": split.encode(),
                b"fine_labels": fine[split],
                b"coarse_labels": coarse[split],
                b"data": flat_images(len(fine[split]), seed=len(split)),
            },
            protocol=2,
        )
        for split in ("train", "test")
    }
    contents["meta"] = pickle.dumps(
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
        protocol=2,
    )
    source = write_tree(
        tmp_path, "cifar-100-python", contents,
        archive="cifar-100-python.tar.gz" if archive else None,
    )  # fmt: skip
    if archive:
        bless(source)
    data = read_cifar(tmp_path, "cifar100", labels=labels, warn=no_warning)
    expected = fine if labels == "fine" else coarse
    assert data.source == source
    assert data.train_labels.tolist() == expected["train"]
    assert data.test_labels.tolist() == expected["test"]
    assert data.classes == tuple(f"{labels}{i}" for i in range(100 if labels == "fine" else 20))
    assert torch.equal(data.train_images.flatten(1), torch.from_numpy(flat_images(6, seed=5)))
    assert torch.equal(data.test_images.flatten(1), torch.from_numpy(flat_images(4, seed=4)))


# --- the binary layout ----------------------------------------------------------------------


def binary_records(rows: np.ndarray, labels: list[int]) -> bytes:
    return np.concatenate([np.array(labels, np.uint8)[:, None], rows], axis=1).tobytes()


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
def test_cifar10_binary(tmp_path: Path, bless: Callable[[Path], Path], archive: bool) -> None:
    _, rows, labels = cifar10_batches()
    contents = {
        f"data_batch_{b + 1}.bin": binary_records(
            rows[b * PER_BATCH : (b + 1) * PER_BATCH],
            labels[b * PER_BATCH : (b + 1) * PER_BATCH].tolist(),
        )
        for b in range(5)
    }
    contents["test_batch.bin"] = binary_records(flat_images(N_TEST, 99), [9, 0, 5, 3])
    contents["batches.meta.txt"] = ("\n".join(CIFAR10_META_NAMES) + "\n\n").encode()
    source = write_tree(
        tmp_path, "cifar-10-batches-bin", contents,
        archive="cifar-10-binary.tar.gz" if archive else None,
    )  # fmt: skip
    if archive:
        bless(source)
    assert find_cifar(tmp_path, "cifar10") == source
    data = read_cifar(tmp_path, "cifar10", warn=no_warning)
    index = MARK_BATCH * PER_BATCH + MARK_IMAGE
    assert data.train_images[index, MARK_C, MARK_ROW, MARK_COL] == MARK_VALUE
    assert torch.equal(data.train_images.flatten(1), torch.from_numpy(rows))
    assert data.train_labels.tolist() == labels.tolist()
    assert data.test_labels.tolist() == [9, 0, 5, 3]
    assert data.classes == CIFAR10_META_NAMES
    assert data.train_images.is_contiguous() and data.train_labels.dtype == torch.int64


# --- finding --------------------------------------------------------------------------------


def _touch_dir(root: Path, name: str) -> None:
    (root / name).mkdir()


def _touch_file(root: Path, name: str) -> None:
    (root / name).write_bytes(b"")


@pytest.mark.parametrize(
    ("present", "name", "expected"),
    [
        ((), "cifar10", None),
        (("cifar-10-python.tar.gz",), "cifar10", "cifar-10-python.tar.gz"),
        (("cifar-10-python.tar.gz", "cifar-10-batches-py/"), "cifar10", "cifar-10-batches-py"),
        (("cifar-10-binary.tar.gz",), "cifar10", "cifar-10-binary.tar.gz"),
        (("cifar-10-batches-bin/",), "cifar10", "cifar-10-batches-bin"),
        (("cifar-10-binary.tar.gz", "cifar-10-python.tar.gz"), "cifar10", "cifar-10-python.tar.gz"),
        (("cifar-10-python.tar.gz", "cifar-10-batches-py/"), "cifar100", None),
        (("cifar-100-python.tar.gz",), "cifar100", "cifar-100-python.tar.gz"),
        (("cifar-100-python.tar.gz", "cifar-100-python/"), "cifar100", "cifar-100-python"),
        (("test_batch", "data_batch_1"), "cifar10", "."),  # root is the extracted folder
        (("test", "train"), "cifar100", "."),
        (("test_batch.bin", "data_batch_1.bin"), "cifar10", "."),
    ],
)
def test_find_cifar(
    tmp_path: Path, present: tuple[str, ...], name: str, expected: str | None
) -> None:
    for item in present:
        (_touch_dir if item.endswith("/") else _touch_file)(tmp_path, item.rstrip("/"))
    found = find_cifar(str(tmp_path), name)
    assert found == (None if expected is None else tmp_path / expected)


def test_nothing_found_names_what_to_put_there(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10")
    message = one_line_error(excinfo)
    assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message


def test_unknown_name_and_labels(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cifar10, cifar100"):
        find_cifar(tmp_path, "cifar20")
    write_cifar10(tmp_path, archive=False)
    with pytest.raises(DataError, match="cifar10: no 'coarse' labels"):
        read_cifar(tmp_path, "cifar10", labels="coarse")


# --- checksums ------------------------------------------------------------------------------


def test_modified_archive_refused_with_verify(tmp_path: Path) -> None:
    path = write_cifar10(tmp_path, archive=True)
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", verify=True, warn=no_warning)
    message = one_line_error(excinfo)
    assert "c58f30108f718f92721af3b95e74349a" in message
    assert md5(path) in message and str(path) in message and "--no-verify" in message


def test_modified_archive_read_with_a_warning_without_verify(tmp_path: Path) -> None:
    path = write_cifar10(tmp_path, archive=True)
    warnings: list[str] = []
    data = read_cifar(tmp_path, "cifar10", verify=False, warn=warnings.append)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert md5(path) in warnings[0] and "c58f30108f718f92721af3b95e74349a" in warnings[0]
    assert len(data.train_labels) == 5 * PER_BATCH


def test_published_archive_read_without_a_warning(
    tmp_path: Path, bless: Callable[[Path], Path]
) -> None:
    bless(write_cifar10(tmp_path, archive=True))
    warnings: list[str] = []
    read_cifar(tmp_path, "cifar10", verify=False, warn=warnings.append)
    assert warnings == []


def test_published_digests() -> None:
    assert cifar.ARCHIVE_MD5 == {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    }


# --- hostile and broken files ---------------------------------------------------------------


class _Payload:
    """Unpickling this runs `call(*args)`."""

    def __init__(self, call: Callable[..., object], *args: object) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.call, self.args


PAYLOADS: dict[str, Callable[[Path], _Payload]] = {
    "os.system": lambda marker: _Payload(os.system, f"touch '{marker}'"),
    "builtins.exec": lambda marker: _Payload(
        builtins.exec, f"open({str(marker)!r}, 'w').write('pwned')"
    ),
}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_payloads_work_with_a_plain_unpickler(tmp_path: Path, payload: str) -> None:
    """The control: these payloads do run code when loaded without restriction."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(PAYLOADS[payload](marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("member", ["data_batch_3", "batches.meta"])
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_restricted_unpickler_refuses_code(
    tmp_path: Path, payload: str, archive: bool, member: str
) -> None:
    marker = tmp_path / "marker"

    key = "label_names" if member == "batches.meta" else "labels"
    write_cifar10(tmp_path, archive=archive, edit=_set(member, key, PAYLOADS[payload](marker)))
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", verify=False, warn=lambda _: None)
    message = one_line_error(excinfo)
    assert member in message and "refused" in message
    assert message.endswith(
        "delete the archive and put the canonical one there"
        if archive
        else "replace it with the canonical file"
    )
    assert payload.split(".")[1] in message  # the global's name (os.system pickles as posix)
    assert not marker.exists()


def _set(file: str, key: str, value: object) -> Callable[[dict[str, dict]], None]:
    def edit(files: dict[str, dict]) -> None:
        files[file][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "file", "words"),
    [
        (_set("data_batch_2", "data", np.zeros((3, 3072), np.float32)), "data_batch_2", "uint8"),
        (_set("data_batch_2", "data", np.zeros((3, 3071), np.uint8)), "data_batch_2", "3071"),
        (_set("test_batch", "data", [1, 2, 3]), "test_batch", "list"),
        (_set("data_batch_4", "labels", [0, 1]), "data_batch_4", "2 labels for 3"),
        (_set("data_batch_5", "labels", [0, 10, 1]), "data_batch_5", "label 10"),
        (_set("test_batch", "labels", [0, -1, 2, 3]), "test_batch", "label -1"),
        (_set("test_batch", "labels", ["a", "b", "c", "d"]), "test_batch", "not a list of int"),
        (_set("batches.meta", "label_names", [b"cat"] * 9), "batches.meta", "9 class names"),
        (lambda files: files["data_batch_1"].pop("data"), "data_batch_1", "no 'data'"),
    ],
    ids=["float", "width", "not-array", "count", "range", "negative", "str-labels", "meta",
         "no-data"],
)  # fmt: skip
def test_bad_batches_named(
    tmp_path: Path, edit: Callable[[dict[str, dict]], None], file: str, words: str
) -> None:
    write_cifar10(tmp_path, archive=False, edit=edit)
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10")
    message = one_line_error(excinfo)
    assert str(tmp_path / "cifar-10-batches-py" / file) in message and words in message
    assert message.endswith("; replace it with the canonical file")


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
def test_missing_batch_named(tmp_path: Path, archive: bool) -> None:
    write_cifar10(tmp_path, archive=archive, drop="data_batch_3")
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", verify=False, warn=lambda _: None)
    assert "cifar-10-batches-py/data_batch_3" in one_line_error(excinfo)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data[:20],
        lambda data: b"this is not a gzip file at all" * 10,
        lambda data: data[:4000] + bytes(1000) + data[5000:],
    ],
    ids=["half", "header-only", "not-gzip", "corrupt-middle"],
)
def test_damaged_archive_named(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = write_cifar10(tmp_path, archive=True)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10", verify=False, warn=lambda _: None)
    message = one_line_error(excinfo)
    assert str(path) in message and message.endswith(
        "delete the archive and put the canonical one there"
    )


@pytest.mark.parametrize(
    ("file", "contents", "words"),
    [
        ("data_batch_1.bin", bytes(3073 * 2 + 1), "not a whole number of 3073-byte records"),
        ("test_batch.bin", bytes([10]) + bytes(3072), "label 10"),
    ],
)
def test_bad_binary_batches_named(tmp_path: Path, file: str, contents: bytes, words: str) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"):
        (folder / name).write_bytes(bytes(3073))
    (folder / file).write_bytes(contents)
    with pytest.raises(DataError) as excinfo:
        read_cifar(tmp_path, "cifar10")
    message = one_line_error(excinfo)
    assert str(folder / file) in message and words in message


def test_canonical_class_names() -> None:
    assert len(CIFAR10_CLASSES) == 10 and CIFAR10_CLASSES[0] == "airplane"
    for names, count in ((CIFAR100_CLASSES, 100), (CIFAR100_COARSE_CLASSES, 20)):
        assert len(names) == count and list(names) == sorted(set(names))  # alphabetical, unique
