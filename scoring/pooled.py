"""Pooled-token candidate generator.

Each page's tokens are pooled into at most ``m`` unit vectors (``pooling.pool_pages``), and all
pooled vectors go into one FAISS inner-product index keyed ``page_id * SLOTS + j``
(``prefilter.SinglePrefilter`` at the token width, so flat / IVF / HNSW and removal come with it).

A query searches all its tokens at once, ``per_token`` neighbours each, and pre-scores every page
that came back by approximate MaxSim:

    sum over query tokens t of  max(floor_t, max over the page's returned vectors v of q_t.v)

where floor_t is the t-th token's ``per_token``-th best score (a page not returned for t can at
best score that). Unlike the global codebook of ``tokens.py``, whose 2048 centroids are shared
by many pages (their approximate scores tie), a pooled vector belongs to one page and sits near
that page's own region, so the pre-score separates pages that share a topic.

With ``m = 0`` nothing is pooled: every token vector goes in (up to ``slots`` per page; a longer
page is pooled down to ``slots``), stored in IVF lists as 8-bit residuals (``codec="sq8"``, 136 B a
token with its id). That is the default generator ("ann" in ``rank.py``): on 24k real pages it
finds at K = 200 what the m = 64 pooled index finds at K = 800, since no mean blurs the rare
tokens that decide MaxSim.

Pages are tracked in ``page_ids`` / ``counts`` (sorted by id) so removal knows each page's sub-ids
and a reload can check itself against the source without reading FAISS.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

from scoring.pooling import DEFAULT_CLUSTERS, DEFAULT_ITERATIONS, pool_pages
from scoring.prefilter import SinglePrefilter

SLOTS = 64  # sub-ids per page of a pooled index: m must not exceed it
ALL_TOKEN_SLOTS = 4096  # sub-ids per page with m = 0 (every token); page ids stay below 2**51
DEFAULT_PER_TOKEN = 1024
# IVF lists probed per query token. Every token (m = 0): 8 of ~2*sqrt(N) lists; on 24k real pages
# recall@10 0.9963 / 0.9963 / 0.9953 at 16 / 12 / 8 probes (0.996 at 32), 100k synthetic pages 1.000
# at each, and 8 probes scan a quarter of 32's vectors (benchmarks/realtext.py, search.py). A search
# setting, not structure: a saved index takes the current value when loaded.
ALL_TOKEN_NPROBE = 8
POOLED_NPROBE = 32
FLAT_MAX_VECTORS = 50_000  # flat scan of 160k x 128 fp32 (10k pages) took ~25 ms of a 35 ms search; IVF above
# A compact index's pooled generator: 16 means a page pooled from the decoded codes, product-quantised
# in IVF lists (32 B + an 8 B id a vector: 640 B a page). Measured on 1M synthetic pages x 64 tokens
# (benchmarks/compact_pooled.py; README, "Compact storage"): its order separates the pages of one topic,
# which the centroid lists' pre-scores cannot (they tie across the topic).
COMPACT_MEANS = 16
COMPACT_CODEC = "pq32"
COMPACT_NPROBE = 16  # at 1M pages x 16 means (sq8) recall@10 0.970 at 16 probes and at 32, p50 54 / 83 ms
PQ_MIN_VECTORS = 10_000  # PQ's k-means wants ~39 x 256 points; fewer vectors stay in a float32 flat index


def pooled_nprobe(m: int, codec: str) -> int:
    """IVF lists probed per query token: a search setting, so a loaded index takes today's value."""
    return ALL_TOKEN_NPROBE if m == 0 else COMPACT_NPROBE if codec.startswith("pq") else POOLED_NPROBE


