"""Token-level candidate generator in the manner of PLAID.

A codebook of k-means centroids is trained on (a sample of) token vectors. Each page's tokens are
assigned to their nearest centroid and the page is entered once in the inverted list of every
centroid it uses (CSR arrays: ``list_offsets`` [C+1], ``list_pos`` [E] of page positions).

A query token probes its ``nprobe`` most similar centroids. A page's approximate score is
PLAID's centroid interaction restricted to the probed centroids:

    sum over query tokens t of  max(floor_t, max over probed centroids c that the page uses of q_t.c)

where floor_t is the similarity of the t-th token's least similar probed centroid (a page that
uses none of them can at best score that). This catches pages whose matching region is too small
to move the mean-pooled single vector, which is what the single-vector prefilter misses.

Pages are addressed internally by position in ``page_ids`` (insertion order). Removal only clears
``alive``; ``compact()`` drops dead positions from the lists, re-reading nothing. Additions are
assigned to the existing centroids and merged into the lists lazily, in one pass.
"""

from __future__ import annotations

import json
from typing import Sequence

import faiss
import numpy as np

from scoring.faiss_io import spherical_kmeans

DEFAULT_NPROBE = 4
MIN_CENTROIDS = 64
MAX_CENTROIDS = 2048
COMPACT_DEAD_FRACTION = 0.2


def suggest_centroids(n_tokens: int) -> int:
    """A power of two near 2*sqrt(tokens), clipped to [64, 2048]. PLAID uses 16*sqrt; assigning
    every token to 2048 centroids already costs ~6 ms of CPU per 750-token page here, so the
    codebook stays small and lists stay long (still selective enough: see benchmarks/search.py)."""
    c = 2 ** int(round(np.log2(max(2.0 * np.sqrt(max(n_tokens, 1)), 1.0))))
    return int(min(max(c, MIN_CENTROIDS), MAX_CENTROIDS))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


