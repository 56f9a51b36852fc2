"""FAISS helpers that pagelens needs beyond FAISS's Python wrappers.

- Spherical k-means without FAISS's std::vector<float> conversion: PyMuPDF's SWIG bindings register
  their own proxy for ``std::vector<float>``; once a page has been rendered in the process,
  ``faiss.Kmeans.train`` receives PyMuPDF's proxy for its centroids and fails an assertion.
  Training into an index and reading the centroids back gives the same centroids bit for bit.
- Memory-mapped loading: ``map_index`` opens a saved index read-only over a memory map (flat codes,
  HNSW storage and IVF lists are not copied), so opening a 100k-page index costs milliseconds.
  A mapped index must never be modified (FAISS aborts the process); ``owned_copy`` makes a private
  copy first.
"""

from __future__ import annotations

import os

import faiss
import numpy as np

MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 10,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    min_points_per_centroid: int = 1,
) -> np.ndarray:
    """float32 [k, d] unit centroids of the rows of ``x`` (deterministic for a seed)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    d = x.shape[1]
    clustering = faiss.Clustering(d, int(k))
    clustering.niter = int(niter)
    clustering.seed = int(seed)
    clustering.spherical = True
    clustering.verbose = False
    clustering.max_points_per_centroid = int(max_points_per_centroid)
    clustering.min_points_per_centroid = int(min_points_per_centroid)
    index = faiss.IndexFlatIP(d)
    clustering.train(x, index)
    return index.reconstruct_n(0, index.ntotal)


def index_to_bytes(index: faiss.Index) -> np.ndarray:
    """The index serialised, as uint8 (through a callback writer: no std::vector conversion)."""
    chunks: list[bytes] = []
    writer = faiss.PyCallbackIOWriter(lambda b: chunks.append(bytes(b)))
    faiss.write_index(index, writer)
    del writer  # flushes
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def index_from_bytes(data: np.ndarray) -> faiss.Index:
    return faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))


def map_index(path: str | os.PathLike) -> faiss.Index:
    """Open a saved index read-only over a memory map. Never modify the result."""
    return faiss.read_index(os.fspath(path), MMAP_FLAGS)


def owned_copy(index: faiss.Index) -> faiss.Index:
    """A private, modifiable copy (of a mapped index, say)."""
    return index_from_bytes(index_to_bytes(index))
