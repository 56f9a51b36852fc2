"""Single-vector candidate generator: a FAISS inner-product index over the pages' single vectors,
keyed by page id.

The Matryoshka width is fixed at creation (default: the full width); vectors are truncated and
renormalised on the way in, queries too. The kind is "flat" (exact), "hnsw" or "ivf"; "auto"
picks flat below ``AUTO_FLAT_MAX`` pages and HNSW above (a flat scan of 100k x 2048 fp32 reads
800 MB per query, ~100 ms here; HNSW answers in about a millisecond).

HNSW cannot remove vectors, so removed ids are kept in ``dead`` and excluded at search time by
an id selector; past ``REBUILD_DEAD_FRACTION`` the graph is rebuilt from the live vectors, which
the index itself holds (nothing is re-read from the store).
"""

from __future__ import annotations

import json
import math

import faiss
import numpy as np

from scoring.faiss_io import index_from_bytes, index_to_bytes, owned_copy

AUTO_FLAT_MAX = 5_000  # a flat scan of 10k x 2048 fp32 cost ~7 ms of a 17 ms search at 10k pages
REBUILD_DEAD_FRACTION = 0.2
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
KINDS = ("auto", "flat", "hnsw", "ivf")
# How IVF lists store vectors: float32; 8 bits per dimension of the residual to the list's centroid;
# or product-quantised residuals, N bytes a vector ("pq16": 16 sub-vectors of 8 bits)
# "fp16" (any kind): float16 values, for single vectors a store keeps in float16 (compact): the
# prefilter then holds the stored precision at half the bytes (HNSW over 128-d: 512 -> 256 B); its
# renormalised copy rounds once more (~1e-3 in a score).
CODECS = ("flat", "sq8", "pq16", "pq32", "fp16")
ADD_CHUNK = 1 << 18  # rows widened to float32 at a time: a big first add never holds everything in fp32


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka truncation: first ``dim`` values, L2-renormalised, float32, C-contiguous."""
    v = np.asarray(vectors, dtype=np.float32)[..., :dim]
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


class SinglePrefilter:
    """FAISS index over single vectors, keyed by int64 page id."""

    def __init__(
        self,
        dim: int,
        *,
        kind: str = "auto",
        nprobe: int = 16,
        flat_max: int | None = None,
        large_kind: str = "hnsw",
        lists_per_sqrt: float = 4.0,
        codec: str = "flat",
    ):
        """``flat_max`` (default ``AUTO_FLAT_MAX``) / ``large_kind``: what "auto" picks below /
        above that many vectors;
        ``lists_per_sqrt``: IVF lists per square root of the vector count;
        ``codec``: how IVF lists store vectors ("flat": float32, 4 B a dimension; "sq8": the residual
        to the list's centroid in 8 bits a dimension, a quarter of the memory, for the millions of
        token vectors of ``pooled.PooledIndex(m=0)``; "pq16" / "pq32": the residual product-quantised
        in 16 / 32 bytes, for a compact index's pooled vectors)."""
        if kind not in KINDS or large_kind not in KINDS[2:]:
            raise ValueError(f"unknown prefilter kind {kind!r}/{large_kind!r}; choose one of {list(KINDS)}")
        if codec not in CODECS:
            raise ValueError(f"unknown IVF codec {codec!r}; choose one of {list(CODECS)}")
        self.codec = codec
        self.dim = int(dim)
        self.kind = kind
        self.nprobe = nprobe
        self.flat_max, self.large_kind, self.lists_per_sqrt = flat_max, large_kind, float(lists_per_sqrt)
        self._index = self._empty(self._resolve(0))
        self._dead = np.zeros(0, dtype=np.int64)  # sorted; only ever non-empty for hnsw
        self._trained_at = 0  # collection size the IVF quantiser was trained on
        self._mapped = False  # loaded over a read-only memory map: copy before any change

    # -- structure -------------------------------------------------------------------------
    def _resolve(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if n < (AUTO_FLAT_MAX if self.flat_max is None else self.flat_max) else self.large_kind

    @property
    def current_kind(self) -> str:
        inner = faiss.downcast_index(self._index.index) if hasattr(self._index, "index") else self._index
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexIVF):
            return "ivf"
        return "flat"

    def _empty(self, kind: str, n_hint: int = 0) -> faiss.Index:
        half = self.codec == "fp16"
        if kind == "flat":
            if half:
                return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16,
                                                                    faiss.METRIC_INNER_PRODUCT))
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if kind == "hnsw":
            inner = (faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_fp16, HNSW_M, faiss.METRIC_INNER_PRODUCT)
                     if half else faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT))
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            return faiss.IndexIDMap2(inner)
        nlist = max(1, min(int(self.lists_per_sqrt * np.sqrt(max(n_hint, 1))), n_hint // 39))  # >= 39 points per list
        quantiser = faiss.IndexFlatIP(self.dim)
        if self.codec in ("sq8", "fp16"):
            qtype = faiss.ScalarQuantizer.QT_8bit if self.codec == "sq8" else faiss.ScalarQuantizer.QT_fp16
            ivf = faiss.IndexIVFScalarQuantizer(quantiser, self.dim, nlist, qtype, faiss.METRIC_INNER_PRODUCT)
        elif self.codec.startswith("pq"):
            # "pqN": N sub-vectors of 8 bits, or as many as divide a narrower width (16-d: 16)
            subs = math.gcd(self.dim, int(self.codec[2:]))
            ivf = faiss.IndexIVFPQ(quantiser, self.dim, nlist, subs, 8, faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFFlat(quantiser, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.max_points_per_centroid = 64  # train on a sample: k-means over millions is minutes here
        ivf.own_fields = True
        quantiser.this.disown()
        if self.codec == "flat":
            # reconstruct() after removals. Not for sq8: a hash map entry per vector (~40 B) would
            # cost a third of the codes themselves; its vectors are decoded list by list instead.
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return ivf

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._dead)

    def ids(self) -> np.ndarray:
        """Live page ids held, sorted."""
        all_ids = self._all_ids()
        return np.setdiff1d(all_ids, self._dead, assume_unique=True)

    def _all_ids(self) -> np.ndarray:
        if isinstance(self._index, faiss.IndexIDMap):
            return np.sort(faiss.vector_to_array(self._index.id_map).astype(np.int64))
        ivf = self._index
        inv = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
            for i in range(ivf.nlist)
            if inv.list_size(i)
        ]
        return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._decoded_lists():
            all_ids, vectors = self._decode_lists()
            return vectors[np.searchsorted(all_ids, np.asarray(ids, dtype=np.int64))]
        return np.asarray(self._index.reconstruct_batch(np.asarray(ids, dtype=np.int64)), dtype=np.float32)

    def _decoded_lists(self) -> bool:
        return self.current_kind == "ivf" and self._index.direct_map.type == faiss.DirectMap.NoMap

    def _decode_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector) of an IVF index without a direct map, sorted by id: each list's codes
        decoded in one call, plus its centroid where the codes hold residuals."""
        ivf = faiss.downcast_index(faiss.extract_index_ivf(self._index))
        inv, size = ivf.invlists, ivf.code_size
        centroids = faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(), ivf.nlist * self.dim)
        centroids = np.asarray(centroids, dtype=np.float32).reshape(ivf.nlist, self.dim)
        all_ids, parts = [], []
        for i in range(ivf.nlist):
            n = inv.list_size(i)
            if not n:
                continue
            codes = faiss.rev_swig_ptr(inv.get_codes(i), n * size).copy().reshape(n, size)
            coder = ivf.pq if isinstance(ivf, faiss.IndexIVFPQ) else ivf.sq
            out = np.asarray(coder.decode(codes), dtype=np.float32).reshape(n, self.dim)
            if ivf.by_residual:
                out += centroids[i]
            all_ids.append(faiss.rev_swig_ptr(inv.get_ids(i), n).copy().astype(np.int64))
            parts.append(out)
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        ids, vectors = np.concatenate(all_ids), np.concatenate(parts)
        order = np.argsort(ids, kind="stable")
        return ids[order], vectors[order]

    def _rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        kind = self._resolve(len(ids))
        index = self._empty(kind, len(ids))
        if kind == "ivf":
            if len(vectors) > 64 * index.nlist:  # k-means samples this many anyway: widen only those
                rng = np.random.default_rng(len(ids))
                sample = np.sort(rng.choice(len(vectors), size=64 * index.nlist, replace=False))
                index.train(truncate(vectors[sample], self.dim))
            else:
                index.train(truncate(vectors, self.dim) if len(vectors) else np.zeros((1, self.dim), np.float32))
            self._trained_at = len(ids)
        for a in range(0, len(ids), ADD_CHUNK):
            index.add_with_ids(truncate(vectors[a : a + ADD_CHUNK], self.dim), ids[a : a + ADD_CHUNK])
        self._index, self._dead, self._mapped = index, np.zeros(0, dtype=np.int64), False

    # -- mutation --------------------------------------------------------------------------
    def _own(self) -> None:
        """FAISS aborts the process when a memory-mapped index is modified: copy it first."""
        if self._mapped:
            self._index, self._mapped = owned_copy(self._index), False

    def _grows_ivf(self, n_new: int) -> bool:
        """Adding ``n_new`` vectors retrains the IVF lists: the collection passed 4x their training size."""
        return self.current_kind == "ivf" and len(self) + int(n_new) > 4 * max(self._trained_at, 1)

    def regrows_lossily(self, n_new: int) -> bool:
        """Whether adding ``n_new`` vectors would retrain IVF lists whose vectors are held only as
        lossy codes (sq8, pq): the rebuild re-encodes decoded vectors, a second quantisation on top
        of the first. A caller that can read the originals rebuilds from them instead."""
        return self.codec not in ("flat", "fp16") and self._grows_ivf(n_new)

    def add(self, page_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add pages (ids not already held); vectors [n, D>=dim] are truncated to ``dim``."""
        ids = np.asarray(page_ids, dtype=np.int64)
        if len(ids) == 0:
            return
        if len(vectors) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        n_after = len(self) + len(ids)
        if self._resolve(n_after) != self.current_kind or self._grows_ivf(len(ids)) or not self._index.is_trained:
            keep = self.ids()
            # vectors stay as given (often float16) until _rebuild widens them chunk by chunk; a first
            # build (nothing held yet) uses them as they are: no copy of millions of token vectors
            if len(keep) == 0:
                self._rebuild(ids, np.asarray(vectors)[:, : self.dim])
                return
            old = self._vectors(keep).astype(np.asarray(vectors).dtype, copy=False)
            self._rebuild(np.concatenate([keep, ids]), np.concatenate([old, np.asarray(vectors)[:, : self.dim]]))
            return
        self._own()
        for a in range(0, len(ids), ADD_CHUNK):
            self._index.add_with_ids(truncate(vectors[a : a + ADD_CHUNK], self.dim), ids[a : a + ADD_CHUNK])

    def remove(self, page_ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(page_ids, dtype=np.int64))
        if len(ids) == 0:
            return
        if self.current_kind != "hnsw":
            self._own()
            if self._decoded_lists():  # no direct map: a hashed batch selector scans the lists once
                self._index.remove_ids(faiss.IDSelectorBatch(ids))
            else:  # IVF's hashtable direct map only accepts an IDSelectorArray
                self._index.remove_ids(faiss.IDSelectorArray(ids))
            return
        ids = ids[np.isin(ids, self._all_ids())]
        self._dead = np.union1d(self._dead, ids)
        if len(self._dead) > REBUILD_DEAD_FRACTION * max(self._index.ntotal, 1):
            keep = self.ids()
            self._rebuild(keep, self._vectors(keep))

    # -- search ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` page ids and inner products per query row: int64 [nq, k], float32 [nq, k];
        missing slots are id -1 / score -inf."""
        q = truncate(np.atleast_2d(queries), self.dim)
        k = max(1, int(k))
        if self._index.ntotal == 0:
            return np.full((len(q), k), -1, np.int64), np.full((len(q), k), -np.inf, np.float32)
        kind = self.current_kind
        params = None
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(HNSW_EF_SEARCH, k)
            if len(self._dead):
                params.sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self._dead))
        elif kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
        scores, ids = self._index.search(q, k, params=params) if params else self._index.search(q, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return ids.astype(np.int64), scores

    # -- persistence -----------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {
            "dim": self.dim, "kind": self.kind, "nprobe": self.nprobe, "trained_at": self._trained_at,
            "flat_max": self.flat_max, "large_kind": self.large_kind, "lists_per_sqrt": self.lists_per_sqrt,
            "codec": self.codec,
        }
        return {
            "faiss": index_to_bytes(self._index),
            "dead": self._dead.copy(),
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }

    @classmethod
    def from_arrays(cls, arrays: dict) -> "SinglePrefilter":
        """``arrays["faiss"]`` is the serialised index, or an index already opened with
        ``faiss_io.map_index`` (then it is copied only if this prefilter is ever modified)."""
        meta = json.loads(bytes(np.asarray(arrays["meta"], dtype=np.uint8)).decode())
        self = cls(
            meta["dim"], kind=meta["kind"], nprobe=meta["nprobe"], flat_max=meta.get("flat_max"),
            large_kind=meta.get("large_kind", "hnsw"), lists_per_sqrt=meta.get("lists_per_sqrt", 4.0),
            codec=meta.get("codec", "flat"),
        )
        stored = arrays["faiss"]
        if isinstance(stored, faiss.Index):  # opened by the caller over a memory map
            self._index, self._mapped = stored, True
        else:
            self._index = index_from_bytes(stored)
        self._dead = np.asarray(arrays["dead"], dtype=np.int64).copy()
        self._trained_at = int(meta["trained_at"])
        if self._index.d != self.dim:
            raise ValueError(f"stored prefilter is {self._index.d}-d but its metadata says {self.dim}")
        return self

    def to_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        np.savez(buf, **self.to_arrays())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SinglePrefilter":
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})
