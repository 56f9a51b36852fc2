"""The Index API end to end on generated PDFs, with a deterministic fake encoder."""

import numpy as np
import pytest

import pagelens
from indexer.errors import EncoderMismatchError
from indexer.render import render_pages
from indexer.sources import read_source
from tests.indexer.indexer_fakes import FakeEncoder, make_pdf


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    paths = [make_pdf(folder / f"doc{i}.pdf", pages=3, seed=i) for i in range(4)]
    return folder, paths


@pytest.fixture
def index(tmp_path, docs):
    idx = pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder())
    report = idx.add([docs[0]])
    assert report.outcome == "all_indexed" and report.pages_added == 12
    yield idx
    idx.close()


def _page_embedding(encoder, path, page_number):
    page = [p for p in render_pages(read_source(path)) if p.page_number == page_number][0]
    return encoder.embed(page.image)


def test_a_pages_own_embedding_finds_that_page(index, docs):
    encoder = FakeEncoder()
    for path in docs[1]:
        for page_number in (1, 3):
            hits = index.search_embedding(_page_embedding(encoder, path, page_number), k=3)
            assert (hits[0].path, hits[0].page) == (path, page_number)
            assert [h.rank for h in hits] == [1, 2, 3]
            assert hits[0].score >= hits[1].score >= hits[2].score


def test_two_stage_equals_exhaustive_when_candidates_cover_the_collection(index):
    rng = np.random.default_rng(0)
    for _ in range(5):
        multi = rng.standard_normal((4, 16)).astype(np.float32)
        multi /= np.linalg.norm(multi, axis=1, keepdims=True)
        single = rng.standard_normal(32).astype(np.float32)
        query = pagelens.Embedding(single / np.linalg.norm(single), multi)
        fast = index.search_embedding(query, k=5, candidates=12)
        exact = index.search_embedding(query, k=5, exhaustive=True)
        assert [(h.path, h.page) for h in fast] == [(h.path, h.page) for h in exact]
        np.testing.assert_allclose([h.score for h in fast], [h.score for h in exact], rtol=1e-5)


def test_removed_pages_never_come_back(index, docs):
    encoder = FakeEncoder()
    gone = docs[1][2]
    query = _page_embedding(encoder, gone, 2)
    assert index.search_embedding(query, k=1)[0].path == gone
    assert index.remove([gone]) == 3
    for exhaustive in (False, True):
        hits = index.search_embedding(query, k=12, exhaustive=exhaustive)
        assert gone not in {h.path for h in hits}
        assert len(hits) == 9
    reopened = pagelens.Index.open(index.directory)
    assert gone not in {h.path for h in reopened.search_embedding(query, k=12)}
    assert reopened.info().pages == 9


def test_remove_a_folder_and_info(index, docs, tmp_path):
    info = index.info()
    assert (info.documents, info.pages, info.format_version >= 1) == (4, 12, True)
    assert info.identity["revision"] == "fake-1"
    assert index.remove([docs[0]]) == 12
    assert index.info().pages == 0
    assert index.search_embedding(FakeEncoder().embed(__import__("PIL.Image").Image.new("RGB", (50, 60))), k=3) == []


def test_adding_with_another_encoder_is_refused(index, docs):
    index.close()  # one writer at a time: the lock is the store's
    other = FakeEncoder(revision="fake-2")
    with pytest.raises(EncoderMismatchError) as err:
        pagelens.Index.open(index.directory, encoder=other, writable=True)
    assert "fake-2" in str(err.value) and "fake-1" in str(err.value)
    again = pagelens.Index.open(index.directory, encoder=FakeEncoder(), writable=True)
    assert again.add([docs[0]]).skipped  # same encoder: unchanged files are skipped
    again.close()


def test_bring_your_own_embeddings(tmp_path):
    rng = np.random.default_rng(3)

    def emb(tokens):
        s = rng.standard_normal(64).astype(np.float32)
        m = rng.standard_normal((tokens, 8)).astype(np.float32)
        return pagelens.Embedding(s / np.linalg.norm(s), m / np.linalg.norm(m, axis=1, keepdims=True))

    idx = pagelens.Index.create(tmp_path / "byo", single_dim=64, multi_dim=8)
    pages = [emb(5 + i) for i in range(6)]
    ids = idx.add_embeddings("elsewhere/report.pdf", pages)
    assert len(ids) == 6 and len(set(ids)) == 6
    hits = idx.search_embedding(pages[4], k=2)
    assert hits[0].page == 5 and hits[0].path.endswith("elsewhere/report.pdf")
    with pytest.raises(pagelens.NoModelError):
        idx.search("a text query")
    with pytest.raises(pagelens.PagelensError):
        idx.add_embeddings("bad.pdf", [pagelens.Embedding(np.ones(32, np.float32), np.ones((3, 8), np.float32))])
    idx.close()


def test_a_long_lived_reader_sees_pages_added_since_it_opened(index, docs, tmp_path):
    reader = pagelens.Index.open(index.directory)
    encoder = FakeEncoder()
    extra = make_pdf(tmp_path / "extra.pdf", pages=2, seed=99)
    query = _page_embedding(encoder, extra, 2)
    assert extra not in {h.path for h in reader.search_embedding(query, k=12)}
    index.add([extra])
    hits = reader.search_embedding(query, k=1)
    assert (hits[0].path, hits[0].page) == (extra, 2)
    reader.close()


def test_search_width_is_fixed_at_creation_and_survives_a_rebuild(tmp_path, docs):
    import shutil

    idx = pagelens.Index.create(tmp_path / "narrow", encoder=FakeEncoder(), search_dim=16, prefilter="flat")
    idx.add([docs[0]])
    assert idx._retrieval().single_dim == 16 and idx._retrieval().prefilter.current_kind == "flat"
    query = _page_embedding(FakeEncoder(), docs[1][1], 2)
    before = idx.search_embedding(query, k=3)
    idx.close()
    shutil.rmtree(tmp_path / "narrow" / "derived")  # derived structures are rebuilt from the store
    again = pagelens.Index.open(tmp_path / "narrow")
    assert again.search_embedding(query, k=3) == before
    assert again._retrieval().single_dim == 16
    assert again.info().extra["settings"] == {"search_dim": 16, "prefilter": "flat"}
    with pytest.raises(pagelens.PagelensError, match="search_dim"):
        pagelens.Index.create(tmp_path / "bad", encoder=FakeEncoder(), search_dim=64)
