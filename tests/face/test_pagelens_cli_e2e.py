"""The CLI end to end on generated PDFs with the tiny jina-layout checkpoint, through the real loader."""

import json

import pytest
from typer.testing import CliRunner

import pagelens
from engine.testing import write_tiny_checkpoint
from indexer.render import DocumentPages
from indexer.sources import read_source
from pagelens.cli import app
from tests.indexer.indexer_fakes import make_pdf

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "jina-v4-tiny"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("e2e")
    docs = root / "docs"
    docs.mkdir()
    paths = [make_pdf(docs / f"doc{i}.pdf", pages=2, seed=i, size=(300, 400)) for i in range(3)]
    index = str(root / "idx")
    result = runner.invoke(app, ["index", str(docs), "--index", index, "--model", tiny, "--json"])
    assert result.exit_code == 0, result.output
    return root, docs, paths, index, json.loads(result.stdout)


def _invoke(*args):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def test_index_reports_json_and_rerun_skips(built, tiny):
    _root, docs, paths, index, report = built
    assert report["outcome"] == "all_indexed"
    assert sorted(a["path"] for a in report["added"]) == sorted(paths)
    assert report["pages_added"] == 6
    again = _invoke("index", str(docs), "--index", index, "--json")
    assert again.exit_code == 0
    rerun = json.loads(again.stdout)
    assert rerun["added"] == [] and sorted(rerun["skipped"]) == sorted(paths)


def test_search_json_parses_and_a_pages_image_finds_that_page(built):
    _root, _docs, paths, index, _ = built
    result = _invoke("search", "doc 1 page 2", "--index", index, "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert set(hits[0]) == {"rank", "score", "path", "page"}
    assert all(h["path"] in paths and 1 <= h["page"] <= 2 for h in hits)

    with pagelens.Index.open(index) as idx:
        encoder = idx.encoder
        for path in paths:
            with DocumentPages(read_source(path), dpi=144, max_pixels=encoder.max_pixels) as doc:
                images = [(p.page_number, p.image) for p in doc]
            for page_number, image in images:
                own = encoder.encode_images([image])[0]
                top = idx.search_embedding(own, k=1)[0]
                assert (top.path, top.page) == (path, page_number)


def test_info_json(built):
    _root, _docs, _paths, index, _ = built
    result = _invoke("info", "--index", index, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert (info["documents"], info["pages"]) == (3, 6)
    assert info["identity"]["task"] == "retrieval" and info["identity"]["multi_dim"] == 128
    assert info["bytes_on_disk"]["multi_vectors"] > 0


def test_exit_codes_for_partial_and_total_failure(tmp_path, tiny):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "good.pdf", pages=1)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    index = str(tmp_path / "idx")
    partial = _invoke("index", str(docs), "--index", index, "--model", tiny)
    assert partial.exit_code == 1
    assert "broken.pdf" in partial.output
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "notes.pdf").write_text("plain text named .pdf")
    nothing = _invoke("index", str(only_bad), "--index", str(tmp_path / "idx2"), "--model", tiny, "--json")
    assert nothing.exit_code == 3
    assert json.loads(nothing.stdout)["failed"][0]["path"].endswith("notes.pdf")


def test_another_task_is_refused_and_remove_works(tmp_path, tiny):
    docs = tmp_path / "docs"
    docs.mkdir()
    a = make_pdf(docs / "a.pdf", pages=2, seed=5)
    make_pdf(docs / "b.pdf", pages=3, seed=6)
    index = str(tmp_path / "idx")
    assert _invoke("index", str(docs), "--index", index, "--model", tiny, "--quiet").exit_code == 0
    refused = _invoke("index", str(docs), "--index", index, "--task", "code")
    assert refused.exit_code == 4
    assert "code" in refused.output and "retrieval" in refused.output
    removed = _invoke("remove", a, "--index", index, "--json")
    assert removed.exit_code == 0 and json.loads(removed.stdout) == {"pages_removed": 2}
    hits = json.loads(_invoke("search", "anything", "--index", index, "-k", "10", "--json").stdout)
    assert len(hits) == 3 and all(h["path"] != a for h in hits)
    assert _invoke("compact", "--index", index, "--json").exit_code == 0


def test_a_model_that_is_not_there_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "a.pdf", pages=1)
    result = _invoke("index", str(docs), "--index", str(tmp_path / "idx"))
    assert result.exit_code == 4
    assert "jinaai/jina-embeddings-v4" in result.output and "Hint:" in result.output
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_search_dim_must_be_a_matryoshka_width(tmp_path, tiny):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "a.pdf", pages=2, seed=8)
    bad = _invoke("index", str(docs), "--index", str(tmp_path / "bad"), "--model", tiny, "--search-dim", "20")
    assert bad.exit_code == 4 and "16, 32, 64" in bad.output
    good = _invoke("index", str(docs), "--index", str(tmp_path / "idx"), "--model", tiny, "--search-dim", "32", "-q")
    assert good.exit_code == 0
    info = json.loads(_invoke("info", "--index", str(tmp_path / "idx"), "--json").stdout)
    assert info["extra"]["settings"]["search_dim"] == 32
    assert len(json.loads(_invoke("search", "x", "--index", str(tmp_path / "idx"), "--json").stdout)) == 2


def test_a_moved_model_folder_is_found_with_model(tmp_path):
    import shutil

    original = write_tiny_checkpoint(tmp_path / "models" / "jina-tiny")
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "a.pdf", pages=2, seed=3)
    index = str(tmp_path / "idx")
    assert _invoke("index", str(docs), "--index", index, "--model", str(original), "-q").exit_code == 0
    moved = shutil.move(str(original), str(tmp_path / "elsewhere"))
    lost = _invoke("search", "q", "--index", index, "--json")
    assert lost.exit_code == 4 and "does not exist" in lost.output
    found = _invoke("search", "q", "--index", index, "--model", moved, "--json")
    assert found.exit_code == 0 and len(json.loads(found.stdout)) == 2
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)  # different weights: refused
    refused = _invoke("search", "q", "--index", index, "--model", str(other))
    assert refused.exit_code == 4 and "revision" in refused.output


def test_search_generators_option(built):
    _root, _docs, _paths, index, _ = built
    default = _invoke("search", "doc 1 page 2", "--index", index, "-k", "3", "--json")
    chosen = _invoke("search", "doc 1 page 2", "--index", index, "-k", "3", "--json", "--generators", "pooled, single")
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout) == json.loads(default.stdout)  # 6 pages: exhaustive whatever generates
    bad = _invoke("search", "doc 1 page 2", "--index", index, "--generators", "pooled,bogus")
    assert bad.exit_code != 0 and "bogus" in bad.output and "single" in bad.output
