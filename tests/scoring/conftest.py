"""A small in-memory VectorSource (page_id -> (single, multi fp16)) and random page makers."""

from __future__ import annotations

import numpy as np
import pytest


class FakeSource:
    """Implements scoring.source.VectorSource over a dict; ids must be added in increasing order."""

    def __init__(self, single_dim: int = 64, multi_dim: int = 16):
        self.single_dim, self.multi_dim = single_dim, multi_dim
        self.pages: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.next_id = 1
        self.multi_reads = 0  # pages whose multi-vectors were read, to check sync reads little

    def add(self, single: np.ndarray, multi: np.ndarray) -> int:
        pid = self.next_id
        self.next_id += 1
        self.pages[pid] = (np.asarray(single, np.float32), np.asarray(multi, np.float16))
        return pid

    def remove(self, pid: int) -> None:
        del self.pages[pid]

    def live_page_ids(self) -> np.ndarray:
        return np.array(sorted(self.pages), dtype=np.int64)

    def single_vectors(self, page_ids):
        return np.stack([self.pages[int(i)][0] for i in page_ids]) if len(page_ids) else np.zeros((0, self.single_dim), np.float32)

    def multi_vectors(self, page_ids):
        self.multi_reads += len(page_ids)
        return [self.pages[int(i)][1] for i in page_ids]


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_page(rng, single_dim=64, multi_dim=16, tokens=None):
    """Tokens around two topics; the single vector is an independent noisy view of the page."""
    t = int(tokens if tokens is not None else rng.integers(1, 40))
    topics = normalise(rng.standard_normal((2, multi_dim)))
    multi = normalise(topics[rng.integers(0, 2, t)] + 0.6 * rng.standard_normal((t, multi_dim)))
    single = normalise(rng.standard_normal(single_dim))
    return single.astype(np.float32), multi.astype(np.float16)


def fill(source: FakeSource, rng, n: int, **kw) -> list[int]:
    return [source.add(*random_page(rng, source.single_dim, source.multi_dim, **kw)) for _ in range(n)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def source(rng):
    src = FakeSource()
    fill(src, rng, 120)
    return src
