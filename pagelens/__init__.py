"""pagelens: find the PDF page that answers a question, by how it looks and what it says.

Importing pagelens is cheap: torch, transformers and faiss load only when first needed.
"""

from __future__ import annotations

from typing import Any

from engine.types import Embedding, PatchGrid, truncate_single
from pagelens.errors import (
    BadEmbeddingError, EncoderOutputError, IndexExistsError, IndexNotFoundError, NoModelError, PagelensError,
)
from pagelens.results import Hit, IndexInfo, PageInfo, VerifyReport

__version__ = "0.1.0"

__all__ = [
    "BadEmbeddingError",
    "Embedding",
    "Encoder",
    "EncoderOutputError",
    "Heatmap",
    "HeatmapUnavailable",
    "Hit",
    "Index",
    "IndexExistsError",
    "IndexInfo",
    "IndexNotFoundError",
    "NoModelError",
    "PageInfo",
    "PagelensError",
    "PatchGrid",
    "VerifyReport",
    "__version__",
    "load_encoder",
    "serve",
    "truncate_single",
]


def __getattr__(name: str) -> Any:
    if name == "Index":
        from pagelens.api import Index

        return Index
    if name in ("Heatmap", "HeatmapUnavailable"):
        import pagelens.heatmap as heatmap

        return getattr(heatmap, name)
    if name == "serve":  # FastAPI and uvicorn load only for the server
        from pagelens.server import serve

        return serve
    if name in ("load_encoder", "Encoder"):
        import engine.loader as loader

        return getattr(loader, name)
    raise AttributeError(f"module 'pagelens' has no attribute {name!r}")
