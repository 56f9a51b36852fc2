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


# "ann" (every token, the default) and "pooled" (m means per page, built when asked for) share the
# PooledIndex code and the Retriever's bookkeeping: both must stay in step.
STRUCTURES = {"ann": "ann_", "pooled": "pool_"}


@pytest.mark.parametrize("which", list(STRUCTURES))
def test_retriever_keeps_pooled_in_step_with_add_remove_replace(tmp_path, rng, which):
    source = FakeSource()
    fill(source, rng, 80)
    r = Retriever(tmp_path / "d", source, pooled=which == "pooled")
    r.sync()
    assert r.tokens is None  # the codebook is only built once asked for
    assert (r.pooled is None) == (which == "ann")  # so is the pooled index
    fill(source, rng, 5)
    for pid in (2, 9, 40):  # a replacement is a removal plus an addition under a new id
        source.remove(pid)
    r.sync()
    live = source.live_page_ids()
    held = getattr(r, which)
    np.testing.assert_array_equal(held.live_ids(), live)
    np.testing.assert_array_equal(np.unique(held.index.ids() // held.slots), live)
    reopened = getattr(Retriever(tmp_path / "d", source), which)
    np.testing.assert_array_equal(reopened.live_ids(), live)
    assert reopened.m == held.m and len(reopened.index) == len(held.index)
    if which == "ann":  # every token is in, none pooled
        assert len(held.index) == sum(len(source.pages[int(p)][1]) for p in live)


@pytest.mark.parametrize("which", list(STRUCTURES))
@pytest.mark.parametrize("damage", ["truncate", "inconsistent"])
def test_corrupt_pooled_generation_is_rebuilt(tmp_path, rng, damage, which):
    source = FakeSource()
    fill(source, rng, 80)
    r = Retriever(tmp_path / "d", source, pooled=which == "pooled")
    r.sync()
    gen = sorted((tmp_path / "d").glob("gen-*"))[-1]
    counts_file = gen / f"{STRUCTURES[which]}counts.npy"
    if damage == "truncate":
        open(counts_file, "r+b").truncate(60)
    else:  # a complete but wrong file: counts no longer match the FAISS vectors
        counts = np.load(counts_file)
        np.save(counts_file, counts + 1)
        state = json.loads((tmp_path / "d" / "state.json").read_text())
        state["files"][f"{STRUCTURES[which]}counts"] = counts_file.stat().st_size
        (tmp_path / "d" / "state.json").write_text(json.dumps(state))
    reopened = Retriever(tmp_path / "d", source, pooled=which == "pooled")
    assert len(getattr(reopened, which)) == 0 and reopened.watermark == -1  # discarded
    assert reopened.sync() is True
    np.testing.assert_array_equal(getattr(reopened, which).live_ids(), source.live_page_ids())
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
        ids = rank.shortlist(m, s, prefilter=r.prefilter, tokens=r.tokens, ann=r.ann, live_ids=live,
                             candidates=len(live), per_token=len(live) * 40)
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
    assert not np.isin([4, 20, 33], r.ann.index.ids() // r.ann.slots).any()


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


def _token_pages(rng, n, tokens, dim=16):
    return [normalise(rng.standard_normal((tokens, dim))).astype(np.float16) for _ in range(n)]


def test_all_token_index_goes_ivf_sq8_and_keeps_every_token(rng):
    """m = 0: every token vector, in IVF lists of 8-bit residuals once past the flat size; removal,
    regrowth (lists decoded, retrained) and a save/load round trip keep it exact about what it holds."""
    from scoring.pooled import FLAT_MAX_VECTORS

    ann = PooledIndex(16, m=0)
    pages = _token_pages(rng, 700, 100)  # 70k token vectors > FLAT_MAX_VECTORS
    assert 70_000 > FLAT_MAX_VECTORS
    ids = np.arange(1, 701, dtype=np.int64)
    ann.add(ids[:100], pages[:100])
    assert ann.index.current_kind == "flat"
    ann.add(ids[100:], pages[100:])
    assert ann.index.current_kind == "ivf" and ann.index.codec == "sq8"
    import faiss

    ivf = faiss.extract_index_ivf(ann.index._index)
    assert isinstance(faiss.downcast_index(ann.index._index), faiss.IndexIVFScalarQuantizer)
    assert ivf.direct_map.type == faiss.DirectMap.NoMap  # no per-vector hash map
    assert len(ann.index) == 70_000
    # decoded vectors are the tokens within 8-bit error
    held, vectors = ann.index._decode_lists()
    assert len(held) == 70_000
    want = np.concatenate(pages).astype(np.float32)
    sub = np.concatenate([i * ann.slots + np.arange(100) for i in ids])
    assert (np.diff(sub) > 0).all()  # page by page, token by token: sorted already
    np.testing.assert_array_equal(held, sub)
    err = np.abs(vectors - want)
    assert err.mean() < 0.005 and err.max() < 0.15  # 8 bits a dimension; the odd residual past the trained range clips
    # a query made of one page's own tokens finds that page first
    for pid in (5, 333, 690):
        got, _ = ann.candidates(pages[pid - 1][:6].astype(np.float32), 5, per_token=64)
        assert got[0] == pid
    ann.remove(np.array([333, 5]))
    assert len(ann.index) == 69_800 and not np.isin([5, 333], ann.index.ids() // ann.slots).any()
    got, _ = ann.candidates(pages[332][:6].astype(np.float32), 5, per_token=64)
    assert 333 not in got
    again = PooledIndex.from_arrays(ann.to_arrays())
    assert again.m == 0 and again.slots == ann.slots and len(again.index) == len(ann.index)
    got2, _ = again.candidates(pages[689][:6].astype(np.float32), 5, per_token=64)
    assert got2[0] == 690
    # growth past 4x the trained size retrains from the decoded lists, dropping nothing
    more = _token_pages(rng, 2100, 100)
    ann.add(np.arange(1000, 3100, dtype=np.int64), more)
    assert len(ann.index) == 69_800 + 210_000
    got, _ = ann.candidates(pages[689][:6].astype(np.float32), 5, per_token=64)
    assert got[0] == 690


def test_all_token_index_pools_only_pages_beyond_its_slots(rng):
    from scoring.pooled import ALL_TOKEN_SLOTS

    ann = PooledIndex(16, m=0)
    long_page = normalise(rng.standard_normal((ALL_TOKEN_SLOTS + 500, 16))).astype(np.float16)
    short_page = normalise(rng.standard_normal((30, 16))).astype(np.float16)
    ann.add(np.array([1, 2]), [long_page, short_page])
    assert ann.counts.tolist()[1] == 30 and 0 < ann.counts.tolist()[0] <= ALL_TOKEN_SLOTS


@pytest.mark.parametrize("bad", [-1, 2**62])
def test_page_ids_that_would_overflow_the_sub_ids_are_refused(rng, bad):
    ann = PooledIndex(16, m=0)
    with pytest.raises(ValueError, match="page ids"):
        ann.add(np.array([bad]), _token_pages(rng, 1, 4))


def test_hostile_pooled_metadata_is_refused(rng):
    ann = PooledIndex(16, m=0)
    ann.add(np.array([1, 2]), _token_pages(rng, 2, 4))
    arrays = ann.to_arrays()
    for meta in ({"m": 0, "iterations": 6, "slots": 64}, {"m": 99, "iterations": 6}, {"m": 8, "iterations": 6, "slots": 4096}):
        bad = dict(arrays, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        with pytest.raises(ValueError):
            PooledIndex.from_arrays(bad)


def test_early_stop_reranks_fewer_pages_and_finds_the_same_top_k(tmp_path, rng, monkeypatch):
    """Pages are reranked in pre-score order and the rerank stops once no pre-score reaches the k-th
    exact score: on queries with clear answers the top k equals the full-K rerank's, with fewer pages."""
    source = FakeSource()
    fill(source, rng, 900)
    r = Retriever(tmp_path / "d", source)
    r.sync()
    live = source.live_page_ids()
    seen = []
    real_rerank = rank.rerank

    def counting(src, q, ids, k, **kw):
        seen.append(len(ids))
        return real_rerank(src, q, ids, k, **kw)

    monkeypatch.setattr(rank, "rerank", counting)
    early_pages = full_pages = 0
    for pid in rng.choice(live, 8, replace=False):
        q = source.pages[int(pid)][1][:6].astype(np.float32)
        kw = dict(prefilter=r.prefilter, tokens=r.tokens, live_ids=live, k=10, candidates=600, ann=r.ann)
        seen.clear()
        early = rank.search(source, q, None, **kw)
        early_pages += sum(seen)
        seen.clear()
        full = rank.search(source, q, None, early_stop=False, **kw)
        full_pages += sum(seen)
        assert early == full
        assert early[0][0] == pid
    assert early_pages < full_pages


def test_early_stop_keeps_going_while_prescores_reach_the_kth_score(tmp_path, rng):
    """A page whose pre-score beats the k-th exact score after the first block is still reranked."""
    source = FakeSource()
    fill(source, rng, 400)
    r = Retriever(tmp_path / "d", source)
    r.sync()
    live = source.live_page_ids()
    q = normalise(rng.standard_normal((5, 16))).astype(np.float32)  # matches nothing in particular
    kw = dict(prefilter=r.prefilter, tokens=r.tokens, live_ids=live, k=10, candidates=399, ann=r.ann)
    assert rank.search(source, q, None, **kw) == rank.search(source, q, None, early_stop=False, **kw)


class _RankedAnn:
    """A token index whose ranking and pre-scores the test chooses (the interface rank.search uses)."""

    def __init__(self, ids, pre):
        self.ids, self.pre = np.asarray(ids, np.int64), np.asarray(pre, np.float32)

    def __len__(self):
        return len(self.ids)

    def candidates(self, query, n, *, per_token=0):
        return self.ids[:n], self.pre[:n]


class _RankedSingle:
    """A single-vector prefilter returning a fixed ranking."""

    def __init__(self, ids):
        self.ids = np.asarray(ids, np.int64)

    def __len__(self):
        return len(self.ids)

    def search(self, query, k):
        return self.ids[None, :k], np.zeros((1, min(k, len(self.ids))), np.float32)


def _scored_pages(rng):
    """700 fake pages and a query: (source, live ids, query, exact score by page, pages best first)."""
    source = FakeSource()
    fill(source, rng, 700)
    live = source.live_page_ids()
    q = normalise(rng.standard_normal((4, 16))).astype(np.float32)
    exact = dict(rank.exhaustive(source, [q], live, len(live))[0])
    return source, live, q, exact, sorted(exact, key=lambda p: -exact[p])


def test_other_generators_quota_first_pages_always_and_the_rest_by_prescore_bound(rng):
    """The single generator's first QUOTA_ALWAYS pages are reranked whatever the token index says;
    its later quota pages only when their pre-score bound reaches the k-th exact score."""
    source, live, q, exact, by_score = _scored_pages(rng)
    best, second = by_score[0], by_score[1]  # what only the single generator proposes
    others = [p for p in by_score[2:]]
    kth = exact[others[9]]
    ann_ids = others[:400]  # the token index ranks neither best nor second

    def run(pre_floor):
        pre = np.linspace(kth + 5, pre_floor, len(ann_ids))  # pre-scores fall below the k-th score late
        single = [p for p in others[400:]][: rank.QUOTA_ALWAYS] + [second]
        single = single[: rank.QUOTA_ALWAYS - 1] + [best] + single[rank.QUOTA_ALWAYS - 1 :]
        kw = dict(prefilter=_RankedSingle(single + others[500:]), tokens=None, live_ids=live, k=10,
                  candidates=600, ann=_RankedAnn(ann_ids, pre), generators=("ann", "single"))
        return [p for p, _ in rank.search(source, q, np.zeros(8, np.float32), **kw)]

    hits = run(pre_floor=kth - 5)  # the ranking's lowest pre-score is under the k-th: bound says skip
    assert best in hits  # a first-QUOTA_ALWAYS page of the single generator
    assert second not in hits  # a later quota page, outside the token ranking, bounded by its last pre-score
    hits = run(pre_floor=kth + 1)  # every ranked pre-score reaches the k-th: the bound lets it in
    assert best in hits and second in hits


def test_a_pooled_first_shortlist_is_reranked_whole(rng):
    """Pooled means' pre-scores are no bound on MaxSim: the page they rank late with a low pre-score
    (its mean blurred the token that matches) is still reranked, so it is found."""
    source, live, q, exact, by_score = _scored_pages(rng)
    ranking = by_score[1:300] + [by_score[0]] + by_score[300:]  # the best page 300th, pre-score far down
    pre = np.linspace(exact[by_score[0]] + 1, exact[by_score[-1]] - 5, len(ranking))
    kw = dict(prefilter=None, tokens=None, live_ids=live, k=10, candidates=400,
              pooled=_RankedAnn(ranking, pre), generators=("pooled",))
    assert rank.search(source, q, None, **kw)[0][0] == by_score[0]
    assert rank.search(source, q, None, **kw) == rank.search(source, q, None, early_stop=False, **kw)


def test_compact_candidates_follow_the_default_up_to_their_cap():
    """Each compact generator brings its own K, so K stops at 400 where the default goes on to 800."""
    assert rank.compact_candidates(3_000) == rank.default_candidates(3_000) == 200
    assert rank.compact_candidates(9_000) == rank.default_candidates(9_000) == 300
    assert rank.compact_candidates(24_000) == rank.MAX_COMPACT_CANDIDATES == 400 < rank.default_candidates(24_000)
    assert rank.compact_candidates(10**7) == 400
