"""`pagelens serve` and the files behind the pages: moved, changed, replaced, hostile; a second
process indexing meanwhile; bring-your-own indexes; the bounded queue. A fast fake encoder."""

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import pagelens
from indexer.render import render_pages
from indexer.sources import read_source
from pagelens.server import Limits, bind_warning, create_app, serve
from tests.indexer.indexer_fakes import FakeEncoder, make_pdf, nested_xobject_pdf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    paths = [make_pdf(docs / f"doc{i}.pdf", pages=2, seed=i) for i in range(2)]
    with pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder()) as idx:
        idx.add([docs])
    reader = pagelens.Index.open(tmp_path / "idx", encoder=FakeEncoder())
    app = create_app(reader, limits=Limits(render_timeout=5.0))
    with TestClient(app) as client:
        yield tmp_path, paths, client, app.state.service
    reader.close()


def _embedding_of(path, page):
    image = [p for p in render_pages(read_source(path)) if p.page_number == page][0].image
    return FakeEncoder().embed(image)


def _search(client, emb, k=1):
    r = client.post("/api/search", json={"embedding": {"multi": emb.multi.tolist(), "single": emb.single.tolist()},
                                          "k": k})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["hits"]


def _error(r):
    return r.status_code, r.json()["error"]["code"]


def test_a_moved_file_is_404_and_served_again_once_back(site):
    _root, paths, client, _service = site
    hit = _search(client, _embedding_of(paths[0], 2))[0]
    assert (hit["path"], hit["page"]) == (paths[0], 2)
    url = f"/api/pages/{hit['page_id']}"
    assert client.get(url + "/image", params={"width": 64}).status_code == 200  # now cached
    os.rename(paths[0], paths[0] + ".moved")
    for suffix in ("/image", "/pdf"):
        r = client.get(url + suffix, params={"width": 64} if suffix == "/image" else None)
        assert _error(r) == (404, "file_missing")
        assert "moved or deleted" in r.json()["error"]["message"] and r.json()["error"]["hint"]
    os.rename(paths[0] + ".moved", paths[0])
    assert client.get(url + "/image", params={"width": 64}).status_code == 200


def test_changed_bytes_are_410_and_never_another_files_page(site):
    _root, paths, client, _service = site
    mine = _search(client, _embedding_of(paths[0], 1))[0]
    other = _search(client, _embedding_of(paths[1], 1))[0]
    assert client.get(f"/api/pages/{mine['page_id']}/image", params={"width": 80}).status_code == 200
    other_png = client.get(f"/api/pages/{other['page_id']}/image", params={"width": 80}).content
    # doc0's path now holds doc1's bytes (a valid PDF, a different document)
    Path(paths[0]).write_bytes(Path(paths[1]).read_bytes())
    for suffix, params in (("/image", {"width": 80}), ("/image", {"width": 81}), ("/pdf", None)):
        r = client.get(f"/api/pages/{mine['page_id']}{suffix}", params=params)
        assert _error(r) == (410, "page_changed") and r.content != other_png
        assert "re-index" in r.json()["error"]["hint"]
    assert client.get(f"/api/pages/{other['page_id']}/image", params={"width": 80}).content == other_png


def test_a_file_replaced_by_a_fifo_or_folder_is_404_without_hanging(site):
    _root, paths, client, _service = site
    hit = _search(client, _embedding_of(paths[1], 1))[0]
    os.unlink(paths[1])
    os.mkfifo(paths[1])  # opening it for reading would block for ever
    start = time.monotonic()
    r = client.get(f"/api/pages/{hit['page_id']}/pdf")
    assert _error(r) == (404, "file_missing") and "no longer a regular file" in r.json()["error"]["message"]
    assert time.monotonic() - start < 5
    os.unlink(paths[1])
    os.mkdir(paths[1])
    assert _error(client.get(f"/api/pages/{hit['page_id']}/image")) == (404, "file_missing")


def test_an_unchanged_file_is_hashed_once_a_touched_one_again(site):
    _root, paths, client, service = site
    hit = _search(client, _embedding_of(paths[0], 1))[0]
    url = f"/api/pages/{hit['page_id']}/image"
    before = service.hashes.hashed
    for width in (40, 40, 41, 42):
        assert client.get(url, params={"width": width}).status_code == 200
    assert service.hashes.hashed == before  # the renders read (and hashed) the bytes; checks came from the cache
    assert client.get(f"/api/pages/{hit['page_id']}/pdf").status_code == 200
    assert service.hashes.hashed == before
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, another mtime
    assert client.get(url, params={"width": 40}).status_code == 200
    assert service.hashes.hashed == before + 1


_WRITER = """
import sys
sys.path.insert(0, {root!r})
import pagelens
from tests.indexer.indexer_fakes import FakeEncoder
with pagelens.Index.open({index!r}, encoder=FakeEncoder(), writable=True) as idx:
    assert idx.add([{path!r}]).pages_added == 2
"""


def test_pages_another_process_indexes_appear_without_restart(site):
    root, _paths, client, _service = site
    new = make_pdf(root / "later.pdf", pages=2, seed=7)
    emb = _embedding_of(new, 2)
    assert new not in {h["path"] for h in _search(client, emb, k=10)}
    code = _WRITER.format(root=str(ROOT), index=str(root / "idx"), path=new)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    top = _search(client, emb)[0]
    assert (top["path"], top["page"]) == (new, 2)
    png = client.get(f"/api/pages/{top['page_id']}/image", params={"width": 100})
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).width == 100
    assert client.get("/api/health").json()["pages"] == 6


