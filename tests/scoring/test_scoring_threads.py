"""Searches run library calls single-threaded and parallelise over chunks themselves."""

import threading

import numpy as np
import torch

from scoring.maxsim import maxsim_batch
from scoring.threads import parallel_map, single_threaded


def test_single_threaded_sets_and_restores_torch_and_faiss_threads():
    import faiss

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    with single_threaded():
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
        with single_threaded():  # nested: the outer holder restores
            pass
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2 and faiss.omp_get_max_threads() == 2


def test_parallel_map_keeps_order_and_uses_several_threads():
    seen = set()

    def fn(x):
        seen.add(threading.get_ident())
        a = np.ones((300, 300), np.float32)
        for _ in range(5):
            a = a @ a / 300.0  # releases the GIL
        return x * 2

    assert parallel_map(fn, list(range(40)), 2) == [x * 2 for x in range(40)]
    assert parallel_map(fn, [1], 4) == [2]


def test_chunked_scoring_over_workers_equals_one_worker():
    rng = np.random.default_rng(3)
    pages = [rng.standard_normal((int(rng.integers(1, 300)), 16)).astype(np.float16) for _ in range(400)]
    pages[7] = np.zeros((0, 16), np.float16)
    queries = [rng.standard_normal((5, 16)).astype(np.float32), rng.standard_normal((9, 16)).astype(np.float32)]
    one = maxsim_batch(queries, pages, chunk_tokens=512, workers=1)
    for workers in (2, 3):
        np.testing.assert_array_equal(maxsim_batch(queries, pages, chunk_tokens=512, workers=workers), one)
    np.testing.assert_array_equal(maxsim_batch(queries, pages, chunk_tokens=512, backend="numpy", workers=2),
                                  maxsim_batch(queries, pages, chunk_tokens=512, backend="numpy", workers=1))


def test_default_shortlist_grows_with_the_collection():
    from scoring.rank import default_candidates

    assert default_candidates(0) == 200 and default_candidates(3000) == 200 and default_candidates(6000) == 200
    assert default_candidates(12_000) == 400 and default_candidates(24_000) == 800
    assert default_candidates(1_000_000) == 800
