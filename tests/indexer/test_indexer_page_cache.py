"""The page-table cache (indexer/page_cache.py): used only when its stamp is the catalogue's, checked
like rows read from SQLite, ignored when absent, stale, odd or a link, written by a writer's close."""

import os

import numpy as np
import pytest

from indexer import page_cache, snapshot
from indexer.errors import CorruptIndexError
from indexer.store import Store
from tests.indexer.test_indexer_hostile_index import emb, make_index, sql, src


@pytest.fixture(autouse=True)
def small_indexes_use_the_cache(monkeypatch):
    monkeypatch.setattr(snapshot, "CACHE_MIN_PAGES", 1)


def cache_path(d):
    return os.path.join(d, page_cache.CACHE_NAME)


def reference(d, monkeypatch):
    """What a reader sees when it must read every row from SQLite."""
    with monkeypatch.context() as m:
        m.setattr(page_cache, "load", lambda *a: None)
        return read(d)


def read(d):
    r = Store.open(d)
    try:
        ids = r.live_page_ids()
        return ids, r.pages_info(ids), [v.copy() for v in r.multi_vectors(ids)]
    finally:
        r.close()


def same(a, b):
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert all(np.array_equal(x, y) for x, y in zip(a[2], b[2]))


def test_a_writers_close_writes_it_and_a_reader_opens_from_it(tmp_path, monkeypatch):
    d = make_index(tmp_path, docs=3)  # make_index closes its writer
    assert os.path.isfile(cache_path(d))
    want = reference(d, monkeypatch)
    monkeypatch.setattr(snapshot, "_VISIBLE_PAGES", "SELECT no_such_column FROM pages")  # rows unreadable
    same(read(d), want)  # so this came from the cache


def test_a_commit_after_the_cache_makes_it_stale_and_the_rows_are_read(tmp_path, monkeypatch):
    d = make_index(tmp_path, docs=2)
    w = Store.open(d, writable=True)
    w.add_document(src("/docs/new.pdf", "hn"), [emb(77), emb(78), emb(79)])  # not closed: cache left as it was
    got = read(d)
    assert len(got[0]) == 7 and ("/docs/new.pdf", 3) in got[1]
    w.remove_document("/docs/0.pdf")
    got = read(d)
    assert len(got[0]) == 5 and not any(p == "/docs/0.pdf" for p, _n in got[1])
    w.close()  # now the cache holds the new state
    monkeypatch.setattr(snapshot, "_VISIBLE_PAGES", "SELECT no_such_column FROM pages")
    assert len(read(d)[0]) == 5


def test_catalogue_damage_is_still_found_with_a_cache_present(tmp_path):
    d = make_index(tmp_path)
    sql(d, "UPDATE pages SET multi_offset = 10000 WHERE page_id = 2")  # the stamp moves: rows are read
    with pytest.raises(CorruptIndexError):
        Store.open(d)


def test_a_crafted_cache_with_the_right_stamp_is_checked_like_the_catalogue(tmp_path):
    d = make_index(tmp_path)
    table = np.load(cache_path(d))
    table[2, snapshot._PAGE_COLUMNS.index("multi_offset")] = 10_000  # points past the committed rows
    np.save(cache_path(d), table)
    with pytest.raises(CorruptIndexError):
        Store.open(d)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_stamp", "link", "folder"])
def test_an_odd_cache_is_ignored(tmp_path, monkeypatch, damage):
    d = make_index(tmp_path)
    want = reference(d, monkeypatch)
    path = cache_path(d)
    outside = tmp_path / "outside.npy"
    if damage == "garbage":
        open(path, "wb").write(b"\x93NUMPY not really")
    elif damage == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) - 40])
    elif damage == "other_stamp":
        table = np.load(path)
        table[0, 3] += 1
        np.save(path, table)
    elif damage == "link":  # a link out of the index is never followed, even to a valid-looking file
        os.replace(path, outside)
        os.symlink(outside, path)
        before = outside.read_bytes()
    else:
        os.unlink(path)
        os.mkdir(path)
    same(read(d), want)
    if damage == "link":
        assert os.path.islink(path) and outside.read_bytes() == before
        w = Store.open(d, writable=True)
        w.close()  # the writer replaces the link itself, never writes through it
        assert not os.path.islink(path) and outside.read_bytes() == before


def test_a_killed_writers_temporary_cache_is_removed_by_the_next_writer(tmp_path):
    d = make_index(tmp_path)
    tmp = os.path.join(d, f".{page_cache.CACHE_NAME}.12345.tmp")
    open(tmp, "wb").write(b"half")
    Store.open(d, writable=True).close()
    assert not os.path.exists(tmp)
    assert os.path.isfile(cache_path(d))