def test_a_page_that_renders_for_ever_is_422_and_the_server_goes_on(site):
    root, paths, client, service = site
    bomb = root / "bomb.pdf"
    bomb.write_bytes(nested_xobject_pdf(40, 4))
    with pagelens.Index.open(root / "idx", encoder=FakeEncoder(), writable=True) as writer:
        (bomb_id,) = writer.add_embeddings(str(bomb), [_embedding_of(paths[0], 1)])
    start = time.monotonic()
    r = client.get(f"/api/pages/{bomb_id}/image", params={"width": 2000})
    assert _error(r) == (422, "render_failed")
    assert "took longer than 5 s" in r.json()["error"]["message"]
    assert time.monotonic() - start < 30
    assert client.get("/api/health").status_code == 200
    fine = _search(client, _embedding_of(paths[1], 2))[0]
    assert client.get(f"/api/pages/{fine['page_id']}/image", params={"width": 90}).status_code == 200
    assert client.get(f"/api/pages/{bomb_id}/pdf").content == bomb.read_bytes()  # the file itself is fine
    assert len(service.renderers.pids()) >= 1


def test_bring_your_own_index_answers_embeddings_and_503_for_text(tmp_path):
    doc = make_pdf(tmp_path / "scan.pdf", pages=2, seed=3)
    enc = FakeEncoder()
    with pagelens.Index.create(tmp_path / "byo", single_dim=32, multi_dim=16) as idx:
        pages = [_embedding_of(doc, 1), _embedding_of(doc, 2)]
        idx.add_embeddings(doc, pages)
        (remote,) = idx.add_embeddings("s3://bucket/remote.pdf", [enc.embed(Image.new("RGB", (60, 80), "red"))])
        absent = tmp_path / "absent.pdf"  # not there when added: no SHA-256 to check it against later
        (unhashed,) = idx.add_embeddings(str(absent), [enc.embed(Image.new("RGB", (60, 80), "blue"))])
    make_pdf(absent, pages=1, seed=5)
    with TestClient(create_app(tmp_path / "byo")) as client:
        assert client.get("/api/health").json() == {"status": "ok", "pages": 4, "model_loaded": False}
        r = client.get("/api/search", params={"q": "anything"})
        assert _error(r) == (503, "no_model")
        error = r.json()["error"]
        assert "created without a model" in error["message"] and "embedding" in error["hint"]
        assert _error(client.post("/api/search", json={"queries": ["x"]})) == (503, "no_model")
        top = _search(client, pages[1])[0]
        assert (top["path"], top["page"]) == (doc, 2)
        assert client.get(f"/api/pages/{top['page_id']}/image", params={"width": 50}).status_code == 200
        r = client.get(f"/api/pages/{remote}/image")
        assert _error(r) == (404, "file_missing") and "not a local file" in r.json()["error"]["message"]
        r = client.get(f"/api/pages/{unhashed}/image")
        assert _error(r) == (404, "file_missing") and "no SHA-256 was recorded" in r.json()["error"]["message"]
        r = client.get(f"/api/pages/{top['page_id']}/heatmap", params={"q": "x"})
        assert r.status_code in (409, 503)  # no grid (brought without one) or no model: never a 500


def test_health_answers_during_a_long_search_and_a_full_queue_is_503(tmp_path):
    doc = make_pdf(tmp_path / "a.pdf", pages=1)
    with pagelens.Index.create(tmp_path / "idx", single_dim=32, multi_dim=16) as idx:
        idx.add_embeddings(doc, [_embedding_of(doc, 1)])
    emb = _embedding_of(doc, 1)
    body = {"embedding": {"multi": emb.multi.tolist(), "single": emb.single.tolist()}}
    with TestClient(create_app(tmp_path / "idx", limits=Limits(max_waiting=1))) as client:
        service = client.app.state.service
        answers = []
        with service.lock:  # a search that takes its time
            waiting = threading.Thread(target=lambda: answers.append(client.post("/api/search", json=body)))
            waiting.start()
            deadline = time.monotonic() + 10
            while service.waiting("search") < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            start = time.monotonic()
            assert client.get("/api/health").json()["status"] == "ok"
            assert time.monotonic() - start < 2
            r = client.post("/api/search", json=body)
            assert _error(r) == (503, "busy")
        waiting.join(30)
        assert answers[0].status_code == 200 and answers[0].json()["results"][0]["hits"][0]["path"] == doc


def test_bind_warning_and_serve_prints_it(tmp_path, capsys):
    for host in ("127.0.0.1", "localhost", "::1"):
        assert bind_warning(host) is None
    assert "anyone who can reach" in bind_warning("0.0.0.0")
    with pytest.raises(pagelens.IndexNotFoundError):
        serve(tmp_path / "missing", host="192.0.2.1")  # fails before binding anything
    assert "Warning: serving on 192.0.2.1" in capsys.readouterr().err


def test_page_info_reports_the_recorded_size(site):
    """/api/pages/{id} gives the size the page was encoded at, as the catalogue recorded it."""
    _root, paths, client, _service = site
    hit = _search(client, _embedding_of(paths[0], 2))[0]
    info = client.get(f"/api/pages/{hit['page_id']}").json()
    image = [p for p in render_pages(read_source(paths[0])) if p.page_number == 2][0].image
    assert (info["width"], info["height"]) == image.size
