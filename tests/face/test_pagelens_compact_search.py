"""Search over a compact index: when the store's codec records begin with a centroid id, the derived
token generator is the lists over the codec's own centroids, built from the stored ids (no second
copy of every token vector), and it follows the codec when it is trained or replaced."""

import os

import numpy as np
import pytest

from engine.types import Embedding
from indexer.codecs import CODECS
from indexer.store import Store
from pagelens.retrieval import Retriever
from scoring import rank

D_SINGLE, D_MULTI = 32, 16
CENTROID_CODECS = [c for c in ("residual-2", "pq-16") if c in CODECS]


def clustered_pages(n, seed=0):
    """Pages of ~30 tokens around 3 of 40 topics each: a query from a page's tokens finds it."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((40, D_MULTI))
    out = []
    for _ in range(n):
        mine = topics[rng.choice(40, 3, replace=False)]
        m = mine[rng.integers(0, 3, int(rng.integers(20, 40)))] + 0.35 * rng.standard_normal((1, D_MULTI))
        m = m + 0.25 * rng.standard_normal(m.shape)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        out.append(Embedding(single=rng.standard_normal(D_SINGLE).astype(np.float32), multi=m.astype(np.float32)))
    return out


def trained_store(tmp_path, compression, n=160):
    s = Store.create(tmp_path / "idx", identity=None, single_dim=D_SINGLE, multi_dim=D_MULTI, compression=compression)
    s.train_min_tokens = 10 ** 9  # stays raw float16 until the test trains it
    embs = clustered_pages(n)
    ids = []
    for d in range(0, n, 40):
        ids += s.add_document(f"/doc{d}.pdf", embs[d : d + 40])
    return s, np.asarray(ids), embs


@pytest.mark.parametrize("compression", CENTROID_CODECS)
def test_compact_lists_come_from_stored_centroid_ids_and_follow_training(tmp_path, compression):
    store, ids, embs = trained_store(tmp_path, compression)
    r = Retriever(tmp_path / "derived", store)
    r.sync()
    assert not r.compact and r.ann is not None  # raw float16 rows: the all-token index
    store.train_min_tokens = 100
    assert store.maybe_train_codec() == len(ids)
    version, centroids = store.token_codebook()
    r.sync()  # same pages, new codec: rebuilt as centroid lists
    assert r.compact and r.ann is None and r.tokens.version == version
    assert np.allclose(r.tokens.centroids, centroids / np.linalg.norm(centroids, axis=1, keepdims=True))
    codec = store.codec_state(version).codec
    # every (centroid, page) pair the stored ids name, and no other
    want = {(int(c), int(p)) for p, a in zip(ids, store.coarse_ids(ids, version)) for c in a}
    assert want == {(int(c), int(p)) for p, a in zip(ids, store.coarse_ids(ids, version)) for c in set(a.tolist())}
    lists = r.tokens.to_arrays()
    got = set()
    for c in range(r.tokens.n_centroids):
        for pos in lists["list_pos"][lists["list_offsets"][c] : lists["list_offsets"][c + 1]]:
            got.add((c, int(lists["page_ids"][pos])))
    assert got == want
    assert all(np.array_equal(a, codec.assign(v.astype(np.float32)))
               for a, v in zip(store.coarse_ids(ids[:5], version), store.multi_vectors(ids[:5])))
    names = os.listdir(tmp_path / "derived" / f"gen-{r._generation:08d}")
    assert not any(n.startswith("ann_") for n in names) and any(n.startswith("tok_") for n in names)

    # search: default generators are the compact ones, and queries find their page
    found = 0
    for i in range(0, len(ids), 16):
        q = embs[i].multi[:6]
        hits = r.search(q, embs[i].single, k=5, candidates=20)
        exact = rank.exhaustive(store, [q], store.live_page_ids(), 5)[0]
        found += hits[0][0] == ids[i]
        assert hits[0][0] == exact[0][0] and abs(hits[0][1] - exact[0][1]) < 1e-4
    assert found >= 8  # 10 queries, each from its own page's tokens

    # reopen: the compact generation loads as it is (nothing rebuilt)
    gen = r._generation
    again = Retriever(tmp_path / "derived", store)
    assert again.compact and again._generation == gen
    assert again.search(embs[3].multi[:6], embs[3].single, k=5, candidates=20) == r.search(
        embs[3].multi[:6], embs[3].single, k=5, candidates=20)
    again.sync()
    assert again._generation == gen

    # pages added later are encoded as written and enter the lists from their ids
    more = clustered_pages(20, seed=9)
    new_ids = store.add_document("/late.pdf", more)
    r.sync()
    assert all(a is not None for a in store.coarse_ids(new_ids, version))
    assert r.search(more[4].multi[:6], more[4].single, k=3, candidates=20)[0][0] == new_ids[4]
    store.remove_document("/doc0.pdf")
    r.sync()
    assert not set(ids[:40].tolist()) & set(r.tokens.live_ids().tolist())


def test_float16_and_int8_stores_keep_the_all_token_index(tmp_path):
    for compression in ("fp16", "int8"):
        s = Store.create(tmp_path / compression, identity=None, single_dim=D_SINGLE, multi_dim=D_MULTI,
                         compression=compression)
        s.add_document("/a.pdf", clustered_pages(10))
        assert s.token_codebook() is None
        r = Retriever(tmp_path / f"d-{compression}", s)
        r.sync()
        assert not r.compact and r.ann is not None and len(r.ann) == 10


def _big_pages(n=70, tokens=1000, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):  # 70 x 1,000 tokens: past the 65,536 tokens a residual codec trains at
        m = rng.standard_normal((tokens, D_MULTI)).astype(np.float32)
        out.append(Embedding(single=rng.standard_normal(D_SINGLE).astype(np.float32),
                             multi=m / np.linalg.norm(m, axis=1, keepdims=True)))
    return out


def _generation_files(folder):
    import json

    state = json.loads((folder / "derived" / "state.json").read_text())
    gen = folder / "derived" / f"gen-{state['generation']:08d}"
    return {f.name: f.stat().st_size for f in gen.iterdir()}


def test_recompress_shrinks_the_derived_structures_too(tmp_path):
    """fp16 -> a centroid codec: the all-token IVF copy (136 B a token) gives way to centroid lists."""
    import pagelens

    index = pagelens.Index.create(tmp_path / "idx", single_dim=D_SINGLE, multi_dim=D_MULTI)
    pages = _big_pages()
    index.add_embeddings("/big.pdf", pages)
    index.sync()
    before = _generation_files(tmp_path / "idx")
    assert any(n.startswith("ann_") for n in before)
    hits_before = index.search_embedding(pagelens.Embedding(single=pages[5].single, multi=pages[5].multi[:8]), k=3)
    index.recompress("residual-2")
    index.close()
    after = _generation_files(tmp_path / "idx")
    assert not any(n.startswith("ann_") for n in after) and "tok_list_pos.npy" in after
    assert sum(after.values()) < sum(before.values()) / 2
    with pagelens.Index.open(tmp_path / "idx") as again:
        hits = again.search_embedding(pagelens.Embedding(single=pages[5].single, multi=pages[5].multi[:8]), k=3)
    assert hits[0].page_id == hits_before[0].page_id


def test_index_sync_trains_a_due_codec_before_building_the_lists(tmp_path):
    """A writer that syncs before closing (as scripts do) must still get its codec trained: sync
    used to mark the index clean, so close() skipped the training and every page stayed float16."""
    import pagelens

    index = pagelens.Index.create(tmp_path / "idx", single_dim=D_SINGLE, multi_dim=D_MULTI, compression="residual-2")
    index.add_embeddings("/big.pdf", _big_pages())
    index.sync()
    index.close()
    store = Store.open(tmp_path / "idx")
    assert store.stats().raw_pages == 0 and store.token_codebook() is not None
    r = Retriever(tmp_path / "idx" / "derived", store, persist=False)
    assert r.compact  # the saved generation is the compact one


def test_cli_lists_agree_with_the_api():
    """The CLI keeps copies of a few api constants (it parses arguments before importing the engine)."""
    from pagelens import api, cli

    assert cli.COMPACT_NAMES == api.COMPACT_PROFILE
    assert cli.COMPRESSION_NAMES == api.COMPRESSIONS
    assert cli.SINGLE_PRECISION_NAMES == api.SINGLE_PRECISIONS


def test_a_codec_trains_mid_run_only_past_the_early_threshold_else_at_close(tmp_path, monkeypatch):
    """Bring-your-own pages: during a run the codec trains once Store.train_early_tokens are in (later
    documents are then encoded as written, so a big first run never holds the whole collection raw);
    a smaller collection trains at close(), on a sample of all its pages rather than its first ones."""
    import pagelens

    pages = _big_pages(n=80)
    index = pagelens.Index.create(tmp_path / "a", single_dim=D_SINGLE, multi_dim=D_MULTI, compression="residual-2")
    index.add_embeddings("/first.pdf", pages[:70])  # 70,000 tokens: past train_min_tokens, not the early mark
    store = Store.open(tmp_path / "a")
    assert store.stats().raw_pages == 70 and store.token_codebook() is None
    store.close()
    index.close()  # the end of the run: trains on all 70 pages
    store = Store.open(tmp_path / "a")
    assert store.stats().raw_pages == 0 and store.token_codebook() is not None
    store.close()

    monkeypatch.setattr(Store, "train_early_tokens", 65_536)
    index = pagelens.Index.create(tmp_path / "b", single_dim=D_SINGLE, multi_dim=D_MULTI, compression="residual-2")
    index.add_embeddings("/first.pdf", pages[:70])  # due mid-run now
    index.add_embeddings("/second.pdf", pages[70:])
    store = Store.open(tmp_path / "b")  # a reader, while the writer is still open
    assert store.stats().raw_pages == 0 and store.token_codebook() is not None
    store.close()
    index.close()


def test_pooled_generator_over_a_compact_index_is_product_quantised_and_kept_in_step(tmp_path, monkeypatch):
    """A compact index's sync pools each page's decoded codes into COMPACT_MEANS means,
    product-quantised in IVF lists; the generation keeps it (a reopen rebuilds nothing), adds and
    removals follow, and a pooled-first search finds a page from its own tokens."""
    import faiss

    import scoring.pooled as pooled_mod

    monkeypatch.setattr(pooled_mod, "PQ_MIN_VECTORS", 500)  # 160 pages x 16 means: IVF-PQ, not flat
    store, ids, embs = trained_store(tmp_path, "pq-16")
    store.train_min_tokens = 100
    store.maybe_train_codec()
    r = Retriever(tmp_path / "derived", store)
    r.sync()
    assert r.compact and r.pooled is not None and len(r.pooled) == len(ids)  # built at sync
    gens = ["pooled", "single"]
    found = 0
    for i in range(0, len(ids), 16):
        hits = r.search(embs[i].multi[:6], embs[i].single, k=5, candidates=20, generators=gens)
        found += hits[0][0] == ids[i]
    assert found >= 8
    assert r.pooled.m == pooled_mod.COMPACT_MEANS and r.pooled.codec == pooled_mod.COMPACT_CODEC
    assert isinstance(faiss.downcast_index(r.pooled.index._index), faiss.IndexIVFPQ)
    np.testing.assert_array_equal(r.pooled.live_ids(), np.sort(ids))
    gen = r._generation
    again = Retriever(tmp_path / "derived", store)
    assert again._generation == gen and again.pooled is not None and again.pooled.codec == pooled_mod.COMPACT_CODEC
    more = clustered_pages(20, seed=9)
    new_ids = store.add_document("/late.pdf", more)
    store.remove_document("/doc0.pdf")
    r.sync()
    want = np.sort(np.concatenate([ids[40:], new_ids]))
    np.testing.assert_array_equal(r.pooled.live_ids(), want)
    assert r.search(more[4].multi[:6], more[4].single, k=3, candidates=20, generators=gens)[0][0] == new_ids[4]
    # a generation pooled another way (float32, other m) is rebuilt, not trusted
    other = Retriever(tmp_path / "derived", store, pool_clusters=8)
    assert len(other.included) == 0 and len(other.pooled) == 0
    other.sync()
    assert other.pooled.m == 8 and len(other.pooled) == len(want)


def test_a_compact_generation_saved_without_means_is_pooled_by_its_writer_not_its_readers(tmp_path):
    """An index synced before compact indexes pooled at sync: readers search it as it is (lists +
    single; pooling 1M pages per search process would take a quarter of an hour), the writer's
    next sync pools every live page once and saves it, and readers then load the means."""
    store, ids, embs = trained_store(tmp_path, "pq-16")
    store.train_min_tokens = 100
    store.maybe_train_codec()
    old = Retriever(tmp_path / "derived", store)
    old.sync()
    old.pooled = None  # what an older pagelens saved
    old._generation += 1
    old._save()
    reader = Retriever(tmp_path / "derived", store, persist=False)
    assert reader.compact and reader.pooled is None and len(reader.included) == len(ids)
    hits = reader.search(embs[5].multi[:6], embs[5].single, k=3, candidates=20)
    assert hits[0][0] == ids[5] and reader.pooled is None  # searched without means, built none
    assert not reader.sync()
    writer = Retriever(tmp_path / "derived", store)
    assert writer.pooled is None
    assert writer.sync()  # nothing added or removed: it pools what is there
    np.testing.assert_array_equal(writer.pooled.live_ids(), np.sort(ids))
    assert not writer.sync()
    fresh = Retriever(tmp_path / "derived", store, persist=False)
    assert fresh.pooled is not None and len(fresh.pooled) == len(ids)
    assert fresh.search(embs[7].multi[:6], embs[7].single, k=3, candidates=20)[0][0] == ids[7]


def test_index_search_takes_generators_and_refuses_unknown_ones(tmp_path):
    import pagelens
    from pagelens.errors import PagelensError

    index = pagelens.Index.create(tmp_path / "idx", single_dim=D_SINGLE, multi_dim=D_MULTI, compression="pq-16")
    embs = clustered_pages(160, seed=4)
    ids = index.add_embeddings("/a.pdf", embs)
    found = 0
    for i in range(0, 160, 16):
        q = pagelens.Embedding(single=embs[i].single, multi=embs[i].multi[:6])
        hits = index.search_embedding(q, k=3, candidates=20, generators=["pooled", "single"])
        found += hits[0].page_id == ids[i]
    assert found >= 8
    for bad in (["bogus"], [], ["pooled", 3]):
        with pytest.raises(PagelensError, match="generators"):
            index.search_embedding(q, k=3, generators=bad)
    index.close()


def test_info_splits_the_derived_bytes_by_structure(tmp_path):
    """Index.info() names what the derived folder holds (pooled means, token lists, single
    prefilter), as the saved state records them; an unreadable state reports nothing, not a crash."""
    import pagelens
    from pagelens.retrieval import derived_bytes

    index = pagelens.Index.create(tmp_path / "idx", single_dim=D_SINGLE, multi_dim=D_MULTI, compression="pq-16")
    embs = _big_pages(n=80)
    index.add_embeddings("/a.pdf", embs)
    index.sync()
    info = index.info()
    parts = info.extra["derived_bytes"]
    assert {"pooled means", "token lists", "single prefilter"} <= set(parts) and min(parts.values()) > 0
    assert sum(parts.values()) <= info.bytes_on_disk["derived"]
    assert info.extra["derived_bytes_per_page"]["pooled means"] == parts["pooled means"] / info.pages
    index.close()
    (tmp_path / "idx" / "derived" / "state.json").write_text('{"generation": 1, "files": {"../x": 5}}')
    assert derived_bytes(tmp_path / "idx" / "derived") == {}


def test_compact_default_leads_with_means_and_lists_and_builds_the_prefilter_only_when_asked(tmp_path):
    """A compact index's default search: pooled means and centroid lists, each its top K, no
    single-vector prefilter (its bytes go to the means). Asked for "single", the prefilter is built
    over what is live, saved, kept in step, and a reopen keeps it."""
    from scoring import rank

    store, ids, embs = trained_store(tmp_path, "pq-16")
    store.train_min_tokens = 100
    store.maybe_train_codec()
    r = Retriever(tmp_path / "derived", store)
    r.sync()
    assert len(r.prefilter) == 0 and len(r.pooled) == len(ids) and len(r.tokens) == len(ids)
    q, s = embs[9].multi[:6], embs[9].single
    want = rank.search(store, q, s, prefilter=r.prefilter, tokens=r.tokens, live_ids=np.sort(ids), k=5, candidates=20,
                       generators=("pooled", "tokens"), pooled=r.pooled, per_token=rank.COMPACT_PER_TOKEN,
                       shares="each")
    assert r.search(q, s, k=5, candidates=20) == want and want[0][0] == ids[9]
    assert len(r.prefilter) == 0  # the default never asks for it
    hits = r.search(q, s, k=5, candidates=20, generators=["pooled", "tokens", "single"])
    assert hits[0][0] == ids[9] and len(r.prefilter) == len(ids)
    store.remove_document("/doc0.pdf")
    more = clustered_pages(10, seed=5)
    new_ids = store.add_document("/late.pdf", more)
    r.sync()
    np.testing.assert_array_equal(r.prefilter.ids(), np.sort(np.concatenate([ids[40:], new_ids])))
    again = Retriever(tmp_path / "derived", store, persist=False)
    assert again.single_enabled and len(again.prefilter) == len(ids) - 40 + 10


def test_pooled_means_regrown_4x_are_pooled_again_from_the_store_not_re_encoded(tmp_path, monkeypatch):
    """When the means' IVF-PQ lists retrain (the collection grew 4x since they were trained), the
    writer pools every page again from the stored codes: the result is the index a fresh sync
    builds, not one re-encoded from its own decoded codes (a second quantisation)."""
    import scoring.pooled as pooled_mod

    monkeypatch.setattr(pooled_mod, "PQ_MIN_VECTORS", 300)  # 40 pages x 16 means: IVF-PQ from the start
    embs = clustered_pages(180, seed=11)
    store = Store.create(tmp_path / "idx", identity=None, single_dim=D_SINGLE, multi_dim=D_MULTI, compression="pq-16")
    store.train_min_tokens = 100
    store.add_document("/first.pdf", embs[:40])
    store.maybe_train_codec()
    r = Retriever(tmp_path / "derived", store)
    r.sync()
    assert r.pooled.index.current_kind == "ivf" and not r.pooled.regrows_lossily(0)
    assert r.pooled.regrows_lossily(140)
    store.add_document("/rest.pdf", embs[40:])
    r.sync()  # 40 -> 180 pages: past 4x the vectors the lists were trained on
    fresh = Retriever(tmp_path / "fresh", store)
    fresh.sync()
    for i in (3, 50, 120, 179):
        q = embs[i].multi[:6]
        got, want = r.pooled.candidates(q, 30), fresh.pooled.candidates(q, 30)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
