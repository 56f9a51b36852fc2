"""Bring-your-own documents named by an identifier (not a local file) keep that name everywhere."""

import numpy as np

import pagelens
from engine.types import Embedding


def emb(seed, tokens=3):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(8).astype(np.float32)
    m = rng.standard_normal((tokens, 4)).astype(np.float32)
    return Embedding(s / np.linalg.norm(s), m / np.linalg.norm(m, axis=1, keepdims=True))


def test_uri_identifier_round_trips_through_add_search_and_remove(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative-path bug would store CWD/s3:/bucket/...
    index = pagelens.Index.create(tmp_path / "byo", single_dim=8, multi_dim=4)
    index.add_embeddings("s3://bucket/report.pdf", [emb(1), emb(2)])
    index.add_embeddings("local.pdf", [emb(3)])
    hits = index.search_embedding(emb(2), k=3)
    assert {h.path for h in hits} == {"s3://bucket/report.pdf", str(tmp_path / "local.pdf")}
    assert hits[0].path == "s3://bucket/report.pdf" and hits[0].page == 2
    assert index.remove(["s3://bucket/report.pdf"]) == 2
    assert [h.path for h in index.search_embedding(emb(2), k=3)] == [str(tmp_path / "local.pdf")]
    index.close()
