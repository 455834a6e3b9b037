"""Downloads that never leave a half-written file where a whole one is expected."""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

DOWNLOAD_TIMEOUT_S = 60.0


def cache_root() -> Path:
    """Where downloaded data sets live: `$RESNETS_DATA`, else ~/.cache/resnets."""
    env = os.environ.get("RESNETS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnets"


def fetch(url: str, dest: Path, progress: bool) -> None:
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
