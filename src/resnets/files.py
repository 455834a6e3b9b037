"""Files that are either whole or absent: written beside their place, then renamed into it.

A crash, a kill or a full disk at any moment leaves the old file or the new one, never half of
one, and no temporary file behind when Python can still clean up.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# The errors of a full, over-quota, read-only or unwritable place: the user's to fix.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class _RecordingFile(io.FileIO):
    """A raw file that remembers the first OSError of a write.

    torch.save to a file object turns a failed write into a RuntimeError without the errno
    ("unexpected pos ..."); the recorded error says what really happened.
    """

    error: OSError | None = None

    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            return super().write(data)
        except OSError as error:
            self.error = self.error or error
            raise


@contextlib.contextmanager
def atomic_file(path: str | Path, *, hidden: bool = True) -> Iterator[IO[bytes]]:
    """A new file (opened "w+b") that replaces `path` only if the block ends without error.

    The temporary file is `.NAME.XXXX.tmp` beside `path` (`NAME.XXXX.tmp` with hidden=False,
    so a cleaner that globs NAME* finds leftovers); its `name` attribute is its path. On
    success it is flushed, fsynced, renamed over `path`, and the folder is fsynced.

    When a write failed with an OSError that the writer (torch.save) turned into another
    exception, that OSError is raised instead, so callers can tell a full disk by its errno.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}." if hidden else f"{path.name}.", suffix=".tmp"
    )
    os.fchmod(fd, 0o644)  # mkstemp's 0o600 would hide a shared cache from other users
    os.close(fd)
    raw: _RecordingFile | None = None
    try:
        raw = _RecordingFile(tmp, "w+")
        with io.BufferedRandom(raw) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        recorded = raw.error if raw is not None else None
        if recorded is not None and isinstance(error, Exception) and not isinstance(error, OSError):
            raise recorded from error
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, payload: bytes | str, *, hidden: bool = True) -> Path:
    """Write `payload` (str as UTF-8) to `path` atomically."""
    with atomic_file(path, hidden=hidden) as file:
        file.write(payload.encode() if isinstance(payload, str) else payload)
    return Path(path)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the file system of `folder` (or of its nearest existing parent)."""
    place = Path(folder).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return shutil.disk_usage(place).free
    except OSError:
        return None
