"""Typed errors of the indexer. Each says what failed, where, and what to do next.

Two families: ``PdfError`` is about one input file (the run reports it and goes on);
``StoreError`` is about the index directory itself (the operation stops).
"""

from __future__ import annotations

from engine.errors import UserError


class IndexerError(UserError):
    """Base of every indexer error."""


# --- one input file ---------------------------------------------------------------------------


class PdfError(IndexerError):
    """An input file that cannot be indexed. ``reason`` is one line for the report."""

    kind = "unusable"

    def __init__(self, path: str, detail: str, hint: str | None = None):
        self.path = path
        self.detail = detail
        super().__init__(f"{self.kind}: {detail}", hint)

    @property
    def reason(self) -> str:
        """One line, no path: the report prints the path beside it."""
        return f"{self.kind}: {self.detail}" + (f" ({self.hint})" if self.hint else "")


class EncryptedError(PdfError):
    kind = "encrypted"


class BrokenFileError(PdfError):
    kind = "broken"


class EmptyDocumentError(PdfError):
    kind = "empty"


class NotAPdfError(PdfError):
    kind = "not a PDF"


class UnreadableError(PdfError):
    kind = "unreadable"


class VanishedError(PdfError):
    kind = "vanished"


class UnsupportedFileError(PdfError):
    kind = "unsupported"


# --- the index directory ----------------------------------------------------------------------


class StoreError(IndexerError):
    """The index directory cannot be used as asked."""


class NotAnIndexError(StoreError):
    pass


class IndexExistsError(StoreError):
    pass


class IndexFormatError(StoreError):
    """Made by a newer pagelens, or a catalogue schema this version does not know."""


class IndexLockedError(StoreError):
    pass


class ReadOnlyError(StoreError):
    pass


class CorruptIndexError(StoreError):
    """Committed data is missing or damaged. Never skipped: the index must be repaired or rebuilt."""


class EncoderMismatchError(StoreError):
    pass


class DimensionMismatchError(StoreError):
    pass


class PageNotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return StoreError.__str__(self)
