"""Patch grids in the store: written with the pages, kept by copies and compaction, NULL for pages
without one, migrated into older catalogues, and never trusted when the values on disk are wrong."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from engine.types import Embedding, PatchGrid
from indexer import render_worker
from indexer.catalogue import GRID_COLUMNS, SCHEMA_VERSION
from indexer.errors import PageNotFoundError
from indexer.pipeline import index_paths
from indexer.render import DocumentPages, content_box, legal_size
from indexer.sources import SourceFile, read_source
from indexer.store import Store
from indexer.writer import grid_columns
from tests.indexer.indexer_fakes import FakeEncoder, make_pdf, make_pdf_sizes


def emb(seed: int, n: int = 12, grid: PatchGrid | None = None) -> Embedding:
    rng = np.random.default_rng(seed)
    single = rng.standard_normal(32).astype(np.float32)
    multi = rng.standard_normal((n, 16)).astype(np.float32)
    return Embedding(single=single / np.linalg.norm(single),
                     multi=multi / np.linalg.norm(multi, axis=1, keepdims=True), grid=grid)


def src(path: str, sha: str) -> SourceFile:
    return SourceFile(path, 100, 1.0, sha)


GRID = PatchGrid(2, 2, 4, box=(0.0, 0.125, 1.0, 0.875))


@pytest.fixture
def filled(tmp_path):
    s = Store.create(tmp_path / "idx", identity={"model": "fake"}, single_dim=32, multi_dim=16)
    with_grid = s.add_document(src("/docs/a.pdf", "a"), [emb(1, grid=GRID), emb(2)])
    yield s, with_grid
    s.close()


def test_a_grid_is_stored_with_its_page_and_read_back(filled):
    s, (p1, p2) = filled
    assert s.page_grid(p1) == GRID
    assert s.page_grid(p2) is None  # brought without one
    assert s.page_grid(np.int64(p1)) == GRID
    for bad in (10**6, -5, 2**70, "1", 1.5, True, None):
        with pytest.raises(PageNotFoundError):
            s.page_grid(bad)


def test_copies_and_compaction_keep_the_grid(filled, tmp_path):
    s, (p1, _p2) = filled
    (c1, _c2) = s.copy_document(src("/docs/copy.pdf", "a"), "/docs/a.pdf")
    assert s.page_grid(c1) == GRID
    s.add_document(src("/docs/b.pdf", "b"), [emb(3, n=40, grid=PatchGrid(0, 5, 8))])
    s.remove_document("/docs/a.pdf", compact=False)
    s.compact()
    assert s.page_grid(c1) == GRID  # moved to a new shard, grid unchanged
    assert s.check_integrity().ok
    reader = Store.open(tmp_path / "idx")
    assert reader.page_grid(c1) == GRID
    reader.close()


def test_grid_columns_of_a_grid_that_does_not_fit_are_null():
    assert grid_columns(PatchGrid(2, 2, 4), 10) == (2, 2, 4, 0.0, 0.0, 1.0, 1.0)
    assert grid_columns(PatchGrid(2, 2, 4), 9) == (None,) * 7
    assert grid_columns(None, 9) == (None,) * 7
    assert grid_columns((2, 2, 4), 100) == (None,) * 7


HOSTILE = {
    "negative offset": "grid_offset = -1",
    "negative rows": "grid_rows = -2",
    "zero cols": "grid_cols = 0",
    "huge rows": "grid_rows = 1000000000000",
    "huge offset": "grid_offset = 9223372036854775807",
    "more patches than tokens": "grid_rows = 3",  # 2 + 3*4 = 14 > 12 tokens
    "rows*cols past n_tokens - offset": "grid_offset = 5",  # 5 + 8 = 13 > 12
    "text": "grid_rows = 'two'",
    "blob": "grid_cols = x'04'",
    "real": "grid_offset = 2.5",
    "one box value missing": "box_y1 = NULL",
    "box outside": "box_x1 = 1.5",
    "box inverted": "box_x0 = 0.9, box_x1 = 0.1",
    "box negative": "box_y0 = -0.1",
    "box text": "box_x0 = 'left'",
    "box infinite": "box_x1 = 9e999",
    "grid half missing": "grid_cols = NULL",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_grid_values_on_disk_are_no_grid_and_never_crash(filled, tmp_path, case):
    s, (p1, p2) = filled
    d = s.directory
    s.close()
    db = sqlite3.connect(os.path.join(d, "catalogue.sqlite"))
    db.execute(f"UPDATE pages SET {HOSTILE[case]} WHERE page_id = ?", (p1,))
    db.commit()
    db.close()
    for writable in (False, True):
        r = Store.open(d, writable=writable)
        assert r.page_grid(p1) is None, case
        assert len(r.multi_vectors([p1])[0]) == 12  # the page itself is still fine to search
        r.close()


def _make_schema_2(directory: str) -> None:
    """Turn a catalogue into what pagelens wrote before grids (schema 2)."""
    db = sqlite3.connect(os.path.join(directory, "catalogue.sqlite"))
    for column in GRID_COLUMNS:
        db.execute(f"ALTER TABLE pages DROP COLUMN {column}")
    db.execute("DELETE FROM schema_migrations WHERE version = 3")
    db.commit()
    db.close()


def test_a_schema_2_index_reads_without_grids_and_a_writer_migrates_it(filled):
    s, (p1, p2) = filled
    d = s.directory
    s.close()
    _make_schema_2(d)
    r = Store.open(d)  # a reader never migrates: views give it the new columns, as NULL
    assert r.page_grid(p1) is None and len(r.live_page_ids()) == 2 and r.check_integrity().ok
    r.close()
    db = sqlite3.connect(os.path.join(d, "catalogue.sqlite"))
    assert db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == 2  # the reader wrote nothing
    db.close()
    w = Store.open(d, writable=True)
    (p3,) = w.add_document(src("/docs/new.pdf", "n"), [emb(9, grid=GRID)])
    assert w.page_grid(p3) == GRID and w.page_grid(p1) is None
    (c1, _c2) = w.copy_document(src("/docs/a-copy.pdf", "a"), "/docs/a.pdf")
    assert w.page_grid(c1) is None
    w.close()
    db = sqlite3.connect(os.path.join(d, "catalogue.sqlite"))
    assert db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


def test_a_migration_record_with_a_gap_is_migrated_again_from_the_gap(filled):
    s, (p1, _p2) = filled
    d = s.directory
    s.close()
    db = sqlite3.connect(os.path.join(d, "catalogue.sqlite"))
    db.execute("DELETE FROM schema_migrations WHERE version = 2")  # 1 and 3 recorded, every column there
    db.commit()
    db.close()
    w = Store.open(d, writable=True)  # re-runs 2 and 3 without failing on columns they find
    assert w.page_grid(p1) == GRID
    w.close()
    db = sqlite3.connect(os.path.join(d, "catalogue.sqlite"))
    assert sorted(v for (v,) in db.execute("SELECT version FROM schema_migrations")) == [1, 2, 3]
    db.close()


def test_pages_from_an_encoder_without_grids_store_none(tmp_path, store, encoder):
    path = make_pdf(tmp_path / "a.pdf", pages=2)
    index_paths(store, encoder, [path])
    assert [store.page_grid(int(p)) for p in store.page_ids_of(path)] == [None, None]


class GridFake(FakeEncoder):
    """FakeEncoder whose embeddings carry a full-image grid over their strip tokens."""

    def embed(self, img):
        e = super().embed(img)
        return Embedding(single=e.single, multi=e.multi, grid=PatchGrid(0, e.multi.shape[0], 1))


def test_the_pipeline_records_where_a_padded_page_sits(tmp_path):
    cap = 400_000
    folder = tmp_path / "docs"
    folder.mkdir()
    tall = make_pdf_sizes(folder / "tall.pdf", [(2, 800)])  # 400:1, past the 200:1 limit: padded sideways
    normal = make_pdf_sizes(folder / "normal.pdf", [(200, 300)])
    enc = GridFake(max_pixels=cap)
    s = Store.create(tmp_path / "idx", identity=enc.identity, single_dim=enc.single_dim, multi_dim=enc.multi_dim)
    report = index_paths(s, enc, [folder])
    assert report.outcome == "all_indexed", report.failed
    (pid,) = s.page_ids_of(tall)
    grid = s.page_grid(int(pid))
    with DocumentPages(read_source(tall), max_pixels=cap) as pages:  # the same page, rendered here
        (page,) = list(pages)
    assert page.content is not None and page.content[2] - page.content[0] < page.width  # white either side
    assert grid.box == pytest.approx(page.content_fractions())
    assert grid.box[1] == 0.0 and grid.box[3] == 1.0 and 0.1 < grid.box[0] < grid.box[2] < 0.9
    (pid,) = s.page_ids_of(normal)
    assert s.page_grid(int(pid)).box == (0.0, 0.0, 1.0, 1.0)
    s.close()


def test_the_render_worker_sends_each_pages_content_box(tmp_path):
    path = make_pdf_sizes(tmp_path / "mixed.pdf", [(600, 2), (200, 300), (3, 3)])
    cap = 400_000
    worker = render_worker.acquire()
    try:
        source = read_source(path)
        with worker.open(source, dpi=144, max_pixels=cap, timeout=30, memory=1 << 30) as doc:
            pages = list(doc)
    finally:
        render_worker.release(worker)
    with DocumentPages(source, max_pixels=cap) as local:
        expected = [p.content for p in local]
    assert [p.content for p in pages] == expected
    strip = pages[0]
    assert strip.content[0] == 0 and strip.content[2] == strip.width and strip.content[3] - strip.content[1] < strip.height
    assert pages[1].content == (0, 0, pages[1].width, pages[1].height)


def test_content_box_agrees_with_the_padding():
    for w, h in [(28, 28), (5600, 10), (10, 5600), (300, 200), (1, 1)]:
        cap = 1_000_000
        x0, y0, x1, y1 = content_box(w, h, cap)
        W, H = legal_size(w, h, cap)
        assert (x1 - x0, y1 - y0) == (w, h) and 0 <= x0 and x1 <= W and 0 <= y0 and y1 <= H
        assert abs(x0 - (W - x1)) <= 1 and abs(y0 - (H - y1)) <= 1  # centred


def test_a_damaged_box_from_the_renderer_is_refused():
    inside = render_worker.valid_content_box
    assert inside((0, 0, 10, 10), 10, 10)
    for bad in [(0, 0, 11, 10), (-1, 0, 5, 5), (5, 0, 5, 5), (0, 0, 5), [0, 0, 5, 5], (0, 0, 5.0, 5), None,
                (0, 0, True, 5)]:
        assert not inside(bad, 10, 10), bad
