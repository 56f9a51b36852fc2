"""Plain result types returned by the Python API and printed by the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One ranked page. ``page`` counts from 1; ``page_id`` is the index's stable integer id."""

    rank: int
    score: float
    path: str
    page: int
    page_id: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IndexInfo:
    """What `pagelens info` reports."""

    directory: str
    format_version: int
    documents: int
    pages: int
    vectors: int
    bytes_on_disk: dict[str, int]
    identity: dict[str, Any] | None
    failed_documents: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