class PooledIndex:
    """Pooled vectors (or, with ``m = 0``, every token vector) of every page in one FAISS index;
    see the module docstring."""

    def __init__(self, dim: int, *, m: int = DEFAULT_CLUSTERS, iterations: int = DEFAULT_ITERATIONS, kind: str = "auto",
                 codec: str | None = None):
        slots = ALL_TOKEN_SLOTS if m == 0 else SLOTS
        if not 0 <= m <= SLOTS:
            raise ValueError(f"m must be 0 (every token) or in [1, {SLOTS}], got {m}")
        self.m, self.iterations, self.slots = int(m), int(iterations), slots
        codec = ("sq8" if m == 0 else "flat") if codec is None else codec
        flat_max = PQ_MIN_VECTORS if codec.startswith("pq") else FLAT_MAX_VECTORS
        self.index = SinglePrefilter(dim, kind=kind, flat_max=flat_max, large_kind="ivf",
                                     nprobe=pooled_nprobe(m, codec), lists_per_sqrt=2.0, codec=codec)
        self.page_ids = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)

    @property
    def dim(self) -> int:
        return self.index.dim

    @property
    def codec(self) -> str:
        return self.index.codec

    def __len__(self) -> int:
        return len(self.page_ids)

    def live_ids(self) -> np.ndarray:
        return self.page_ids

    # -- mutation -------------------------------------------------------------------------------
    def add(self, page_ids: np.ndarray, pages: Sequence[np.ndarray]) -> None:
        """Pool and index pages whose ids are not held yet."""
        self.add_batches([(page_ids, pages)])

    def add_batches(self, batches: Iterable[tuple[np.ndarray, Sequence[np.ndarray]]]) -> None:
        """Pool batch by batch (only one batch of tokens in memory), then index everything in one
        FAISS add, so a big first sync trains IVF once instead of regrowing it."""
        all_ids, all_sub, all_vec, all_counts = [], [], [], []
        for page_ids, pages in batches:
            ids = np.asarray(page_ids, dtype=np.int64)
            if len(ids) != len(pages):
                raise ValueError(f"{len(ids)} page ids but {len(pages)} pages")
            if len(ids) and (ids.min() < 0 or ids.max() >= np.iinfo(np.int64).max // self.slots):
                raise ValueError(f"page ids must be in [0, 2**63 / {self.slots}) to be keyed in FAISS")
            if np.isin(ids, self.page_ids).any():
                raise ValueError("some page ids are already in the pooled index; remove them first")
            vectors, counts = self._vectors_of(pages)
            # held as float16 until FAISS widens them chunk by chunk: 1M pages x 16 means would
            # otherwise wait in memory as 8 GB of float32 before the one add
            all_ids.append(ids), all_counts.append(counts), all_vec.append(vectors.astype(np.float16, copy=False))
            all_sub.append(np.repeat(ids * self.slots, counts) + _ranks(counts))
        if not all_ids or sum(len(i) for i in all_ids) == 0:
            return
        ids, counts = np.concatenate(all_ids), np.concatenate(all_counts)
        self.index.add(np.concatenate(all_sub), np.concatenate(all_vec))
        page_ids = np.concatenate([self.page_ids, ids])
        order = np.argsort(page_ids, kind="stable")
        self.page_ids = page_ids[order]
        self.counts = np.concatenate([self.counts, counts])[order]

    def _vectors_of(self, pages: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """What goes into FAISS for these pages: (vectors, per-page counts). Every token (kept in
        float16, normalised, widened chunk by chunk on the way into FAISS) when m = 0."""
        if self.m:
            return pool_pages(pages, self.m, iterations=self.iterations)
        counts = np.fromiter((len(p) for p in pages), dtype=np.int64, count=len(pages))
        over = np.flatnonzero(counts > self.slots)
        parts = [np.asarray(p, dtype=np.float16) for p in pages]
        if len(over):  # beyond the sub-id slots: pool that page down to them
            pooled, pooled_counts = pool_pages([pages[i] for i in over], self.slots, iterations=self.iterations)
            starts = np.concatenate([[0], np.cumsum(pooled_counts)])
            for j, i in enumerate(over):
                parts[i] = pooled[starts[j] : starts[j + 1]].astype(np.float16)
                counts[i] = pooled_counts[j]
        dim = self.dim
        vectors = np.concatenate(parts, axis=0) if parts else np.zeros((0, dim), np.float16)
        return vectors.reshape(-1, dim), counts

    def regrows_lossily(self, n_pages: int) -> bool:
        """Whether adding ``n_pages`` more pages (at most ``m`` vectors each, or ``slots`` with
        m = 0) may retrain product-quantised lists from decoded codes: pool every page afresh then."""
        return self.index.regrows_lossily(int(n_pages) * (self.m or self.slots))

    def remove(self, page_ids: np.ndarray) -> None:
        held = np.isin(self.page_ids, np.asarray(page_ids, dtype=np.int64))
        if not held.any():
            return
        ids, counts = self.page_ids[held], self.counts[held]
        self.index.remove(np.repeat(ids * self.slots, counts) + _ranks(counts))
        self.page_ids, self.counts = self.page_ids[~held], self.counts[~held]

    # -- search ---------------------------------------------------------------------------------
    def candidates(self, query: np.ndarray, n: int, *, per_token: int = DEFAULT_PER_TOKEN) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` page ids with approximate MaxSim, best first (ties: lower id)."""
        q = np.atleast_2d(np.asarray(query, dtype=np.float32))
        if len(self.page_ids) == 0 or len(q) == 0 or n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        sub, sims = self.index.search(q, max(1, int(per_token)))  # [Tq, n'] each, best first
        found = sub >= 0
        floor = np.where(found.any(axis=1), np.where(found, sims, np.inf).min(axis=1), 0.0).astype(np.float32)
        tok = np.broadcast_to(np.arange(len(q))[:, None], sub.shape)[found]
        pages, inv = np.unique(sub[found] // self.slots, return_inverse=True)
        gain = (sims - floor[:, None])[found]
        # rows are sorted best first, so a (token, page) pair's first occurrence is its max
        _, first = np.unique(tok * len(pages) + inv, return_index=True)
        score = np.bincount(inv[first], weights=gain[first], minlength=len(pages)).astype(np.float32)
        score += np.float32(floor.sum())
        if len(pages) > n:
            top = np.argpartition(-score, n - 1)[:n]
            pages, score = pages[top], score[top]
        order = np.lexsort((pages, -score))
        return pages[order], score[order]

    # -- persistence ----------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {"m": self.m, "iterations": self.iterations, "slots": self.slots}
        arrays = {f"ix_{k}": v for k, v in self.index.to_arrays().items()}
        arrays.update({
            "page_ids": self.page_ids, "counts": self.counts,
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        })
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "PooledIndex":
        meta = json.loads(bytes(np.asarray(arrays["meta"], dtype=np.uint8)).decode())
        self = cls.__new__(cls)
        self.m, self.iterations = int(meta["m"]), int(meta["iterations"])
        self.slots = int(meta.get("slots", SLOTS))
        if not 0 <= self.m <= SLOTS or self.slots != (ALL_TOKEN_SLOTS if self.m == 0 else SLOTS):
            raise ValueError("pooled index metadata is inconsistent; rebuild it from the store")
        self.index = SinglePrefilter.from_arrays({k[3:]: v for k, v in arrays.items() if k.startswith("ix_")})
        self.index.nprobe = pooled_nprobe(self.m, self.index.codec)
        self.page_ids = np.array(arrays["page_ids"], dtype=np.int64)
        self.counts = np.array(arrays["counts"], dtype=np.int64)
        if (
            self.page_ids.shape != self.counts.shape
            or (len(self.page_ids) > 1 and (np.diff(self.page_ids) <= 0).any())
            or int(self.counts.sum()) != len(self.index)
        ):
            raise ValueError("pooled index arrays are inconsistent; rebuild them from the store")
        return self


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


__all__ = ["ALL_TOKEN_SLOTS", "COMPACT_CODEC", "COMPACT_MEANS", "DEFAULT_PER_TOKEN", "PooledIndex", "SLOTS", "pooled_nprobe"]
