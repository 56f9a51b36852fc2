"""The read-only view of stored vectors that search needs. The indexer's Store implements it;
scoring and search code depend on this protocol only, never on the store itself."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class VectorSource(Protocol):
    single_dim: int
    multi_dim: int

    def live_page_ids(self) -> np.ndarray:
        """int64 [N], sorted ascending: every page currently in the index. Ids are never reused."""

    def single_vectors(self, page_ids: np.ndarray) -> np.ndarray:
        """float32 [len(page_ids), width], rows in the order of ``page_ids``; width is single_dim, or a
        store's narrower ``single_width`` (a Matryoshka prefix) where it has one."""

    def multi_vectors(self, page_ids: np.ndarray) -> Sequence[np.ndarray]:
        """One array [T_i, multi_dim] per page id, in order: float16 (stored as is; may be read-only
        memory-map views) or float32 (decoded from a codec's records)."""
