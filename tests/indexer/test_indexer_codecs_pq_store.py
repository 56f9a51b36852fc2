"""pq-16 / pq-32 in an index: created with the codec, trained at the end of a run once enough
tokens are in, searched; an fp16 index recompressed by the CLI; hostile pq state on disk."""

import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.types import Embedding
from indexer import codecs
from indexer.errors import CorruptIndexError
from indexer.store import Store
from pagelens.api import Index
from pagelens.cli import app

runner = CliRunner()
D_SINGLE, D_MULTI = 32, 128
TRAIN_AT = 1000  # tokens: the store's threshold, lowered so this small corpus trains its codec
# fewer coarse centroids than the real floor of 4096, which would give each of these ~1,000 tokens a
# centroid of its own (a lossless round trip that would test nothing)
FEW_CENTROIDS = 64


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def corpus(n_docs=6, pages=3, tokens=60, seed=0):
    """Unit tokens around shared topics (so the coarse centroids mean something), distinct per page."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((40, D_MULTI)))
    docs = {}
    for d in range(n_docs):
        docs[f"s3://bucket/doc{d}.pdf"] = [
            Embedding(single=_unit(rng.standard_normal(D_SINGLE)),
                      multi=_unit(topics[rng.integers(0, len(topics), tokens)]
                                  + 0.6 * rng.standard_normal((tokens, D_MULTI)) / np.sqrt(D_MULTI) * 4))
            for _ in range(pages)]
    return docs


def queries(docs, seed=1):
    """One query per page: a few of its tokens plus noise, so each query has one right page."""
    rng = np.random.default_rng(seed)
    out = []
    for path, embs in docs.items():
        for number, e in enumerate(embs, start=1):
            q = _unit(e.multi[:8] + 0.5 / np.sqrt(D_MULTI) * rng.standard_normal((8, D_MULTI)))
            out.append(((path, number), Embedding(single=e.single, multi=q)))
    return out


def build(directory, docs, **kwargs):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Store, "train_min_tokens", TRAIN_AT)
        mp.setattr(codecs, "MIN_CENTROIDS", FEW_CENTROIDS)
        index = Index.create(directory, single_dim=D_SINGLE, multi_dim=D_MULTI, **kwargs)
        for path, embs in docs.items():
            index.add_embeddings(path, embs)
        index.close()  # the end of the run: the codec trains on the stored pages and converts them
    return directory


def tokens_of(docs):
    return sum(len(e.multi) for embs in docs.values() for e in embs)


def top1(directory, qs, **kw):
    with Index.open(directory) as index:
        hits = index.search_embeddings([q for _t, q in qs], k=3, **kw)
    return [(h[0].path, h[0].page, h[0].page_id) for h in hits]


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def docs():
    return corpus()


@pytest.fixture(scope="module")
def built(tmp_path_factory, docs):
    root = tmp_path_factory.mktemp("pq")
    return {"fp16": build(root / "fp16", docs), "pq-16": build(root / "pq16", docs, compression="pq-16")}


def test_a_pq16_index_trains_stores_18_bytes_a_token_and_finds_fp16s_top1(built, docs):
    qs = queries(docs)
    fp16 = top1(built["fp16"], qs, exhaustive=True)
    assert [(p, n) for p, n, _i in fp16] == [t for t, _q in qs]  # the set is easy for fp16 ...
    assert top1(built["pq-16"], qs, exhaustive=True) == fp16  # ... and pq-16 agrees, page ids included
    assert top1(built["pq-16"], qs) == fp16  # the default (shortlist) search too
    with Index.open(built["pq-16"]) as index:
        info = index.info()
    assert (info.extra["compression"], info.extra["pool_factor"]) == ("pq-16", 1)
    assert info.extra["pages_not_yet_compressed"] == 0
    assert info.bytes_on_disk["multi_vectors"] == tokens_of(docs) * 18  # 2 B centroid id + 16 PQ bytes
    assert info.bytes_on_disk["codec_state"] > 0
    multi = sorted(n for n in os.listdir(built["pq-16"] / "shards") if n.startswith("multi"))
    assert multi and all(".c" in n for n in multi)
    states = [n for n in os.listdir(built["pq-16"]) if n.startswith("codec-")]
    with np.load(built["pq-16"] / states[0], allow_pickle=False) as z:
        header = z["header"].tolist()
        assert (header[1], header[5], header[6]) == (4, 1, 16)  # kind pq, renormalised, M
        assert z["pq_centroids"].shape == (16, 256, 8)


def test_decoded_tokens_are_lossy_but_close(built, docs):
    store = Store.open(built["pq-16"])
    try:
        ids = store.live_page_ids()
        by_page = {}
        for embs in docs.values():
            for e in embs:
                by_page[len(by_page)] = e.multi
        got = store.multi_vectors(ids)
        cos = np.concatenate([(g.astype(np.float32) * by_page[i]).sum(1) for i, g in enumerate(got)])
        assert cos.mean() > 0.8 and cos.min() > 0.5
        assert (cos < 0.999).mean() > 0.5  # codes, not the fp16 originals
        assert store.codec_state(1).codec.n_centroids == FEW_CENTROIDS
        assert store.verify() == len(ids)
    finally:
        store.close()


def test_pages_added_after_training_are_encoded_as_written(tmp_path, built, docs):
    directory = tmp_path / "grown"
    shutil.copytree(built["pq-16"], directory)
    before = sorted(os.listdir(directory / "shards"))
    more = corpus(n_docs=1, seed=9)
    with Index.open(directory, writable=True) as index:
        index.add_embeddings("s3://bucket/late.pdf", more["s3://bucket/doc0.pdf"])
    assert sorted(os.listdir(directory / "shards")) == before  # no raw shard: the trained codec took them
    qs = queries(more, seed=3)
    with Index.open(directory) as index:
        hits = index.search_embeddings([q for _t, q in qs], k=1, exhaustive=True)
        info = index.info()
    assert [(h[0].path, h[0].page) for h in hits] == [("s3://bucket/late.pdf", n) for n in (1, 2, 3)]
    assert info.bytes_on_disk["multi_vectors"] == (tokens_of(docs) + tokens_of(more)) * 18


def test_cli_recompresses_an_fp16_index_to_pq16(tmp_path, built, docs, monkeypatch):
    monkeypatch.setattr(codecs, "MIN_CENTROIDS", FEW_CENTROIDS)
    directory = tmp_path / "idx"
    shutil.copytree(built["fp16"], directory)
    qs = queries(docs)
    before = top1(directory, qs, exhaustive=True)
    result = _invoke("recompress", "--index", directory, "--compression", "pq-16", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pages_converted"] == 18
    assert summary["multi_vector_bytes_after"] == tokens_of(docs) * 18 < summary["multi_vector_bytes_before"]
    info = json.loads(_invoke("info", "--index", directory, "--json").stdout)
    assert info["extra"]["compression"] == "pq-16" and info["pages"] == 18
    assert info["bytes_on_disk"]["multi_vectors"] == tokens_of(docs) * 18
    assert top1(directory, qs, exhaustive=True) == before
    assert _invoke("verify", "--index", directory).exit_code == 0
    refused = _invoke("recompress", "--index", directory, "--compression", "pq-32")
    assert refused.exit_code == 4 and "fp16" in refused.output  # the originals are gone


def test_help_lists_the_pq_codecs_and_unknown_widths_are_usage_errors(tmp_path):
    for command in ("index", "recompress"):
        text = " ".join(_invoke(command, "--help").output.split())
        assert "pq-16" in text and "pq-32" in text
    bad = _invoke("recompress", "--index", tmp_path / "none", "--compression", "pq-8")
    assert bad.exit_code == 2 and "pq-16" in bad.output


@pytest.mark.parametrize("damage", ["nan", "M", "shape", "header6", "dtype"])
def test_hostile_pq_state_on_disk_is_refused(tmp_path, built, damage):
    directory = tmp_path / "idx"
    shutil.copytree(built["pq-16"], directory)
    name = next(n for n in os.listdir(directory) if n.startswith("codec-"))
    with np.load(directory / name, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    pq = arrays["pq_centroids"]
    if damage == "nan":
        pq = pq.copy()
        pq[0, 0, 0] = np.nan
        arrays["pq_centroids"] = pq
    elif damage == "M":
        arrays["header"] = np.array([*arrays["header"][:6], 24], np.int64)  # 128 % 24 != 0
    elif damage == "shape":
        arrays["pq_centroids"] = pq[:, :128].copy()
    elif damage == "header6":
        arrays["header"] = arrays["header"][:6].copy()
    elif damage == "dtype":
        arrays["pq_centroids"] = pq.astype(np.float16)
    os.unlink(directory / name)
    with open(directory / name, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(CorruptIndexError):
        r = Store.open(directory)
        r.multi_vectors(r.live_page_ids())
    result = _invoke("verify", "--index", directory)
    assert result.exit_code == 4, result.output  # a damaged index, said as such (not a crash)
