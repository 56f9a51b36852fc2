import json
import shutil

import numpy as np
import pytest

from pagelens.retrieval import Retriever
from scoring import rank

from .conftest import FakeSource, fill, normalise


def queries(rng, source, n=6):
    """Short token sets taken near one page's tokens, plus a noisy single vector."""
    ids = source.live_page_ids()
    out = []
    for pid in rng.choice(ids, n, replace=False):
        single, multi = source.pages[int(pid)]
        q = normalise(multi[: 4].astype(np.float32) + 0.1 * rng.standard_normal((min(4, len(multi)), multi.shape[1])))
        out.append((q.astype(np.float32), normalise(single + 0.2 * rng.standard_normal(single.shape))))
    return out


def retriever(tmp_path, source, name="derived", **kw):
    return Retriever(tmp_path / name, source, min_train_tokens=500, token_codebook=True, **kw)


def search_all(r, qs, **kw):
    return [r.search(m, s, **kw) for m, s in qs]


def test_two_stage_equals_exhaustive_when_k_covers_collection(tmp_path, source, rng):
    r = retriever(tmp_path, source)
    r.sync()
    assert r.tokens is not None and r.codebook_version == 1
    live = source.live_page_ids()
    for m, s in queries(rng, source):
        ids = rank.shortlist(
            m, s, prefilter=r.prefilter, tokens=r.tokens, ann=r.ann, live_ids=live, candidates=len(live)
        )
        assert sorted(ids) == list(live)
        assert rank.rerank(source, m, ids, 10) == r.search(m, s, exhaustive=True)
        assert r.search(m, s, candidates=len(live)) == r.search(m, s, exhaustive=True)


def test_exhaustive_is_maxsim_over_every_page(tmp_path, source, rng):
    from scoring.maxsim import maxsim

    r = retriever(tmp_path, source)
    m, _ = queries(rng, source, 1)[0]
    live = source.live_page_ids()
    scores = maxsim(m, source.multi_vectors(live))
    best = live[np.lexsort((live, -scores))[:5]]
    assert [pid for pid, _ in r.search(m, None, k=5, exhaustive=True)] == list(best)


@pytest.mark.parametrize("generators", [("single",), ("tokens",), ("pooled",), ("single", "tokens"), ("pooled", "single")])
def test_shortlist_search_finds_the_source_page(tmp_path, source, rng, generators):
    r = retriever(tmp_path, source)
    r.sync()
    for m, s in queries(rng, source):
        hits = r.search(m, s, k=5, candidates=30, generators=generators)
        exact = r.search(m, s, k=5, exhaustive=True)
        assert hits[0] == exact[0]


def test_sync_tracks_adds_replacements_removals_and_reads_little(tmp_path, source, rng):
    r = retriever(tmp_path, source)
    assert r.sync() is True
    assert r.sync() is False  # nothing changed: no work, no write
    reads = source.multi_reads
    new = fill(source, rng, 3)
    source.remove(10)  # a replacement is a removal plus an addition under a new id
    source.remove(11)
    assert r.sync() is True
    assert source.multi_reads - reads == 3  # only the added pages were read
    live = source.live_page_ids()
    np.testing.assert_array_equal(r.tokens.live_ids(), live)
    np.testing.assert_array_equal(r.prefilter.ids(), live)
    assert r.watermark == max(new)


def test_removed_pages_never_come_back_even_before_sync(tmp_path, source, rng):
    r = retriever(tmp_path, source)
    r.sync()
    qs = queries(rng, source, 4)
    found = {pid for m, s in qs for pid, _ in r.search(m, s, k=20, candidates=40)}
    for pid in list(found)[:5]:
        source.remove(pid)
    gone = found - set(source.pages)
    for m, s in qs:
        for kw in ({"candidates": 40}, {"exhaustive": True}, {"generators": ["tokens"]}):
            assert not gone & {pid for pid, _ in r.search(m, s, k=20, **kw)}
    # and after a reopen from the lagging files
    r2 = retriever(tmp_path, source)
    assert not gone & {pid for m, s in qs for pid, _ in r2.search(m, s, k=20, candidates=40)}


