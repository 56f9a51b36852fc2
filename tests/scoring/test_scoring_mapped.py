"""Derived FAISS indexes are memory-mapped on open, copied before any change, and a reader picks up
a writer's newer generation instead of redoing its work."""

import numpy as np

from pagelens.retrieval import Retriever
from scoring.prefilter import SinglePrefilter

from .conftest import FakeSource, fill
from .test_scoring_retrieval import queries, search_all


def _retriever(path, source, **kw):
    # prefilter "ivf" and a low flat limit exercise every FAISS kind that can be mapped and changed
    return Retriever(path, source, min_train_tokens=500, **kw)


def test_reopened_indexes_are_mapped_and_survive_changes(tmp_path, rng):
    source = FakeSource()
    fill(source, rng, 120)
    for kind in ("flat", "hnsw", "ivf"):
        first = _retriever(tmp_path / kind, source, prefilter=kind)
        first.sync()
        reopened = _retriever(tmp_path / kind, source, prefilter=kind)
        assert reopened.prefilter._mapped and reopened.ann.index._mapped
        qs = queries(rng, source)
        assert search_all(reopened, qs, k=5) == search_all(first, qs, k=5)
        # additions and removals on mapped indexes: a copy is made, nothing aborts, results are right
        new = fill(source, rng, 15)
        source.remove(int(source.live_page_ids()[3]))
        assert reopened.sync()
        assert not reopened.prefilter._mapped and not reopened.ann.index._mapped
        fresh = _retriever(tmp_path / f"{kind}-fresh", source, prefilter=kind)
        fresh.sync()
        qs = queries(rng, source)
        assert search_all(reopened, qs, k=5) == search_all(fresh, qs, k=5)
        assert set(new) <= set(reopened.prefilter.ids().tolist())


def test_a_reader_maps_the_writers_new_generation(tmp_path, rng):
    source = FakeSource()
    fill(source, rng, 60)
    writer = _retriever(tmp_path / "d", source)
    writer.sync()
    reader = _retriever(tmp_path / "d", source)
    fill(source, rng, 10)
    writer.sync()
    generation = writer._generation
    reads = source.multi_reads
    assert reader.sync() is False  # nothing left to do: the writer's generation is loaded instead
    assert reader._generation == generation and source.multi_reads == reads
    assert np.array_equal(reader.included, source.live_page_ids())


def test_prefilter_round_trip_through_bytes_keeps_results(rng):
    p = SinglePrefilter(64, kind="flat")
    v = rng.standard_normal((50, 64)).astype(np.float32)
    p.add(np.arange(50) * 2, v)
    q = SinglePrefilter.from_bytes(p.to_bytes())
    assert np.array_equal(q.search(v[:3], 4)[0], p.search(v[:3], 4)[0])


def test_union_with_quotas_keeps_the_main_generators_k_and_tops_up():
    from scoring.rank import union_with_quotas

    main, other = np.array([9, 8, 7, 6, 5, 4, 3, 2]), np.array([1, 9, 11, 12, 13, 14, 15, 16])
    # main gives its top 8, the other its top 2 (a quarter of 8): {9..2} plus {1}
    assert union_with_quotas([main, other], 8).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    # main returned only 2 pages: the other's quota (1) and then its next pages fill up to K=6
    assert union_with_quotas([main[:2], other], 6).tolist() == [1, 8, 9, 11, 12, 13]


def test_each_share_gives_every_generator_k_and_ties_at_the_cut_are_left_out():
    """The compact default's union: every generator's top K, not K/4 for the second; and a ranking
    whose pages tie across its cut contributes only its untied head (the rest is a draw by id)."""
    import pytest

    from scoring.rank import union_with_quotas, untied_head

    main, other = np.arange(1, 9), np.arange(11, 19)
    assert union_with_quotas([main, other], 8, shares="first").tolist() == list(range(1, 9)) + [11, 12]
    assert union_with_quotas([main, other], 8, shares="each").tolist() == list(range(1, 9)) + list(range(11, 19))
    with pytest.raises(ValueError, match="shares"):
        union_with_quotas([main], 8, shares="most")
    ids = np.array([7, 3, 4, 5, 6, 9])
    assert untied_head(ids, np.array([5.0, 4.0, 3.0, 3.0, 3.0, 3.0]), 4).tolist() == [7, 3]  # 4, 5 | 6, 9 tie
    assert untied_head(ids, np.array([5.0, 4.0, 3.0, 3.0, 2.0, 1.0]), 4).tolist() == [7, 3, 4, 5]  # tie ends at the cut
    assert untied_head(ids, np.full(6, 1.0), 3).tolist() == []  # one tie group: nothing ranked
    assert untied_head(ids[:3], np.array([3.0, 2.0, 2.0]), 4).tolist() == [7, 3, 4]  # fewer than n: all
