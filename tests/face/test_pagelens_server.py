"""`pagelens serve` over the tiny jina-layout checkpoint: the HTTP API against the Python API, its
bounds and errors, page images against a direct PyMuPDF render, and a real uvicorn end to end."""

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import pagelens
from engine.testing import write_tiny_checkpoint
from pagelens.api import clean_query
from pagelens.server import create_app
from tests.indexer.indexer_fakes import make_pdf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tiny = str(write_tiny_checkpoint(root / "jina-v4-tiny"))
    docs = root / "docs"
    docs.mkdir()
    paths = [make_pdf(docs / f"doc{i}.pdf", pages=2, seed=i, size=(300, 400)) for i in range(3)]
    index = root / "idx"
    with pagelens.Index.open_or_create(index, model=tiny) as idx:
        assert idx.add([docs]).pages_added == 6
    return root, tiny, paths, index


@pytest.fixture(scope="module")
def served(built):
    _root, _tiny, _paths, index = built
    with TestClient(create_app(index)) as client:
        yield client


@pytest.fixture(scope="module")
def reader(built):
    with pagelens.Index.open(built[3]) as idx:
        yield idx


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes' hash and mtime: what "nothing written" compares."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(folder))] = (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir", st.st_mtime_ns
        )
    return out


def test_get_search_answers_what_the_python_api_does(served, reader, built):
    r = served.get("/api/search", params={"q": "doc 1 page 2", "k": 4})
    assert r.status_code == 200
    body = r.json()
    assert (body["query"], body["k"]) == ("doc 1 page 2", 4) and body["took_ms"] >= 0
    same = reader.search("doc 1 page 2", k=4)
    assert [(h["path"], h["page"], h["page_id"]) for h in body["hits"]] == [(h.path, h.page, h.page_id) for h in same]
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in same], rtol=1e-5)
    first = body["hits"][0]
    assert set(first) == {"rank", "score", "path", "name", "page", "page_id", "image_url", "heatmap_url", "pdf_url"}
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4]
    pid = first["page_id"]
    assert first["name"] == os.path.basename(first["path"]) and first["path"] in built[2]
    assert first["image_url"] == f"/api/pages/{pid}/image"
    assert first["heatmap_url"] == f"/api/pages/{pid}/heatmap?q=doc%201%20page%202"
    assert first["pdf_url"] == f"/api/pages/{pid}/pdf#page={first['page']}"
    page = served.get(f"/api/pages/{pid}").json()
    assert (page["path"], page["page"], page["page_id"]) == (first["path"], first["page"], pid)
    assert page["sha256"] == hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest()
    assert page["heatmap"] is True  # the real pipeline recorded the patch grid


def test_post_search_for_many_queries_and_for_an_embedding(served, reader):
    queries = ["doc 0 page 1", "doc 2 page 2"]
    r = served.post("/api/search", json={"queries": queries, "k": 3, "candidates": 5})
    assert r.status_code == 200
    results = r.json()["results"]
    expected = reader.search_batch(queries, k=3, candidates=5)
    assert [res["query"] for res in results] == queries
    for res, hits in zip(results, expected):
        assert [(h["page_id"], h["rank"]) for h in res["hits"]] == [(h.page_id, h.rank) for h in hits]
    (emb,) = reader.encoder.encode_queries(["doc 0 page 1"])
    r = served.post("/api/search", json={"embedding": {"multi": emb.multi.tolist(), "single": emb.single.tolist()},
                                          "k": 6, "exhaustive": True})
    assert r.status_code == 200
    (res,) = r.json()["results"]
    assert res["query"] is None and all(h["heatmap_url"] is None for h in res["hits"])
    same = reader.search_embedding(emb, k=6, exhaustive=True)
    assert [h["page_id"] for h in res["hits"]] == [h.page_id for h in same]
    np.testing.assert_allclose([h["score"] for h in res["hits"]], [h.score for h in same], rtol=1e-5)


@pytest.mark.parametrize("params, message", [
    ({"q": ""}, "the query is empty"),
    ({"q": "   "}, "the query is empty"),
    ({"q": "x" * 1001}, "the query is 1,001 characters long; at most 1,000 are accepted"),
    ({"q": "x", "k": 0}, "k must be an integer of at least 1, got 0"),
    ({"q": "x", "k": 1001}, "k must be at most 1,000, got 1,001"),
    ({"q": "x", "candidates": 10_001}, "candidates must be at most 10,000, got 10,001"),
    ({"q": "x", "k": "many"}, "k: Input should be a valid integer"),
    ({}, "q: Field required"),
])
def test_search_bounds_are_400_with_messages(served, params, message):
    r = served.get("/api/search", params=params)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "bad_request" and error["message"].startswith(message) and error["hint"]


