"""Per-page token pooling: each page's token vectors -> at most ``m`` L2-normalised cluster means.

Spherical k-means with a deterministic init, run for many pages at once: a batch of pages is
padded to its longest page with a mask, so every step is one batched matmul (torch ``bmm`` on
float32) instead of a Python loop per page. This is the token pooling of Answer.AI / Qdrant, used
here only to *generate candidates*; the exact MaxSim rerank still reads the full tokens.

Init is farthest-first (over a strided sample of the page's tokens): the first centre is the
page's first token, each next one the token least similar to the centres chosen so far. It reaches a small region (a caption, a figure
label: a few percent of the page) that evenly spaced or random seeds often miss, and a small
region is exactly what a "needle" query asks for. A page with at most ``m`` tokens keeps its
tokens as they are. Clusters that end up empty are dropped.

Imports torch lazily (a pinned dependency), and ``scoring.threads``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_CLUSTERS = 64  # real text: 16 blurred the rare tokens that decide MaxSim (see scoring/rank.py)
DEFAULT_ITERATIONS = 6
# Padded tokens pooled at once. Every init and k-means step is a pass over the batch, so a batch that
# stays in cache beats one big bmm: 64-token pages, one thread, 0.73 / 1.15 ms a page at 8,192 /
# 131,072 (700-token pages 4.9 / 6.5 ms; scratch, loaded 2-core VM).
BATCH_TOKENS = 1 << 13
INIT_TOKENS = 128  # padded tokens per batch: keeps the [b, L, m] blocks in a few MB


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pool_pages(
    pages: Sequence[np.ndarray],
    m: int = DEFAULT_CLUSTERS,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    batch_tokens: int = BATCH_TOKENS,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool each page [T_i, d] into at most ``m`` unit vectors.

    Returns ``(vectors, counts)``: float32 [sum(counts), d] (page by page, in order) and int64
    [len(pages)] vectors per page (``min(T_i, m)`` less any empty clusters; 0 for an empty page).
    """
    import torch

    from scoring.threads import single_threaded

    if m < 1:
        raise ValueError(f"m must be at least 1, got {m}")
    lengths = np.fromiter((len(p) for p in pages), dtype=np.int64, count=len(pages))
    dim = next((p.shape[1] for p in pages if p.ndim == 2), 0)
    out: list[np.ndarray] = [np.zeros((0, dim), np.float32)] * len(pages)
    counts = np.zeros(len(pages), dtype=np.int64)
    small = np.flatnonzero((lengths > 0) & (lengths <= m))
    for i in small:  # too few tokens to pool: the tokens are the pooled vectors
        out[i] = _normalise_rows(np.asarray(pages[i], dtype=np.float32))
        counts[i] = lengths[i]
    big = np.flatnonzero(lengths > m)
    # similar lengths together so padding stays small
    big = big[np.argsort(lengths[big], kind="stable")]
    start = 0
    while start < len(big):
        stop = start + 1  # pages are sorted by length, so the last one sets the padded width
        while stop < len(big) and (stop - start + 1) * int(lengths[big[stop]]) <= batch_tokens:
            stop += 1
        idx = big[start:stop]
        with single_threaded():  # small bmms: one thread was 1.5x faster than two here (scoring/threads.py)
            vecs, keep = _pool_batch(torch, [pages[i] for i in idx], lengths[idx], m, iterations)
        for row, i in enumerate(idx):
            out[i] = vecs[row][keep[row]]
            counts[i] = int(keep[row].sum())
        start = stop
    vectors = np.concatenate(out, axis=0) if len(out) else np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32), counts


def _pool_batch(torch, pages, lengths, m, iterations):
    b, width = len(pages), int(lengths.max())
    dim = pages[0].shape[1]
    x = np.zeros((b, width, dim), dtype=np.float32)
    for row, p in enumerate(pages):
        x[row, : len(p)] = p
    x = _normalise_rows(x)  # padded rows stay zero
    t = torch.from_numpy(x)
    lens = torch.from_numpy(lengths)
    mask = torch.arange(width)[None, :] < lens[:, None]  # [b, L]
    rows = torch.arange(b)
    # farthest-first init, all pages in lock step, over at most ~INIT_TOKENS evenly strided
    # tokens per page (each step is a memory-bound pass; the k-means steps refine anyway)
    stride = max(1, -(-width // INIT_TOKENS))
    sub, sub_mask = t[:, ::stride].contiguous(), mask[:, ::stride]
    pick = torch.zeros((b, m), dtype=torch.long)
    best = torch.bmm(sub, sub[:, 0][:, :, None])[:, :, 0]  # similarity to the nearest chosen centre
    best[~sub_mask] = float("inf")
    for j in range(1, m):
        nxt = best.argmin(dim=1)
        pick[:, j] = nxt
        best = torch.maximum(best, torch.bmm(sub, sub[rows, nxt][:, :, None])[:, :, 0])
    pick = pick * stride
    centres = t[rows[:, None], pick]  # [b, m, d]
    counts = torch.ones((b, m))
    maskf = mask.float()
    for _ in range(iterations):
        sims = torch.bmm(t, centres.transpose(1, 2))  # [b, L, m]
        assign = sims.argmax(dim=2)
        onehot = torch.nn.functional.one_hot(assign, m).float() * maskf[:, :, None]
        sums = torch.bmm(onehot.transpose(1, 2), t)  # [b, m, d]
        counts = onehot.sum(dim=1)  # [b, m]
        norms = sums.norm(dim=2, keepdim=True)
        centres = torch.where(counts[:, :, None] > 0, sums / norms.clamp_min(1e-12), centres)
    return centres.numpy(), (counts > 0).numpy()


__all__ = ["DEFAULT_CLUSTERS", "DEFAULT_ITERATIONS", "pool_pages"]
