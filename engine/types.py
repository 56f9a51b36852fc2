"""The value every encoder returns: a single vector and a multi-vector per input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MATRYOSHKA_DIMS = (128, 256, 512, 1024, 2048)


@dataclass(frozen=True, eq=False)
class Embedding:
    """One input's embedding.

    single: float32 [D], L2-normalised (D = 2048 for the real model).
    multi:  float32 or float16 [T, 128], one L2-normalised row per real token.
    """

    single: np.ndarray
    multi: np.ndarray

    def __post_init__(self) -> None:
        if self.single.ndim != 1:
            raise ValueError(f"Embedding.single must be 1-D, got shape {self.single.shape}")
        if self.multi.ndim != 2:
            raise ValueError(f"Embedding.multi must be 2-D [tokens, dim], got shape {self.multi.shape}")

    def __repr__(self) -> str:
        return f"Embedding(single={self.single.shape[0]}-d, multi={self.multi.shape[0]}x{self.multi.shape[1]})"


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def truncate_single(
    vectors: np.ndarray | Embedding | Sequence[Embedding],
    dim: int,
    allowed: Sequence[int] = MATRYOSHKA_DIMS,
) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dim`` values, then L2-renormalise.

    Accepts a vector [D], a matrix [N, D], an Embedding or a list of Embeddings, and returns
    float32 of the same rank (a list gives [N, dim]). Any ``dim`` outside ``allowed`` is refused:
    the model was only trained to be meaningful at those widths.
    """
    if isinstance(vectors, Embedding):
        arr = vectors.single
    elif isinstance(vectors, np.ndarray):
        arr = vectors
    else:
        arr = np.stack([e.single for e in vectors]) if len(vectors) else np.zeros((0, dim), np.float32)
    if dim not in tuple(allowed):
        raise ValueError(f"dimension {dim} is not a Matryoshka dimension; choose one of {sorted(allowed)}")
    if dim > arr.shape[-1]:
        raise ValueError(f"cannot truncate {arr.shape[-1]}-d vectors to {dim} dimensions")
    return _l2_normalise(np.asarray(arr[..., :dim], dtype=np.float32)).astype(np.float32)
