"""Token pooling at indexing time: a page's T token vectors -> ceil(T / pool_factor) unit vectors.

Clavie et al. (2024, "Reducing the footprint of multi-vector retrieval with minimal performance
impact via token pooling") cluster each page's tokens hierarchically (Ward) into T / pool_factor
clusters and store the clusters' normalised means in place of the tokens; pool factor 3 kept about
97% of ColPali's nDCG@5 on ViDoRe. These vectors are what the exact MaxSim rerank then reads, so
unlike ``scoring/pooling.py`` (64 vectors per page for candidate generation only) this loses
fidelity for good, in exchange for 1/pool_factor of the bytes and of the rerank's work.

Two methods, numpy only (scipy is not a dependency):

- ``"ward"`` (default): exact Ward agglomerative clustering by the nearest-neighbour-chain
  algorithm (O(T^2) memory, about 3T vectorised steps of O(T)), Lance-Williams updates on
  squared Euclidean distances (for unit vectors, 2 - 2 cos: the cosine distance Clavie et al.
  use). The whole dendrogram is built, then cut at exactly ceil(T / pool_factor) clusters.
- ``"kmeans"``: spherical k-means with k = ceil(T / pool_factor), farthest-first init (first
  token, then repeatedly the token least similar to every centre so far), ``KMEANS_ITERATIONS``
  steps. A cluster left empty takes the token that fits its own cluster worst, so the output size
  is exact too.

``benchmarks/compact.py`` measures both (MaxSim fidelity and time per page). Output rows are
ordered by the first token of their cluster (reading order of the page) and the result is
deterministic: no randomness anywhere. pool_factor 1 returns the tokens unchanged (as float32).
"""

from __future__ import annotations

import numpy as np

METHODS = ("ward", "kmeans")
DEFAULT_METHOD = "ward"
KMEANS_ITERATIONS = 10
MAX_WARD_TOKENS = 4096  # a [T, T] float64 distance matrix: 128 MiB at this size


def pooled_length(n_tokens: int, pool_factor: int) -> int:
    """Rows ``pool_tokens`` returns for a page of ``n_tokens`` tokens."""
    return -(-int(n_tokens) // int(pool_factor))


def pool_tokens(tokens: np.ndarray, pool_factor: int, *, method: str = DEFAULT_METHOD) -> np.ndarray:
    """float [T, d] -> float32 [ceil(T / pool_factor), d] of unit cluster means (see module doc)."""
    if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, np.integer)) or pool_factor < 1:
        raise ValueError(f"pool_factor must be an integer >= 1 (1 = no pooling), got {pool_factor!r}")
    if method not in METHODS:
        raise ValueError(f"unknown pooling method {method!r}; choose one of {list(METHODS)}")
    x = np.asarray(tokens)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"tokens must be a float array [T, d], got {x.dtype} {x.shape}")
    x = np.array(x, dtype=np.float32)  # a copy: pool_factor 1 must not alias the caller's array
    if not np.isfinite(x).all():
        raise ValueError("tokens contain NaN or infinity; check the encoder output")
    k = pooled_length(len(x), pool_factor)
    if pool_factor == 1 or k >= len(x):
        return x
    if method == "ward":
        if len(x) > MAX_WARD_TOKENS:
            raise ValueError(f"ward pooling holds a [T, T] matrix; T={len(x)} is over {MAX_WARD_TOKENS}: use method='kmeans'")
        labels = ward_labels(x, k)
    else:
        labels = kmeans_labels(x, k)
    return _cluster_means(x, labels)


def _cluster_means(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    # renumber clusters by their first token, so rows follow the page's reading order
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    ids = rank[inverse]
    sums = _label_sums(x.astype(np.float64), ids, len(order))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def _label_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """[k, d] sums of the rows of x per label (0 for a label with no rows); sort + reduceat,
    much faster than np.add.at."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sums = np.zeros((k, x.shape[1]), x.dtype)
    sums[sorted_labels[starts]] = np.add.reduceat(x[order], starts, axis=0)
    return sums


def ward_labels(x: np.ndarray, k: int) -> np.ndarray:
    """Cluster label (int64 [T]) of each row of ``x`` in the Ward dendrogram cut at ``k`` clusters."""
    n = len(x)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    xf = x.astype(np.float64)
    sq = np.einsum("ij,ij->i", xf, xf)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (xf @ xf.T), 0.0)
    np.fill_diagonal(dist, np.inf)
    size = np.ones(n, np.float64)
    alive = np.ones(n, bool)
    merges: list[tuple[float, int, int]] = []
    chain: list[int] = []
    for _ in range(3 * n * n):  # the chain grows at most n times between merges; a hard bound anyway
        if len(merges) == n - 1:
            break
        if not chain:
            chain.append(int(np.argmax(alive)))
        a = chain[-1]
        row = dist[a]
        b = int(np.argmin(row))
        if len(chain) > 1 and row[chain[-2]] <= row[b]:
            b = chain[-2]  # ties go back down the chain, which is what makes it terminate
        if len(chain) > 1 and b == chain[-2]:
            chain.pop(), chain.pop()
            h = row[b]
            na, nb = size[a], size[b]
            # Lance-Williams for Ward on squared distances; the merged cluster lives in slot a
            new = ((na + size) * dist[a] + (nb + size) * dist[b] - size * h) / (na + nb + size)
            new[~alive] = np.inf
            new[a] = new[b] = np.inf
            dist[a, :] = new
            dist[:, a] = new
            dist[b, :] = np.inf
            dist[:, b] = np.inf
            alive[b] = False
            size[a] = na + nb
            merges.append((float(h), a, b))
        else:
            chain.append(b)
    else:  # pragma: no cover - unreachable for finite input
        raise RuntimeError("ward clustering did not finish")
    # the chain finds merges out of height order; the cut at k keeps the n - k lowest
    order = sorted(range(len(merges)), key=lambda i: (merges[i][0], i))
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in order[: n - k]:
        _, a, b = merges[i]
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def kmeans_labels(x: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Spherical k-means labels (int64 [T]) with a farthest-first init; deterministic."""
    n = len(x)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    pick = np.zeros(k, np.int64)
    best = unit @ unit[0]  # similarity to the nearest chosen centre
    for j in range(1, k):
        pick[j] = int(np.argmin(best))
        best = np.maximum(best, unit @ unit[pick[j]])
    centres = unit[pick].copy()
    labels = np.zeros(n, np.int64)
    for _ in range(iterations):
        labels = np.argmax(unit @ centres.T, axis=1)
        sums = _label_sums(unit, labels, k)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centres = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centres)
    sims = unit @ centres.T
    labels = np.argmax(sims, axis=1).astype(np.int64)
    # keep exactly k clusters: an empty one takes the token that fits its own cluster worst,
    # from a cluster that keeps at least one token (k < n, so there always is one)
    counts = np.bincount(labels, minlength=k)
    own = sims[np.arange(n), labels]
    for c in np.flatnonzero(counts == 0):
        donors = counts[labels] > 1
        t = int(np.argmin(np.where(donors, own, np.inf)))
        counts[labels[t]] -= 1
        labels[t], counts[c], own[t] = c, 1, 1.0
    return labels


__all__ = ["DEFAULT_METHOD", "METHODS", "kmeans_labels", "pool_tokens", "pooled_length", "ward_labels"]
