"""Exact late-interaction MaxSim over many pages of different lengths.

score(page) = sum over query tokens of max over page tokens of dot(q, d).

Pages are scored in chunks of whole pages holding at most ``chunk_tokens`` tokens: the chunk's
fp16 rows are copied into one staging buffer, widened to fp32, multiplied by the query in a
single matmul and reduced per page with ``np.maximum.reduceat``. There is no Python loop per
page and no padding. The chunk keeps the fp32 copy and the score block in cache, which is what
makes this faster than the padded baseline (``maxsim_padded``) on a CPU: widening fp16 in big
arrays is memory-bound, in small ones it is not (measured: 1k pages x 750 tokens, 20 query
tokens, 2 cores: 0.06 s chunked against 0.2 s for one whole-array ``astype``).

A page with no tokens scores ``EMPTY_PAGE_SCORE`` (-inf): the max over an empty set, so such a
page ranks below every real page and never displaces one.

torch is imported lazily (it is only needed to widen fp16 fast on CPU and to run on CUDA);
``backend="numpy"`` needs nothing but numpy.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from scoring.threads import cpu_workers, parallel_map, single_threaded

EMPTY_PAGE_SCORE = float("-inf")
DEFAULT_CHUNK_TOKENS = 4096  # page tokens per matmul; 4096 measured best of 4k/16k/64k on 2 cores
PARALLEL_MIN_TOKENS = 1 << 16  # below this a second worker costs more than it brings

_BACKENDS = ("auto", "torch", "numpy")


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a pinned dependency
        return None
    return torch


def _as_query(query: np.ndarray) -> np.ndarray:
    q = np.asarray(query)
    if q.ndim != 2:
        raise ValueError(f"a query must be 2-D [tokens, dim], got shape {q.shape}")
    return np.ascontiguousarray(q, dtype=np.float32)


def _check_pages(pages: Sequence[np.ndarray], dim: int) -> np.ndarray:
    lengths = np.fromiter((p.shape[0] for p in pages), dtype=np.int64, count=len(pages))
    for p in pages:
        if p.ndim != 2 or p.shape[1] != dim:
            raise ValueError(f"every page must be [tokens, {dim}], got shape {p.shape}")
    return lengths


def _chunks(lengths: np.ndarray, chunk_tokens: int) -> list[tuple[int, int]]:
    """Split non-empty pages [0, n) into runs of whole pages of at most chunk_tokens tokens
    (a single longer page gets a run of its own)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    runs, start, n = [], 0, len(lengths)
    while start < n:
        stop = int(np.searchsorted(offsets, offsets[start] + chunk_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        runs.append((start, stop))
        start = stop
    return runs


def maxsim(
    query: np.ndarray,
    pages: Sequence[np.ndarray],
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    device: str = "cpu",
    backend: str = "auto",
    workers: int | None = None,
) -> np.ndarray:
    """MaxSim of one query [Tq, d] against each page [T_i, d]; float32 [len(pages)]."""
    return maxsim_batch([query], pages, chunk_tokens=chunk_tokens, device=device, backend=backend,
                        workers=workers)[0]


def maxsim_batch(
    queries: Sequence[np.ndarray],
    pages: Sequence[np.ndarray],
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    device: str = "cpu",
    backend: str = "auto",
    workers: int | None = None,
) -> np.ndarray:
    """MaxSim of every query against every page; float32 [len(queries), len(pages)].

    All queries' tokens are stacked into one matrix, so each page chunk is widened once and
    multiplied once for the whole batch. On CPU, chunks are spread over ``workers`` threads
    (default: one per core once there are ``PARALLEL_MIN_TOKENS`` page tokens, else one), each
    running single-threaded library calls (see scoring/threads.py).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(_BACKENDS)}")
    qs = [_as_query(q) for q in queries]
    if not qs:
        return np.zeros((0, len(pages)), dtype=np.float32)
    dim = qs[0].shape[1]
    if any(q.shape[1] != dim for q in qs):
        raise ValueError("all queries must have the same token dimension")
    lengths = _check_pages(pages, dim)
    out = np.full((len(qs), len(pages)), EMPTY_PAGE_SCORE, dtype=np.float32)
    nonempty = np.flatnonzero(lengths > 0)
    if len(nonempty) == 0:
        return out
    q_offsets = np.concatenate([[0], np.cumsum([q.shape[0] for q in qs])])
    q_all = np.concatenate(qs, axis=0)
    live_pages = [pages[int(i)] for i in nonempty]
    live_lengths = lengths[nonempty]
    if device != "cpu":
        per_token = _score_torch_device(q_all, live_pages, live_lengths, chunk_tokens, device)
    else:
        # torch only widens fp16 faster; float32 pages (decoded codes) need nothing but numpy, and
        # importing torch took 3.4 s of the first search in a fresh process (1M-page compact index)
        wide = all(p.dtype == np.float32 for p in live_pages)
        use_torch = backend == "torch" or (backend == "auto" and not wide and _torch() is not None)
        if workers is None:
            workers = cpu_workers() if int(live_lengths.sum()) >= PARALLEL_MIN_TOKENS else 1
        per_token = _score_cpu(q_all, live_pages, live_lengths, chunk_tokens, use_torch, int(workers))
    # per_token: [sum Tq, n_nonempty] of per-query-token maxima; sum each query's rows.
    if (q_offsets[1:] == q_offsets[:-1]).any():
        sums = np.zeros((len(qs), len(nonempty)), dtype=np.float32)
        for i in np.flatnonzero(q_offsets[1:] > q_offsets[:-1]):
            sums[i] = per_token[q_offsets[i] : q_offsets[i + 1]].sum(axis=0)
    else:
        sums = np.add.reduceat(per_token, q_offsets[:-1], axis=0)
    out[:, nonempty] = sums
    return out


def _score_cpu(q_all, pages, lengths, chunk_tokens, use_torch, workers: int = 1) -> np.ndarray:
    dtype = np.result_type(*{p.dtype for p in pages})
    if dtype not in (np.float16, np.float32):
        dtype = np.dtype(np.float32)
    runs = _chunks(lengths, chunk_tokens)
    widest = max(int(lengths[a:b].sum()) for a, b in runs)
    per_token = np.empty((q_all.shape[0], len(pages)), dtype=np.float32)
    torch = _torch() if use_torch else None
    local = threading.local()

    def buffers():
        if not hasattr(local, "stage"):  # one set per worker thread, reused across its chunks
            local.stage = np.empty((widest, q_all.shape[1]), dtype=dtype)
            local.wide = np.empty((widest, q_all.shape[1]), dtype=np.float32) if dtype != np.float32 else local.stage
            local.scores = np.empty((q_all.shape[0], widest), dtype=np.float32)
            if torch is not None:
                local.t = (torch.from_numpy(q_all),) + tuple(torch.from_numpy(a) for a in
                                                            (local.stage, local.wide, local.scores))
        return local

    def score(run):
        a, b = run
        buf = buffers()
        stage, wide, scores = buf.stage, buf.wide, buf.scores
        seg = lengths[a:b]
        n = int(seg.sum())
        np.concatenate(pages[a:b], axis=0, out=stage[:n])
        if torch is not None:
            t_q, t_stage, t_wide, t_scores = buf.t
            if wide is not stage:
                t_wide[:n].copy_(t_stage[:n])  # fp16 -> fp32 with SIMD, in cache
            torch.matmul(t_q, t_wide[:n].T, out=t_scores[:, :n])
        else:
            if wide is not stage:
                np.copyto(wide[:n], stage[:n])
            np.matmul(q_all, wide[:n].T, out=scores[:, :n])
        starts = np.concatenate([[0], np.cumsum(seg[:-1])])
        per_token[:, a:b] = np.maximum.reduceat(scores[:, :n], starts, axis=1)  # disjoint columns per run

    with single_threaded():
        parallel_map(score, runs, workers)
    return per_token


def _score_torch_device(q_all, pages, lengths, chunk_tokens, device) -> np.ndarray:
    """The same computation on a torch device (CUDA): fp16 rows travel, fp32 accumulates."""
    torch = _torch()
    if torch is None:
        raise RuntimeError("device scoring needs torch; install it or use device='cpu'")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but CUDA is not available; use device='cpu'")
    t_q = torch.from_numpy(q_all).to(dev)
    per_token = torch.empty((q_all.shape[0], len(pages)), dtype=torch.float32, device=dev)
    # On a GPU a chunk can be far bigger: the budget is in tokens, scale it once.
    budget = chunk_tokens * (64 if dev.type == "cuda" else 1)
    dtype = np.result_type(*{p.dtype for p in pages})
    for a, b in _chunks(lengths, budget):
        block = np.concatenate(pages[a:b], axis=0).astype(dtype, copy=False)
        d = torch.from_numpy(block).to(dev, non_blocking=True).float()
        s = d @ t_q.T  # [n tokens, sum Tq]
        seg = torch.from_numpy(lengths[a:b]).to(dev)
        per_token[:, a:b] = torch.segment_reduce(s, "max", lengths=seg, axis=0).T
    return per_token.cpu().numpy()


def maxsim_padded(
    query: np.ndarray,
    pages: Sequence[np.ndarray],
    *,
    batch_size: int = 128,
    device: str = "cpu",
) -> np.ndarray:
    """The baseline, done the way byaldi / colpali-engine ``score_multi_vector`` do it: pad a
    batch of pages to its longest with zeros, one batched einsum, max over page tokens, sum over
    query tokens. On CPU the padded batch is widened to fp32 (fp16 matmul on CPU is slower).
    Zero padding is harmless only while some real token scores >= 0, as in the original."""
    torch = _torch()
    if torch is None:  # pragma: no cover
        raise RuntimeError("maxsim_padded needs torch")
    from torch.nn.utils.rnn import pad_sequence

    q = torch.from_numpy(np.array(query, dtype=np.float32)).to(device)
    out = np.full(len(pages), EMPTY_PAGE_SCORE, dtype=np.float32)
    for start in range(0, len(pages), batch_size):
        batch = [torch.from_numpy(np.array(p)) for p in pages[start : start + batch_size]]
        if not any(len(p) for p in batch):
            continue
        padded = pad_sequence(batch, batch_first=True).to(device).float()  # [b, Lmax, d]
        s = torch.einsum("nd,csd->cns", q, padded).max(dim=2)[0].sum(dim=1)
        lens = np.array([len(p) for p in batch])
        res = s.cpu().numpy()
        res[lens == 0] = EMPTY_PAGE_SCORE
        out[start : start + len(batch)] = res
    return out


def maxsim_flops(query_tokens: int, page_tokens: int, dim: int) -> float:
    """Multiply-adds counted as 2 FLOPs: the matmul that dominates MaxSim."""
    return 2.0 * query_tokens * page_tokens * dim
