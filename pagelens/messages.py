"""Any failure as the one message and hint a person sees: shared by the CLI (stderr, exit codes)
and the HTTP server (JSON errors), so both say the same thing about the same failure."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.errors import UserError
from pagelens.errors import EncoderOutputError
from pagelens.results import printable


def verify_hint(index: Path | str | None) -> str:
    where = f" --index {printable(index)}" if index is not None else ""
    return (
        f"run `pagelens verify{where}` to see what is damaged; restore the index folder from a backup, "
        "or rebuild it by indexing into a new --index folder"
    )


def disk_trouble(error: sqlite3.Error) -> bool:
    """SQLite says "database or disk is full" / "disk I/O error" when a write finds no space."""
    text = str(error).lower()
    return "disk is full" in text or "disk i/o error" in text


def is_expected(error: BaseException) -> bool:
    """A failure with a known cause (a user error, the catalogue, the disk, memory), as opposed
    to a bug, whose traceback ``PAGELENS_DEBUG=1`` shows."""
    return isinstance(error, (UserError, EncoderOutputError, sqlite3.Error, OSError, MemoryError))


def describe(error: BaseException, *, index: Path | str | None = None) -> tuple[str, str | None]:
    """(message, hint) for ``error``; ``index`` is the index folder the hints may name."""
    if isinstance(error, (UserError, EncoderOutputError)):
        return error.message, error.hint
    if isinstance(error, sqlite3.Error):  # a damaged catalogue the store did not catch itself, or a full disk
        if disk_trouble(error):
            return (f"the index catalogue cannot be written ({error}): the disk is full or failing",
                    "every finished document is kept; free some space and run the same command again.")
        return f"the index catalogue cannot be read ({type(error).__name__}: {error})", verify_hint(index)
    if isinstance(error, OSError):  # disk full, permissions, a vanished index directory
        return (
            f"{error.strerror or error} ({error.filename or 'I/O'})",
            "every finished document is kept; fix the cause (free space, permissions) and run the same command again.",
        )
    if isinstance(error, MemoryError):
        return "out of memory.", "every finished document is kept; try a smaller --batch-size or --max-pixels and run again."
    return (
        f"unexpected failure: {type(error).__name__}: {error}",
        "every finished document is kept; if the index may be damaged, " + verify_hint(index)
        + ". To report it, run again with PAGELENS_DEBUG=1 for the traceback.",
    )
