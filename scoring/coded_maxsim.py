"""Exact MaxSim of queries against pages stored as codes (``indexer/codecs.py``).

The codec is taken by its interface (``decode``; for the asymmetric path the residual codec's
``centroid_ids`` / ``residual_rows`` / ``byte_table``, the int8 codec's ``values`` / ``scales``),
not imported: scoring stays below the store in the data flow and imports no other package.

Two paths compute the same scores (equal within float rounding, tested):

- ``"decode"``: each chunk of whole pages (at most ``chunk_tokens`` tokens) is decoded into one
  reused float32 buffer, multiplied by all query tokens in one matmul and reduced per page with
  ``np.maximum.reduceat``, as ``scoring/maxsim.py`` does for fp16 rows. The buffer stays in cache.
- ``"asymmetric"``: the query is scored against the codes without rebuilding the vectors.
  int8: ``(q . int8 codes) * scale``, the scale applied to the score columns. residual-b: per
  query token a lookup table of ``q . centroid`` for every centroid and one of
  ``q . residual`` for every (byte position, byte value); a token's score is its centroid's entry
  plus one entry per residual byte (``d * b / 8`` gathers). fp16 has no asymmetric form: it is the
  decode path.

``DEFAULT_PATH`` is the faster of the two as measured by ``benchmarks/compact.py``. A page with
no tokens scores ``EMPTY_PAGE_SCORE``. Threads as in maxsim.py: library calls single-threaded,
parallel chunks on ``workers`` Python threads once there is enough work.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from scoring.maxsim import DEFAULT_CHUNK_TOKENS, EMPTY_PAGE_SCORE, PARALLEL_MIN_TOKENS
from scoring.threads import cpu_workers, parallel_map, single_threaded

PATHS = ("decode", "asymmetric")
# measured on the real-text set, 250-page shortlists (benchmarks/compact.py): decode 21-36 ms
# against asymmetric 69-143 ms for residual-2/-4; for int8 the two were within noise (8.8 / 8.5 ms)
DEFAULT_PATH = "decode"


def _queries(queries: Sequence[np.ndarray], dim: int) -> list[np.ndarray]:
    out = []
    for q in queries:
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != dim:
            raise ValueError(f"a query must be [tokens, {dim}], got shape {q.shape}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(q).all():
            raise ValueError("a query holds NaN or infinity")
        out.append(q)
    return out


def _runs(lengths: np.ndarray, chunk_tokens: int) -> list[tuple[int, int]]:
    """Runs of whole pages of at most chunk_tokens tokens (a longer page alone)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    runs, start = [], 0
    while start < len(lengths):
        stop = int(np.searchsorted(offsets, offsets[start] + chunk_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), len(lengths))
        runs.append((start, stop))
        start = stop
    return runs


class _ResidualTables:
    """Per-query lookup tables of the asymmetric residual path."""

    def __init__(self, codec, q_all: np.ndarray):
        if codec.renormalise:
            raise ValueError("asymmetric scoring needs a residual codec with renormalise=False; use path='decode'")
        self.qc = np.ascontiguousarray((codec.centroids @ q_all.T), np.float32)  # [C, Tq]
        k = codec.per_byte
        qd = q_all.reshape(len(q_all), -1, k)  # [Tq, n_bytes, k]
        # [n_bytes * 256, Tq]: row (j, v) holds every query token's dot with byte j's value v
        lut = np.einsum("jvk,tjk->jvt", codec.byte_table, qd, optimize=True)
        self.lut = np.ascontiguousarray(lut.reshape(-1, len(q_all)), np.float32)


def _asymmetric_block(codec, prepared, q_all: np.ndarray, codes: np.ndarray, torch) -> np.ndarray:
    """Scores [n tokens, sum Tq] of codes against the queries, without decoding the vectors."""
    if hasattr(codec, "residual_rows"):  # residual codec (a pq codec has centroid ids too, but no such rows)
        acc = np.take(prepared.qc, codec.centroid_ids(codes), axis=0)  # [n, Tq]
        rows = codec.residual_rows(codes)
        for j in range(rows.shape[1]):  # one row gather per residual byte
            acc += np.take(prepared.lut, rows[:, j], axis=0)
        return acc
    if hasattr(codec, "scales"):  # int8 codec
        values, scales = codec.values(codes), codec.scales(codes)
        if torch is not None:
            wide = torch.from_numpy(np.ascontiguousarray(values)).float()  # int8 -> fp32 with SIMD
            s = (wide @ torch.from_numpy(q_all).T).numpy()
        else:
            s = values.astype(np.float32) @ q_all.T
        s *= scales[:, None]
        return s
    raise ValueError(f"codec {codec.name} has no asymmetric path; use path='decode'")


