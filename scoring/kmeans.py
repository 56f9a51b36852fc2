"""Spherical k-means through FAISS, without FAISS's std::vector<float> conversion.

PyMuPDF's SWIG bindings register their own proxy for ``std::vector<float>``; once a page has been
rendered in the process, ``faiss.Kmeans.train`` receives PyMuPDF's proxy for its centroids and
fails an assertion. Training into an index and reading the centroids back from it gives the same
centroids (bit for bit) through a path that never converts a std::vector.
"""

from __future__ import annotations

import faiss
import numpy as np


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
