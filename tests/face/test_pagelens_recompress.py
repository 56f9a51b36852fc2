"""Compact indexes through the API and the CLI: a codec chosen at creation, `recompress`, `info`."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.testing import write_tiny_checkpoint
from engine.types import Embedding
from pagelens.api import COMPACT_PROFILE, Index
from pagelens.cli import app
from pagelens.errors import PagelensError
from tests.indexer.indexer_fakes import make_pdf

runner = CliRunner()
D_SINGLE, D_MULTI = 32, 64


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def corpus(n_docs=6, pages=4, seed=0):
    rng = np.random.default_rng(seed)
    docs = {}
    for d in range(n_docs):
        docs[f"s3://bucket/doc{d}.pdf"] = [
            Embedding(single=_unit(rng.standard_normal(D_SINGLE)), multi=_unit(rng.standard_normal((30, D_MULTI))))
            for _ in range(pages)]
    return docs


def queries(docs, seed=1):
    """One query per page: a few of its tokens plus noise (so each query has one right page)."""
    rng = np.random.default_rng(seed)
    out = []
    for path, embs in docs.items():
        for number, e in enumerate(embs, start=1):
            q = _unit(e.multi[:6] + 0.5 / np.sqrt(D_MULTI) * rng.standard_normal((6, D_MULTI)))
            out.append(((path, number), Embedding(single=e.single, multi=q)))
    return out


def build(directory, docs, **kwargs):
    index = Index.create(directory, single_dim=D_SINGLE, multi_dim=D_MULTI, **kwargs)
    for path, embs in docs.items():
        index.add_embeddings(path, embs)
    return index


def test_int8_search_matches_fp16_top1_and_scores(tmp_path):
    docs = corpus()
    qs = queries(docs)
    with build(tmp_path / "fp16", docs) as a, build(tmp_path / "int8", docs, compression="int8") as b:
        assert b.info().extra["compression"] == "int8"
        ha = a.search_embeddings([q for _t, q in qs], k=3, exhaustive=True)
        hb = b.search_embeddings([q for _t, q in qs], k=3, exhaustive=True)
        for (target, _q), x, y in zip(qs, ha, hb):
            assert (x[0].path, x[0].page) == target  # the set is easy for fp16 ...
            assert (y[0].path, y[0].page, y[0].page_id) == (x[0].path, x[0].page, x[0].page_id)  # ... int8 agrees
            assert abs(x[0].score - y[0].score) < 0.02 * abs(x[0].score) + 0.02


def test_compact_picks_the_profile_and_conflicts_are_refused(tmp_path):
    with Index.create(tmp_path / "c", single_dim=D_SINGLE, multi_dim=D_MULTI, compact=True) as index:
        info = index.info()
        assert (info.extra["compression"], info.extra["pool_factor"]) == COMPACT_PROFILE
    with pytest.raises(PagelensError):
        Index.create(tmp_path / "d", single_dim=D_SINGLE, multi_dim=D_MULTI, compact=True, compression="int8")
    with pytest.raises(PagelensError):
        Index.create(tmp_path / "e", single_dim=D_SINGLE, multi_dim=D_MULTI, compression="zstd")
    with pytest.raises(PagelensError):
        Index.create(tmp_path / "f", single_dim=D_SINGLE, multi_dim=D_MULTI, pool_factor=0)


@pytest.mark.parametrize("compression", ["int8", "residual-2"])
def test_recompress_keeps_page_ids_search_and_shrinks_bytes(tmp_path, compression):
    docs = corpus(seed=4)
    qs = queries(docs, seed=5)
    index = build(tmp_path / "idx", docs)
    ids = {p: list(index._store.page_ids_of(p)) for p in docs}
    before = index.info()
    progress = []
    result = index.recompress(compression, on_progress=lambda *a: progress.append(a))
    assert result.pages_converted == 24 and progress[-1] == ("converting", 24, 24)
    after = index.info()
    assert {p: list(index._store.page_ids_of(p)) for p in docs} == ids
    assert after.extra["compression"] == compression and after.pages == before.pages
    assert after.bytes_on_disk["multi_vectors"] < before.bytes_on_disk["multi_vectors"]
    assert after.bytes_on_disk["codec_state"] > 0 and before.bytes_on_disk["codec_state"] == 0
    per_page = after.extra["bytes_per_page"]
    assert set(per_page) == {"multi_vectors", "single_vectors", "derived", "catalogue"}
    assert per_page["multi_vectors"] == pytest.approx(
        (after.bytes_on_disk["multi_vectors"] + after.bytes_on_disk["codec_state"]) / 24)
    if compression == "int8":  # a residual codebook outweighs 24 pages' savings; it is fixed, pages are not
        assert per_page["multi_vectors"] < before.extra["bytes_per_page"]["multi_vectors"]
    hits = index.search_embeddings([q for _t, q in qs], k=1, exhaustive=True)
    right = sum((h[0].path, h[0].page) == t for (t, _q), h in zip(qs, hits))
    assert right >= 0.9 * len(qs)
    with pytest.raises(PagelensError, match="fp16 originals"):
        index.recompress("int8" if compression != "int8" else "residual-2")
    index.close()
    with Index.open(tmp_path / "idx") as reader:  # and from a fresh reader
        again = reader.search_embeddings([q for _t, q in qs], k=1, exhaustive=True)
        assert [h[0].page_id for h in again] == [h[0].page_id for h in hits]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "jina-v4-tiny"))


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    for i in range(3):
        make_pdf(root / f"doc{i}.pdf", pages=2, seed=i, size=(300, 400))
    return root


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _top_pages(index, query="page"):
    result = _invoke("search", query, "--index", index, "--json", "-k", "3")
    assert result.exit_code == 0, result.output
    return [(h["path"], h["page"]) for h in json.loads(result.stdout)]


def test_cli_index_with_compression_and_fixed_settings(tmp_path, tiny, docs):
    index = tmp_path / "idx"
    result = _invoke("index", docs, "--index", index, "--model", tiny, "--compression", "int8", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(_invoke("info", "--index", index, "--json").stdout)
    assert (info["extra"]["compression"], info["extra"]["pool_factor"], info["pages"]) == ("int8", 1, 6)
    assert _top_pages(index)
    text = _invoke("info", "--index", index).stdout
    assert "int8, pool factor 1" in text and "per page:" in text
    again = _invoke("index", docs, "--index", index, "--compression", "residual-2")
    assert again.exit_code == 2 and "pagelens recompress" in again.output
    same = _invoke("index", docs, "--index", index, "--compression", "int8", "--json")  # its own value is fine
    assert same.exit_code == 0, same.output
    bad = _invoke("index", docs, "--index", tmp_path / "other", "--compression", "zstd")
    assert bad.exit_code == 2


def test_cli_recompress_an_fp16_index(tmp_path, tiny, docs):
    index = tmp_path / "idx"
    assert _invoke("index", docs, "--index", index, "--model", tiny, "--json").exit_code == 0
    before = json.loads(_invoke("info", "--index", index, "--json").stdout)
    top = _top_pages(index)
    result = _invoke("recompress", "--index", index, "--compression", "int8", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pages_converted"] == 6
    assert summary["multi_vector_bytes_after"] < summary["multi_vector_bytes_before"]
    after = json.loads(_invoke("info", "--index", index, "--json").stdout)
    assert after["extra"]["compression"] == "int8" and after["pages"] == before["pages"]
    assert after["bytes_on_disk"]["multi_vectors"] < before["bytes_on_disk"]["multi_vectors"]
    assert _top_pages(index)[0] == top[0]
    refused = _invoke("recompress", "--index", index, "--compression", "residual-2")
    assert refused.exit_code == 4 and "fp16" in refused.output
    assert _invoke("recompress", "--index", index).exit_code == 2  # no codec named
    assert _invoke("verify", "--index", index).exit_code == 0


@pytest.mark.parametrize("flags,expected", [(["--compression", "residual-2"], ("residual-2", 1)),
                                            (["--compact"], COMPACT_PROFILE),
                                            (["--compression", "int8", "--pool-factor", "2"], ("int8", 2))])
def test_cli_index_creates_each_profile(tmp_path, tiny, docs, monkeypatch, flags, expected):
    from indexer.store import Store

    monkeypatch.setattr(Store, "train_min_tokens", 1)  # train at the end of this small run
    index = tmp_path / "idx"
    result = _invoke("index", docs, "--index", index, "--model", tiny, "--json", *flags)
    assert result.exit_code == 0, result.output
    info = json.loads(_invoke("info", "--index", index, "--json").stdout)
    assert (info["extra"]["compression"], info["extra"]["pool_factor"]) == expected
    assert info["extra"]["pages_not_yet_compressed"] == 0 and info["bytes_on_disk"]["codec_state"] > 0
    shards = sorted(p.name for p in (index / "shards").iterdir())
    assert [n for n in shards if n.startswith("multi")] and all(".c" in n for n in shards if n.startswith("multi"))
    assert len(_top_pages(index)) == 3
    assert _invoke("verify", "--index", index).exit_code == 0
    with Index.open(index) as idx:
        page_id = idx.search("page", k=1)[0].page_id
        assert idx._store.page_grid(page_id) is None if expected[1] > 1 else idx._store.page_grid(page_id) is not None


def test_recompress_is_refused_while_another_writer_holds_the_lock(tmp_path):
    from indexer.store import Store

    build(tmp_path / "idx", corpus(n_docs=1)).close()
    writer = Store.open(tmp_path / "idx", writable=True)
    try:
        result = _invoke("recompress", "--index", tmp_path / "idx", "--compression", "int8")
        assert result.exit_code == 4 and "another process" in result.output
    finally:
        writer.close()
    with Index.open(tmp_path / "idx") as index:
        assert index.info().extra["compression"] == "fp16"  # nothing changed


def test_open_or_create_refuses_other_settings_on_an_existing_index(tmp_path):
    build(tmp_path / "idx", corpus(n_docs=1), compression="int8").close()
    Index.open_or_create(tmp_path / "idx", pool_factor=1).close()  # what is not given is the index's own
    Index.open_or_create(tmp_path / "idx", compression="int8").close()
    for kwargs in ({"compression": "fp16"}, {"pool_factor": 2}, {"compact": True}):
        with pytest.raises(PagelensError, match="pagelens recompress"):
            Index.open_or_create(tmp_path / "idx", **kwargs)
    Index.open(tmp_path / "idx", writable=True).close()  # the refused open released the writer lock


# ---- single vectors stored at the prefilter's width, in fp16 (issue 11) ---------------------------

D_FULL = 2048


def wide_corpus(n_docs=8, pages=5, seed=0):
    rng = np.random.default_rng(seed)
    return {f"s3://bucket/wide{d}.pdf": [
        Embedding(single=_unit(rng.standard_normal(D_FULL)), multi=_unit(rng.standard_normal((20, D_MULTI))))
        for _ in range(pages)] for d in range(n_docs)}


def by_hand(single, width=128):
    """Matryoshka by hand: the first values, renormalised, rounded to float16."""
    v = np.asarray(single, np.float32)[:width]
    return (v / np.linalg.norm(v)).astype(np.float16).astype(np.float32)


def single_queries(docs, seed=9):
    """Queries whose full-width single vector is near one page's and whose tokens are noise: what the
    single-vector prefilter returns decides what the rerank sees."""
    rng = np.random.default_rng(seed)
    flat = [e for embs in docs.values() for e in embs]
    return [Embedding(single=_unit(e.single + 0.5 / np.sqrt(D_FULL) * rng.standard_normal(D_FULL)),
                      multi=_unit(rng.standard_normal((4, D_MULTI)))) for e in flat[::3]]


def _prefilter_top(index, query, n):
    """The pages the single-vector prefilter alone proposes (rerank of that shortlist only)."""
    hits = index._retrieval().search(np.asarray(query.multi, np.float32), np.asarray(query.single, np.float32),
                                     k=n, candidates=n, generators=["single"])
    return sorted(pid for pid, _score in hits)


def _brute_top(page_singles, page_ids, query_single, n, width=128):
    q = np.asarray(query_single, np.float32)[:width]
    scores = page_singles @ (q / np.linalg.norm(q))
    return sorted(page_ids[np.argsort(-scores)[:n]].tolist())


def test_narrow_fp16_singles_search_like_singles_truncated_by_hand(tmp_path):
    docs, qs = wide_corpus(), None
    qs = single_queries(docs)
    narrow = build_wide = Index.create(tmp_path / "narrow", single_dim=D_FULL, multi_dim=D_MULTI, single_width=128,
                                       single_precision="fp16")
    hand = Index.create(tmp_path / "hand", single_dim=128, multi_dim=D_MULTI)
    for path, embs in docs.items():
        build_wide.add_embeddings(path, embs)
        hand.add_embeddings(path, [Embedding(single=by_hand(e.single), multi=e.multi) for e in embs])
    info = narrow.info()
    assert info.extra["bytes_per_page"]["single_vectors"] == 256
    assert (info.extra["single_width"], info.extra["single_precision"], info.format_version) == (128, "fp16", 3)
    assert info.bytes_on_disk["single_vectors"] == 40 * 256
    ids = narrow._store.live_page_ids()
    stored = narrow._store.single_vectors(ids)
    assert stored.shape == (40, 128)
    np.testing.assert_allclose(stored, hand._store.single_vectors(ids), rtol=2.0 ** -10, atol=2.0 ** -24)
    # the whole search, query singles at full width against the narrow store, by hand against the other
    got = narrow.search_embeddings(qs, k=5, candidates=5)
    want = hand.search_embeddings([Embedding(single=by_hand(q.single), multi=q.multi) for q in qs], k=5, candidates=5)
    assert [[(h.page_id, h.path, h.page) for h in x] for x in got] == [[(h.page_id, h.path, h.page) for h in y]
                                                                        for y in want]
    assert narrow._retrieval().single_dim == 128
    flat_ids = [pid for path in docs for pid in narrow._store.page_ids_of(path)]
    for i, q in enumerate(qs):
        top = _prefilter_top(narrow, q, 4)
        assert top == _brute_top(stored, ids, q.single, 4)  # the prefilter searches the stored 128 values
        assert flat_ids[3 * i] in top  # and finds the page the query's single vector is near
    narrow.close()
    hand.close()
    with Index.open(tmp_path / "narrow") as again:  # reopened: the same pages, the same hits
        assert [[h.page_id for h in x] for x in again.search_embeddings(qs, k=5, candidates=5)] == \
            [[h.page_id for h in x] for x in got]
        assert again.verify().ok


def test_recompress_narrows_fp32_singles_to_fp16_keeps_ids_and_search(tmp_path):
    docs = wide_corpus(seed=3)
    qs = single_queries(docs, seed=4)
    index = Index.create(tmp_path / "idx", single_dim=D_FULL, multi_dim=D_MULTI)
    for path, embs in docs.items():
        index.add_embeddings(path, embs)
    assert index.search_embeddings(qs[:1], k=3, candidates=3)  # derived structures built at 2048
    ids = {p: list(index._store.page_ids_of(p)) for p in docs}
    before = index.info()
    assert before.extra["bytes_per_page"]["single_vectors"] == D_FULL * 4
    progress = []
    result = index.recompress(single_width=128, single_precision="fp16", on_progress=lambda *a: progress.append(a))
    assert (result.single_pages_converted, result.pages_converted) == (40, 0)
    assert progress[-1] == ("converting single vectors", 40, 40)
    after = index.info()
    assert {p: list(index._store.page_ids_of(p)) for p in docs} == ids
    assert after.extra["bytes_per_page"]["single_vectors"] == 256 and after.pages == before.pages
    assert after.extra["compression"] == "fp16" and after.bytes_on_disk["multi_vectors"] == \
        before.bytes_on_disk["multi_vectors"]
    got = index.search_embeddings(qs, k=5, candidates=5)
    assert index._retrieval().single_dim == 128  # the prefilter was rebuilt at the stored width
    with Index.create(tmp_path / "made-narrow", single_dim=D_FULL, multi_dim=D_MULTI, single_width=128,
                      single_precision="fp16") as made:
        for path, embs in docs.items():
            made.add_embeddings(path, embs)
        want = made.search_embeddings(qs, k=5, candidates=5)
    assert [[(h.path, h.page) for h in x] for x in got] == [[(h.path, h.page) for h in x] for x in want]
    assert index.verify().ok
    with pytest.raises(PagelensError, match="widened"):
        index.recompress(single_width=256, single_precision="fp16")
    with pytest.raises(PagelensError, match="fp32 originals"):
        index.recompress(single_width=64, single_precision="fp16")
    with pytest.raises(PagelensError, match="needs a compression"):
        index.recompress()
    index.close()


def test_compact_picks_the_single_profile_and_bad_single_settings_are_refused(tmp_path):
    from pagelens.api import COMPACT_SINGLE

    with Index.create(tmp_path / "c", single_dim=D_FULL, multi_dim=D_MULTI, compact=True) as index:
        extra = index.info().extra
        assert (extra["single_width"], extra["single_precision"]) == COMPACT_SINGLE == (128, "fp16")
        assert (extra["compression"], extra["pool_factor"]) == COMPACT_PROFILE
    with Index.create(tmp_path / "n", single_dim=D_SINGLE, multi_dim=D_MULTI, compact=True) as index:
        assert (index.info().extra["single_width"], index.info().extra["single_precision"]) == (D_SINGLE, "fp16")
    for name, kwargs in (("a", {"compact": True, "single_width": 256}), ("b", {"single_width": 0}),
                         ("c2", {"single_width": D_FULL + 1}), ("d", {"single_width": "128"}),
                         ("e", {"single_precision": "bf16"}), ("f", {"single_width": 128, "search_dim": 512})):
        with pytest.raises(PagelensError):
            Index.create(tmp_path / name, single_dim=D_FULL, multi_dim=D_MULTI, **kwargs)
        assert not (tmp_path / name / "manifest.json").exists()


def test_open_or_create_refuses_other_single_settings_on_an_existing_index(tmp_path):
    index = Index.create(tmp_path / "idx", single_dim=D_FULL, multi_dim=D_MULTI, single_width=256,
                         single_precision="fp16")
    index.add_embeddings("s3://b/x.pdf", wide_corpus(n_docs=1)["s3://bucket/wide0.pdf"])
    index.close()
    Index.open_or_create(tmp_path / "idx", single_width=256).close()  # its own value is fine
    for kwargs in ({"single_width": 128}, {"single_precision": "fp32"}, {"compact": True}):
        with pytest.raises(PagelensError, match="pagelens recompress"):
            Index.open_or_create(tmp_path / "idx", **kwargs)
    Index.open(tmp_path / "idx", writable=True).close()  # the refused open released the writer lock


def test_cli_index_with_narrow_fp16_singles_and_fixed_settings(tmp_path, tiny, docs):
    index = tmp_path / "idx"
    result = _invoke("index", docs, "--index", index, "--model", tiny, "--single-width", "32",
                     "--single-precision", "fp16", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(_invoke("info", "--index", index, "--json").stdout)
    assert (info["extra"]["single_width"], info["extra"]["single_precision"]) == (32, "fp16")
    assert info["extra"]["bytes_per_page"]["single_vectors"] == 64 and info["format_version"] == 3
    assert sorted(p.name for p in (index / "shards").iterdir() if p.name.startswith("single")) == ["single-000002.f16"]
    assert "singles:    32-d fp16" in _invoke("info", "--index", index).stdout
    assert len(_top_pages(index)) == 3
    assert _invoke("verify", "--index", index).exit_code == 0
    other = _invoke("index", docs, "--index", index, "--single-width", "16")
    assert other.exit_code == 2 and "pagelens recompress" in other.output
    compact = _invoke("index", docs, "--index", index, "--compact")
    assert compact.exit_code == 2 and "pagelens recompress" in compact.output
    same = _invoke("index", docs, "--index", index, "--single-width", "32", "--json")
    assert same.exit_code == 0, same.output
    assert _invoke("index", docs, "--index", tmp_path / "b", "--single-precision", "bf16").exit_code == 2
    assert _invoke("index", docs, "--index", tmp_path / "c", "--compact", "--single-width", "32").exit_code == 2


def test_cli_recompress_narrows_the_singles_of_an_index(tmp_path, tiny, docs):
    index = tmp_path / "idx"
    assert _invoke("index", docs, "--index", index, "--model", tiny, "--json").exit_code == 0
    top = _top_pages(index)
    before = json.loads(_invoke("info", "--index", index, "--json").stdout)
    result = _invoke("recompress", "--index", index, "--single-width", "32", "--single-precision", "fp16", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["single_pages_converted"], summary["pages_converted"]) == (6, 0)
    assert summary["single_vector_bytes_after"] == 6 * 64 < summary["single_vector_bytes_before"]
    after = json.loads(_invoke("info", "--index", index, "--json").stdout)
    assert after["pages"] == before["pages"] and after["extra"]["single_width"] == 32
    assert _top_pages(index)[0] == top[0]
    assert _invoke("verify", "--index", index).exit_code == 0
    wider = _invoke("recompress", "--index", index, "--single-width", "64", "--single-precision", "fp16")
    assert wider.exit_code == 4 and "widened" in wider.output
    assert _invoke("recompress", "--index", index, "--pool-factor", "2").exit_code == 2
