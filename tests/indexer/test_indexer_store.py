"""The store: create/open errors, identity, bring-your-own embeddings, snapshots, crash recovery,
disk full, removal and compaction."""

import json
import os

import numpy as np
import pytest

from engine.types import Embedding
from indexer import shards
from indexer.errors import (
    CorruptIndexError, DimensionMismatchError, EncoderMismatchError, IndexExistsError, IndexFormatError,
    IndexLockedError, NotAnIndexError, PageNotFoundError, ReadOnlyError,
)
from indexer.sources import SourceFile
from indexer.store import Store


def emb(seed: int, tokens: int = 4, single_dim: int = 32, multi_dim: int = 16) -> Embedding:
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(single_dim).astype(np.float32)
    m = rng.standard_normal((tokens, multi_dim)).astype(np.float32)
    return Embedding(s / np.linalg.norm(s), m / np.linalg.norm(m, axis=1, keepdims=True))


def src(path: str, sha: str = "x") -> SourceFile:
    return SourceFile(path=path, size=1, mtime=0.0, sha256=sha)


def test_create_open_and_directory_errors(tmp_path, encoder):
    d = tmp_path / "idx"
    Store.create(d, identity=encoder.identity, single_dim=32, multi_dim=16).close()
    with pytest.raises(IndexExistsError):
        Store.create(d, identity=None, single_dim=32, multi_dim=16)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thing.txt").write_text("x")
    with pytest.raises(IndexExistsError):
        Store.create(tmp_path / "other", identity=None, single_dim=32, multi_dim=16)
    with pytest.raises(NotAnIndexError):
        Store.open(tmp_path / "other")
    with pytest.raises(NotAnIndexError):
        Store.open(tmp_path / "missing")
    w = Store.open(d, writable=True)
    with pytest.raises(IndexLockedError):
        Store.open(d, writable=True)
    r = Store.open(d)  # readers never wait for the writer
    with pytest.raises(ReadOnlyError):
        r.record_failure("/x.pdf", "nope")
    r.close()
    w.close()
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["identity"] == encoder.identity
    manifest["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError):
        Store.open(d)


def test_identity_check_ignores_location_keys_and_refuses_others(store, encoder):
    store.check_identity(dict(encoder.identity, model="/elsewhere/fake", device="cuda:0", dtype="bf16"))
    with pytest.raises(EncoderMismatchError) as exc:
        store.check_identity(dict(encoder.identity, revision="fake-2"))
    assert "fake-1" in str(exc.value) and "fake-2" in str(exc.value)
    byo = Store.create(os.path.join(store.directory, "..", "byo"), identity=None, single_dim=32, multi_dim=16)
    with pytest.raises(EncoderMismatchError) as exc:
        byo.check_identity(encoder.identity)
    assert "no model" in str(exc.value)
    byo.close()


def test_bring_your_own_embeddings_round_trip(tmp_path):
    s = Store.create(tmp_path / "byo", identity=None, single_dim=32, multi_dim=16)
    pages = [emb(1, 3), (640, 480, emb(2, 5))]
    ids = s.add_document("/cluster/report.pdf", pages)
    assert list(s.live_page_ids()) == ids
    assert s.pages_info(ids) == [("/cluster/report.pdf", 1), ("/cluster/report.pdf", 2)]
    multi = s.multi_vectors(ids)
    assert multi[0].dtype == np.float16 and multi[1].shape == (5, 16)
    np.testing.assert_allclose(multi[1], emb(2, 5).multi, atol=2e-3)
    np.testing.assert_array_equal(s.single_vectors(ids[::-1])[0], emb(2, 5).single)
    doc = s.document("/cluster/report.pdf")
    assert doc.page_count == 2 and doc.status == "indexed" and doc.sha256 is None
    with pytest.raises(DimensionMismatchError):
        s.add_document("/cluster/bad.pdf", [emb(3, multi_dim=8)])
    assert s.document("/cluster/bad.pdf") is None
    with pytest.raises(PageNotFoundError):
        s.multi_vectors([999])
    s.close()
    r = Store.open(tmp_path / "byo")
    assert r.stats().pages == 2 and r.stats().vectors == 8 and r.verify() == 2
    r.close()


def test_failed_write_leaves_nothing_and_reader_sees_committed_snapshot(store):
    store.add_document(src("/a.pdf"), [emb(1), emb(2)])
    reader = Store.open(store.directory)
    with pytest.raises(RuntimeError):
        with store.document_writer(src("/b.pdf")) as w:
            w.add_page(1, 10, 10, emb(3))
            raise RuntimeError("encoder died")
    assert store.document("/b.pdf") is None
    w = store.document_writer(src("/c.pdf"))
    w.add_page(1, 10, 10, emb(4))
    mid = Store.open(store.directory)  # opened while /c.pdf is half written
    assert len(mid.live_page_ids()) == 2 and mid.stats().documents == 1
    w.commit()
    assert len(reader.live_page_ids()) == 2  # a reader keeps its snapshot ...
    reader.refresh()
    assert len(reader.live_page_ids()) == 3  # ... until it refreshes
    assert reader.pages_info(reader.live_page_ids()[-1:]) == [("/c.pdf", 1)]
    size = os.path.getsize(os.path.join(store.directory, "shards", "multi-000001.f16"))
    assert size == sum(len(m) for m in reader.multi_vectors(reader.live_page_ids())) * 16 * 2
    reader.close()
    mid.close()


def test_replacing_a_document_is_atomic_and_ids_are_never_reused(store):
    old = store.add_document(src("/a.pdf", "v1"), [emb(1), emb(2)])
    new = store.add_document(src("/a.pdf", "v2"), [emb(3)])
    assert min(new) > max(old)
    assert list(store.live_page_ids()) == new
    assert store.document("/a.pdf").sha256 == "v2" and store.dead_bytes() > 0
    store.remove_document("/a.pdf", compact=False)
    again = store.add_document(src("/a.pdf", "v3"), [emb(4)])
    assert again[0] > new[0]


def test_torn_tail_is_cut_and_missing_committed_bytes_are_an_error(store):
    store.add_document(src("/a.pdf"), [emb(1), emb(2)])
    d = store.directory
    store.close()
    multi = os.path.join(d, "shards", "multi-000001.f16")
    good = os.path.getsize(multi)
    with open(multi, "ab") as fh:
        fh.write(b"\x01" * 100)  # what a kill -9 mid-append leaves
    with open(os.path.join(d, "shards", "multi-000099.f16"), "wb") as fh:
        fh.write(b"orphan")  # what a kill -9 mid-compaction leaves
    s = Store.open(d, writable=True)
    assert os.path.getsize(multi) == good and not os.path.exists(os.path.join(d, "shards", "multi-000099.f16"))
    s.close()
    with open(multi, "r+b") as fh:
        fh.truncate(good - 32)
    with pytest.raises(CorruptIndexError):
        Store.open(d, writable=True)
    with pytest.raises(CorruptIndexError):
        Store.open(d)


def test_checksums_catch_flipped_bytes(store):
    store.add_document(src("/a.pdf"), [emb(1), emb(2)])
    path = os.path.join(store.directory, "shards", "single-000002.f32")
    with open(path, "r+b") as fh:
        fh.seek(4)
        fh.write(b"\x00\x00\x80\x7f")
    store.refresh()
    with pytest.raises(CorruptIndexError):
        store.verify()


def test_disk_full_mid_write_keeps_committed_data(store, monkeypatch):
    ids = store.add_document(src("/a.pdf"), [emb(1), emb(2)])
    before = [m.copy() for m in store.multi_vectors(ids)]
    calls = {"n": 0}
    real = shards._write_all

    def full(fh, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(fh, data)

    monkeypatch.setattr(shards, "_write_all", full)
    with pytest.raises(OSError):
        store.add_document(src("/b.pdf"), [emb(3), emb(4), emb(5)])
    monkeypatch.setattr(shards, "_write_all", real)
    assert store.document("/b.pdf") is None
    d = store.directory
    store.close()
    s = Store.open(d, writable=True)
    assert [x.copy() for x in s.multi_vectors(ids)][1].tolist() == before[1].tolist()
    s.add_document(src("/b.pdf"), [emb(3)])
    assert s.verify() == 3
    s.close()


def test_copies_share_vectors_and_compaction_reclaims_bytes_keeping_data(store):
    keep = store.add_document(src("/keep.pdf", "k"), [emb(i, tokens=50) for i in range(3)])
    gone = store.add_document(src("/gone.pdf", "g"), [emb(10 + i, tokens=50) for i in range(6)])
    copy = store.copy_document(src("/copy.pdf", "k"), "/keep.pdf")
    assert store.dead_bytes() == 0  # a copy stores nothing twice
    np.testing.assert_array_equal(store.multi_vectors(copy)[2], store.multi_vectors(keep)[2])
    reader = Store.open(store.directory)
    assert store.remove_document("/gone.pdf", compact=False) == 6
    assert not set(gone) & set(store.live_page_ids())
    snapshot = {int(i): (m.copy(), s.copy()) for i, m, s in
                zip(store.live_page_ids(), store.multi_vectors(store.live_page_ids()),
                    store.single_vectors(store.live_page_ids()))}
    before = store.stats()
    reclaimed = store.compact()
    after = store.stats()
    assert reclaimed == before.dead_bytes > 0 and after.dead_bytes == 0
    assert after.bytes_by_part["multi_vectors"] < before.bytes_by_part["multi_vectors"]
    ids = store.live_page_ids()
    assert sorted(snapshot) == list(ids)
    for i, m, s in zip(ids, store.multi_vectors(ids), store.single_vectors(ids)):
        np.testing.assert_array_equal(m, snapshot[int(i)][0])
        np.testing.assert_array_equal(s, snapshot[int(i)][1])
    assert len(reader.multi_vectors(reader.live_page_ids())) == 12  # old maps outlive the old files
    reader.close()
    store.add_document(src("/new.pdf", "n"), [emb(99)])
    assert store.verify() == 7 and sorted(os.listdir(os.path.join(store.directory, "shards"))) == [
        "multi-000003.f16", "single-000004.f32"]


def test_automatic_compaction_after_removal_past_threshold(store):
    store.auto_compact_min_bytes = 1000
    store.add_document(src("/a.pdf"), [emb(1, tokens=100)])
    store.add_document(src("/b.pdf"), [emb(2, tokens=100)])
    store.remove_document("/a.pdf")  # half dead but ratio not passed: kept
    assert store.dead_bytes() > 0
    store.add_document(src("/c.pdf"), [emb(3, tokens=10)])
    store.remove_document("/b.pdf")
    assert store.dead_bytes() == 0 and store.stats().pages == 1


def test_multi_rows_gathers_pages_across_shards_in_order():
    """The batched gather a compact rerank uses must equal the per-page slices, whatever shard
    each page sits in and in whatever order the pages are asked for."""
    from indexer.snapshot import Snapshot

    rng = np.random.default_rng(3)
    maps = {1: rng.integers(0, 255, (50, 6)).astype(np.uint8), 2: rng.integers(0, 255, (40, 6)).astype(np.uint8)}
    shard = np.array([1, 2, 1, 2, 2], np.int64)
    offset = np.array([0, 5, 20, 0, 30], np.int64)
    n = np.array([5, 7, 30, 5, 10], np.int64)
    zeros = np.zeros(5, np.int64)
    snap = Snapshot(page_ids=np.arange(1, 6), document_ids=zeros, page_numbers=zeros, multi_shard=shard,
                    multi_offset=offset, n_tokens=n, single_shard=zeros, single_row=zeros, crc32=zeros,
                    paths={}, maps=maps)
    for order in ([0, 1, 2, 3, 4], [4, 2, 0], [3], [1, 3, 4], [2, 2, 0]):
        rows, lens = snap.multi_rows(np.array(order))
        assert lens.tolist() == n[order].tolist()
        assert np.array_equal(rows, np.concatenate([snap.multi(p) for p in order]))


def test_refresh_right_after_open_reads_the_page_table_once(store, monkeypatch):
    """Every search refreshes; right after open nothing changed, so the page table (a million rows
    on a 1M-page index, seconds to read) must not be read again. After another connection commits,
    it must be."""
    from indexer import store as store_module

    store.add_document(src("/a.pdf"), [emb(1), emb(2)])
    loads = []
    real = store_module.load_snapshot
    monkeypatch.setattr(store_module, "load_snapshot", lambda *a, **kw: loads.append(1) or real(*a, **kw))
    reader = Store.open(store.directory)
    assert len(loads) == 1
    assert reader.refresh() is False and len(loads) == 1
    store.add_document(src("/b.pdf"), [emb(3)])
    assert reader.refresh() is True and len(loads) == 2
    assert len(reader.live_page_ids()) == 3
    reader.close()