def test_pages_added_after_sync_are_found_before_the_next_sync(tmp_path, source, rng):
    r = retriever(tmp_path, source)
    r.sync()
    pid = fill(source, rng, 1)[0]
    m = source.pages[pid][1][:3].astype(np.float32)
    assert r.search(m, source.pages[pid][0], k=1, candidates=20)[0][0] == pid


def damage_cases(directory):
    gen = sorted(directory.glob("gen-*"))[-1]
    yield "truncated array", lambda: open(gen / "tok_list_pos.npy", "r+b").truncate(100)
    yield "missing generation", lambda: shutil.rmtree(gen)
    yield "garbage state", lambda: (directory / "state.json").write_text("{not json")
    yield "missing state", lambda: (directory / "state.json").unlink()
    yield "inconsistent state", lambda: (directory / "state.json").write_text(
        json.dumps({**json.loads((directory / "state.json").read_text()), "files": {"included": 0}})
    )


@pytest.mark.parametrize("case", range(5))
def test_survives_a_kill_and_rebuilds(tmp_path, rng, case):
    source = FakeSource()
    fill(source, rng, 100)
    r = retriever(tmp_path, source)
    r.sync()
    fill(source, rng, 10)
    source.remove(3)
    r.sync()
    name, damage = list(damage_cases(tmp_path / "derived"))[case]
    damage()
    (tmp_path / "derived" / "gen-99999999.tmp").mkdir()  # a half-written generation
    qs = queries(rng, source)
    reopened = retriever(tmp_path, source)
    reopened_before_sync = search_all(reopened, qs, candidates=30)
    reopened.sync()
    fresh = retriever(tmp_path, source, name="fresh")
    fresh.sync()
    assert search_all(reopened, qs, candidates=30) == search_all(fresh, qs, candidates=30), name
    np.testing.assert_array_equal(reopened.tokens.live_ids(), source.live_page_ids())
    assert all(pid in source.pages for hits in reopened_before_sync for pid, _ in hits)
    assert not (tmp_path / "derived" / "gen-99999999.tmp").exists()


def test_stale_state_catches_up(tmp_path, rng):
    source = FakeSource()
    fill(source, rng, 100)
    r = retriever(tmp_path, source)
    r.sync()
    shutil.copytree(tmp_path / "derived", tmp_path / "old")
    fill(source, rng, 20)
    for pid in (5, 6, 50):
        source.remove(pid)
    r.sync()
    shutil.rmtree(tmp_path / "derived")
    shutil.move(tmp_path / "old", tmp_path / "derived")  # the derived files lag behind the store
    stale = retriever(tmp_path, source)
    stale.sync()
    qs = queries(rng, source)
    assert search_all(stale, qs, candidates=25) == search_all(r, qs, candidates=25)


def test_reopen_is_identical_and_deterministic(tmp_path, source, rng):
    a = retriever(tmp_path, source, name="a")
    a.sync()
    b = retriever(tmp_path, source, name="b")
    b.sync()
    reopened = retriever(tmp_path, source, name="a")
    assert reopened.codebook_version == 1 and reopened.watermark == a.watermark
    qs = queries(rng, source)
    expect = search_all(a, qs, candidates=25)
    assert search_all(b, qs, candidates=25) == expect
    assert search_all(reopened, qs, candidates=25) == expect
    np.testing.assert_array_equal(a.tokens.centroids, b.tokens.centroids)


def test_matryoshka_width_is_recorded(tmp_path, source):
    r = retriever(tmp_path, source, single_dim=16)
    r.sync()
    assert json.loads((tmp_path / "derived" / "state.json").read_text())["single_dim"] == 16
    assert retriever(tmp_path, source).single_dim == 16
    with pytest.raises(ValueError, match="exceeds"):
        retriever(tmp_path, source, name="x", single_dim=128)


def test_batch_equals_single_and_bad_generator(tmp_path, source, rng):
    r = retriever(tmp_path, source)
    r.sync()
    qs = queries(rng, source)
    batch = r.search_batch([m for m, _ in qs], np.stack([s for _, s in qs]), candidates=30)
    assert batch == search_all(r, qs, candidates=30)
    with pytest.raises(ValueError, match="choose from"):
        r.search(qs[0][0], qs[0][1], generators=["bm25"])
