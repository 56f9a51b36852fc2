import numpy as np
import pytest

from scoring.maxsim import EMPTY_PAGE_SCORE, maxsim, maxsim_batch, maxsim_padded
from scoring.maxsim import _score_torch_device


def reference(query, pages):
    """Plain per-page, per-token Python: the definition of MaxSim."""
    q = np.asarray(query, np.float64)
    out = []
    for p in pages:
        p = np.asarray(p, np.float64)
        if len(p) == 0:
            out.append(-np.inf)
            continue
        out.append(sum(max(float(qt @ dt) for dt in p) for qt in q))
    return np.array(out)


def pages_of(rng, lengths, dim=16, dtype=np.float16):
    return [rng.standard_normal((n, dim)).astype(dtype) for n in lengths]


def test_hand_computed():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    page = np.array([[0.5, 0.2], [0.1, 0.9], [-1.0, 0.0]], np.float16)
    # token 1: max(0.5, 0.1, -1) = 0.5; token 2: max(0.2, 0.9, 0) = 0.9
    assert maxsim(q, [page])[0] == pytest.approx(1.4, abs=1e-3)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_matches_reference_mixed_lengths_fp16(rng, backend):
    pages = pages_of(rng, [1, 7, 300, 2, 1, 64, 0, 33])
    q = rng.standard_normal((5, 16)).astype(np.float32)
    got = maxsim(q, pages, backend=backend)
    ref = reference(q, [p.astype(np.float32) for p in pages])
    assert got[6] == EMPTY_PAGE_SCORE
    np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-4, atol=1e-3)


def test_float32_pages_and_fp16_query(rng):
    pages = pages_of(rng, [3, 9], dtype=np.float32)
    q = rng.standard_normal((4, 16)).astype(np.float16)
    np.testing.assert_allclose(maxsim(q, pages), reference(q.astype(np.float32), pages), rtol=1e-4, atol=1e-4)


def test_chunking_by_budget_gives_identical_results(rng):
    pages = pages_of(rng, rng.integers(1, 50, 200))
    q = rng.standard_normal((6, 16)).astype(np.float32)
    whole = maxsim(q, pages, chunk_tokens=1 << 20)
    for budget in (1, 5, 37, 100):
        np.testing.assert_allclose(maxsim(q, pages, chunk_tokens=budget), whole, rtol=1e-6, atol=1e-5)


def test_empty_candidate_set_and_all_empty_pages(rng):
    q = rng.standard_normal((3, 16))
    assert maxsim(q, []).shape == (0,)
    assert maxsim_batch([q, q], []).shape == (2, 0)
    empty = [np.zeros((0, 16), np.float16)] * 3
    assert np.all(maxsim(q, empty) == EMPTY_PAGE_SCORE)


def test_batch_equals_single_queries(rng):
    pages = pages_of(rng, rng.integers(1, 40, 30))
    queries = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 4, 9)]
    batch = maxsim_batch(queries, pages)
    for i, q in enumerate(queries):
        np.testing.assert_allclose(batch[i], maxsim(q, pages), rtol=1e-5, atol=1e-5)


def test_padded_baseline_equals_exact_on_normalised_vectors(rng):
    # zero padding is only harmless where real tokens score >= 0; unit vectors of a topic do
    topic = rng.standard_normal(16)
    pages = [(topic + 0.3 * rng.standard_normal((n, 16))) for n in rng.integers(1, 60, 50)]
    pages = [(p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float16) for p in pages]
    q = topic + 0.3 * rng.standard_normal((5, 16))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_allclose(maxsim_padded(q, pages, batch_size=7), maxsim(q, pages), rtol=1e-5, atol=1e-4)


def test_device_path_matches_cpu_path(rng):
    # the CUDA code path run on torch's CPU device: same segment reduction, same numbers
    pages = pages_of(rng, [1, 5, 80, 3])
    q = rng.standard_normal((4, 16)).astype(np.float32)
    per_token = _score_torch_device(q, pages, np.array([len(p) for p in pages]), 16, "cpu")
    np.testing.assert_allclose(per_token.sum(axis=0), maxsim(q, pages), rtol=1e-5, atol=1e-4)


def test_bad_shapes_are_refused(rng):
    with pytest.raises(ValueError, match="every page"):
        maxsim(rng.standard_normal((2, 16)), [np.zeros((3, 8), np.float16)])
    with pytest.raises(ValueError, match="2-D"):
        maxsim(rng.standard_normal(16), [])


def test_float32_pages_on_cpu_do_not_import_torch():
    """Decoded codes are float32: scoring them needs numpy only, and importing torch cost 3.4 s of
    a fresh process's first search on a 1M-page compact index. fp16 pages still use torch."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, numpy as np\n"
        "from scoring.maxsim import maxsim\n"
        "rng = np.random.default_rng(0)\n"
        "q = rng.standard_normal((4, 8)).astype(np.float32)\n"
        "pages = [rng.standard_normal((n, 8)).astype(np.float32) for n in (3, 5)]\n"
        "want = [float((q @ p.T).max(1).sum()) for p in pages]\n"
        "got = maxsim(q, pages)\n"
        "assert np.allclose(got, want, atol=1e-5), (got, want)\n"
        "assert 'torch' not in sys.modules\n"
        "maxsim(q, [p.astype(np.float16) for p in pages])\n"
        "assert 'torch' in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
