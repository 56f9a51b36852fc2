"""Embedding core: jina-embeddings-v4 loaded with stock transformers + peft.

Importing this package is cheap; torch and transformers load only when a model is loaded.
"""

from engine.errors import EngineError
from engine.types import Embedding, truncate_single

__all__ = ["Embedding", "EngineError", "Encoder", "load_encoder", "truncate_single"]


def __getattr__(name: str):
    # lazy: `import engine` must not pull in torch/transformers
    if name == "load_encoder":
        from engine.loader import load_encoder

        return load_encoder
    if name == "Encoder":
        from engine.encoder import Encoder

        return Encoder
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