def maxsim_codes(query: np.ndarray, codec, pages: Sequence[np.ndarray], **kw) -> np.ndarray:
    """MaxSim of one query [Tq, d] against each coded page (uint8 [T_i, bytes_per_token]); float32 [n]."""
    return maxsim_codes_batch([query], codec, pages, **kw)[0]


def maxsim_codes_batch(
    queries: Sequence[np.ndarray],
    codec,
    pages: Sequence[np.ndarray],
    *,
    path: str = DEFAULT_PATH,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    workers: int | None = None,
) -> np.ndarray:
    """MaxSim of every query against every coded page; float32 [len(queries), len(pages)]."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {list(PATHS)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    residual = hasattr(codec, "residual_rows")  # the residual-b codec; pq-M has no asymmetric path
    if path == "asymmetric" and not (residual or hasattr(codec, "scales")):
        raise ValueError(f"codec {codec.name} has no asymmetric path; use path='decode'")
    qs = _queries(queries, codec.dim)
    pages = [codec.check_codes(p) for p in pages]
    out = np.full((len(qs), len(pages)), EMPTY_PAGE_SCORE, dtype=np.float32)
    if not qs or not pages:
        return out
    lengths = np.fromiter((len(p) for p in pages), dtype=np.int64, count=len(pages))
    live = np.flatnonzero(lengths > 0)
    if not len(live):
        return out
    live_pages, live_lengths = [pages[int(i)] for i in live], lengths[live]
    q_offsets = np.concatenate([[0], np.cumsum([len(q) for q in qs])])
    q_all = np.concatenate(qs, axis=0)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a pinned dependency
        torch = None
    prepared = _ResidualTables(codec, q_all) if path == "asymmetric" and residual else None
    runs = _runs(live_lengths, chunk_tokens)
    widest = max(int(live_lengths[a:b].sum()) for a, b in runs)
    per_token = np.empty((len(q_all), len(live_pages)), np.float32)
    local = threading.local()

    def score(run):
        a, b = run
        if not hasattr(local, "codes"):  # one set of buffers per worker thread, reused across chunks
            local.codes = np.empty((widest, codec.bytes_per_token), np.uint8)
            local.wide = np.empty((widest, codec.dim), np.float32)
            local.scores = np.empty((len(q_all), widest), np.float32)
        seg = live_lengths[a:b]
        n = int(seg.sum())
        codes = local.codes[:n]
        np.concatenate(live_pages[a:b], axis=0, out=codes)
        if path == "decode":
            wide = codec.decode(codes, out=local.wide[:n])
            scores = local.scores[:, :n]
            if torch is not None:
                torch.matmul(torch.from_numpy(q_all), torch.from_numpy(wide).T, out=torch.from_numpy(scores))
            else:
                np.matmul(q_all, wide.T, out=scores)
            starts = np.concatenate([[0], np.cumsum(seg[:-1])])
            per_token[:, a:b] = np.maximum.reduceat(scores, starts, axis=1)
        else:
            block = _asymmetric_block(codec, prepared, q_all, codes, torch)  # [n, sum Tq]
            starts = np.concatenate([[0], np.cumsum(seg[:-1])])
            per_token[:, a:b] = np.maximum.reduceat(block, starts, axis=0).T

    if workers is None:
        workers = cpu_workers() if int(live_lengths.sum()) >= PARALLEL_MIN_TOKENS else 1
    with single_threaded():
        parallel_map(score, runs, int(workers))
    sums = np.zeros((len(qs), len(live)), np.float32)
    for i in range(len(qs)):
        if q_offsets[i + 1] > q_offsets[i]:
            sums[i] = per_token[q_offsets[i] : q_offsets[i + 1]].sum(axis=0)
    out[:, live] = sums
    return out


__all__ = ["DEFAULT_PATH", "PATHS", "maxsim_codes", "maxsim_codes_batch"]
