"""What an indexing run tells its caller: progress events as it goes, and a report at the end.

The library never prints: the CLI turns events into bars or lines and the report into a summary
and an exit code (see docs/index-format.md, "Run outcome").
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_INDEXED = "all_indexed"
SOME_FAILED = "some_failed"
NOTHING_USABLE = "nothing_usable"


@dataclass(frozen=True)
class RunStarted:
    files_total: int  # files found (before hashing: some may be skipped as unchanged)


@dataclass(frozen=True)
class FileStarted:
    path: str
    page_count: int


@dataclass(frozen=True)
class PageDone:
    path: str
    page_number: int
    page_count: int
    pages_done: int  # pages encoded and stored so far in this run


@dataclass(frozen=True)
class FileDone:
    path: str
    pages: int
    files_done: int  # files finished so far (added, copied, skipped or failed)
    files_total: int
    copied_from: str | None = None  # same content as an indexed document: vectors shared, nothing encoded


@dataclass(frozen=True)
class FileSkipped:
    path: str
    reason: str
    files_done: int
    files_total: int


@dataclass(frozen=True)
class FileFailed:
    path: str
    reason: str
    files_done: int
    files_total: int


@dataclass(frozen=True)
class FileRemoved:
    path: str
    pages: int


@dataclass
class IndexReport:
    """added: (path, pages); skipped: unchanged paths; failed: (path, one-line reason) of every
    input that could not be indexed, whatever the stage (a missing argument, a folder that cannot be
    listed, a file that cannot be opened, rendered within its budget or encoded);
    removed: (path, pages) of documents gone from an indexed folder; duplicates: (path, same as)."""

    added: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    resumed: list[tuple[str, int]] = field(default_factory=list)  # (path, pages kept from an interrupted run)
    pages_added: int = 0  # pages of added documents, copies included
    pages_encoded: int = 0  # pages that went through the encoder
    bytes_reclaimed: int = 0  # by an automatic compaction at the end of the run
    elapsed: float = 0.0

    @property
    def outcome(self) -> str:
        """``all_indexed``: nothing failed. ``some_failed``: failures, but something is usable.
        ``nothing_usable``: every input failed (or none was found)."""
        usable = bool(self.added or self.skipped)
        if not self.failed:
            return ALL_INDEXED if (usable or self.removed) else NOTHING_USABLE
        return SOME_FAILED if usable else NOTHING_USABLE

    @property
    def ok(self) -> bool:
        return self.outcome == ALL_INDEXED
