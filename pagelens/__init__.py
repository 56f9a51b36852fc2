"""pagelens: find the PDF page that answers a question, by how it looks and what it says.

Importing pagelens is cheap: torch, transformers and faiss load only when first needed.
"""

from __future__ import annotations

from typing import Any

from engine.types import Embedding, truncate_single
from pagelens.errors import (
    BadEmbeddingError, EncoderOutputError, IndexExistsError, IndexNotFoundError, NoModelError, PagelensError,
)
from pagelens.results import Hit, IndexInfo, VerifyReport

__version__ = "0.1.0"

__all__ = [
    "BadEmbeddingError",
    "Embedding",
    "Encoder",
    "EncoderOutputError",
    "Hit",
    "Index",
    "IndexExistsError",
    "IndexInfo",
    "IndexNotFoundError",
    "NoModelError",
    "PagelensError",
    "VerifyReport",
    "__version__",
    "load_encoder",
    "truncate_single",
]


def __getattr__(name: str) -> Any:
    if name == "Index":
        from pagelens.api import Index

        return Index
    if name in ("load_encoder", "Encoder"):
        import engine.loader as loader

        return getattr(loader, name)
    raise AttributeError(f"module 'pagelens' has no attribute {name!r}")
