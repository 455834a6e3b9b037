"""What a folder of images declares about itself in `dataset.toml` at its root.

The file is optional and every key in it is too:

    mirror = false              # a left-right mirror image keeps its label (default: true)
    classes = ["zero", "one"]   # label order: the class folders' names, each once
    mean = [0.13]               # per channel, on the [0, 1] scale (default: computed)
    std = [0.31]                # per channel, > 0 (default: computed)
    channels = 1                # 1 (grey) or 3 (RGB); default: from the images

Digits, letters and text change meaning when mirrored, so a folder of them says
`mirror = false`; nothing in the images tells the program so. Any other key, or a value of the
wrong kind, is refused in one line naming the file and the key.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnets.errors import DataError, shown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FILENAME = "dataset.toml"
KEYS = ("mirror", "classes", "mean", "std", "channels")


@dataclass(frozen=True)
class DatasetFacts:
    """The keys a `dataset.toml` gave; None for each one it left out. `path` is the file."""

    path: Path
    mirror: bool | None = None
    classes: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None


def read_facts(root: str | Path) -> DatasetFacts | None:
    """`root/dataset.toml` checked key by key, or None when the folder has none."""
    path = Path(root).expanduser() / FILENAME
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from error
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else "not UTF-8 text"
        raise DataError(f"{path}: not valid TOML ({first}); fix it or remove it") from error
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise DataError(
            f"{path}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(KEYS)}"
        )
    facts = DatasetFacts(
        path=path,
        mirror=_boolean(path, data, "mirror"),
        classes=_names(path, data),
        mean=_numbers(path, data, "mean", low=0.0, low_allowed=True),
        std=_numbers(path, data, "std", low=0.0, low_allowed=False),
        channels=_channels(path, data),
    )
    for key in ("mean", "std"):
        values = getattr(facts, key)
        if values is not None and facts.channels is not None and len(values) != facts.channels:
            raise DataError(
                f"{path}: {key} has {len(values)} value(s) but channels = {facts.channels}; "
                "give one per channel"
            )
    if (facts.mean is None) != (facts.std is None):
        raise DataError(f"{path}: give mean and std together, or neither")
    if facts.mean is not None and facts.std is not None and len(facts.mean) != len(facts.std):
        raise DataError(f"{path}: mean and std must have one value per channel each")
    return facts


def _boolean(path: Path, data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise DataError(f"{path}: {key} must be true or false, not {shown(value)}")
    return value


def _names(path: Path, data: dict[str, Any]) -> tuple[str, ...] | None:
    value = data.get("classes")
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DataError(
            f"{path}: classes must be a list of class folder names, not {shown(value)}"
        )
    repeated = sorted({name for name in value if value.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: classes names {', '.join(repeated)} more than once")
    return tuple(value)


def _numbers(
    path: Path, data: dict[str, Any], key: str, low: float, low_allowed: bool
) -> tuple[float, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    bound = f"{'>=' if low_allowed else '>'} {low:g}"
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) and (v > low or (low_allowed and v == low)) for v in value)
    ):
        raise DataError(
            f"{path}: {key} must be a list of finite numbers {bound} (one per channel, on the "
            f"0-1 scale), not {shown(value)}"
        )
    return tuple(float(v) for v in value)


def _channels(path: Path, data: dict[str, Any]) -> int | None:
    value = data.get("channels")
    if value is not None and (isinstance(value, bool) or value not in (1, 3)):
        raise DataError(f"{path}: channels must be 1 (grey) or 3 (RGB), not {shown(value)}")
    return value


def class_order(facts: DatasetFacts, found: tuple[str, ...]) -> list[int]:
    """For each class folder found (in sorted order), its label in the declared order; refuses
    a declared list that is not exactly the folders' names."""
    assert facts.classes is not None
    missing = sorted(set(found) - set(facts.classes))
    extra = sorted(set(facts.classes) - set(found))
    if missing or extra:
        parts = [f"leaves out {', '.join(missing)}"] if missing else []
        parts += [f"names {', '.join(extra)}, which has no folder"] if extra else []
        raise DataError(
            f"{facts.path}: classes {'; '.join(parts)}; list every class folder once"
        )
    return [facts.classes.index(name) for name in found]
