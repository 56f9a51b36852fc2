"""How many threads a search uses, and where.

OpenMP-style parallel regions (torch intra-op, FAISS) split each small matmul or search across
every core and then wait at a barrier for all of them. On a machine whose cores are shared with
other processes (a laptop, CI, a server answering several requests) one descheduled peer stalls
every region: on the shared 2-core VM, a rerank of 250 real pages ran at 34.6 GFLOP/s with one
torch thread and 12.9 with two (``benchmarks/realtext_candidates.py --rerank-bench-only``). So a search runs its library calls single-threaded
(``single_threaded``) and gets its parallelism, where there is enough work, from a few Python
worker threads that pull chunks from a shared queue (``parallel_map``): a slow worker simply takes
fewer chunks, nobody waits at a barrier.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_depth = 0
_saved: dict = {}


def cpu_workers() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def single_threaded() -> Iterator[None]:
    """torch intra-op and FAISS OpenMP threads set to 1 for the duration (nested and thread-safe:
    the settings are process-wide, restored when the outermost holder leaves). Only libraries
    already imported are touched: this never imports torch or FAISS."""
    global _depth
    with _lock:
        if _depth == 0:
            # read both before setting either: torch and FAISS may share one OpenMP runtime
            torch, faiss = sys.modules.get("torch"), sys.modules.get("faiss")
            if torch is not None:
                _saved["torch"] = torch.get_num_threads()
            if faiss is not None:
                _saved["faiss"] = faiss.omp_get_max_threads()
            if faiss is not None:
                faiss.omp_set_num_threads(1)
            if torch is not None:
                torch.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if "faiss" in _saved:
                    sys.modules["faiss"].omp_set_num_threads(_saved.pop("faiss"))
                if "torch" in _saved:
                    sys.modules["torch"].set_num_threads(_saved.pop("torch"))


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``workers`` threads pulling items dynamically (fn must
    release the GIL for this to help: torch and numpy matmuls do)."""
    workers = max(1, min(int(workers), len(items)))
    if workers == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pagelens-score") as pool:
        return list(pool.map(fn, items))
