import json
import shutil

import numpy as np
import pytest

from pagelens.retrieval import Retriever
from scoring import rank
from scoring.pooled import SLOTS, PooledIndex
from scoring.pooling import pool_pages

from .conftest import FakeSource, fill, normalise


def reference_pool(page, m, iterations):
    """Plain per-page spherical k-means with the same farthest-first init (strided sample)."""
    x = normalise(np.asarray(page, dtype=np.float64))
    if len(x) <= m:
        return x
    from scoring.pooling import INIT_TOKENS

    # the batched version strides by the padded width of its batch; one page alone = its length
    stride = max(1, -(-len(x) // INIT_TOKENS))
    sub = x[::stride]
    pick = [0]
    best = sub @ sub[0]
    for _ in range(1, m):
        nxt = int(np.argmin(best))
        pick.append(nxt)
        best = np.maximum(best, sub @ sub[nxt])
    centres = x[np.array(pick) * stride]
    counts = np.ones(m)
    for _ in range(iterations):
        assign = np.argmax(x @ centres.T, axis=1)
        for j in range(m):
            members = x[assign == j]
            counts[j] = len(members)
            if len(members):
                s = members.sum(axis=0)
                centres[j] = s / np.linalg.norm(s)
    return centres[counts > 0]


def test_pooling_matches_a_per_page_reference(rng):
    pages = [normalise(rng.standard_normal((t, 16))).astype(np.float16) for t in (0, 3, 8, 40, 300)]
    for page in pages:  # one page per call: the batch's padded width is the page's own length
        vecs, counts = pool_pages([page], 8, iterations=4)
        ref = reference_pool(page, 8, 4)
        assert counts.tolist() == [len(ref)]
        np.testing.assert_allclose(vecs, ref, atol=1e-4)
    # batched over pages of different lengths: same counts and unit vectors, page by page
    vecs, counts = pool_pages(pages, 8, iterations=4)
    assert counts[0] == 0 and counts[1] == 3 and counts[2] == 8 and all(1 <= c <= 8 for c in counts[3:])
    assert len(vecs) == counts.sum()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vecs[: 3], normalise(pages[1].astype(np.float32)), atol=1e-3)


def test_pooling_keeps_a_small_region_apart(rng):
    """A 4-token region among 200 background tokens gets a pooled vector of its own."""
    topics = normalise(rng.standard_normal((3, 32)))
    tokens = np.concatenate([topics[0] + 0.1 * rng.standard_normal((120, 32)),
                             topics[1] + 0.1 * rng.standard_normal((76, 32)),
                             topics[2] + 0.1 * rng.standard_normal((4, 32))])
    perm = rng.permutation(len(tokens))
    vecs, _ = pool_pages([normalise(tokens[perm]).astype(np.float16)], 4)
    assert (vecs @ topics[2]).max() > 0.95


def needle_collection(rng, n=300, dim=32, tokens=120):
    """Pages of one shared topic plus page-specific offsets; page ``needle`` also holds a
    5-token region around a direction no other page has."""
    source = FakeSource(single_dim=16, multi_dim=dim)
    base = normalise(rng.standard_normal(dim))
    needle_dir = normalise(rng.standard_normal(dim))
    ids = []
    for i in range(n):
        own = normalise(base + 0.7 * normalise(rng.standard_normal(dim)))
        multi = own + 0.15 * rng.standard_normal((tokens, dim))
        if i == n // 2:
            multi[:5] = needle_dir + 0.15 * rng.standard_normal((5, dim))
        ids.append(source.add(normalise(rng.standard_normal(16)), normalise(multi).astype(np.float16)))
    return source, ids[n // 2], needle_dir


def test_pooled_generator_finds_a_needle_page(tmp_path, rng):
    source, needle, direction = needle_collection(rng)
    pooled = PooledIndex(source.multi_dim, m=8)
    live = source.live_page_ids()
    pooled.add(live, source.multi_vectors(live))
    q = normalise(direction + 0.15 * rng.standard_normal((6, source.multi_dim))).astype(np.float32)
    ids, scores = pooled.candidates(q, 5, per_token=16)
    assert ids[0] == needle and np.all(np.diff(scores) <= 0)
    r = Retriever(tmp_path / "d", source)
    r.sync()
    hits = r.search(q, None, k=1, candidates=10, generators=["pooled"])
    assert hits[0][0] == needle


def test_pooled_index_stays_in_step_and_round_trips(rng):
    source = FakeSource()
    fill(source, rng, 60)
    pooled = PooledIndex(source.multi_dim, m=4)
    ids = source.live_page_ids()
    pooled.add(ids[:40], source.multi_vectors(ids[:40]))
    with pytest.raises(ValueError, match="remove them first"):
        pooled.add(ids[:1], source.multi_vectors(ids[:1]))
    pooled.add(ids[40:], source.multi_vectors(ids[40:]))
    pooled.remove(ids[[3, 7, 50]])
    keep = np.setdiff1d(ids, ids[[3, 7, 50]])
    np.testing.assert_array_equal(pooled.live_ids(), keep)
    held_pages = np.unique(pooled.index.ids() // SLOTS)
    np.testing.assert_array_equal(held_pages, keep)
    again = PooledIndex.from_arrays(pooled.to_arrays())
    q = source.pages[int(ids[10])][1][:3].astype(np.float32)
    a, b = pooled.candidates(q, 20), again.candidates(q, 20)
    np.testing.assert_array_equal(a[0], b[0])
    assert not set(a[0]) & {int(i) for i in ids[[3, 7, 50]]}
    bad = pooled.to_arrays()
    bad["counts"] = bad["counts"][:-1]
    with pytest.raises(ValueError, match="rebuild"):
        PooledIndex.from_arrays(bad)


def test_retriever_keeps_pooled_in_step_with_add_remove_replace(tmp_path, rng):
    source = FakeSource()
    fill(source, rng, 80)
    r = Retriever(tmp_path / "d", source)
    r.sync()
    assert r.tokens is None  # the codebook is only built once asked for
    fill(source, rng, 5)
    for pid in (2, 9, 40):  # a replacement is a removal plus an addition under a new id
        source.remove(pid)
    r.sync()
    live = source.live_page_ids()
    np.testing.assert_array_equal(r.pooled.live_ids(), live)
    np.testing.assert_array_equal(np.unique(r.pooled.index.ids() // SLOTS), live)
    reopened = Retriever(tmp_path / "d", source)
    np.testing.assert_array_equal(reopened.pooled.live_ids(), live)
    assert reopened.pooled.m == r.pooled.m and len(reopened.pooled.index) == len(r.pooled.index)


@pytest.mark.parametrize("damage", ["truncate", "inconsistent"])
def test_corrupt_pooled_generation_is_rebuilt(tmp_path, rng, damage):
    source = FakeSource()
    fill(source, rng, 80)
    r = Retriever(tmp_path / "d", source)
    r.sync()
    gen = sorted((tmp_path / "d").glob("gen-*"))[-1]
    if damage == "truncate":
        open(gen / "pool_counts.npy", "r+b").truncate(60)
    else:  # a complete but wrong file: counts no longer match the FAISS vectors
        counts = np.load(gen / "pool_counts.npy")
        np.save(gen / "pool_counts.npy", counts + 1)
        state = json.loads((tmp_path / "d" / "state.json").read_text())
        state["files"]["pool_counts"] = (gen / "pool_counts.npy").stat().st_size
        (tmp_path / "d" / "state.json").write_text(json.dumps(state))
    reopened = Retriever(tmp_path / "d", source)
    assert len(reopened.pooled) == 0 and reopened.watermark == -1  # discarded
    assert reopened.sync() is True
    np.testing.assert_array_equal(reopened.pooled.live_ids(), source.live_page_ids())
    q = source.pages[5][1][:4].astype(np.float32)
    assert reopened.search(q, None, candidates=20) == r.search(q, None, candidates=20)


def test_two_stage_equals_exhaustive_with_default_generators(tmp_path, rng):
    source = FakeSource()
    fill(source, rng, 90)
    r = Retriever(tmp_path / "d", source)
    r.sync()
    live = source.live_page_ids()
    for pid in rng.choice(live, 4, replace=False):
        m = source.pages[int(pid)][1][:4].astype(np.float32)
        s = source.pages[int(pid)][0]
        ids = rank.shortlist(m, s, prefilter=r.prefilter, tokens=r.tokens, pooled=r.pooled, live_ids=live,
                             candidates=len(live), per_token=len(live) * SLOTS)
        assert sorted(ids) == list(live)
        assert rank.rerank(source, m, ids, 10) == r.search(m, s, exhaustive=True)
        assert r.search(m, s, candidates=len(live)) == r.search(m, s, exhaustive=True)


def test_removed_pages_never_come_back_through_pooled(tmp_path, rng):
    source = FakeSource()
    fill(source, rng, 80)
    r = Retriever(tmp_path / "d", source)
    r.sync()
    qs = [source.pages[p][1][:4].astype(np.float32) for p in (4, 20, 33)]
    for p in (4, 20, 33):
        source.remove(p)
    for q in qs:  # before the sync: the source is the truth
        assert not {4, 20, 33} & {pid for pid, _ in r.search(q, None, k=20, candidates=30, generators=["pooled"])}
    r.sync()
    shutil.rmtree(tmp_path / "copy", ignore_errors=True)
    for q in qs:
        assert not {4, 20, 33} & {pid for pid, _ in Retriever(tmp_path / "d", source).search(q, None, k=20, candidates=30)}
    assert not np.isin([4, 20, 33], r.pooled.index.ids() // SLOTS).any()


def test_tokens_generator_is_built_on_first_use(tmp_path, rng):
    source = FakeSource()
    fill(source, rng, 80, tokens=20)
    r = Retriever(tmp_path / "d", source, min_train_tokens=500)
    r.sync()
    assert r.tokens is None
    q = source.pages[7][1][:4].astype(np.float32)
    hits = r.search(q, None, k=3, candidates=20, generators=["tokens"])
    assert r.tokens is not None and hits[0][0] == r.search(q, None, k=3, exhaustive=True)[0][0]
    reopened = Retriever(tmp_path / "d", source, min_train_tokens=500)
    assert reopened.tokens is not None and reopened.token_codebook