class TokenIndex:
    """Codebook + inverted lists centroid -> pages. Build with ``TokenIndex.train``."""

    def __init__(self, centroids: np.ndarray, *, version: int = 1):
        self.centroids = _normalise(centroids)
        self.version = int(version)
        self.page_ids = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)
        self.page_lengths = np.zeros(0, dtype=np.int64)  # tokens per page, for retrain decisions
        self.list_offsets = np.zeros(len(self.centroids) + 1, dtype=np.int64)
        self.list_pos = np.zeros(0, dtype=np.int32)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (codes, positions) not merged yet
        self._quantiser: faiss.Index | None = None
        self._id_order: np.ndarray | None = None

    @classmethod
    def train(
        cls,
        sample: np.ndarray,
        n_centroids: int | None = None,
        *,
        seed: int = 0,
        niter: int = 10,
        version: int = 1,
    ) -> "TokenIndex":
        """k-means (spherical, FAISS) over sample tokens [N, d]; deterministic for a given seed."""
        x = _normalise(sample)
        c = n_centroids or suggest_centroids(len(x))
        c = max(1, min(c, len(x) // 39))  # FAISS wants >= 39 points per centroid (else it warns)
        centroids = spherical_kmeans(x, c, niter=niter, seed=seed, max_points_per_centroid=64, min_points_per_centroid=1)
        return cls(centroids, version=version)

    # -- bookkeeping ----------------------------------------------------------------------------
    @property
    def n_centroids(self) -> int:
        return len(self.centroids)

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def __len__(self) -> int:
        return int(self.alive.sum())

    def live_ids(self) -> np.ndarray:
        return np.sort(self.page_ids[self.alive])

    def _positions(self, page_ids: np.ndarray) -> np.ndarray:
        """Positions of the given ids that are held and alive (unknown ids are ignored)."""
        if len(self.page_ids) == 0 or len(page_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        if self._id_order is None:
            self._id_order = np.argsort(self.page_ids, kind="stable")
        sorted_ids = self.page_ids[self._id_order]
        at = np.minimum(np.searchsorted(sorted_ids, page_ids), len(sorted_ids) - 1)
        pos = self._id_order[at[sorted_ids[at] == page_ids]]
        return pos[self.alive[pos]]

    def assign(self, tokens: np.ndarray) -> np.ndarray:
        """Nearest centroid (inner product) of each token row; int64 [N]."""
        if self._quantiser is None:
            self._quantiser = faiss.IndexFlatIP(self.dim)
            self._quantiser.add(self.centroids)
        if len(tokens) == 0:
            return np.zeros(0, dtype=np.int64)
        _, idx = self._quantiser.search(np.ascontiguousarray(tokens, dtype=np.float32), 1)
        return idx[:, 0].astype(np.int64)

    # -- mutation -------------------------------------------------------------------------------
    def add(self, page_ids: np.ndarray, pages: Sequence[np.ndarray]) -> None:
        """Assign the pages' tokens to the existing centroids. Ids must not be held already."""
        ids = self._new_ids(page_ids, len(pages))
        if len(ids) == 0:
            return
        lengths = np.array([len(p) for p in pages], dtype=np.int64)
        flat = np.concatenate([np.asarray(p) for p in pages], axis=0) if lengths.sum() else np.zeros((0, self.dim))
        self._enter(ids, lengths, self.assign(flat))

    def add_assigned(self, page_ids: np.ndarray, assignments: Sequence[np.ndarray]) -> None:
        """Enter pages whose tokens' nearest centroids are known already (a residual codec's
        stored centroid ids, when this index uses that codec's centroids): nothing is computed."""
        ids = self._new_ids(page_ids, len(assignments))
        if len(ids) == 0:
            return
        lengths = np.array([len(a) for a in assignments], dtype=np.int64)
        codes = np.concatenate([np.asarray(a, dtype=np.int64) for a in assignments]) if lengths.sum() else np.zeros(0, np.int64)
        if len(codes) and (codes.min() < 0 or codes.max() >= self.n_centroids):
            raise ValueError(f"centroid ids must be in [0, {self.n_centroids}): the codec and this index disagree")
        self._enter(ids, lengths, codes)

    def _new_ids(self, page_ids, n_pages: int) -> np.ndarray:
        ids = np.asarray(page_ids, dtype=np.int64)
        if len(ids) != n_pages:
            raise ValueError(f"{len(ids)} page ids but {n_pages} pages")
        if len(ids) and len(self._positions(ids)):
            raise ValueError("some page ids are already in the token index; remove them first")
        return ids

    def _enter(self, ids: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> None:
        first = len(self.page_ids)
        pos = np.repeat(np.arange(first, first + len(ids), dtype=np.int64), lengths)
        # one entry per (centroid, page): sorted by centroid, then page
        key = np.unique(codes * (first + len(ids)) + pos)
        self._pending.append((key // (first + len(ids)), key % (first + len(ids))))
        self.page_ids = np.concatenate([self.page_ids, ids])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), dtype=bool)])
        self.page_lengths = np.concatenate([self.page_lengths, lengths])
        self._id_order = None

    def remove(self, page_ids: np.ndarray) -> None:
        pos = self._positions(np.asarray(page_ids, dtype=np.int64))
        if len(pos) == 0:
            return
        if not self.alive.flags.writeable:
            self.alive = self.alive.copy()
        self.alive[pos] = False
        if (~self.alive).sum() > COMPACT_DEAD_FRACTION * max(len(self.alive), 1):
            self.compact()

    def _merge(self) -> None:
        if not self._pending:
            return
        codes = np.concatenate([c for c, _ in self._pending])
        pos = np.concatenate([p for _, p in self._pending]).astype(np.int32)
        order = np.argsort(codes, kind="stable")  # keeps page order within a centroid
        codes, pos = codes[order], pos[order]
        # new entries go to the end of their centroid's list
        self.list_pos = np.insert(self.list_pos, self.list_offsets[codes + 1], pos)
        counts = np.bincount(codes, minlength=self.n_centroids)
        self.list_offsets = self.list_offsets + np.concatenate([[0], np.cumsum(counts)])
        self._pending = []

    def compact(self) -> None:
        """Drop dead pages from positions and lists (no vectors needed)."""
        self._merge()
        keep = self.alive
        new_pos = np.cumsum(keep) - 1
        entry_list = np.repeat(np.arange(self.n_centroids), np.diff(self.list_offsets))
        live_entries = keep[self.list_pos]
        counts = np.bincount(entry_list[live_entries], minlength=self.n_centroids)
        self.list_pos = new_pos[self.list_pos[live_entries]].astype(np.int32)
        self.list_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.page_ids = self.page_ids[keep]
        self.page_lengths = self.page_lengths[keep]
        self.alive = np.ones(len(self.page_ids), dtype=bool)
        self._id_order = None

    # -- search ---------------------------------------------------------------------------------
    def candidates(self, query: np.ndarray, n: int, *, nprobe: int = DEFAULT_NPROBE) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` live page ids with their approximate scores, best first (ties: lower id)."""
        self._merge()
        q = np.ascontiguousarray(query, dtype=np.float32)
        n_pos = len(self.page_ids)
        if n_pos == 0 or len(q) == 0 or n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        nprobe = max(1, min(int(nprobe), self.n_centroids))
        sims = q @ self.centroids.T  # [Tq, C]
        probe = np.argpartition(-sims, nprobe - 1, axis=1)[:, :nprobe]
        psims = np.take_along_axis(sims, probe, axis=1)
        best_first = np.argsort(-psims, axis=1, kind="stable")  # so a (token, page) pair's first entry is its max
        probe, psims = np.take_along_axis(probe, best_first, axis=1), np.take_along_axis(psims, best_first, axis=1)
        floor = psims.min(axis=1)
        # Dense over positions: a list holds a page once and a token's probes come best first, so
        # a page's first list for a token is its best; ``seen`` marks the last token that reached
        # each position. 1M pages, 16 query tokens x 4 probes (~570k entries): 76-86 ms against
        # 114-132 ms for the sparse sort by (token, page) it replaces (scratch, loaded machine).
        gain = np.zeros(n_pos, np.float32)
        seen = np.zeros(n_pos, np.int32)
        offsets, positions = self.list_offsets, self.list_pos
        for t in range(len(q)):
            for j in range(nprobe):
                c = probe[t, j]
                pos = positions[offsets[c]:offsets[c + 1]]
                new = pos[seen[pos] != t + 1]
                seen[new] = t + 1
                gain[new] += psims[t, j] - floor[t]
        cand = np.flatnonzero(seen)
        if len(cand) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        score = gain[cand] + np.float32(floor.sum())
        keep = self.alive[cand]
        cand, score = cand[keep], score[keep]
        if len(cand) > n:
            top = np.argpartition(-score, n - 1)[:n]
            cand, score = cand[top], score[top]
        ids = self.page_ids[cand]
        order = np.lexsort((ids, -score))
        return ids[order], score[order].astype(np.float32)

    # -- persistence ----------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        self._merge()
        meta = {"version": self.version}
        return {
            "centroids": self.centroids,
            "page_ids": self.page_ids,
            "alive": self.alive,
            "page_lengths": self.page_lengths,
            "list_offsets": self.list_offsets,
            "list_pos": self.list_pos,
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "TokenIndex":
        """Arrays may be read-only memory maps: searching reads them in place, the first
        mutation copies what it changes."""
        meta = json.loads(bytes(np.asarray(arrays["meta"], dtype=np.uint8)).decode())
        self = cls.__new__(cls)
        self.centroids = np.asarray(arrays["centroids"], dtype=np.float32)
        self.version = int(meta["version"])
        self.page_ids = np.asarray(arrays["page_ids"], dtype=np.int64)
        self.alive = np.asarray(arrays["alive"], dtype=bool)
        self.page_lengths = np.asarray(arrays["page_lengths"], dtype=np.int64)
        self.list_offsets = np.asarray(arrays["list_offsets"], dtype=np.int64)
        self.list_pos = np.asarray(arrays["list_pos"], dtype=np.int32)
        self._pending, self._quantiser, self._id_order = [], None, None
        c = len(self.centroids)
        p = len(self.page_ids)
        if (
            self.list_offsets.shape != (c + 1,)
            or self.alive.shape != (p,)
            or self.page_lengths.shape != (p,)
            or self.list_offsets[0] != 0
            or self.list_offsets[-1] != len(self.list_pos)
            or (len(self.list_pos) and (self.list_pos.min() < 0 or self.list_pos.max() >= p))
        ):
            raise ValueError("token index arrays are inconsistent; rebuild them from the store")
        return self
