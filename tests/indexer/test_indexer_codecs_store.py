"""Compressed multi-vectors in the store: codecs fixed at creation, pooling, recompress, crash safety,
hostile codec state. The fp16 path must write exactly the bytes it always wrote."""

import json
import os
import random
import sys
import time
import zlib

import numpy as np
import pytest

from engine.types import Embedding, PatchGrid
from indexer.errors import CorruptIndexError
from indexer.store import Store
from tests.indexer.indexer_fakes import assert_store_intact, kill_rounds, rename_shard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "codec_kill_entry.py")
D_SINGLE, D_MULTI = 32, 16
# crc32 of the multi shard a fresh fp16 index holds after storing ``pages(6, seed=7)`` as one
# document: the headerless float16 rows of format version 1, fixed here so that the fp16 path can
# never start writing other bytes (a codec record, a header) unnoticed.
FP16_MULTI_CRC = 0xDF04B8D9


def pages(n, seed=0, tokens=24, grid=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = rng.standard_normal((tokens + i, D_MULTI)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        g = PatchGrid(1, 4, 4, (0.0, 0.0, 1.0, 1.0)) if grid else None
        out.append(Embedding(single=rng.standard_normal(D_SINGLE).astype(np.float32), multi=m, grid=g))
    return out


def make(tmp_path, compression="fp16", pool_factor=1, name="idx"):
    return Store.create(tmp_path / name, identity=None, single_dim=D_SINGLE, multi_dim=D_MULTI,
                        compression=compression, pool_factor=pool_factor)


def shard_names(store):
    return sorted(os.listdir(os.path.join(store.directory, "shards")))


def max_error(store, ids, originals):
    got = store.multi_vectors(ids)
    return max(float(np.abs(g.astype(np.float32) - o.multi).max()) for g, o in zip(got, originals))


def test_fp16_index_is_byte_identical_to_before(tmp_path):
    s = make(tmp_path)
    p = pages(6, seed=7)
    s.add_document("/a.pdf", p)
    assert shard_names(s) == ["multi-000001.f16", "single-000002.f32"]
    assert not any(n.startswith("codec-") for n in os.listdir(s.directory))
    raw = open(os.path.join(s.directory, "shards", "multi-000001.f16"), "rb").read()
    assert raw == b"".join(e.multi.astype("<f2").tobytes() for e in p)  # headerless float16 rows, as documented
    assert zlib.crc32(raw) == FP16_MULTI_CRC
    manifest = json.loads(open(os.path.join(s.directory, "manifest.json")).read())
    assert manifest["format_version"] == 1  # an older pagelens still reads it
    assert (manifest["compression"], manifest["pool_factor"]) == ("fp16", 1)
    s.close()


@pytest.mark.parametrize("compression,pool,bytes_per_token,tol", [
    ("int8", 1, 2 + D_MULTI, 0.01), ("fp16", 2, 2 * D_MULTI, None), ("int8", 3, 2 + D_MULTI, None)])
def test_codecs_without_training_encode_as_pages_are_written(tmp_path, compression, pool, bytes_per_token, tol):
    s = make(tmp_path, compression, pool)
    p = pages(5, grid=True)
    ids = s.add_document("/a.pdf", p)
    assert shard_names(s) == ["multi-000001.c1", "single-000002.f32"]
    tokens = sum(-(-len(e.multi) // pool) for e in p)
    assert os.path.getsize(os.path.join(s.directory, "shards", "multi-000001.c1")) == tokens * bytes_per_token
    got = s.multi_vectors(ids)
    assert all(g.dtype == np.float32 for g in got)  # decoded codes come back float32 (no fp16 round trip)
    assert [len(g) for g in got] == [-(-len(e.multi) // pool) for e in p]
    if tol is not None:
        assert max_error(s, ids, p) < tol
        assert s.page_grid(ids[0]) == p[0].grid  # unpooled: the grid still applies
    else:
        assert all(s.page_grid(i) is None for i in ids)  # pooled tokens have no place on the page
    assert s.verify() == 5
    json_manifest = json.loads(open(os.path.join(s.directory, "manifest.json")).read())
    assert json_manifest["format_version"] == 2
    s.close()
    r = Store.open(tmp_path / "idx")  # a reader decodes with the stored codec state
    assert all(np.array_equal(a, b) for a, b in zip(r.multi_vectors(ids), got))
    r.close()


@pytest.mark.parametrize("compression,pool", [("fp16", 1), ("int8", 1), ("int8", 3), ("pq-16", 1)])
def test_batched_document_add_stores_the_bytes_page_by_page_adds_store(tmp_path, compression, pool, monkeypatch):
    """add_document encodes pages in batches (one codec call each); the stored rows, checksums and
    grids must be those of adding the same pages one at a time, across batch and checkpoint edges."""
    import indexer.store as store_module

    monkeypatch.setattr(store_module, "ENCODE_BATCH_PAGES", 3)
    p = pages(8, seed=3, grid=True)
    trained = pages(12, seed=9)
    out = []
    for name in ("batched", "single"):
        s = make(tmp_path, compression, pool, name=name)
        s.checkpoint_pages = 5  # a chunk commit falls inside the second batch
        if compression.startswith("pq"):
            s.train_min_tokens = 100
            s.add_document("/train.pdf", trained)
            assert s.maybe_train_codec() == 12
        if name == "batched":
            ids = s.add_document("/a.pdf", p)
        else:
            with s.document_writer(s._as_source("/a.pdf")) as w:
                for n, e in enumerate(p, start=1):
                    w.add_page(n, None, None, e)
            ids = w.page_ids
        out.append(([g.tobytes() for g in s.multi_vectors(ids)], [s.page_grid(i) for i in ids], s.verify()))
        s.close()
    assert out[0] == out[1]
    assert out[0][2] == (20 if compression.startswith("pq") else 8)


def test_a_bad_page_in_a_batch_appends_nothing_of_it(tmp_path):
    s = make(tmp_path, "int8")
    good = pages(4, seed=5)
    s.add_document("/a.pdf", good)
    before = {n: os.path.getsize(os.path.join(s.directory, "shards", n)) for n in shard_names(s)}
    bad = pages(3, seed=6)
    bad[2] = Embedding(single=bad[2].single, multi=np.zeros((5, D_MULTI + 1), np.float32))
    with pytest.raises(Exception, match="token vectors"):
        s.add_document("/b.pdf", bad)
    assert {n: os.path.getsize(os.path.join(s.directory, "shards", n)) for n in shard_names(s)} == before
    assert s.document("/b.pdf") is None and s.verify() == 4
    s.close()


def test_residual_index_stores_fp16_until_trained_then_converts(tmp_path):
    s = make(tmp_path, "residual-2")
    s.train_min_tokens = 200
    first = pages(4, seed=1)
    ids = s.add_document("/a.pdf", first)
    assert shard_names(s) == ["multi-000001.f16", "single-000002.f32"]
    assert s.stats().raw_pages == 4
    s.train_min_tokens = 10_000
    assert s.maybe_train_codec() == 0  # not enough tokens yet
    s.train_min_tokens = 50
    assert s.maybe_train_codec() == 4
    assert shard_names(s) == ["multi-000003.c1", "single-000002.f32"]
    assert s.stats().raw_pages == 0
    more = pages(3, seed=2)
    ids2 = s.add_document("/b.pdf", more)  # encoded as written now the codec is trained
    assert shard_names(s) == ["multi-000003.c1", "single-000002.f32"]
    assert max_error(s, ids + ids2, first + more) < 1.0
    cos = [float((g.astype(np.float32) * o.multi).sum(1).mean()) for g, o in zip(s.multi_vectors(ids2), more)]
    assert min(cos) > 0.5  # lossy, but the same direction
    assert s.verify() == 7
    s.close()


def test_recompress_keeps_ids_shrinks_bytes_and_refuses_coded_sources(tmp_path):
    s = make(tmp_path)
    p = pages(8, seed=3)
    ids = s.add_document("/a.pdf", p)
    copy_ids = s.copy_document(s._as_source("/copy.pdf"), "/a.pdf")
    before = s.stats()
    result = s.recompress("int8")
    tokens = sum(len(e.multi) for e in p)  # copies share their rows: stored once
    assert (result.pages_converted, result.bytes_before, result.bytes_after) == (16, tokens * 32, tokens * 18)
    after = s.stats()
    assert sorted(s.live_page_ids().tolist()) == sorted(ids + copy_ids)
    assert after.bytes_by_part["multi_vectors"] < before.bytes_by_part["multi_vectors"]
    assert after.compression == "int8" and after.format_version == 2
    assert max_error(s, ids, p) < 0.01
    locations = {row[0]: row[1:3] for row in s.page_locations()}
    assert [locations[i] for i in ids] == [locations[i] for i in copy_ids]  # copies still share their vectors
    assert s.dead_bytes() == 0
    assert s.recompress("int8").pages_converted == 0  # finished: nothing left to do
    for other in ("residual-2", "fp16"):
        with pytest.raises(ValueError, match="only from the fp16 originals"):
            s.recompress(other)
    with pytest.raises(ValueError, match="pool factor"):
        s.recompress("int8", 2)
    s.remove_document("/copy.pdf", compact=False)
    s.compact()  # coded rows stay coded through compaction
    assert [n.split(".")[1] for n in shard_names(s)] == ["c1", "f32"]
    assert max_error(s, ids, p) < 0.01 and s.verify() == 8
    s.close()


def test_recompress_with_pooling_drops_grids(tmp_path):
    s = make(tmp_path)
    p = pages(3, grid=True)
    ids = s.add_document("/a.pdf", p)
    assert s.page_grid(ids[0]) is not None
    s.recompress("residual-2", 2)
    assert [len(m) for m in s.multi_vectors(ids)] == [-(-len(e.multi) // 2) for e in p]
    assert all(s.page_grid(i) is None for i in ids)
    assert (s.compression, s.pool_factor) == ("residual-2", 2)
    s.close()


def test_verify_detects_a_flipped_byte_in_a_coded_shard(tmp_path):
    s = make(tmp_path, "int8")
    s.add_document("/a.pdf", pages(4))
    s.close()
    path = tmp_path / "idx" / "shards" / "multi-000001.c1"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    r = Store.open(tmp_path / "idx")
    report = r.check_integrity()
    assert [d.path for d in report.damaged] == ["/a.pdf"] and len(report.damaged[0].pages) == 1
    r.close()


def _rewrite_manifest(d, **changes):
    path = os.path.join(d, "manifest.json")
    manifest = json.load(open(path))
    manifest.update(changes)
    open(path, "w").write(json.dumps(manifest))


@pytest.mark.parametrize("changes", [
    {"compression": "zstd"}, {"compression": 3}, {"compression": None}, {"pool_factor": "2"},
    {"pool_factor": True}, {"pool_factor": 0}, {"pool_factor": 10 ** 9}, {"format_version": 1}])
def test_hostile_manifest_settings_are_refused(tmp_path, changes):
    make(tmp_path, "int8").close()
    _rewrite_manifest(tmp_path / "idx", **changes)
    with pytest.raises(CorruptIndexError):
        Store.open(tmp_path / "idx")


def _npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _good_arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("damage", ["garbage", "missing", "symlink", "pickle", "dim", "pool", "extra", "nan"])
def test_hostile_codec_state_is_refused(tmp_path, damage):
    s = make(tmp_path, "int8")
    s.add_document("/a.pdf", pages(2))
    s.close()
    path = tmp_path / "idx" / "codec-v1.npz"
    good = _good_arrays(path)
    os.unlink(path)
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip at all")
    elif damage == "symlink":
        target = tmp_path / "elsewhere.npz"
        _npz(target, **good)
        os.symlink(target, path)
    elif damage == "pickle":
        _npz(path, **dict(good, training=np.array([{"x": 1}], dtype=object)))
    elif damage == "dim":
        _npz(path, **dict(good, header=np.array([1, 2, 32, 8, 0, 0], np.int64)))
    elif damage == "pool":
        _npz(path, **dict(good, pool_factor=np.array([0], np.int64)))
    elif damage == "extra":
        _npz(path, **dict(good, payload=np.zeros(3)))
    elif damage == "nan":
        _npz(path, **dict(good, training=np.array([np.nan, 1, 1])))
    with pytest.raises(CorruptIndexError):
        r = Store.open(tmp_path / "idx")
        r.multi_vectors(r.live_page_ids())
    with pytest.raises(CorruptIndexError):
        Store.open(tmp_path / "idx", writable=True)


def test_a_shard_naming_an_unknown_codec_version_is_refused(tmp_path):
    s = make(tmp_path, "int8")
    s.add_document("/a.pdf", pages(2))
    s.close()
    rename_shard(tmp_path / "idx", 1, "multi-000001.c1", "multi-000001.c7")
    with pytest.raises(CorruptIndexError, match="codec-v7"):
        Store.open(tmp_path / "idx")


def test_kill_9_during_recompress_then_rerun_finishes(tmp_path):
    s = make(tmp_path)
    originals, ids = {}, {}
    for d in range(4):
        p = pages(5, seed=10 + d)
        ids[f"/d{d}.pdf"] = s.add_document(f"/d{d}.pdf", p)
        originals.update(zip(ids[f"/d{d}.pdf"], p))
    s.close()
    all_ids = sorted(originals)
    rng = random.Random(11)

    def pause(proc):  # kill after a random number of progress lines, at a random moment
        lines = b"".join(proc.stdout.readline() for _ in range(rng.randint(0, 2)))
        time.sleep(rng.uniform(0.0, 0.03))
        return lines

    cmd = [sys.executable, ENTRY, str(tmp_path / "idx"), "residual-2", "0.03", ROOT]
    for round_, out, kills in kill_rounds(cmd, pause):
        r = Store.open(tmp_path / "idx")
        try:
            assert_store_intact(r, ids, all_ids)
            got = r.multi_vectors(all_ids)
            cos = [float((g.astype(np.float32) * originals[i].multi).sum(1).mean()) for g, i in zip(got, all_ids)]
            assert min(cos) > 0.5
        finally:
            r.close()
        if round_ == 2:  # a half-converted store compacts without mixing layouts
            w = Store.open(tmp_path / "idx", writable=True)
            w.compact()
            assert w.verify() == len(all_ids)
            w.close()
    assert kills == 5  # a kill by line count, not by time: a fast machine cannot finish first
    assert b"finished" in out  # the last, unkilled run finished the conversion
    r = Store.open(tmp_path / "idx")
    st = r.stats()
    assert (st.compression, st.raw_pages) == ("residual-2", 0)
    assert all(n.endswith((".f32",)) or ".c" in n for n in shard_names(r))
    r.close()


@pytest.mark.parametrize("compression", ["residual-1", "residual-4"])
def test_other_residual_widths_round_trip(tmp_path, compression):
    s = make(tmp_path)
    p = pages(6, seed=5)
    ids = s.add_document("/a.pdf", p)
    s.recompress(compression)
    bits = int(compression[-1])
    assert s.stats().bytes_by_part["multi_vectors"] == sum(len(e.multi) for e in p) * (2 + D_MULTI * bits // 8)
    cos = [float((g.astype(np.float32) * o.multi).sum(1).mean()) for g, o in zip(s.multi_vectors(ids), p)]
    assert min(cos) > 0.5 and s.verify() == 6
    s.close()


def test_recompress_of_an_empty_index_waits_for_pages(tmp_path):
    s = make(tmp_path)
    assert s.recompress("residual-2").pages_converted == 0  # nothing to train on: pages come in raw
    s.train_min_tokens = 1
    ids = s.add_document("/a.pdf", pages(3))
    assert s.stats().raw_pages == 3 and s.maybe_train_codec() == 3 and s.stats().raw_pages == 0
    assert len(s.multi_vectors(ids)) == 3 and s.verify() == 3
    s.close()
