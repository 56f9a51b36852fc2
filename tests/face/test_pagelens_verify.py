"""`pagelens verify` finds a flipped byte in a shard file and names the document; `pagelens index
--repair` re-encodes exactly that document; afterwards the index verifies clean and searches
exactly like a freshly built one."""

import json
import sqlite3

import numpy as np
import pytest

import pagelens
from indexer.render import render_pages
from indexer.sources import read_source
from tests.face.test_pagelens_edges import _invoke, loads  # noqa: F401 - the fixture
from tests.indexer.indexer_fakes import FakeEncoder, make_pdf


@pytest.fixture
def indexed(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    paths = [make_pdf(docs / f"{name}.pdf", pages=3, seed=i) for i, name in enumerate("abc")]
    with pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder()) as idx:
        assert idx.add([docs]).pages_added == 9
    return tmp_path / "idx", docs, paths


def _flip_a_byte(index, path, page_number):
    """Flip one byte inside the stored token vectors of ``path``'s page ``page_number``."""
    db = sqlite3.connect(f"file:{index / 'catalogue.sqlite'}?mode=ro", uri=True)
    shard, offset, tokens = db.execute(
        "SELECT p.multi_shard, p.multi_offset, p.n_tokens FROM pages p JOIN documents d ON d.id = p.document_id"
        " WHERE d.path IN (?, ?) AND p.page_number = ?", (path, path.encode(), page_number)).fetchone()
    (name,) = db.execute("SELECT file FROM shards WHERE id = ?", (shard,)).fetchone()
    db.close()
    row_bytes = 16 * 2  # FakeEncoder: 16-d token vectors, stored as float16
    at = offset * row_bytes + (tokens // 2) * row_bytes + 5
    with open(index / "shards" / name, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x5A]))


def _queries(paths):
    encoder = FakeEncoder()
    out = [encoder.embed(p.image) for path in paths for p in render_pages(read_source(path))]
    rng = np.random.default_rng(0)
    for _ in range(3):
        s, m = rng.standard_normal(32), rng.standard_normal((4, 16))
        out.append(pagelens.Embedding((s / np.linalg.norm(s)).astype(np.float32),
                                      (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)))
    return out


def _results(index, queries):
    with pagelens.Index.open(index) as idx:
        return [[(h.path, h.page, round(h.score, 5)) for h in idx.search_embedding(q, k=9)] for q in queries]


def test_verify_finds_the_flipped_byte_and_repair_reencodes_only_that_document(indexed, loads, tmp_path):  # noqa: F811
    index, docs, (a, b, c) = indexed
    clean = _invoke("verify", "--index", index)
    assert clean.exit_code == 0 and "ok: 9 pages checked" in clean.stdout

    _flip_a_byte(index, b, 2)
    found = _invoke("verify", "--index", index)
    assert found.exit_code == 5, found.output
    assert f"damaged: {b} (page 2)" in found.stdout
    assert f"pagelens index --repair --index {index}" in found.stdout
    report = json.loads(_invoke("verify", "--index", index, "--json").stdout)
    assert report["ok"] is False and report["pages_checked"] == 9 and report["problems"] == []
    assert [(d["path"], d["pages"]) for d in report["damaged"]] == [(b, [2])]
    assert report["repair_command"] == f"pagelens index --repair --index {index}"

    repaired = _invoke("index", "--repair", "--index", index, "--json")
    assert repaired.exit_code == 0, repaired.output
    run = json.loads(repaired.stdout)
    assert run["repaired"] == [b]
    assert run["added"] == [{"path": b, "pages": 3}] and run["pages_encoded"] == 3
    assert len(loads) == 1  # the model loaded once, for that document

    again = _invoke("verify", "--index", index, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["ok"] is True

    with pagelens.Index.create(tmp_path / "fresh", encoder=FakeEncoder()) as fresh:
        fresh.add([docs])
    queries = _queries([a, b, c])
    assert _results(index, queries) == _results(tmp_path / "fresh", queries)


def test_repair_with_nothing_damaged_does_nothing_and_succeeds(indexed, no_model_loads):
    index, _docs, _paths = indexed
    result = _invoke("index", "--repair", "--index", index)
    assert result.exit_code == 0, result.output
    assert "nothing to re-encode" in result.output
    as_json = json.loads(_invoke("index", "--repair", "--index", index, "--json").stdout)
    assert as_json["repaired"] == [] and as_json["added"] == []


@pytest.fixture
def no_model_loads(monkeypatch):
    import pagelens.api

    monkeypatch.setattr(pagelens.api, "_load_encoder", lambda *a, **k: pytest.fail("the model was loaded"))


def test_index_needs_paths_unless_repairing(indexed):
    index, _docs, _paths = indexed
    result = _invoke("index", "--index", index)
    assert result.exit_code == 2 and "--repair" in result.output


def test_the_api_verify_and_repair(indexed):
    index, docs, (a, b, c) = indexed
    _flip_a_byte(index, c, 1)
    _flip_a_byte(index, c, 3)
    with pagelens.Index.open(index) as reader:
        report = reader.verify()
    assert not report.ok and report.pages_checked == 9
    assert [(d.path, d.pages) for d in report.damaged] == [(c, [1, 3])]
    with pagelens.Index.open(index, encoder=FakeEncoder(), writable=True) as idx:
        run = idx.add([docs], repair=True)  # the damaged document is in the folder: encoded once
        assert run.repaired == [c] and run.added == [(c, 3)] and sorted(run.skipped) == [a, b]
        assert idx.verify().ok
        assert idx.repair().repaired == []


def test_verify_or_repair_of_a_missing_index_is_one_clear_error(tmp_path):
    for command in (["verify"], ["index", "--repair"]):
        result = _invoke(*command, "--index", tmp_path / "nowhere")
        assert result.exit_code == 4 and "no pagelens index" in result.output
    assert not (tmp_path / "nowhere").exists()
