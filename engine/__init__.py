"""Embedding core: jina-embeddings-v4 loaded with stock transformers + peft.

Importing this package is cheap; torch and transformers load only when a model is loaded.
"""

from engine.errors import EngineError
from engine.types import Embedding, truncate_single

__all__ = ["Embedding", "EngineError", "truncate_single"]
