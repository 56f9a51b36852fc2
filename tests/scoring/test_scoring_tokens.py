import numpy as np

from scoring.tokens import TokenIndex

from .conftest import random_page


def build(rng, n_pages=60):
    pages = [random_page(rng, tokens=int(rng.integers(5, 40)))[1] for _ in range(n_pages)]
    sample = np.concatenate(pages).astype(np.float32)
    index = TokenIndex.train(sample, 32, seed=0)
    return index, pages


def naive_lists(index, ids, pages):
    """centroid -> set of page ids, straight from the definition."""
    lists = {}
    for pid, p in zip(ids, pages):
        for c in set(index.assign(p.astype(np.float32)).tolist()):
            lists.setdefault(c, set()).add(int(pid))
    return lists


def lists_of(index):
    index._merge()
    out = {}
    for c in range(index.n_centroids):
        pos = index.list_pos[index.list_offsets[c] : index.list_offsets[c + 1]]
        live = {int(index.page_ids[p]) for p in pos if index.alive[p]}
        if live:
            out[c] = live
    return out


def test_lists_stay_in_step_with_adds_replacements_removals(rng):
    index, pages = build(rng)
    ids = np.arange(1, 61)
    index.add(ids[:20], pages[:20])
    index.add(ids[20:], pages[20:])
    assert lists_of(index) == naive_lists(index, ids, pages)
    # replacement: page 5 removed and re-added under a new id with new tokens
    new_page = random_page(rng, tokens=12)[1]
    index.remove(np.array([5]))
    index.add(np.array([61]), [new_page])
    keep = [i for i in range(60) if ids[i] != 5]
    expect_ids = list(ids[keep]) + [61]
    expect_pages = [pages[i] for i in keep] + [new_page]
    assert lists_of(index) == naive_lists(index, expect_ids, expect_pages)
    # remove enough to trigger compaction; positions are renumbered, lists must still agree
    index.remove(ids[:30])
    assert len(index.page_ids) == len(index) == 31
    survivors = [(i, p) for i, p in zip(expect_ids, expect_pages) if i > 30]
    assert lists_of(index) == naive_lists(index, [i for i, _ in survivors], [p for _, p in survivors])
    np.testing.assert_array_equal(index.live_ids(), sorted(i for i, _ in survivors))


def test_candidates_find_needle_and_skip_removed(rng):
    index, pages = build(rng)
    ids = np.arange(100, 160)
    index.add(ids, pages)
    q = pages[17][:4].astype(np.float32)
    got, scores = index.candidates(q, 60, nprobe=4)
    # the page holds every query token, so it reaches the best possible centroid score
    assert 117 in got and scores[list(got).index(117)] == scores[0] and np.all(np.diff(scores) <= 0)
    assert len(got) < 60  # pages that share no probed centroid are not proposed
    index.remove(np.array([117]))
    got, _ = index.candidates(q, 60, nprobe=32)
    assert 117 not in got


def test_round_trip_and_determinism(rng):
    index, pages = build(rng)
    index.add(np.arange(60), pages)
    index.remove(np.array([4]))
    back = TokenIndex.from_arrays(index.to_arrays())
    q = pages[9][:3].astype(np.float32)
    a, b = index.candidates(q, 20), back.candidates(q, 20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    again = TokenIndex.train(np.concatenate(pages).astype(np.float32), 32, seed=0)
    np.testing.assert_array_equal(again.centroids, TokenIndex.train(np.concatenate(pages).astype(np.float32), 32, seed=0).centroids)


def naive_prescores(index, query, ids, pages, nprobe):
    """The module docstring's formula, page by page: sum over query tokens of
    max(floor_t, max over probed centroids c the page uses of q_t . c)."""
    sims = query @ index.centroids.T
    probed = np.argsort(-sims, axis=1)[:, :nprobe]
    out = {}
    for pid, p in zip(ids, pages):
        used = set(index.assign(p.astype(np.float32)).tolist())
        if not any(c in used for row in probed for c in row):
            continue  # reached by no probed list: not a candidate
        total = 0.0
        for t in range(len(query)):
            floor = sims[t, probed[t]].min()
            reach = [sims[t, c] for c in probed[t] if c in used]
            total += max([floor] + reach)
        out[int(pid)] = total
    return out


def test_candidates_are_the_documented_prescore_of_every_reached_page(rng):
    index, pages = build(rng)
    ids = np.arange(1, 61)
    index.add(ids, pages)
    index.remove(ids[:5])  # removed pages never come back
    for _ in range(3):
        query = random_page(rng, tokens=6)[1].astype(np.float32)
        want = naive_prescores(index, query, ids[5:], pages[5:], nprobe=4)
        got_ids, got_scores = index.candidates(query, 1000, nprobe=4)
        assert set(got_ids.tolist()) == set(want)
        for pid, sc in zip(got_ids, got_scores):
            assert abs(sc - want[int(pid)]) < 1e-4
        assert (np.diff(got_scores) <= 1e-6).all()  # best first
        top_ids, _ = index.candidates(query, 7, nprobe=4)
        assert list(top_ids) == list(got_ids[:7])


def test_add_assigned_matches_add_and_rejects_foreign_ids(rng):
    index, pages = build(rng)
    ids = np.arange(1, 61)
    other = TokenIndex(index.centroids)
    index.add(ids, pages)
    other.add_assigned(ids, [index.assign(p.astype(np.float32)) for p in pages])
    assert lists_of(other) == lists_of(index)
    query = random_page(rng, tokens=5)[1].astype(np.float32)
    a, b = index.candidates(query, 20), other.candidates(query, 20)
    assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])
    try:
        TokenIndex(index.centroids).add_assigned(ids[:1], [np.array([index.n_centroids])])
    except ValueError as exc:
        assert "centroid ids" in str(exc)
    else:
        raise AssertionError("an out-of-range centroid id was accepted")
