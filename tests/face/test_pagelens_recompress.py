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
