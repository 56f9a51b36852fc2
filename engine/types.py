"""The value every encoder returns: a single vector and a multi-vector per input."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MATRYOSHKA_DIMS = (128, 256, 512, 1024, 2048)


FULL_BOX = (0.0, 0.0, 1.0, 1.0)
MAX_GRID_SIDE = 65536  # far beyond any real page (the real cap gives at most ~50 merged patches a side)


@dataclass(frozen=True)
class PatchGrid:
    """Where a page image's patch tokens sit in its multi-vector, and what they cover.

    ``rows * cols`` image tokens sit contiguously at ``multi[offset : offset + rows * cols]``,
    row-major over the *merged* patch grid (Qwen2.5-VL: ``image_grid_thw`` / spatial merge 2, so
    one token per 28 x 28 pixels of the image the processor resized). The grid spans the whole
    encoded image; ``box`` (x0, y0, x1, y1, fractions of that image) is the part of it showing
    the page itself: less than all of it where the renderer padded a tiny or very long page.
    """

    offset: int
    rows: int
    cols: int
    box: tuple[float, float, float, float] = FULL_BOX

    def __post_init__(self) -> None:
        for name in ("offset", "rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"PatchGrid.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.offset < 0 or not (1 <= self.rows <= MAX_GRID_SIDE and 1 <= self.cols <= MAX_GRID_SIDE):
            raise ValueError(f"PatchGrid needs offset >= 0 and 1..{MAX_GRID_SIDE} rows and columns, "
                             f"got offset {self.offset}, {self.rows} x {self.cols}")
        try:
            box = tuple(float(v) for v in self.box)
        except (TypeError, ValueError):
            raise ValueError(f"PatchGrid.box must be four numbers (x0, y0, x1, y1), got {self.box!r}") from None
        if len(box) != 4 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box) \
                or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"PatchGrid.box must be (x0, y0, x1, y1) fractions with 0 <= x0 < x1 <= 1 and "
                             f"0 <= y0 < y1 <= 1, got {self.box!r}")
        object.__setattr__(self, "box", box)

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    def fits(self, n_tokens: int) -> bool:
        """Whether a multi-vector of ``n_tokens`` rows holds this grid's tokens."""
        return self.offset + self.n_patches <= n_tokens

    def with_box(self, box: Sequence[float]) -> "PatchGrid":
        return PatchGrid(self.offset, self.rows, self.cols, tuple(box))  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class Embedding:
    """One input's embedding.

    single: float32 [D], L2-normalised (D = 2048 for the real model).
    multi:  float32 or float16 [T, 128], one L2-normalised row per real token.
    grid:   for a page image, where its patch tokens sit in ``multi`` (see PatchGrid); None for
            text, and for embeddings made without one (heatmaps then cannot be drawn).
    """

    single: np.ndarray
    multi: np.ndarray
    grid: PatchGrid | None = None

    def __post_init__(self) -> None:
        if self.single.ndim != 1:
            raise ValueError(f"Embedding.single must be 1-D, got shape {self.single.shape}")
        if self.multi.ndim != 2:
            raise ValueError(f"Embedding.multi must be 2-D [tokens, dim], got shape {self.multi.shape}")
        if self.grid is not None:
            if not isinstance(self.grid, PatchGrid):
                raise ValueError(f"Embedding.grid must be a PatchGrid or None, got {type(self.grid).__name__}")
            if not self.grid.fits(self.multi.shape[0]):
                raise ValueError(
                    f"Embedding.grid puts {self.grid.rows} x {self.grid.cols} patch tokens at offset "
                    f"{self.grid.offset}, past the {self.multi.shape[0]} token vectors")

    def __repr__(self) -> str:
        grid = "" if self.grid is None else f", grid={self.grid.rows}x{self.grid.cols}@{self.grid.offset}"
        return f"Embedding(single={self.single.shape[0]}-d, multi={self.multi.shape[0]}x{self.multi.shape[1]}{grid})"


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
