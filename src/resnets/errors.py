"""The one exception type the command line turns into a short message instead of a traceback."""

from __future__ import annotations

from typing import Any


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters, for quoting what a user gave in a message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's first line (at most `limit` characters), or its type's name when it has
    no message: the gist of a long library error, for quoting inside a one-line message."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """An exception's message with its line breaks and runs of spaces made single spaces, for
    quoting inside a one-line message (its type's name when it has no message)."""
    return " ".join(str(error).split()) or type(error).__name__


class ResnetsError(Exception):
    """A failure the user can fix: the message names the thing and the fix.

    `exit_code` is what the command line exits with (2 for bad usage, as argparse does).
    """

    exit_code = 1


class UsageError(ResnetsError, ValueError):
    """A bad name, size or option given by the caller."""

    exit_code = 2


class DataError(ResnetsError):
    """Data files that are missing, corrupt, or laid out wrongly: the message names the file.

    Exit code 2, like a usage error: the fix is in what the user points the command at.
    """

    exit_code = 2


class DiskError(ResnetsError):
    """A file that could not be written: the disk or quota is full, or the folder is read-only.

    The message names the folder, the bytes needed and free there, what was kept, and the fix.
    """
