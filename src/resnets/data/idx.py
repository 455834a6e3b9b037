"""Read and write IDX files, the MNIST family's format, gzipped or plain, checking every field."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from resnets.errors import DataError, UsageError

GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08  # the IDX type code for unsigned bytes, the only one Fashion-MNIST uses
_CHUNK = 1 << 20


class IdxError(DataError):
    """An IDX file that is missing, corrupt or of a kind this reader does not handle."""


@contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """Open `path` for reading, gunzipped if its first bytes say so; read errors become IdxError."""
    gzipped = False
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            yield gzip.GzipFile(fileobj=raw) if gzipped else raw  # type: ignore[misc]
    except FileNotFoundError as err:
        raise IdxError(f"{path}: no such file") from err
    except (EOFError, OSError, zlib.error) as err:
        what = "corrupt gzip stream" if gzipped else "cannot read"
        raise IdxError(f"{path}: {what} ({err}); delete it and get it again") from err


def _parse_header(path: Path, data: bytes) -> tuple[tuple[int, ...], int]:
    """Check the magic number and dimensions; return the shape and where the data starts."""
    if len(data) < 4 or data[:2] != b"\0\0":
        raise IdxError(f"{path}: not an IDX file: bad magic number {data[:4].hex() or 'none'}")
    if data[2] != UBYTE:
        raise IdxError(
            f"{path}: unsupported IDX type code 0x{data[2]:02x} (only 0x08, unsigned byte, is read)"
        )
    ndim = data[3]
    if ndim == 0:
        raise IdxError(f"{path}: bad IDX header: 0 dimensions")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise IdxError(f"{path}: truncated header: {ndim} dimensions need {start} bytes")
    return struct.unpack(f">{ndim}I", data[4:start]), start


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an unsigned-byte IDX file, gzipped (told by content) or not, into a uint8 tensor."""
    path = Path(path)
    with _opened(path) as stream:
        data = stream.read()
    shape, start = _parse_header(path, data)
    expected, found = math.prod(shape), len(data) - start
    if found != expected:
        problem = "truncated" if found < expected else "extra bytes"
        raise IdxError(f"{path}: {problem}: expected {expected} bytes of data, found {found}")
    array = np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape)
    return torch.from_numpy(array.copy())


def write_idx(path: str | Path, tensor: torch.Tensor, *, compress: bool | None = None) -> None:
    """Write a uint8 tensor as IDX, gzipped if `compress` (by default: if the name ends in .gz)."""
    path = Path(path)
    if tensor.dtype != torch.uint8 or tensor.dim() == 0:
        raise UsageError(f"{path}: IDX needs a uint8 tensor with dimensions, got {tensor.dtype}")
    header = bytes((0, 0, UBYTE, tensor.dim())) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    payload = header + tensor.detach().cpu().contiguous().numpy().tobytes()
    if path.name.endswith(".gz") if compress is None else compress:
        payload = gzip.compress(payload, mtime=0)  # mtime=0: same tensor, same bytes
    path.write_bytes(payload)


def idx_payload_sha256(path: str | Path) -> str:
    """SHA-256 of the file's decompressed bytes, so a .gz and a plain copy hash the same."""
    path = Path(path)
    digest = hashlib.sha256()
    with _opened(path) as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