def test_an_empty_query_says_what_the_cli_and_api_say(served):
    with pytest.raises(pagelens.PagelensError) as raised:
        clean_query("")
    error = served.get("/api/search", params={"q": ""}).json()["error"]
    assert (error["message"], error["hint"]) == (raised.value.message, raised.value.hint)


def test_post_bounds_and_body_size(served):
    def post(body):
        r = served.post("/api/search", json=body)
        return r.status_code, r.json()["error"]["message"]

    assert post({"queries": ["q"] * 65}) == (400, "queries must hold 1 to 64 queries, got 65")
    assert post({"queries": []})[0] == 400
    assert post({"queries": ["a"], "embedding": {"multi": [[0.0]], "single": [0.0]}}) == (
        400, "give either queries or embedding")
    assert post({"k": 3}) == (400, "give either queries or embedding")
    assert post({"queries": ["a", ""]}) == (400, "query 2 is empty")
    status, message = post({"embedding": {"multi": [[1.0, 0.0]], "single": [1.0]}})
    assert status == 400 and "the index stores" in message  # the API's own embedding check
    assert post({"embedding": {"multi": [[1.0], [1.0, 2.0]], "single": [1.0]}}) == (
        400, "embedding.multi must be rows of equal length")
    r = served.post("/api/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("the request body is not valid JSON")
    big = json.dumps({"queries": ["x" * 1000] * 9000}).encode()  # 9 MB
    r = served.post("/api/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    chunked = (big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20))  # no Content-Length
    r = served.post("/api/search", content=chunked, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_unknown_pages_and_endpoints_are_json_404(served):
    for url in ("/api/pages/999999", "/api/pages/999999/image", "/api/pages/-1/pdf",
                "/api/pages/99999999999999999999999/image", "/api/pages/999999/heatmap?q=x"):
        r = served.get(url)
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_such_page", url
    r = served.get("/api/pages/abc")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = served.get("/api/nothing/here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = served.delete("/api/search")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def _direct_render(path: str, page: int, width: int) -> np.ndarray:
    with pymupdf.open(path) as doc:
        p = doc.load_page(page - 1)
        zoom = width / p.rect.width
        pix = p.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
        return np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)


def test_page_image_is_that_page_rendered_from_its_file(served, reader):
    hits = reader.search("doc 2", k=6)
    seen = set()
    for hit in hits:
        r = served.get(f"/api/pages/{hit.page_id}/image", params={"width": 250})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        assert got.shape[1] == 250
        np.testing.assert_array_equal(got, _direct_render(hit.path, hit.page, 250))
        seen.add(got.tobytes())
    assert len(seen) == 6  # six pages, six different pictures
    default = Image.open(io.BytesIO(served.get(f"/api/pages/{hits[0].page_id}/image").content))
    assert default.width == 800
    for width in (31, 2001, 0):
        r = served.get(f"/api/pages/{hits[0].page_id}/image", params={"width": width})
        assert r.status_code == 400 and "width must be from 32 to 2000" in r.json()["error"]["message"]
    assert served.get(f"/api/pages/{hits[0].page_id}/image", params={"width": 2000}).status_code == 200


def test_pdf_download_is_the_indexed_file(served, reader):
    hit = reader.search("doc 1", k=1)[0]
    r = served.get(f"/api/pages/{hit.page_id}/pdf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content == Path(hit.path).read_bytes()
    assert "inline" in r.headers["content-disposition"]


def test_heatmap_png_and_json(served, reader):
    hit = reader.search("doc 0 page 2", k=1)[0]
    r = served.get(f"/api/pages/{hit.page_id}/heatmap", params={"q": "doc 0 page 2", "format": "json"})
    assert r.status_code == 200
    data = r.json()
    expected = reader.explain("doc 0 page 2", hit.page_id).to_dict()
    assert (data["rows"], data["cols"], data["page_id"]) == (expected["rows"], expected["cols"], hit.page_id)
    np.testing.assert_allclose(data["patch_scores"], expected["patch_scores"], atol=1e-5)
    r = served.get(f"/api/pages/{hit.page_id}/heatmap", params={"q": "doc 0 page 2", "width": 300})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    blended = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    plain = _direct_render(hit.path, hit.page, 300)
    assert blended.shape == plain.shape and not np.array_equal(blended, plain)
    r = served.get(f"/api/pages/{hit.page_id}/heatmap", params={"q": "doc", "token": 999})
    assert r.status_code == 400 and "token must be" in r.json()["error"]["message"]
    r = served.get(f"/api/pages/{hit.page_id}/heatmap", params={"q": "doc", "format": "gif"})
    assert r.status_code == 400


def test_info_health_home_and_openapi(served):
    assert served.get("/api/health").json() == {"status": "ok", "pages": 6, "model_loaded": True}
    info = served.get("/api/info").json()
    assert info["pages"] == 6 and info["identity"]["task"] == "retrieval"
    assert served.get("/").headers["content-type"].startswith("text/html")
    paths = served.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/pages/{page_id}/image", "/api/health"} <= set(paths)
    assert served.get("/docs").status_code == 200


def test_a_session_writes_nothing_into_the_index(built):
    _root, _tiny, _paths, index = built
    before = _tree(index)
    with TestClient(create_app(index)) as client:
        hits = client.get("/api/search", params={"q": "doc", "k": 6}).json()["hits"]
        client.post("/api/search", json={"queries": ["doc 1", "page 2"], "k": 2})
        client.get("/api/info"), client.get("/api/health")
        for hit in hits[:2]:
            assert client.get(f"/api/pages/{hit['page_id']}/image", params={"width": 100}).status_code == 200
            assert client.get(f"/api/pages/{hit['page_id']}/pdf").status_code == 200
            client.get(f"/api/pages/{hit['page_id']}/heatmap", params={"q": "doc"})
    after = _tree(index)
    # Every reader of a WAL-mode SQLite database maps catalogue.sqlite-shm (shared memory for its
    # read locks, rewritten by SQLite itself) and needs a -wal file, which it creates empty when none
    # is there. Everything else is the index's data: byte for byte and mtime for mtime unchanged.
    shm, wal = "catalogue.sqlite-shm", "catalogue.sqlite-wal"

    def data(tree):
        return {k: v for k, v in tree.items() if k not in (shm, wal)}

    assert data(after) == data(before)
    assert set(after) - set(before) <= {shm, wal}
    if wal in before:
        assert after[wal] == before[wal]  # a reader never appends to the log
    elif wal in after:
        assert (index / wal).stat().st_size == 0
    assert "catalogue.sqlite" in after and any(k.startswith("derived") for k in after)


# ---- a real uvicorn, a real second process indexing meanwhile -----------------------------------


def _start_server(*args: str, env=None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "pagelens.cli", "serve", *args], cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError("the server did not start: " + "".join(lines))


def test_uvicorn_end_to_end_and_new_pages_appear_without_restart(built, tmp_path):
    import httpx

    _root, _tiny, paths, index = built
    new = make_pdf(tmp_path / "new.pdf", pages=2, seed=9, size=(300, 400))
    proc, url = _start_server("--index", str(index), "--port", "0")
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("api/health").json()["pages"] == 6
            hits = http.get("api/search", params={"q": "doc 1", "k": 10}).json()["hits"]
            assert len(hits) == 6 and {h["path"] for h in hits} == set(paths)
            png = http.get(hits[0]["image_url"].lstrip("/"), params={"width": 120})
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
            # another process indexes a new document into the served folder
            added = subprocess.run([sys.executable, "-m", "pagelens.cli", "index", new, "--index", str(index),
                                    "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert added.returncode == 0, added.stderr
            hits = http.get("api/search", params={"q": "doc 9", "k": 10}).json()["hits"]
            assert len(hits) == 8 and new in {h["path"] for h in hits}
            fresh = next(h for h in hits if h["path"] == new)
            r = http.get(fresh["image_url"].lstrip("/"), params={"width": 100})
            assert r.status_code == 200
            assert http.get("api/health").json()["pages"] == 8
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        finally:
            proc.kill()
            with pagelens.Index.open(index, writable=True) as idx:  # the module's index as it was
                idx.remove([new])
    assert proc.returncode == 0  # Ctrl-C is how a server stops
    assert "pagelens: stopped" in proc.stderr.read()


def test_serve_warns_when_bound_beyond_loopback(tmp_path):
    # the index is missing, so nothing is ever bound: the warning comes first, then the error
    r = subprocess.run([sys.executable, "-m", "pagelens.cli", "serve", "--index", str(tmp_path / "none"),
                        "--host", "0.0.0.0", "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 4
    assert "Warning: serving on 0.0.0.0, not 127.0.0.1" in r.stderr and "no pagelens index" in r.stderr
    quiet = subprocess.run([sys.executable, "-m", "pagelens.cli", "serve", "--index", str(tmp_path / "none")],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 4 and "Warning" not in quiet.stderr
