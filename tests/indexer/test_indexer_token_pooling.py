import itertools

import numpy as np
import pytest

from indexer.token_pooling import METHODS, kmeans_labels, pool_tokens, pooled_length, ward_labels


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def page(rng, n, dim=16):
    topics = unit(rng.standard_normal((4, dim)))
    return unit(topics[rng.integers(0, 4, n)] + 0.5 * rng.standard_normal((n, dim)))


def partition(labels):
    groups = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return sorted(tuple(g) for g in groups.values())


def greedy_ward(x, k):
    """The textbook O(n^3) algorithm: repeatedly merge the pair whose merge least increases the
    within-cluster sum of squares, n_a n_b / (n_a + n_b) ||mean_a - mean_b||^2."""
    clusters = [[i] for i in range(len(x))]
    x = x.astype(np.float64)
    while len(clusters) > k:
        best = None
        for a, b in itertools.combinations(range(len(clusters)), 2):
            ma, mb = x[clusters[a]].mean(0), x[clusters[b]].mean(0)
            na, nb = len(clusters[a]), len(clusters[b])
            cost = na * nb / (na + nb) * float(((ma - mb) ** 2).sum())
            if best is None or cost < best[0]:
                best = (cost, a, b)
        _, a, b = best
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    return sorted(tuple(sorted(c)) for c in clusters)


@pytest.mark.parametrize("seed", range(4))
def test_ward_matches_the_textbook_algorithm(seed):
    rng = np.random.default_rng(seed)
    x = page(rng, 14, dim=6)
    for k in (1, 2, 5, 9, 13):
        assert partition(ward_labels(x, k)) == greedy_ward(x, k)


def test_hand_made_groups_become_their_normalised_means():
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    tokens = np.array([a, a + [0, 0.1, 0], b, a + [0, 0, 0.1], b + [0.1, 0, 0], b + [0, 0, -0.1]], np.float32)
    want = np.stack([unit(tokens[[0, 1, 3]].mean(0)), unit(tokens[[2, 4, 5]].mean(0))])
    for method in METHODS:
        out = pool_tokens(tokens, 3, method=method)  # 6 tokens / 3 = 2 clusters
        np.testing.assert_allclose(out, want, atol=1e-6)  # ordered by each cluster's first token


@pytest.mark.parametrize("method", METHODS)
def test_sizes_norms_identity_determinism(rng, method):
    for n in (0, 1, 2, 7, 31, 120):
        x = page(rng, n)
        for pf in (1, 2, 3, 4):
            out = pool_tokens(x, pf, method=method)
            assert out.dtype == np.float32 and out.shape == (pooled_length(n, pf), 16) == (-(-n // pf), 16)
            if pf > 1 and n > 1:
                np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
            np.testing.assert_array_equal(out, pool_tokens(x.copy(), pf, method=method))
    x = page(rng, 20).astype(np.float16)
    same = pool_tokens(x, 1, method=method)
    np.testing.assert_array_equal(same, x.astype(np.float32))
    same[0] = 0
    assert x[0].any()  # pool_factor 1 returns a copy, never the caller's array


def test_kmeans_keeps_exactly_k_clusters_even_with_duplicates(rng):
    x = np.repeat(page(rng, 3), 5, axis=0)  # 15 tokens, 3 distinct
    labels = kmeans_labels(x, 6)
    assert len(np.unique(labels)) == 6
    assert pool_tokens(x, 2, method="kmeans").shape == (8, 16)
    assert pool_tokens(x, 2, method="ward").shape == (8, 16)


def test_pooling_keeps_most_of_maxsim(rng):
    """A query made of one page's tokens still finds that page after pooling."""
    from scoring.maxsim import maxsim

    pages = [page(rng, 60) for _ in range(30)]
    for method in METHODS:
        pooled = [pool_tokens(p, 3, method=method) for p in pages]
        for i in (0, 11, 29):
            q = pages[i][:5] + 0.05 * rng.standard_normal((5, 16)).astype(np.float32)
            assert int(np.argmax(maxsim(q, pooled))) == i


def test_bad_arguments(rng):
    x = page(rng, 10)
    for pf in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="pool_factor"):
            pool_tokens(x, pf)
    with pytest.raises(ValueError, match="unknown pooling method"):
        pool_tokens(x, 2, method="mean")
    with pytest.raises(ValueError, match="NaN"):
        pool_tokens(np.full((4, 16), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match="float array"):
        pool_tokens(np.ones(16, np.float32), 2)
    with pytest.raises(ValueError, match="float array"):
        pool_tokens(np.ones((4, 16), np.int64), 2)
