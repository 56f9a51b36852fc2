"""Single vectors stored at the prefilter's Matryoshka width and in fp16: creation, reading, checksums,
hostile manifests, the unchanged default, recompress (with kill -9) and compaction."""

import json
import os
import random
import sys
import time

import numpy as np
import pytest

from engine.types import Embedding
from indexer import manifest as manifest_module
from indexer.errors import CorruptIndexError, DimensionMismatchError, IndexFormatError
from indexer.store import Store
from tests.indexer.indexer_fakes import assert_store_intact, kill_rounds, rename_shard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "single_kill_entry.py")
D_SINGLE, D_MULTI = 2048, 16


def pages(n, seed=0, tokens=12):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = rng.standard_normal((tokens + i, D_MULTI)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        s = rng.standard_normal(D_SINGLE).astype(np.float32)
        out.append(Embedding(single=s / np.linalg.norm(s), multi=m))
    return out


def by_hand(single, width, precision="fp16"):
    """What a Matryoshka store of (width, precision) must give back: the first values, renormalised, rounded."""
    v = np.asarray(single, np.float32)[:width]
    v = v / np.linalg.norm(v)
    return v.astype(np.float16).astype(np.float32) if precision == "fp16" else v.astype(np.float32)


def same(got, want):
    """Equal up to one float16 rounding step (a norm summed in another order may flip one)."""
    np.testing.assert_allclose(got, want, rtol=2.0 ** -10, atol=2.0 ** -24)


def make(tmp_path, name="idx", **kwargs):
    return Store.create(tmp_path / name, identity=None, single_dim=D_SINGLE, multi_dim=D_MULTI, **kwargs)


def shard_names(directory):
    return sorted(os.listdir(os.path.join(directory, "shards")))


def read_manifest(directory):
    with open(os.path.join(directory, "manifest.json")) as fh:
        return json.load(fh)


def test_narrow_fp16_store_keeps_256_bytes_a_page_and_reads_back_float32(tmp_path):
    s = make(tmp_path, single_width=128, single_precision="fp16")
    p = pages(5)
    ids = s.add_document("/a.pdf", p)
    d = s.directory
    assert shard_names(d) == ["multi-000001.f16", "single-000002.f16"]
    assert os.path.getsize(os.path.join(d, "shards", "single-000002.f16")) == 5 * 256
    st = s.stats()
    assert st.bytes_per_page["single_vectors"] == 256 and (st.single_width, st.single_precision) == (128, "fp16")
    got = s.single_vectors(ids)
    assert got.dtype == np.float32 and got.shape == (5, 128)
    same(got, np.stack([by_hand(e.single, 128) for e in p]))
    raw = np.fromfile(os.path.join(d, "shards", "single-000002.f16"), dtype="<f2")  # headerless float16 rows
    np.testing.assert_array_equal(raw.reshape(5, 128).astype(np.float32), got)
    m = read_manifest(d)
    assert (m["format_version"], m["single_width"], m["single_precision"]) == (3, 128, "fp16")
    assert s.verify() == 5
    s.close()
    r = Store.open(d)  # a fresh reader sees the same
    assert (r.single_width, r.single_precision) == (128, "fp16")
    np.testing.assert_array_equal(r.single_vectors(ids), got)
    assert r.verify() == 5
    r.close()


def test_a_single_vector_already_at_the_stored_width_is_accepted_any_other_refused(tmp_path):
    s = make(tmp_path, single_width=256, single_precision="fp32")
    full = pages(1, seed=3)[0]
    prefix = Embedding(single=full.single[:256] * 3.0, multi=full.multi)  # renormalised when written
    ids = s.add_document("/a.pdf", [full, prefix])
    got = s.single_vectors(ids)
    np.testing.assert_allclose(got[0], by_hand(full.single, 256, "fp32"), rtol=0, atol=1e-7)
    np.testing.assert_allclose(got[1], got[0], rtol=0, atol=1e-7)
    assert shard_names(s.directory)[1] == "single-000002.f32"  # fp32 narrow rows keep the f32 name
    assert os.path.getsize(os.path.join(s.directory, "shards", "single-000002.f32")) == 2 * 256 * 4
    with pytest.raises(DimensionMismatchError):
        s.add_document("/b.pdf", [Embedding(single=full.single[:128], multi=full.multi)])
    assert s.verify() == 2
    s.close()


def test_defaults_write_exactly_the_bytes_and_manifest_of_before(tmp_path):
    p = pages(4, seed=7)
    for name, kwargs in (("plain", {}), ("explicit", {"single_width": D_SINGLE, "single_precision": "fp32"})):
        s = make(tmp_path, name, **kwargs)
        s.add_document("/a.pdf", p)
        d = s.directory
        assert shard_names(d) == ["multi-000001.f16", "single-000002.f32"]
        single = open(os.path.join(d, "shards", "single-000002.f32"), "rb").read()
        assert single == b"".join(e.single.astype("<f4").tobytes() for e in p)  # as given: no renormalising
        m = read_manifest(d)
        assert m["format_version"] == 1 and "single_width" not in m and "single_precision" not in m
        assert s.stats().bytes_per_page["single_vectors"] == D_SINGLE * 4
        s.close()


@pytest.mark.parametrize("kwargs", [{"single_width": 0}, {"single_width": D_SINGLE + 1}, {"single_width": "128"},
                                    {"single_width": 12.5}, {"single_width": True}, {"single_precision": "bf16"},
                                    {"single_precision": None}])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make(tmp_path, **kwargs)
    assert not os.path.exists(tmp_path / "idx" / "manifest.json")


def _rewrite_manifest(directory, **changes):
    path = os.path.join(directory, "manifest.json")
    m = read_manifest(directory)
    for key, value in changes.items():
        if value is ...:
            m.pop(key, None)
        else:
            m[key] = value
    with open(path, "w") as fh:
        fh.write(json.dumps(m))


@pytest.mark.parametrize("changes", [
    {"single_width": 0}, {"single_width": -128}, {"single_width": D_SINGLE * 2}, {"single_width": "128"},
    {"single_width": 128.0}, {"single_width": True}, {"single_width": None}, {"single_width": [128]},
    {"single_precision": "fp8"}, {"single_precision": 16}, {"single_precision": None},
    {"format_version": 2}, {"format_version": 1}])
def test_hostile_single_settings_in_the_manifest_are_refused(tmp_path, changes):
    s = make(tmp_path, single_width=128, single_precision="fp16")
    s.add_document("/a.pdf", pages(2))
    s.close()
    _rewrite_manifest(tmp_path / "idx", **changes)
    for writable in (False, True):
        with pytest.raises(CorruptIndexError) as info:
            Store.open(tmp_path / "idx", writable=writable)
        assert info.value.hint  # says what to do next


def test_a_manifest_that_loses_the_fp16_setting_cannot_misread_the_f16_shard(tmp_path):
    s = make(tmp_path, single_width=128, single_precision="fp16")
    s.add_document("/a.pdf", pages(2))
    s.close()
    _rewrite_manifest(tmp_path / "idx", single_precision=...)  # fp32 by default: but the shard is f16
    with pytest.raises(CorruptIndexError, match="float16 single shard"):
        Store.open(tmp_path / "idx")


def test_an_older_reader_refuses_a_narrow_index_by_its_version(tmp_path, monkeypatch):
    make(tmp_path, "narrow", single_width=128, single_precision="fp16").close()
    make(tmp_path, "coded", compression="int8").close()
    monkeypatch.setattr(manifest_module, "FORMAT_VERSION", 2)  # a pagelens from before single widths
    with pytest.raises(IndexFormatError, match="upgrade pagelens"):
        Store.open(tmp_path / "narrow")
    Store.open(tmp_path / "coded").close()  # a compressed index keeps version 2: still readable there


def test_verify_detects_a_flipped_byte_in_a_single_f16_shard(tmp_path):
    s = make(tmp_path, single_width=128, single_precision="fp16")
    s.add_document("/a.pdf", pages(3))
    s.add_document("/b.pdf", pages(3, seed=1))
    s.close()
    path = tmp_path / "idx" / "shards" / "single-000002.f16"
    data = bytearray(path.read_bytes())
    data[4 * 256 + 17] ^= 0x20  # inside the 5th row: page 2 of /b.pdf
    path.write_bytes(bytes(data))
    r = Store.open(tmp_path / "idx")
    report = r.check_integrity()
    assert [(d.path, d.pages) for d in report.damaged] == [("/b.pdf", [2])] and not report.problems
    with pytest.raises(CorruptIndexError):
        r.verify()
    r.close()


def test_a_catalogue_naming_an_f16_shard_in_an_fp32_index_is_refused(tmp_path):
    s = make(tmp_path)
    s.add_document("/a.pdf", pages(2))
    s.close()
    rename_shard(tmp_path / "idx", 2, "single-000002.f32", "single-000002.f16")
    with pytest.raises(CorruptIndexError):
        Store.open(tmp_path / "idx")
    with pytest.raises(CorruptIndexError):
        Store.open(tmp_path / "idx", writable=True)


def test_recompress_narrows_singles_keeps_ids_and_copies_shared(tmp_path):
    s = make(tmp_path)
    p = pages(6, seed=2)
    ids = s.add_document("/a.pdf", p)
    copy_ids = s.copy_document(s._as_source("/copy.pdf"), "/a.pdf")
    before = s.stats()
    result = s.recompress(single_width=128, single_precision="fp16")
    assert (result.single_pages_converted, result.single_bytes_before, result.single_bytes_after) == (
        12, 6 * D_SINGLE * 4, 6 * 256)  # copies share their row: stored once
    assert result.pages_converted == 0 and result.compression == "fp16"  # token vectors untouched
    assert shard_names(s.directory) == ["multi-000001.f16", "single-000003.f16"]
    after = s.stats()
    assert after.bytes_by_part["multi_vectors"] == before.bytes_by_part["multi_vectors"]
    assert after.bytes_per_page["single_vectors"] == 6 * 256 / 12 and after.single_pages_not_yet_converted == 0
    assert sorted(s.live_page_ids().tolist()) == sorted(ids + copy_ids)
    want = np.stack([by_hand(e.single, 128) for e in p])
    same(s.single_vectors(ids), want)
    same(s.single_vectors(copy_ids), want)
    locations = {row[0]: row[4:] for row in s.page_locations()}
    assert [locations[i] for i in ids] == [locations[i] for i in copy_ids]
    assert s.verify() == 12 and s.dead_bytes() == 0
    assert read_manifest(s.directory)["format_version"] == 3
    assert s.recompress(single_width=128, single_precision="fp16").single_pages_converted == 0  # done already
    for kwargs, words in (({"single_width": 256}, "widened"), ({"single_width": D_SINGLE}, "widened"),
                          ({"single_precision": "fp32"}, "fp32 originals"),
                          ({"single_width": 64}, "fp32 originals")):
        with pytest.raises(ValueError, match=words):
            s.recompress(**kwargs)
    assert (s.single_width, s.single_precision) == (128, "fp16")  # a refusal changes nothing
    s.remove_document("/copy.pdf", compact=False)
    s.compact()  # f16 rows stay f16 through compaction
    assert [n.split(".")[1] for n in shard_names(s.directory)] == ["f16", "f16"]
    same(s.single_vectors(ids), want)
    assert s.verify() == 6
    s.close()


def test_recompress_refuses_what_the_stored_singles_cannot_give(tmp_path):
    s = make(tmp_path)
    s.add_document("/a.pdf", pages(2))
    with pytest.raises(ValueError, match="fp16"):  # narrowing fp32 in place: the names could not tell them apart
        s.recompress(single_width=128)
    with pytest.raises(ValueError, match="nothing to convert"):
        s.recompress()
    s.close()
    n = make(tmp_path, "narrow", single_width=512)
    n.add_document("/a.pdf", pages(2))
    with pytest.raises(ValueError, match="full-width fp32 originals"):
        n.recompress(single_width=128, single_precision="fp16")
    assert read_manifest(n.directory).get("single_precision") == "fp32"  # nothing was changed
    n.close()


def test_token_codecs_and_narrow_singles_together(tmp_path):
    s = make(tmp_path, compression="int8", single_width=256, single_precision="fp16")
    p = pages(4, seed=5)
    ids = s.add_document("/a.pdf", p)
    same(s.single_vectors(ids), np.stack([by_hand(e.single, 256) for e in p]))
    assert shard_names(s.directory) == ["multi-000001.c1", "single-000002.f16"]
    assert read_manifest(s.directory)["format_version"] == 3 and s.verify() == 4
    s.close()
    t = make(tmp_path, "later")  # fp16 tokens, fp32 singles: convert both, in one call
    t.add_document("/a.pdf", p)
    result = t.recompress("int8", single_width=128, single_precision="fp16")
    assert (result.pages_converted, result.single_pages_converted) == (4, 4)
    assert shard_names(t.directory) == ["multi-000003.c1", "single-000004.f16"]
    assert t.verify() == 4  # each page's checksum covers its codes and its fp16 single row
    same(t.single_vectors(t.live_page_ids()), np.stack([by_hand(e.single, 128) for e in p]))
    t.close()


def test_kill_9_during_single_recompress_then_rerun_finishes(tmp_path):
    s = make(tmp_path)
    originals, ids = {}, {}
    for d in range(8):  # 40 pages, one a commit: five kills after 1-3 commits each leave pages to convert
        p = pages(5, seed=20 + d)
        ids[f"/d{d}.pdf"] = s.add_document(f"/d{d}.pdf", p)
        originals.update(zip(ids[f"/d{d}.pdf"], p))
    s.close()
    all_ids = sorted(originals)
    want = np.stack([by_hand(originals[i].single, 128) for i in all_ids])
    rng = random.Random(5)

    def pause(proc):  # kill after a random number of commits, at a random moment
        lines = b"".join(proc.stdout.readline() for _ in range(rng.randint(0, 2)))
        time.sleep(rng.uniform(0.0, 0.03))
        return lines

    cmd = [sys.executable, ENTRY, str(tmp_path / "idx"), "128", "fp16", "0.03", ROOT]
    for round_, out, kills in kill_rounds(cmd, pause):
        r = Store.open(tmp_path / "idx")
        try:
            assert_store_intact(r, ids, all_ids)
            got = r.single_vectors(all_ids)  # converted rows and not-yet-converted ones read alike
            assert got.shape == (len(all_ids), 128)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
        finally:
            r.close()
        if round_ == 2:  # a half-converted store compacts without mixing f32 and f16 rows
            w = Store.open(tmp_path / "idx", writable=True)
            w.compact()
            assert w.verify() == len(all_ids)
            np.testing.assert_allclose(w.single_vectors(all_ids), want, rtol=0, atol=1e-3)
            w.close()
    assert kills == 5  # a kill by line count, not by time: a fast machine cannot finish first
    assert b"finished" in out  # the last, unkilled run finished the conversion
    r = Store.open(tmp_path / "idx")
    assert r.stats().single_pages_not_yet_converted == 0
    assert [n for n in shard_names(r.directory) if n.startswith("single")] and \
        all(n.endswith(".f16") for n in shard_names(r.directory))
    same(r.single_vectors(all_ids), want)
    r.close()
